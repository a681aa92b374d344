//! Privileges: one clear sentence before trying when loading cannot work, and no capability at
//! all once the hooks are attached.
//!
//! Loading needs CAP_BPF (programs and maps), CAP_PERFMON (tracing programs, kprobes) and
//! CAP_NET_ADMIN (the tracepoint backend's cgroup hook), or CAP_SYS_ADMIN, which covers all three.
//! Tracing afterwards needs none on current kernels: the ring buffer is already mapped and the
//! lost counter is read through a map descriptor the tracer holds, and the kernel checks
//! capabilities when such objects are created, not when they are used. Older kernels (Debian's
//! 5.10, with `kernel.unprivileged_bpf_disabled` set, as Debian sets it) refuse every bpf() call
//! of a task without CAP_BPF, reading a map included; there the tracer keeps CAP_BPF alone. So
//! the tracer gives up every other capability as soon as it has attached and read the current
//! holders, before it prints its status line.

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
    let mut keep = if bpf_needs_capability() {
        CapabilitySet::BPF
    } else {
        CapabilitySet::empty()
    };
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

/// Whether this kernel refuses every bpf() call, even one on a descriptor already held, to a
/// task without CAP_BPF. Asked of the kernel, not guessed from its version: a thread of our own
/// drops its capabilities (they are per thread) and looks up an element of a map that does not
/// exist. A kernel that gates every call says EPERM before it looks at the descriptor; one that
/// checks only object creation says EBADF.
fn bpf_needs_capability() -> bool {
    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let none = CapabilitySet::empty();
                let dropped = rustix::thread::set_capabilities(
                    None,
                    CapabilitySets {
                        effective: none,
                        permitted: none,
                        inheritable: none,
                    },
                );
                if dropped.is_err() {
                    return true;
                }
                // bpf_attr for BPF_MAP_LOOKUP_ELEM: map_fd, padding, key, value, flags.
                let mut attr = [0u64; 4];
                attr[0] = u64::from(u32::MAX);
                // SAFETY: attr is a live, writable 32-byte bpf_attr prefix; with no valid map
                // descriptor the kernel reads nothing through its null key and value pointers.
                let ret = unsafe {
                    libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_ELEM, attr.as_mut_ptr(), 32)
                };
                ret < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
            })
            .join()
            .unwrap_or(true)
    })
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
