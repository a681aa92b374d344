//! portwatch's kernel programs: one object file holding the hooks of every backend.
//!
//! Userspace loads only the programs of the backend it picked. Every hook is thin: it finds the
//! socket and the outcome, then hands them to [`lifecycle`], the one place that tracks which
//! socket holds which port and decides what to report.
//!
//! Built for the BPF target by portwatch's build.rs; on the host it is an empty binary so that
//! workspace-wide commands (clippy, check) pass over it.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod diag;
#[cfg(target_arch = "bpf")]
mod emit;
#[cfg(target_arch = "bpf")]
mod fentry;
#[cfg(target_arch = "bpf")]
mod globals;
#[cfg(target_arch = "bpf")]
mod kfunc;
#[cfg(target_arch = "bpf")]
mod kprobe;
#[cfg(target_arch = "bpf")]
mod lifecycle;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod sock;
#[cfg(target_arch = "bpf")]
mod tracepoint;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach a real panic, so this is never entered.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("portwatch-ebpf holds kernel programs; portwatch embeds them. Run portwatch.");
    std::process::exit(1);
}
