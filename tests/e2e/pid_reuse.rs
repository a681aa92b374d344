//! A pid used by two processes in turn. `--audit` caches what it reads from /proc per process;
//! keyed by pid alone, the second process would be described as the first.

use std::{
    ffi::{CString, OsString},
    io::Read,
    os::unix::ffi::OsStringExt,
    process::{Command, Stdio},
    time::Duration,
};

use crate::{
    Outcome,
    capture::BIND_ONCE_ENV,
    expect::{check, only, want},
    tracer::Tracer,
    workload::{Kind, Socket, V4, free_port},
};

/// `<port>,<millis>`: turns this binary into a first life whose socket outlives it (see
/// [`keep_after_exit`]).
pub const KEEP_ENV: &str = "PORTWATCH_E2E_KEEP";

/// Binds UDP `port`, forks a child that keeps the socket until its stdin closes, holds the port
/// for `millis` (so the tracer reads this process's /proc entry) and exits: the port is then held
/// in the name of a pid that no process has.
pub fn keep_after_exit(spec: &str) -> ! {
    let (port, millis) = spec.split_once(',').expect("port,millis");
    let socket = Socket::new(Kind::Udp, V4).expect("socket");
    socket.bind(port.parse().expect("port")).expect("bind");
    // SAFETY: this helper is single-threaded (it runs before the harness starts threads); the
    // child only reads stdin and leaves through _exit.
    if unsafe { libc::fork() } == 0 {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        // SAFETY: ends the child without running the parent's exit handlers.
        unsafe { libc::_exit(0) }
    }
    std::thread::sleep(Duration::from_millis(millis.parse().expect("millis")));
    std::process::exit(0)
}

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
    let second = spawn_with_pid(pid, &exe, "second-life", second_port, || {})?;
    let trace = tracer.stop()?;
    check(second == 0, || {
        format!("the second life (pid {pid}) exited with status {second}")
    })?;
    for (port, life) in [(first_port, "first-life"), (second_port, "second-life")] {
        claimed_and_freed_by(&trace.of_process(port, pid), port, pid, life, &["claim"])?;
    }
    Ok(())
}

/// The first life's socket outlives it (a forked child keeps it), and is closed while a second
/// process has the same pid: the free names the first life, as the claimer, and `--audit`
/// describes that life, not the process that has its pid now.
pub fn free_after_reuse_names_the_first_life() -> Outcome {
    let (first_port, second_port) = (free_port(), free_port());
    let tracer = Tracer::start(&["--port", &format!("{first_port},{second_port}"), "--audit"])?;
    let exe = std::env::current_exe()?;
    let mut first = Command::new(&exe)
        .arg("first-life")
        .env(KEEP_ENV, format!("{first_port},{HOLD_MILLIS}"))
        .stdin(Stdio::piped())
        .spawn()?;
    let pid = first.id();
    let keeper = first.stdin.take();
    first.wait()?;
    let second = spawn_with_pid(pid, &exe, "second-life", second_port, || {
        // The second life has bound by now; the keeper's stdin closes, it exits, and the first
        // life's port is freed while pid `pid` is the second life's.
        std::thread::sleep(Duration::from_millis(300));
        drop(keeper);
        std::thread::sleep(Duration::from_millis(300));
    })?;
    let trace = tracer.stop()?;
    check(second == 0, || {
        format!("the second life (pid {pid}) exited with status {second}")
    })?;
    claimed_and_freed_by(
        &trace.of_process(first_port, pid),
        first_port,
        pid,
        "first-life",
        &["claim", "free"],
    )?;
    claimed_and_freed_by(
        &trace.of_process(second_port, pid),
        second_port,
        pid,
        "second-life",
        &["claim"],
    )
}

/// `events` are one claim and one free of UDP `port` by `pid`, and those of kinds `audited`
/// carry the command line of `life`.
fn claimed_and_freed_by(
    events: &[&serde_json::Value],
    port: u16,
    pid: u32,
    life: &str,
    audited: &[&str],
) -> Outcome {
    only(
        events,
        &[
            want("claim", port, pid, "udp", "ipv4").with("how", "bind"),
            want("free", port, pid, "udp", "ipv4").with("how", "bind"),
        ],
    )?;
    for event in events
        .iter()
        .filter(|event| audited.iter().any(|kind| event["event"] == *kind))
    {
        check(
            event["cmdline"]
                .as_str()
                .is_some_and(|cmdline| cmdline.ends_with(life)),
            || format!("this event on {port} should name the {life}: {event}"),
        )?;
    }
    Ok(())
}

/// Runs `exe life` as a process with pid `pid` (which must be free) in bind-once mode on `port`,
/// runs `while_alive` meanwhile, and returns its exit status.
fn spawn_with_pid(
    pid: u32,
    exe: &std::path::Path,
    life: &str,
    port: u16,
    while_alive: impl FnOnce(),
) -> Result<i32, String> {
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
    while_alive();
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
