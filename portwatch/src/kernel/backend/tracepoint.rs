//! Per-syscall tracepoints, cgroup post_bind and sock_release hooks and tp_btf TCP tracepoints:
//! for kernels without kprobes or BTF trampolines (Linux 5.9+ with BTF).

use std::{
    ffi::CString,
    fs::File,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{CgroupAttachMode, Program},
};

use super::{BackendError, Kernel, concurrent, lacks, tracefs};

/// The tp_btf tracepoints, as aya finds them in BTF (`btf_trace_<name>` typedefs).
pub const BTF_TRACEPOINT_TYPES: [&str; 4] = [
    "btf_trace_inet_sock_set_state",
    "btf_trace_tcp_destroy_sock",
    "btf_trace_timer_start",
    "btf_trace_timer_expire_entry",
];

/// Every program of this backend, by name in the object.
pub const PROGRAMS: [&str; 9] = [
    "sys_enter",
    "sys_exit",
    "post_bind4",
    "post_bind6",
    "tcp_set_state",
    "tcp_destroy",
    "timer_start",
    "timer_expire",
    "sock_release",
];

/// The syscalls whose entry `sys_enter` sees: what it must know before the call runs.
const SYSCALL_ENTRIES: [&str; 6] = ["bind", "connect", "listen", "sendto", "sendmsg", "sendmmsg"];

/// The syscalls whose return `sys_exit` sees.
const SYSCALL_EXITS: [&str; 8] = [
    "bind", "connect", "listen", "accept", "accept4", "sendto", "sendmsg", "sendmmsg",
];

/// The cgroup socket hooks, release first; each program's section names its attach point.
const CGROUP_HOOKS: [&str; 3] = ["sock_release", "post_bind4", "post_bind6"];

/// Loads every program at once (see [`concurrent`]), then attaches them; returns what the
/// backend cannot see on this kernel beyond its documented limits. Release hooks go first, for
/// the reason given at [`super::fentry::PROGRAMS`]: the TCP tracepoints, then `sock_release`,
/// then the claim hooks (`post_bind`, the syscalls).
pub fn attach(ebpf: &mut Ebpf, kernel: &Kernel) -> Result<Vec<String>, BackendError> {
    tracefs::ensure_mounted()?;
    let mut btf_tracepoints = vec![
        ("tcp_set_state", "inet_sock_set_state"),
        ("tcp_destroy", "tcp_destroy_sock"),
    ];
    let mut notes = Vec::new();
    if kernel.time_wait_timers_located() {
        btf_tracepoints.push(("timer_start", "timer_start"));
        btf_tracepoints.push(("timer_expire", "timer_expire_entry"));
    } else {
        notes.push(
            "the end of TIME_WAIT is not observable and every close from FIN_WAIT2 or CLOSING \
             counts as an immediate free: this kernel's BTF lacks timer_list.function or \
             inet_timewait_sock.tw_timer"
                .to_owned(),
        );
    }
    // Largest first (`sys_exit`, then `tcp_set_state`, the first tp_btf), so the two longest
    // verifications run side by side.
    let programs: Vec<&str> = std::iter::once("sys_exit")
        .chain(btf_tracepoints.iter().map(|(program, _)| *program))
        .chain(["sys_enter"])
        .chain(CGROUP_HOOKS)
        .collect();
    concurrent::load_all(ebpf, &programs, |name, program| {
        let loaded = match program {
            Program::BtfTracePoint(btf_tp) => {
                let tracepoint = btf_tracepoints
                    .iter()
                    .find(|(program, _)| *program == name)
                    .map_or(name, |(_, tracepoint)| *tracepoint);
                btf_tp.load(tracepoint, &kernel.aya_btf)
            }
            Program::CgroupSock(sock) => sock.load(),
            Program::TracePoint(tracepoint) => tracepoint.load(),
            _ => return Err(lacks(name)),
        };
        loaded.map_err(|err| BackendError::hook(format!("loading {name}"), err))
    })?;
    for (program, tracepoint) in btf_tracepoints {
        let Some(Program::BtfTracePoint(btf_tp)) = ebpf.program_mut(program) else {
            return Err(lacks(program));
        };
        btf_tp
            .attach()
            .map_err(|err| BackendError::hook(format!("tp_btf {tracepoint}"), err))?;
    }
    let cgroup = cgroup2_root()?;
    for program in CGROUP_HOOKS {
        let Some(Program::CgroupSock(sock)) = ebpf.program_mut(program) else {
            return Err(lacks(program));
        };
        sock.attach(&cgroup, CgroupAttachMode::Single)
            .map_err(|err| BackendError::hook(format!("cgroup {program}"), err))?;
    }
    for (program, direction, calls) in [
        ("sys_enter", "enter", &SYSCALL_ENTRIES[..]),
        ("sys_exit", "exit", &SYSCALL_EXITS[..]),
    ] {
        let Some(Program::TracePoint(tracepoint)) = ebpf.program_mut(program) else {
            return Err(lacks(program));
        };
        for call in calls {
            let name = format!("sys_{direction}_{call}");
            tracepoint
                .attach("syscalls", &name)
                .map_err(|err| BackendError::hook(format!("tracepoint syscalls:{name}"), err))?;
        }
    }
    Ok(notes)
}

/// The root of the cgroup v2 hierarchy, where a hook sees every socket on the host. When no
/// cgroup2 filesystem is mounted, mount one privately, open its root, and detach the mount again:
/// the open directory is all the attachment needs.
fn cgroup2_root() -> Result<File, BackendError> {
    if let Some(path) = mounted_cgroup2() {
        return File::open(&path).map_err(|err| {
            BackendError::Unsupported(format!("opening cgroup2 root {}: {err}", path.display()))
        });
    }
    let dir = Path::new("/run/portwatch-cgroup2");
    std::fs::create_dir_all(dir)
        .map_err(|err| BackendError::Unsupported(format!("creating {}: {err}", dir.display())))?;
    let target = CString::new(dir.as_os_str().as_encoded_bytes()).expect("no NUL in path");
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    let mounted = unsafe {
        libc::mount(
            c"none".as_ptr(),
            target.as_ptr(),
            c"cgroup2".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if mounted != 0 {
        return Err(BackendError::Unsupported(format!(
            "no cgroup2 filesystem is mounted and mounting one failed: {}",
            std::io::Error::last_os_error()
        )));
    }
    let root = File::open(dir);
    // SAFETY: `target` is a valid NUL-terminated path.
    unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    root.map_err(|err| BackendError::Unsupported(format!("opening cgroup2 root: {err}")))
}

fn mounted_cgroup2() -> Option<PathBuf> {
    let mounts = BufReader::new(File::open("/proc/self/mounts").ok()?);
    mounts.lines().map_while(Result::ok).find_map(|line| {
        let mut fields = line.split_whitespace();
        let (path, fstype) = (fields.nth(1)?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(path))
    })
}
