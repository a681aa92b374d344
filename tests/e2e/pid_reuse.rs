//! A pid used by two processes in turn. `--audit` caches what it reads from /proc per process;
//! keyed by pid alone, the second process would be described as the first.

use std::{
    ffi::{CString, OsString},
    os::unix::ffi::OsStringExt,
    process::Command,
};

use crate::{
    Outcome,
    capture::BIND_ONCE_ENV,
    expect::{check, in_order, want},
    tracer::Tracer,
    workload::free_port,
};

/// How long each life holds its port: long enough for the tracer to read its /proc entry.
const HOLD_MILLIS: u32 = 1000;

/// The first process binds one port and exits; a second is made with the same pid (clone3 with
/// `set_tid`) and binds another. Each claim names its own life: the same pid, each with its own
/// command line.
pub fn reused_pid_is_another_process() -> Outcome {
    let (first_port, second_port) = (free_port(), free_port());
    let tracer = Tracer::start(&["--port", &format!("{first_port},{second_port}"), "--audit"])?;
    let exe = std::env::current_exe()?;
    let mut first = Command::new(&exe)
        .arg("first-life")
        .env(BIND_ONCE_ENV, format!("{first_port},{HOLD_MILLIS}"))
        .spawn()?;
    let pid = first.id();
    first.wait()?;
    let second = spawn_with_pid(pid, &exe, "second-life", second_port)?;
    let trace = tracer.stop()?;
    check(second == 0, || {
        format!("the second life (pid {pid}) exited with status {second}")
    })?;
    for (port, life) in [(first_port, "first-life"), (second_port, "second-life")] {
        let events = trace.of_process(port, pid);
        in_order(
            &events,
            &[
                want("claim", port, pid, "udp", "ipv4").with("how", "bind"),
                want("free", port, pid, "udp", "ipv4").with("how", "bind"),
            ],
        )?;
        let claim = events
            .iter()
            .find(|event| event["event"] == "claim")
            .expect("in_order found it");
        check(
            claim["cmdline"]
                .as_str()
                .is_some_and(|cmdline| cmdline.ends_with(life)),
            || format!("the claim on {port} should name the {life}: {claim}"),
        )?;
    }
    Ok(())
}

/// Runs `exe life` as a process with pid `pid` (which must be free) in bind-once mode on `port`,
/// and returns its exit status.
fn spawn_with_pid(pid: u32, exe: &std::path::Path, life: &str, port: u16) -> Result<i32, String> {
    let c = |bytes: Vec<u8>| CString::new(bytes).map_err(|err| err.to_string());
    let program = c(exe.as_os_str().as_encoded_bytes().to_vec())?;
    let argv = [program.clone(), c(life.into())?];
    let mut environment: Vec<CString> = std::env::vars_os()
        .filter(|(name, _)| name != BIND_ONCE_ENV)
        .map(|(name, value)| {
            let mut entry = name;
            entry.push("=");
            entry.push(value);
            c(OsString::into_vec(entry))
        })
        .collect::<Result<_, _>>()?;
    environment.push(c(format!("{BIND_ONCE_ENV}={port},{HOLD_MILLIS}").into())?);
    let argv_ptrs: Vec<*const libc::c_char> = argv
        .iter()
        .map(|arg| arg.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    let env_ptrs: Vec<*const libc::c_char> = environment
        .iter()
        .map(|entry| entry.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    let wanted = [pid as libc::pid_t];
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: wanted.as_ptr() as u64,
        set_tid_size: 1,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 reads `args` (valid for its size) and `wanted`; the child runs only
    // async-signal-safe calls (execve, _exit) on memory prepared before the clone.
    let child = unsafe {
        let child = libc::syscall(libc::SYS_clone3, &args, size_of::<CloneArgs>());
        if child == 0 {
            libc::execve(program.as_ptr(), argv_ptrs.as_ptr(), env_ptrs.as_ptr());
            libc::_exit(127);
        }
        child
    };
    if child < 0 {
        return Err(format!(
            "clone3 with pid {pid}: {}",
            std::io::Error::last_os_error()
        ));
    }
    let mut status = 0;
    // SAFETY: waits for our own child, writing its status into a live i32.
    if unsafe { libc::waitpid(child as libc::pid_t, &mut status, 0) } < 0 {
        return Err(format!("waitpid: {}", std::io::Error::last_os_error()));
    }
    Ok(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    })
}

/// `struct clone_args` (Linux 5.5 and later, with `set_tid`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}
