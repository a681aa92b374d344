//! portwatch's kernel programs: one object file holding the hooks of every backend.
//!
//! Userspace loads only the programs of the backend it picked. Every hook is thin: it finds the
//! socket and the outcome, then hands them to [`lifecycle`], the one place that tracks which
//! socket holds which port and decides what to report.
#![no_std]
#![no_main]

mod emit;
mod fentry;
mod globals;
mod kfunc;
mod kprobe;
mod lifecycle;
mod maps;
mod sock;
mod tracepoint;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach a real panic, so this is never entered.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
