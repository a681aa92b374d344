//! Sockets shared between processes and threads, and who a `free` names then: always the process
//! (and thread) that claimed the port, whoever closes the socket last. Each scenario's claimer and
//! closer are different tasks, so a free naming the closer would fail it.
//!
//! Scenarios that need a second process run this binary again in a helper mode (`SHARE_ENV`),
//! entered before the harness starts any thread, so the helper may fork.

use std::{
    io::{BufRead, BufReader, IoSlice, IoSliceMut, Write},
    mem::MaybeUninit,
    os::{
        fd::{AsFd, AsRawFd},
        unix::process::CommandExt,
    },
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

use crate::{
    Outcome,
    expect::{check, only, want},
    tracer::{Guarded, Tracer},
    workload::{Kind, Socket, V4, V6, free_port},
};

/// `<mode>:<port>`: turns this binary into the helper of one scenario.
pub const SHARE_ENV: &str = "PORTWATCH_E2E_SHARE";

/// The descriptor a `close` helper finds the socket handed to it on.
const HANDED_FD: i32 = 3;

/// How long the last holder keeps the socket after the first closes its copy: long enough for
/// the order of closes to be certain.
const LINGER: Duration = Duration::from_millis(200);

/// The helpers. `fork`: bind, fork, the parent closes its copy at once, the child last.
/// `pass`: fork first, then bind and pass the socket to the child over a Unix socket
/// (SCM_RIGHTS); the parent closes its copy, the child last. Both print `<parent> <child>`.
/// `reuseport`: bind with SO_REUSEPORT, say `ready`, hold the port until stdin closes.
/// `close` (no port): a socket is on fd [`HANDED_FD`]; close it when a line comes on stdin, then
/// say `closed`.
pub fn helper(spec: &str) -> ! {
    if spec == "close" {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        // SAFETY: the descriptor was handed to this process to close; nothing else uses it.
        unsafe { libc::close(HANDED_FD) };
        println!("closed");
        std::process::exit(0)
    }
    let (mode, port) = spec.split_once(':').expect("mode:port");
    let port: u16 = port.parse().expect("port");
    match mode {
        "fork" => {
            let socket = udp_bound(port);
            let child = fork_or_die(|| {
                std::thread::sleep(LINGER);
                drop(socket);
            });
            finish_parent(child)
        }
        "pass" => {
            let (parent_end, child_end) = rustix::net::socketpair(
                AddressFamily::UNIX,
                SocketType::SEQPACKET,
                SocketFlags::CLOEXEC,
                None,
            )
            .expect("socketpair");
            let child = fork_or_die(|| {
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
                let mut control = RecvAncillaryBuffer::new(&mut space);
                rustix::net::recvmsg(
                    &child_end,
                    &mut [IoSliceMut::new(&mut [0; 1])],
                    &mut control,
                    RecvFlags::empty(),
                )
                .expect("recvmsg");
                let received: Vec<_> = control
                    .drain()
                    .filter_map(|message| match message {
                        RecvAncillaryMessage::ScmRights(fds) => Some(fds),
                        _ => None,
                    })
                    .flatten()
                    .collect();
                assert_eq!(received.len(), 1, "one socket passed");
                std::thread::sleep(LINGER);
                drop(received);
            });
            let socket = udp_bound(port);
            let fds = [socket.as_fd()];
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
            rustix::net::sendmsg(
                &parent_end,
                &[IoSlice::new(b"s")],
                &mut control,
                SendFlags::empty(),
            )
            .expect("sendmsg");
            drop(socket);
            finish_parent(child)
        }
        "reuseport" => {
            let socket = Socket::new(Kind::Udp, V4).expect("socket");
            socket
                .set_option(libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)
                .expect("SO_REUSEPORT");
            socket.bind(port).expect("bind");
            println!("ready");
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            std::process::exit(0)
        }
        _ => panic!("unknown helper mode {mode}"),
    }
}

fn udp_bound(port: u16) -> Socket {
    let socket = Socket::new(Kind::Udp, V4).expect("socket");
    socket.bind(port).expect("bind");
    socket
}

/// Forks; the child runs `child` and leaves without running anything else of this process.
fn fork_or_die(child: impl FnOnce()) -> libc::pid_t {
    // SAFETY: the helper is single-threaded (it runs before the harness starts threads), so the
    // child may run arbitrary code; it leaves through _exit.
    match unsafe { libc::fork() } {
        -1 => panic!("fork: {}", std::io::Error::last_os_error()),
        0 => {
            child();
            // SAFETY: ends the child without unwinding into the parent's code.
            unsafe { libc::_exit(0) }
        }
        pid => pid,
    }
}

fn finish_parent(child: libc::pid_t) -> ! {
    println!("{} {child}", std::process::id());
    std::io::stdout().flush().expect("stdout");
    let mut status = 0;
    // SAFETY: child is our own child; status is a valid out-pointer.
    unsafe { libc::waitpid(child, &mut status, 0) };
    std::process::exit(if status == 0 { 0 } else { 1 })
}

/// Hands `socket` to a new process (this binary as a `close` helper), closes this process's copy,
/// then has that process close the last one: the release runs in a process that never claimed
/// the port. Returns the closer's pid once it has closed.
pub fn closed_by_another_process(
    socket: Socket,
) -> Result<u32, Box<dyn std::error::Error + Send + Sync>> {
    let fd = socket.as_fd().as_raw_fd();
    let mut command = Command::new(std::env::current_exe()?);
    command
        .env(SHARE_ENV, "close")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    // SAFETY: between fork and exec only dup2 and fcntl run, on descriptors this process owns.
    unsafe {
        command.pre_exec(move || {
            // dup2 onto itself would keep close-on-exec: clear it instead.
            let handed = if fd == HANDED_FD {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, HANDED_FD)
            };
            if handed < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let mut closer = Guarded::spawn(&mut command)?;
    socket.close();
    closer.stdin.take().expect("piped").write_all(b"close\n")?;
    let mut said = String::new();
    BufReader::new(closer.stdout.take().expect("piped")).read_line(&mut said)?;
    check(said.trim() == "closed", || {
        format!("the closer said {said:?}")
    })?;
    let pid = closer.id();
    closer.wait()?;
    Ok(pid)
}

/// Runs a fork/pass helper on `port` and returns (parent, child) pids.
fn run_helper(mode: &str, port: u16) -> Result<(u32, u32), String> {
    let output = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .env(SHARE_ENV, format!("{mode}:{port}"))
        .output()
        .map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let pids: Vec<u32> = stdout
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect();
    match (output.status.success(), &pids[..]) {
        (true, &[parent, child]) => Ok((parent, child)),
        _ => Err(format!(
            "{mode} helper failed ({}): {stdout} {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )),
    }
}

/// Claimed by a parent, inherited across fork, closed last by the child: the one free comes when
/// the child closes, and names the parent.
pub fn inherited_socket_closed_by_child() -> Outcome {
    shared_socket_names_claimer("fork")
}

/// Claimed by one process, passed over a Unix socket (SCM_RIGHTS) to another that closes it
/// last: the free names the process that claimed.
pub fn passed_socket_closed_by_receiver() -> Outcome {
    shared_socket_names_claimer("pass")
}

fn shared_socket_names_claimer(mode: &str) -> Outcome {
    let port = free_port();
    let tracer = Tracer::start(&["--port", &port.to_string()])?;
    let (parent, child) = run_helper(mode, port)?;
    let trace = tracer.stop()?;
    check(parent != child, || "the helper did not fork".to_owned())?;
    // Nothing names the closing child: the parent's close of its copy frees nothing, the
    // child's last close frees the port in the parent's name.
    only(
        &trace.on_port(port),
        &[
            want("claim", port, parent, "udp", "ipv4").with("how", "bind"),
            want("free", port, parent, "udp", "ipv4")
                .with("how", "bind")
                .with("tid", parent)
                .with("claimer_seen", Value::Null),
        ],
    )
}

/// A thread other than the main one claims, and this scenario's own thread closes after that
/// thread has ended: `tid` is the claiming thread's id on both events, `pid` the process's.
pub fn thread_claim_names_its_tid() -> Outcome {
    let me = std::process::id();
    // SAFETY: gettid has no preconditions.
    let closer = unsafe { libc::gettid() } as u32;
    let port = free_port();
    let tracer = Tracer::start(&["--port", &port.to_string()])?;
    let (tid, socket) = std::thread::spawn(move || -> std::io::Result<(u32, Socket)> {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        let socket = Socket::new(Kind::Udp, V4)?;
        socket.bind(port)?;
        Ok((tid, socket))
    })
    .join()
    .map_err(|_| "the claiming thread panicked")??;
    socket.close();
    let trace = tracer.stop()?;
    check(tid != me && tid != closer, || {
        format!("the claiming thread {tid} is not apart from the process {me} and closer {closer}")
    })?;
    only(
        &trace.on_port(port),
        &[
            want("claim", port, me, "udp", "ipv4").with("tid", tid),
            want("free", port, me, "udp", "ipv4")
                .with("tid", tid)
                .with("claimer_seen", Value::Null),
        ],
    )
}

/// Two sockets in one SO_REUSEPORT group, from two processes: two claims, no failure, and each
/// close frees with its own claimer, the helper first, then this process.
pub fn reuseport_group_frees_per_socket() -> Outcome {
    let me = std::process::id();
    let port = free_port();
    let tracer = Tracer::start(&["--port", &port.to_string()])?;
    let mut helper = Guarded::spawn(
        Command::new(std::env::current_exe()?)
            .env(SHARE_ENV, format!("reuseport:{port}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    )?;
    let mut ready = String::new();
    BufReader::new(helper.stdout.take().expect("piped")).read_line(&mut ready)?;
    check(ready.trim() == "ready", || format!("helper said {ready:?}"))?;
    let helper_pid = helper.id();
    let mine = Socket::new(Kind::Udp, V4)?;
    mine.set_option(libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    mine.bind(port)?;
    drop(helper.stdin.take());
    helper.wait()?;
    std::thread::sleep(Duration::from_millis(50));
    mine.close();
    let trace = tracer.stop()?;
    // No failure: the second bind joins the group.
    only(
        &trace.on_port(port),
        &[
            want("claim", port, helper_pid, "udp", "ipv4").with("how", "bind"),
            want("claim", port, me, "udp", "ipv4").with("how", "bind"),
            want("free", port, helper_pid, "udp", "ipv4").with("how", "bind"),
            want("free", port, me, "udp", "ipv4").with("how", "bind"),
        ],
    )
}

/// A dual-stack listener on `[::]` (IPV6_V6ONLY off) accepting an IPv4 client: the claim is
/// tcp/ipv6 on `::`, the accepted connection is an IPv6 socket whose addresses are IPv4-mapped,
/// and both frees name this process.
pub fn dual_stack_listener_accepts_ipv4() -> Outcome {
    let me = std::process::id();
    let port = free_port();
    let tracer = Tracer::start(&["--port", &port.to_string()])?;
    let listener = Socket::new(Kind::Tcp, V6)?;
    listener.set_option(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)?;
    listener.bind_any_address(port)?;
    listener.listen()?;
    let client = Socket::new(Kind::Tcp, V4)?;
    client.connect(port)?;
    let client_port = client.local_port()?;
    let accepted = listener.accept()?;
    // The accepted end closes first (it goes to TIME_WAIT once the client's FIN comes with the
    // client's close), and the listener only after that has settled.
    drop(accepted);
    drop(client);
    std::thread::sleep(Duration::from_millis(50));
    drop(listener);
    let trace = tracer.stop()?;
    // Both sockets on the port are IPv6 ones, whatever the client's family: `only` checks the
    // family of every event.
    only(
        &trace.on_port(port),
        &[
            want("claim", port, me, "tcp", "ipv6")
                .with("how", "bind")
                .with("local_addr", "::"),
            want("listen", port, me, "tcp", "ipv6"),
            want("claim", port, me, "tcp", "ipv6")
                .with("how", "accept")
                .with("local_addr", "::ffff:127.0.0.1")
                .with("remote_port", client_port),
            want("free", port, me, "tcp", "ipv6").with("how", "accept"),
            want("free", port, me, "tcp", "ipv6").with("how", "bind"),
        ],
    )
}
