//! How ports end: process death, TIME_WAIT, and a watched port that must see nothing else.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    Outcome,
    expect::{check, only, want},
    tracer::{Guarded, Trace, Tracer, netns_inode, own_netns},
    workload::{Kind, Socket, V4, V6, free_port, tcp_connection, tcp_listener},
};

/// Env var that turns this test binary into a port holder (`<tcp>,<udp>[,fork]`).
pub const HOLDER_ENV: &str = "PORTWATCH_E2E_HOLD";

/// The holder: a TCP listener on IPv4 and a UDP socket on IPv6, then sleep until killed. With
/// `fork`, a forked child keeps copies of both sockets until it is killed itself or its stdin
/// closes, and `ready` is followed by the child's pid.
pub fn hold(spec: &str) -> ! {
    let mut parts = spec.split(',');
    let mut port = || {
        parts
            .next()
            .and_then(|port| port.parse().ok())
            .expect("tcp,udp ports")
    };
    let _listener = tcp_listener(V4, port()).expect("listen tcp");
    let datagram = Socket::new(Kind::Udp, V6).expect("socket");
    datagram.bind(port()).expect("bind udp");
    if spec.ends_with(",fork") {
        // SAFETY: the holder is single-threaded (it runs before the harness starts threads);
        // the child only reads stdin and leaves through _exit.
        match unsafe { libc::fork() } {
            -1 => panic!("fork: {}", std::io::Error::last_os_error()),
            0 => {
                let _ = std::io::stdin().read_to_end(&mut Vec::new());
                // SAFETY: ends the child without running the parent's exit handlers.
                unsafe { libc::_exit(0) }
            }
            child => println!("ready {child}"),
        }
    } else {
        println!("ready");
    }
    loop {
        std::thread::park();
    }
}

