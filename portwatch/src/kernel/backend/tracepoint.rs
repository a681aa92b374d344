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

use portwatch_ebpf::programs::{self, Kind};

use super::{BackendError, Kernel, concurrent, lacks, tracefs};

/// The tp_btf tracepoints, as aya finds them in BTF (`btf_trace_<name>` typedefs).
pub const BTF_TRACEPOINT_TYPES: [&str; 4] = [
    "btf_trace_inet_sock_set_state",
    "btf_trace_tcp_destroy_sock",
    "btf_trace_timer_start",
    "btf_trace_timer_expire_entry",
];

/// The tp_btf programs that recognise TIME_WAIT timers, which need two offsets some kernels'
/// BTF lacks.
const TIME_WAIT_TIMER_PROGRAMS: [&str; 2] = ["timer_start", "timer_expire"];

/// Loads every program at once (see [`concurrent`]), then attaches them; returns what the
/// backend cannot see on this kernel beyond its documented limits. Release hooks go first, for
/// the reason given at [`programs::PROGRAMS`]: the TCP tracepoints, then `sock_release`, then
/// the claim hooks (`post_bind`, the syscalls).
pub fn attach(ebpf: &mut Ebpf, kernel: &Kernel) -> Result<Vec<String>, BackendError> {
    tracefs::ensure_mounted()?;
    let timers_located = kernel.time_wait_timers_located();
    let table: Vec<&programs::Program> = programs::of(programs::Backend::Tracepoint)
        .filter(|program| timers_located || !TIME_WAIT_TIMER_PROGRAMS.contains(&program.name))
        .collect();
    let btf_tracepoints: Vec<(&str, &str)> = table
        .iter()
        .filter_map(|program| match program.kind {
            Kind::BtfTracepoint(tracepoint) => Some((program.name, tracepoint)),
            _ => None,
        })
        .collect();
    let cgroup_hooks: Vec<&str> = table
        .iter()
        .filter(|program| program.kind == Kind::CgroupSock)
        .map(|program| program.name)
        .collect();
    let mut notes = Vec::new();
    if !timers_located {
        notes.push(
            "the end of TIME_WAIT is not observable and every close from FIN_WAIT2 or CLOSING \
             counts as an immediate free: this kernel's BTF lacks timer_list.function or \
             inet_timewait_sock.tw_timer"
                .to_owned(),
        );
    }
    // Largest first (the syscall exit program, then the first tp_btf), so the two longest
    // verifications run side by side.
    let load_rank = |program: &&programs::Program| match program.kind {
        Kind::SyscallExit(_) => 0,
        Kind::BtfTracepoint(_) => 1,
        Kind::SyscallEnter(_) => 2,
        _ => 3,
    };
    let mut by_size = table.clone();
    by_size.sort_by_key(load_rank);
    let load_order: Vec<&str> = by_size.iter().map(|program| program.name).collect();
    concurrent::load_all(ebpf, &load_order, |name, program| {
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
    for program in cgroup_hooks {
        let Some(Program::CgroupSock(sock)) = ebpf.program_mut(program) else {
            return Err(lacks(program));
        };
        sock.attach(&cgroup, CgroupAttachMode::Single)
            .map_err(|err| BackendError::hook(format!("cgroup {program}"), err))?;
    }
    for program in &table {
        let (direction, calls) = match program.kind {
            Kind::SyscallEnter(calls) => ("enter", calls),
            Kind::SyscallExit(calls) => ("exit", calls),
            _ => continue,
        };
        let Some(Program::TracePoint(tracepoint)) = ebpf.program_mut(program.name) else {
            return Err(lacks(program.name));
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
