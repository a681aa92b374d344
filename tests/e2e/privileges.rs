//! Least privilege: the tracer holds no capability once it is attached, and loading works for
//! an unprivileged user given only the capabilities portwatch/docs/privileges.md names.

use std::{os::unix::process::CommandExt, process::Command};

use crate::{
    Outcome,
    expect::{check, only, want},
    tracer::{Reachable, Tracer},
    workload::{Kind, Socket, V4, free_port},
};

/// The capabilities loading needs on every backend (see portwatch/docs/privileges.md).
const LOAD_CAPABILITIES: [u32; 3] = [CAP_NET_ADMIN, CAP_PERFMON, CAP_BPF];
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;
const NOBODY: u32 = 65534;

/// After the status line, every thread of the tracer has empty capability sets and
/// no_new_privs, and tracing still works (events, the lost counter read at the end), on
/// kernels that refuse every bpf() call without CAP_BPF (Debian's 5.10) too.
pub fn capabilities_dropped_after_attach() -> Outcome {
    traces_without_capabilities(Tracer::start)
}

/// As `nobody` with only CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (ambient, as `setpriv
/// --ambient-caps` or a systemd unit's AmbientCapabilities gives them), portwatch attaches and
/// sees another user's bind, then drops those too. The one documented exception: kprobes go
/// through perf_event_open, which Debian's kernels at `perf_event_paranoid` 3 (their default)
/// allow only with CAP_SYS_ADMIN.
pub fn runs_as_nobody_with_only_load_capabilities() -> Outcome {
    let mut capabilities = LOAD_CAPABILITIES.to_vec();
    let paranoid: i32 = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")?
        .trim()
        .parse()?;
    // At Debian's perf_event_paranoid 3, perf_event_open (kprobes, and the tracepoint
    // backend's syscall tracepoints) wants CAP_SYS_ADMIN.
    if matches!(crate::tracer::backend().as_str(), "kprobe" | "tracepoint") && paranoid >= 3 {
        capabilities.push(CAP_SYS_ADMIN);
    }
    // The tracepoint backend reads its tracepoints' ids from tracefs, whose root only root may
    // read (mode 0700): CAP_DAC_READ_SEARCH. Where the host has not mounted tracefs, portwatch
    // mounts it privately, which takes CAP_SYS_ADMIN; mount it here, as root, as distributions do.
    if !matches!(crate::tracer::backend().as_str(), "kprobe" | "fentry") {
        capabilities.push(CAP_DAC_READ_SEARCH);
    }
    if !std::path::Path::new("/sys/kernel/tracing/events").is_dir() {
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
            .status()?;
        check(mounted.success(), || "mounting tracefs failed".into())?;
    }
    // Nobody must reach the binary without CAP_DAC_READ_SEARCH (kept only for tracefs above).
    let copy = Reachable::binary()?;
    traces_without_capabilities(|args| {
        Tracer::start_command(copy.command(), args, |command| {
            as_nobody_with(command, capabilities)
        })
    })
}

fn traces_without_capabilities(start: impl FnOnce(&[&str]) -> Result<Tracer, String>) -> Outcome {
    let me = std::process::id();
    let port = free_port();
    let tracer = start(&["--port", &port.to_string()])?;
    let none = "0000000000000000";
    let status = std::fs::read_to_string(format!("/proc/{}/status", tracer.pid()))?;
    for (key, wanted) in [
        ("CapInh:", "0000000000000000"),
        ("CapPrm:", none),
        ("CapEff:", none),
        ("CapAmb:", "0000000000000000"),
        ("NoNewPrivs:", "1"),
    ] {
        let value = field(&status, key);
        check(value == Some(wanted), || {
            format!("after attaching, {key} is {value:?}, not {wanted}")
        })?;
    }
    // Nor does any other thread.
    for task in std::fs::read_dir(format!("/proc/{}/task", tracer.pid()))? {
        let Ok(status) = std::fs::read_to_string(task?.path().join("status")) else {
            continue;
        };
        for key in ["CapPrm:", "CapEff:", "CapAmb:"] {
            let held = field(&status, key).and_then(|hex| u64::from_str_radix(hex, 16).ok());
            check(held == Some(0), || {
                format!("a tracer thread has {key} {held:x?} after attaching")
            })?;
        }
    }
    let socket = Socket::new(Kind::Udp, V4)?;
    socket.bind(port)?;
    socket.close();
    let trace = tracer.stop()?;
    only(
        &trace.on_port(port),
        &[
            want("claim", port, me, "udp", "ipv4").with("how", "bind"),
            want("free", port, me, "udp", "ipv4").with("how", "bind"),
        ],
    )
}

/// Turns the child into `nobody` keeping only `capabilities`, as ambient ones so they
/// survive the exec. The memlock limit is lifted first, while still root where that is allowed:
/// kernels before 5.11 charge BPF maps to it, and `nobody` may not raise it
/// (portwatch/docs/privileges.md says so).
fn as_nobody_with(command: &mut Command, capabilities: Vec<u32>) {
    // SAFETY: between fork and exec only async-signal-safe calls are made (setrlimit, prctl,
    // setgroups, setgid, setuid, capset), on memory owned by this closure.
    unsafe {
        command.pre_exec(move || {
            let ok = |ret: i32| {
                if ret == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            };
            let unlimited = libc::rlimit {
                rlim_cur: libc::RLIM_INFINITY,
                rlim_max: libc::RLIM_INFINITY,
            };
            // Best effort, as in portwatch: a root without CAP_SYS_RESOURCE (a container) may
            // not raise it, and kernels from 5.11 on do not need it.
            libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited);
            ok(libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0))?;
            ok(libc::setgroups(0, std::ptr::null()))?;
            ok(libc::setgid(NOBODY))?;
            ok(libc::setuid(NOBODY))?;
            let mut header = CapHeader {
                version: LINUX_CAPABILITY_VERSION_3,
                pid: 0,
            };
            let mut data = [CapData::default(); 2];
            for &cap in &capabilities {
                let word = &mut data[(cap / 32) as usize];
                let bit = 1 << (cap % 32);
                word.effective |= bit;
                word.permitted |= bit;
                word.inheritable |= bit;
            }
            ok(libc::syscall(libc::SYS_capset, &mut header, data.as_mut_ptr()) as i32)?;
            for &cap in &capabilities {
                ok(libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE,
                    cap as libc::c_ulong,
                    0,
                    0,
                ))?;
            }
            Ok(())
        })
    };
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .map(str::trim)
}