/// A process killed with SIGKILL while holding ports its forked child shares: no syscall
/// releases them, and the release runs when the child is killed too, in the child's exit. Both
/// frees must appear once and name the killed claimer, not the child that ran the release.
pub fn sigkill_releases_held_ports() -> Outcome {
    let (tcp_port, udp_port) = (free_port(), free_port());
    let ports = format!("{tcp_port},{udp_port}");
    let tracer = Tracer::start(&["--port", &ports])?;
    let mut holder = Guarded::spawn(
        Command::new(std::env::current_exe()?)
            .env(HOLDER_ENV, format!("{ports},fork"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    )?;
    let mut ready = String::new();
    BufReader::new(holder.stdout.take().expect("piped")).read_line(&mut ready)?;
    let child: i32 = match ready.trim().strip_prefix("ready ").map(str::parse) {
        Some(Ok(child)) => child,
        _ => return Err(format!("holder said {ready:?}").into()),
    };
    let pid = holder.id();
    holder.kill()?;
    holder.wait()?;
    // SAFETY: kill takes a pid and a valid signal; the child, reparented, still runs (its stdin,
    // our pipe, is open), so the pid is still the child's.
    unsafe { libc::kill(child, libc::SIGKILL) };
    gone(child)?;
    let trace = tracer.stop()?;
    check(child as u32 != pid, || "the holder did not fork".to_owned())?;
    only(
        &trace.on_port(tcp_port),
        &[
            want("claim", tcp_port, pid, "tcp", "ipv4").with("how", "bind"),
            want("listen", tcp_port, pid, "tcp", "ipv4"),
            want("free", tcp_port, pid, "tcp", "ipv4").with("how", "bind"),
        ],
    )?;
    only(
        &trace.on_port(udp_port),
        &[
            want("claim", udp_port, pid, "udp", "ipv6").with("how", "bind"),
            want("free", udp_port, pid, "udp", "ipv6").with("how", "bind"),
        ],
    )
}

/// Waits (up to 10 s) until process `pid`, not a child of ours, has exited: its /proc entry is
/// gone or a zombie. Its files, and so its sockets, are closed by then.
fn gone(pid: i32) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return Ok(()),
            Ok(stat)
                if stat
                    .rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('Z')) =>
            {
                return Ok(());
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    Err(format!("process {pid} still runs 10 s after SIGKILL").into())
}

/// Busy traffic on other ports, one bind on the watched port: only that port's events arrive.
pub fn single_watched_port_sees_nothing_else() -> Outcome {
    let me = std::process::id();
    let port = free_port();
    let tracer = Tracer::start(&["--port", &port.to_string()])?;
    let listener = tcp_listener(V4, 0)?;
    let server_port = listener.local_port()?;
    for _ in 0..20 {
        let client = Socket::new(Kind::Tcp, V4)?;
        client.connect(server_port)?;
        listener.accept()?.close();
        let datagram = Socket::new(Kind::Udp, V6)?;
        datagram.send_to(server_port)?;
    }
    let watched = Socket::new(Kind::Udp, V4)?;
    watched.bind(port)?;
    watched.close();
    let trace = tracer.stop()?;
    check(
        trace.events.iter().all(|event| event["local_port"] == port),
        || format!("events on unwatched ports: {:?}", trace.events),
    )?;
    only(
        &trace.on_port(port),
        &[
            want("claim", port, me, "udp", "ipv4").with("how", "bind"),
            want("free", port, me, "udp", "ipv4").with("how", "bind"),
        ],
    )
}

/// The server closes first, so its accepted socket goes to TIME_WAIT; a new SYN on the same
/// four-tuple ends that TIME_WAIT at once. The end is a second free (`time_wait_end`) where the
/// backend can observe it; the tracepoint backend cannot, and must still mark the first free.
pub fn time_wait_and_its_end() -> Outcome {
    let me = std::process::id();
    let port = free_port();
    let tracer = Tracer::start(&["--port", &port.to_string()])?;
    let listener = Socket::new(Kind::Tcp, V4)?;
    listener.reuse_address()?;
    listener.bind(port)?;
    listener.listen()?;
    // The client's port comes from free_port, outside the ephemeral range: an ephemeral one
    // could be taken by another scenario's connect between the close and the bind below.
    let client_port = free_port();
    let client = Socket::new(Kind::Tcp, V4)?;
    client.reuse_address()?;
    client.bind(client_port)?;
    client.connect(port)?;
    let accepted = listener.accept()?;
    accepted.close();
    std::thread::sleep(std::time::Duration::from_millis(100));
    client.close();
    std::thread::sleep(std::time::Duration::from_millis(100));
    // Same four-tuple again: the SYN meets the server's TIME_WAIT socket and retires it.
    let again = Socket::new(Kind::Tcp, V4)?;
    again.reuse_address()?;
    again.bind(client_port)?;
    again.connect(port)?;
    let second = listener.accept()?;
    let trace = tracer.stop()?;
    drop((again, second, listener));
    let accepted = |port| {
        want("claim", port, me, "tcp", "ipv4")
            .with("how", "accept")
            .with("remote_port", client_port)
    };
    let mut wanted = vec![
        want("claim", port, me, "tcp", "ipv4").with("how", "bind"),
        want("listen", port, me, "tcp", "ipv4"),
        accepted(port),
        want("free", port, me, "tcp", "ipv4")
            .with("how", "accept")
            .with("time_wait", true),
    ];
    if time_wait_end_observable(&trace) {
        wanted.push(
            want("free", port, me, "tcp", "ipv4")
                .with("time_wait_end", true)
                .with("remote_port", client_port),
        );
    }
    // The second connection, on the same four-tuple, claims the port anew.
    wanted.push(accepted(port));
    only(&trace.on_port(port), &wanted)
}

/// Only the syscall-tracepoint backend is blind to the end of TIME_WAIT.
fn time_wait_end_observable(trace: &Trace) -> bool {
    trace.backend != "tracepoint"
}

/// TIME_WAIT left to run out: after its 60 seconds the port is really free, and the end must be
/// reported by every backend, the syscall-tracepoint one included (through the TIME_WAIT timer).
/// Runs beside the other scenarios, which use other ports, so the wait costs no extra time.
pub fn time_wait_runs_out() -> Outcome {
    let me = std::process::id();
    let port = free_port();
    let tracer = Tracer::start(&["--port", &port.to_string()])?;
    let listener = tcp_listener(V6, port)?;
    let (client, accepted, client_port) = tcp_connection(&listener)?;
    accepted.close();
    std::thread::sleep(std::time::Duration::from_millis(100));
    // The client's close sends the FIN that puts the accepted end into TIME_WAIT.
    client.close();
    std::thread::sleep(std::time::Duration::from_millis(100));
    listener.close();
    // TCP_TIMEWAIT_LEN is 60 s; the timer wheel adds up to a few seconds at that range.
    std::thread::sleep(std::time::Duration::from_secs(68));
    let trace = tracer.stop()?;
    only(
        &trace.on_port(port),
        &[
            want("claim", port, me, "tcp", "ipv6").with("how", "bind"),
            want("listen", port, me, "tcp", "ipv6"),
            want("claim", port, me, "tcp", "ipv6")
                .with("how", "accept")
                .with("remote_port", client_port),
            want("free", port, me, "tcp", "ipv6")
                .with("how", "accept")
                .with("time_wait", true),
            want("free", port, me, "tcp", "ipv6").with("how", "bind"),
            want("free", port, me, "tcp", "ipv6")
                .with("how", "accept")
                .with("time_wait_end", true)
                .with("remote_port", client_port),
        ],
    )?;
    let end = trace
        .of_process(port, me)
        .into_iter()
        .find(|e| e["time_wait_end"] == true && e["remote_port"] == client_port);
    let held = end.and_then(|e| e["held_ns"].as_u64()).unwrap_or(0);
    check(held >= 60_000_000_000, || {
        format!("TIME_WAIT ended after {held} ns, not 60 s: {end:?}")
    })
}

/// Env var that makes this test binary close a connection in a fresh network namespace whose
/// TIME_WAIT table holds nothing.
pub const NO_TIME_WAIT_ENV: &str = "PORTWATCH_E2E_NO_TIME_WAIT";

/// In a new network namespace with `tcp_max_tw_buckets` = 0, connect over loopback and close the
/// client first: its FIN_WAIT2 -> CLOSE looks like the start of TIME_WAIT, but the kernel made
/// no TIME_WAIT socket. Prints its pid, its network namespace's inode and the client's port.
pub fn close_without_time_wait() -> ! {
    // SAFETY: unshare with a valid flag; this process is single-threaded here.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        panic!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
    }
    bring_loopback_up();
    std::fs::write("/proc/sys/net/ipv4/tcp_max_tw_buckets", "0").expect("set tcp_max_tw_buckets");
    let listener = tcp_listener(V4, 0).expect("listen");
    let (client, accepted, port) = tcp_connection(&listener).expect("connect");
    client.close();
    std::thread::sleep(std::time::Duration::from_millis(100));
    accepted.close();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let netns = netns_inode("/proc/self/ns/net").expect("own network namespace");
    println!("{} {netns} {port}", std::process::id());
    std::process::exit(0);
}

