//! Read-only values userspace fills in at load time (`EbpfLoader::set_global`).
//!
//! They live in `.rodata`, which aya freezes, so the verifier sees them as constants: branches on
//! them cost nothing at run time and dead ones are never verified.

use portwatch_ebpf::{Offsets, Settings};

// SAFETY: both are plain-integer repr(C) structs for which all-zero is a valid value.
#[unsafe(no_mangle)]
pub(crate) static OFFSETS: Offsets = unsafe { core::mem::zeroed() };
// SAFETY: as above.
#[unsafe(no_mangle)]
pub(crate) static SETTINGS: Settings = unsafe { core::mem::zeroed() };

/// Reads one field of a global through a volatile load so the compiler cannot fold in the
/// zero it was compiled with.
macro_rules! global {
    ($global:ident . $field:ident) => {
        // SAFETY: the pointer comes from a reference to a static, so it is valid and aligned.
        unsafe { core::ptr::read_volatile(&raw const $crate::globals::$global.$field) }
    };
    ($global:ident) => {
        // SAFETY: as above.
        unsafe { core::ptr::read_volatile(&raw const $crate::globals::$global) }
    };
}
pub(crate) use global;
