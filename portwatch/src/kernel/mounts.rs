//! Private mount namespaces for the loader child, which shows aya a BTF skeleton and mounts
//! tracefs where the host has none, without the host ever seeing either mount.

use std::{ffi::CStr, io};

fn check(ret: i32) -> io::Result<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Moves this process into a mount namespace of its own. `propagation` is `MS_PRIVATE` (nothing
/// crosses either way) or `MS_SLAVE` (the host's later mounts still appear here); either way
/// ours never reach the host.
pub fn unshare(propagation: libc::c_ulong) -> io::Result<()> {
    // SAFETY: unshare takes a flag; it fails (EINVAL) rather than misbehaves if this process
    // shares its filesystem state with other threads.
    check(unsafe { libc::unshare(libc::CLONE_NEWNS) })?;
    // SAFETY: remounting / recursively with a propagation flag and null source, type and data is
    // the documented form.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | propagation,
            std::ptr::null(),
        )
    })
}

/// Mounts a filesystem that needs no source or data (tmpfs, tracefs) at `target`.
pub fn mount(fstype: &CStr, target: &CStr) -> io::Result<()> {
    // SAFETY: all strings are valid and NUL-terminated; these filesystems need no data.
    check(unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    })
}