pub fn bring_loopback_up() {
    // SAFETY: a plain datagram socket for the interface ioctls, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    // SAFETY: ifreq is plain data; all-zero is a valid starting value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: request names an interface and has room for the flags the ioctls read and write.
    unsafe {
        libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut request);
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        libc::ioctl(fd, libc::SIOCSIFFLAGS, &mut request);
        libc::close(fd);
    }
}

/// Runs `work` on a new thread inside a new network namespace of its own: loopback up and the
/// ephemeral range `low..=high`. The namespace belongs to that thread alone and goes with it.
pub fn in_new_namespace<T: Send>(
    (low, high): (u16, u16),
    work: impl FnOnce() -> std::io::Result<T> + Send,
) -> std::io::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: unshare with a valid flag; a network namespace is per thread.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                bring_loopback_up();
                std::fs::write(
                    "/proc/sys/net/ipv4/ip_local_port_range",
                    format!("{low} {high}"),
                )?;
                work()
            })
            .join()
            .expect("namespace thread panicked")
    })
}

/// A close from FIN_WAIT2 whose TIME_WAIT socket the kernel refused to make (table full) frees
/// the port at once: the free must not claim TIME_WAIT. Also shows events from another network
/// namespace carry that namespace.
pub fn full_time_wait_table_frees_at_once() -> Outcome {
    // --debug-kernel: the kernel programs load with their aya-log calls live, and the tracepoint
    // backend, which infers TIME_WAIT from a timer, reports the close that armed none.
    let tracer = Tracer::start(&["--events", "claim,free", "--debug-kernel"])?;
    let output = Command::new(std::env::current_exe()?)
        .env(NO_TIME_WAIT_ENV, "1")
        .output()?;
    check(output.status.success(), || {
        format!(
            "namespace child failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let fields: Vec<u64> = stdout
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| format!("namespace child printed {stdout:?}"))?;
    let [pid, netns, port] = fields[..] else {
        return Err(format!("namespace child printed {stdout:?}").into());
    };
    let (pid, port) = (pid as u32, port as u16);
    let trace = tracer.stop()?;
    let events = trace.of_process(port, pid);
    only(
        &events,
        &[
            want("claim", port, pid, "tcp", "ipv4").with("how", "connect"),
            want("free", port, pid, "tcp", "ipv4")
                .with("how", "connect")
                .with("time_wait", false),
        ],
    )?;
    check(netns != own_netns(), || {
        "the child did not get a network namespace of its own".to_owned()
    })?;
    if trace.backend == "tracepoint" {
        check(
            trace.stderr.iter().any(|line| {
                line.starts_with("portwatch: kernel: debug: a socket closed")
                    && line.ends_with(&format!("on port {port} without a TIME_WAIT timer"))
            }),
            || format!("no kernel log line for port {port}: {:?}", trace.stderr),
        )?;
    }
    // Every event of the child names the child's namespace: a missing key fails too.
    check(
        events
            .iter()
            .all(|event| event["netns"].as_u64() == Some(netns)),
        || format!("events from namespace {netns} do not all carry it: {events:?}"),
    )
}
