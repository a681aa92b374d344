//! Which core the load generator owns and which cores the tracer may use.
//!
//! The load is pinned to one core so "ops/s" means "what one core achieves", and any cost a tracer
//! adds inside the kernel (its BPF programs run synchronously in the load's syscalls) shows up as
//! fewer ops. The tracer's userspace is kept off that core, so its own CPU time is measured
//! separately (CPU seconds per million events) instead of being mixed into the ops/s figure.

use std::io;

use anyhow::{Context, Result};

/// How the cores this process may run on are split between load and tracer.
pub struct Placement {
    /// The single core the load generator is pinned to.
    pub load: usize,
    /// The cores the tracer is pinned to: all others, or the load's core on a one-core machine.
    pub tracer: Vec<usize>,
}

/// Splits the current affinity mask: the highest allowed core goes to the load.
///
/// The orchestrator never pins itself, so the load generator (a re-exec of xtask) inherits the
/// same mask and computes the same split on its own.
pub fn placement() -> Result<Placement> {
    // SAFETY: cpu_set_t is plain old data; all-zero is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is this thread; the size and pointer describe `set`, which outlives the call.
    let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("sched_getaffinity");
    }
    let allowed: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE, the capacity of `set`.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect();
    let (&load, others) = allowed.split_last().context("empty CPU affinity mask")?;
    let tracer = if others.is_empty() {
        vec![load]
    } else {
        others.to_vec()
    };
    Ok(Placement { load, tracer })
}

/// Builds a CPU set from core numbers, ahead of any fork (building it allocates nothing, but doing
/// it before `fork` keeps the child's `pre_exec` hook down to one syscall).
pub fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is plain old data; all-zero is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: core numbers come from `placement`, which only yields values below CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    set
}

/// Pins the calling thread (and any thread it spawns later) to `set`.
///
/// Async-signal-safe: a single syscall, so it may run between `fork` and `exec`.
pub fn pin_current(set: &libc::cpu_set_t) -> io::Result<()> {
    // SAFETY: pid 0 is the calling thread; the size and pointer describe `set`, which outlives the call.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
