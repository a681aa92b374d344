//! Sockets shared between processes and threads, and who a `free` names then: always the process
//! (and thread) that claimed the port, whoever closes the socket last. Each scenario's claimer and
//! closer are different tasks, so a free naming the closer would fail it.
//!
//! Scenarios that need a second process run this binary again in a helper mode (`SHARE_ENV`),
//! entered before the harness starts any thread, so the helper may fork.

use std::{
    io::{BufRead, BufReader, IoSlice, IoSliceMut, Write},
    mem::MaybeUninit,
    os::fd::AsFd,
    process::{Command, Stdio},
    time::Duration,
};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

use crate::{
    Outcome,
    expect::{check, exactly, in_order, want},
    tracer::{Guarded, Tracer},
    workload::{Kind, Socket, V4, V6, free_port},
};

/// `<mode>:<port>`: turns this binary into the helper of one scenario.
pub const SHARE_ENV: &str = "PORTWATCH_E2E_SHARE";

/// How long the last holder keeps the socket after the first closes its copy: long enough for
/// the order of closes to be certain.
const LINGER: Duration = Duration::from_millis(200);

/// The helpers. `fork`: bind, fork, the parent closes its copy at once, the child last.
/// `pass`: fork first, then bind and pass the socket to the child over a Unix socket
/// (SCM_RIGHTS); the parent closes its copy, the child last. Both print `<parent> <child>`.
/// `reuseport`: bind with SO_REUSEPORT, say `ready`, hold the port until stdin closes.
pub fn helper(spec: &str) -> ! {
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
    let events = trace.on_port(port);
    in_order(
        &events,
        &[
            want("claim", port, parent, "udp", "ipv4").with("how", "bind"),
            want("free", port, parent, "udp", "ipv4")
                .with("how", "bind")
                .with("tid", parent),
        ],
    )?;
    exactly(&events, &want("free", port, parent, "udp", "ipv4"), 1)?;
    check(events.iter().all(|event| event["pid"] != child), || {
        format!("an event names the closing child {child}: {events:?}")
    })
}

/// A thread other than the main one claims: `tid` is that thread's id, `pid` the process's.
pub fn thread_claim_names_its_tid() -> Outcome {
    let me = std::process::id();
    let port = free_port();
    let tracer = Tracer::start(&["--port", &port.to_string()])?;
    let tid = std::thread::spawn(move || -> std::io::Result<u32> {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        Socket::new(Kind::Udp, V4)?.bind(port)?;
        Ok(tid)
    })
    .join()
    .map_err(|_| "the claiming thread panicked")??;
    let trace = tracer.stop()?;
    check(tid != me, || "the thread has the process's id".to_owned())?;
    in_order(
        &trace.on_port(port),
        &[
            want("claim", port, me, "udp", "ipv4").with("tid", tid),
            want("free", port, me, "udp", "ipv4").with("tid", tid),
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
    let events = trace.on_port(port);
    in_order(
        &events,
        &[
            want("claim", port, helper_pid, "udp", "ipv4"),
            want("claim", port, me, "udp", "ipv4"),
            want("free", port, helper_pid, "udp", "ipv4"),
            want("free", port, me, "udp", "ipv4"),
        ],
    )?;
    check(events.iter().all(|event| event["event"] != "fail"), || {
        format!("a claim in the group failed: {events:?}")
    })
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
    drop((accepted, client, listener));
    let trace = tracer.stop()?;
    in_order(
        &trace.on_port(port),
        &[
            want("claim", port, me, "tcp", "ipv6")
                .with("how", "bind")
                .with("local_addr", "::"),
            want("claim", port, me, "tcp", "ipv6")
                .with("how", "accept")
                .with("local_addr", "::ffff:127.0.0.1")
                .with("remote_port", client_port),
            want("free", port, me, "tcp", "ipv6").with("how", "accept"),
        ],
    )?;
    exactly(
        &trace.on_port(port),
        &want("free", port, me, "tcp", "ipv6").with("how", "bind"),
        1,
    )?;
    // Both sockets on the port are IPv6 ones, whatever the client's family.
    check(
        trace
            .on_port(port)
            .iter()
            .all(|event| event["family"] == "ipv6"),
        || {
            format!(
                "an event on the dual-stack port says ipv4: {:?}",
                trace.on_port(port)
            )
        },
    )
}
