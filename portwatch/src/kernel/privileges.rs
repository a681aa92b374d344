//! Privileges: one clear sentence before trying when loading cannot work, and no capability at
//! all once the hooks are attached.
//!
//! Loading needs CAP_BPF (programs and maps), CAP_PERFMON (tracing programs, kprobes) and
//! CAP_NET_ADMIN (the tracepoint backend's cgroup hook), or CAP_SYS_ADMIN, which covers all three.
//! Tracing afterwards needs none. Events come through the ring buffer and the lost counter through
//! a mapped array, both mapped into memory before the drop, and the kernel checks capabilities when
//! such objects are created or mapped, not when they are read. The one bpf() call the tracer still
//! makes, asking its own programs how many runs the kernel skipped (`kernel::skipped`), needs no
//! capability on kernels that check capabilities only when objects are created (seen on 6.18 with
//! `kernel.unprivileged_bpf_disabled` at 2; Debian's 6.1 and 6.12 check that way too). Debian's
//! 5.10, with that setting, refuses every bpf() call of a task without CAP_BPF; there the question
//! goes unanswered (and before 6.7 the kernel keeps no such count for kprobes and tracepoints
//! anyway), and nothing else needs a bpf() call. So the tracer gives up every capability as soon as
//! it has attached and read the current holders, before it prints its status line.

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

/// Drops every capability the running tracer does not need (effective, permitted and
/// inheritable; the ambient set goes with them) and sets no_new_privs, so not even an exec could
/// bring any back. Capabilities belong to threads, so this must run while the tracer has one
/// thread; it checks that every thread of the process ended up with no more than it kept.
pub fn drop_all(audit: bool) -> anyhow::Result<()> {
    let mut keep = CapabilitySet::empty();
    // `--audit` reads /proc/<pid>/exe, which the kernel shows only to a reader with at least the
    // target's capabilities, or CAP_SYS_PTRACE.
    if audit {
        keep |= CapabilitySet::SYS_PTRACE;
    }
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: keep,
            permitted: keep,
            inheritable: CapabilitySet::empty(),
        },
    )
    .context("dropping capabilities after attaching")?;
    rustix::thread::set_no_new_privs(true).context("setting no_new_privs")?;
    // Threads that loaded programs or read namespaces have been joined, but a joined thread
    // stays listed, with its capabilities, until the kernel has finished its exit; give such
    // threads a moment to go. One that stays has kept what it should not.
    let mut waits = 0;
    loop {
        let holding = threads_beyond(keep)?;
        if holding.is_empty() {
            return Ok(());
        }
        if waits == EXIT_WAITS {
            bail!(
                "a thread of portwatch (task {}) kept its capabilities after they were dropped",
                holding.join(", ")
            );
        }
        waits += 1;
        std::thread::sleep(EXIT_WAIT);
    }
}

/// How long [`drop_all`] waits, in steps, for joined threads to finish exiting: 2 s in all.
const EXIT_WAITS: u32 = 200;
const EXIT_WAIT: std::time::Duration = std::time::Duration::from_millis(10);

/// The ids of this process's threads that hold (effective or permitted) a capability beyond
/// `keep`.
fn threads_beyond(keep: CapabilitySet) -> anyhow::Result<Vec<String>> {
    let mut holding = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").context("listing this process's threads")? {
        let task = task?;
        // A thread that is gone by now has nothing left to hold.
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let beyond_kept = ["CapEff:", "CapPrm:"].iter().any(|key| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(key))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
                .is_none_or(|held| held & !keep.bits() != 0)
        });
        if beyond_kept {
            holding.push(task.file_name().to_string_lossy().into_owned());
        }
    }
    Ok(holding)
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
