//! Privileges: one clear sentence before trying when loading cannot work, and no capability at
//! all once the hooks are attached.
//!
//! Loading needs CAP_BPF (programs and maps), CAP_PERFMON (tracing programs, kprobes) and
//! CAP_NET_ADMIN (the tracepoint backend's cgroup hook), or CAP_SYS_ADMIN, which covers all three.
//! Tracing afterwards needs none: the ring buffer is already mapped and the lost counter is read
//! through a map descriptor the tracer holds, and the kernel checks capabilities when such
//! objects are created, not when they are used. So the tracer gives up every capability as soon
//! as it has attached and read the current holders, before it prints its status line.

use anyhow::{Context as _, bail};
use rustix::thread::{CapabilitySet, CapabilitySets};

/// What loading needs when CAP_SYS_ADMIN is not there.
const LOAD_NEEDS: CapabilitySet = CapabilitySet::BPF
    .union(CapabilitySet::PERFMON)
    .union(CapabilitySet::NET_ADMIN);

pub fn check() -> anyhow::Result<()> {
    let effective = rustix::thread::capabilities(None)
        .map(|sets| sets.effective)
        .unwrap_or(CapabilitySet::empty());
    if !effective.contains(CapabilitySet::SYS_ADMIN) && !effective.contains(LOAD_NEEDS) {
        bail!(
            "portwatch needs root (or the capabilities CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN) \
             to load its eBPF programs; run it with sudo"
        );
    }
    Ok(())
}

/// Drops every capability (effective, permitted and inheritable; the ambient set goes with
/// them) and sets no_new_privs, so not even an exec could bring any back. Capabilities belong to
/// threads, so this must run while the tracer has one thread; it checks that every thread of
/// the process ended up with none.
pub fn drop_all() -> anyhow::Result<()> {
    let none = CapabilitySet::empty();
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: none,
            permitted: none,
            inheritable: none,
        },
    )
    .context("dropping capabilities after attaching")?;
    rustix::thread::set_no_new_privs(true).context("setting no_new_privs")?;
    for task in std::fs::read_dir("/proc/self/task").context("listing this process's threads")? {
        let status = std::fs::read_to_string(task?.path().join("status"))
            .context("reading a thread's capabilities")?;
        let held = ["CapEff:", "CapPrm:"].iter().any(|key| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(key))
                .is_none_or(|hex| u64::from_str_radix(hex.trim(), 16) != Ok(0))
        });
        if held {
            bail!("a thread of portwatch kept its capabilities after they were dropped");
        }
    }
    Ok(())
}

/// Kernels before 5.11 charge BPF maps against RLIMIT_MEMLOCK; lift it so the maps fit.
pub fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: `unlimited` is a valid rlimit that outlives the call.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}
