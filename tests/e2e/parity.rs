//! Places where the backends used to disagree: each scenario asserts the same events
//! on every backend.

use serde_json::Value;

use crate::{
    Outcome, Skip,
    expect::{check, exactly, only, want},
    tracer::{Trace, Tracer},
    workload::{Kind, Socket, V4, free_port, tcp_listener},
};

const EADDRINUSE: i32 = 98;

/// listen() on a socket that is already listening only changes its backlog: one `listen`.
pub fn listen_twice_is_one_listen() -> Outcome {
    let me = std::process::id();
    let port = free_port();
    let tracer = Tracer::start(&["--port", &port.to_string()])?;
    let socket = Socket::new(Kind::Tcp, V4)?;
    socket.bind(port)?;
    socket.listen()?;
    socket.listen()?;
    socket.close();
    let trace = tracer.stop()?;
    only(
        &trace.on_port(port),
        &[
            want("claim", port, me, "tcp", "ipv4").with("how", "bind"),
            want("listen", port, me, "tcp", "ipv4"),
            want("free", port, me, "tcp", "ipv4").with("how", "bind"),
        ],
    )
}

/// Two SO_REUSEADDR sockets may bind one port, but only one may listen on it: the second
/// listen() fails with EADDRINUSE, and that is a failed claim of the port.
pub fn listen_without_its_port_fails() -> Outcome {
    let me = std::process::id();
    let port = free_port();
    let tracer = Tracer::start(&["--port", &port.to_string()])?;
    let first = Socket::new(Kind::Tcp, V4)?;
    let second = Socket::new(Kind::Tcp, V4)?;
    for socket in [&first, &second] {
        socket.reuse_address()?;
        socket.bind(port)?;
    }
    first.listen()?;
    let refused = second.listen();
    second.close();
    first.close();
    let trace = tracer.stop()?;
    check(
        refused
            .as_ref()
            .is_err_and(|err| err.raw_os_error() == Some(EADDRINUSE)),
        || format!("the second listen() should fail with EADDRINUSE, got {refused:?}"),
    )?;
    only(
        &trace.on_port(port),
        &[
            want("claim", port, me, "tcp", "ipv4").with("how", "bind"),
            want("claim", port, me, "tcp", "ipv4").with("how", "bind"),
            want("listen", port, me, "tcp", "ipv4"),
            want("fail", port, me, "tcp", "ipv4")
                .with("how", "bind")
                .with("errno", "EADDRINUSE"),
            want("free", port, me, "tcp", "ipv4").with("how", "bind"),
            want("free", port, me, "tcp", "ipv4").with("how", "bind"),
        ],
    )
}

const ECONNREFUSED: i32 = 111;
const EDESTADDRREQ: i32 = 89;

/// The events one process made on one local port (another scenario's thread may share the pid).
fn mine(trace: &Trace, port: u16) -> Vec<&Value> {
    trace.of_process(port, std::process::id())
}

/// A connect refused by a closed port: the kernel gave the socket an ephemeral port and took it
/// back before connect() returned. One claim (by connect, naming the peer) and one free.
pub fn refused_connect_claims_and_frees() -> Outcome {
    let me = std::process::id();
    let target = free_port();
    let tracer = Tracer::start(&["--pid", &me.to_string(), "--proto", "tcp", "-4"])?;
    let socket = Socket::new(Kind::Tcp, V4)?;
    let refused = socket.connect(target);
    socket.close();
    let trace = tracer.stop()?;
    is_errno(&refused, ECONNREFUSED, "connect() to a closed port")?;
    let port = claimed_port(&trace, target)?;
    claimed_and_freed_once(&trace, port, "tcp", "connect", Some(target))
}

/// bind(ip, 0) and then a refused connect: the port bind chose goes back when the connect
/// fails (no explicit port locks it), and closing the socket later frees nothing more.
pub fn bound_socket_refused_frees_once() -> Outcome {
    let me = std::process::id();
    let target = free_port();
    let tracer = Tracer::start(&["--pid", &me.to_string(), "--proto", "tcp", "-4"])?;
    let socket = Socket::new(Kind::Tcp, V4)?;
    socket.bind(0)?;
    let port = socket.local_port()?;
    let refused = socket.connect(target);
    socket.close();
    let trace = tracer.stop()?;
    is_errno(&refused, ECONNREFUSED, "connect() to a closed port")?;
    claimed_and_freed_once(&trace, port, "tcp", "bind-any", None)
}

/// connect(AF_UNSPEC) dissolves a connection and gives back the port connect chose; closing
/// the socket afterwards frees nothing more. TCP and UDP.
pub fn disconnect_frees_once() -> Outcome {
    let me = std::process::id();
    let listener = tcp_listener(V4, 0)?;
    let target = free_port();
    let tracer = Tracer::start(&["--pid", &me.to_string(), "-4"])?;
    let tcp = Socket::new(Kind::Tcp, V4)?;
    tcp.connect(listener.local_port()?)?;
    let tcp_port = tcp.local_port()?;
    tcp.disconnect()?;
    let udp = Socket::new(Kind::Udp, V4)?;
    udp.connect(target)?;
    let udp_port = udp.local_port()?;
    udp.disconnect()?;
    tcp.close();
    udp.close();
    listener.close();
    let trace = tracer.stop()?;
    claimed_and_freed_once(&trace, tcp_port, "tcp", "connect", None)?;
    claimed_and_freed_once(&trace, udp_port, "udp", "autobind", None)
}

/// A listener closed with connections still waiting in its accept queue: those connections
/// never held a port of their own, so the listener's free is the only one on its port. Both
/// for a listener bound explicitly (the port outlives the CLOSE transition) and one that listen()
/// autobound (the port goes back at once).
pub fn closing_listener_with_queued_connections_frees_once() -> Outcome {
    let me = std::process::id();
    let port = free_port();
    let tracer = Tracer::start(&["--pid", &me.to_string(), "--proto", "tcp", "-4"])?;
    let bound = tcp_listener(V4, port)?;
    let autobound = Socket::new(Kind::Tcp, V4)?;
    autobound.listen()?;
    let autobound_port = autobound.local_port()?;
    let mut waiting = Vec::new();
    for listener_port in [port, port, autobound_port, autobound_port] {
        let client = Socket::new(Kind::Tcp, V4)?;
        client.connect(listener_port)?;
        waiting.push(client);
    }
    bound.close();
    autobound.close();
    drop(waiting);
    let trace = tracer.stop()?;
    for (port, how) in [(port, "bind"), (autobound_port, "autobind")] {
        // The queued connections share the port and hold none of their own: nothing of theirs.
        only(
            &mine(&trace, port),
            &[
                want("claim", port, me, "tcp", "ipv4").with("how", how),
                want("listen", port, me, "tcp", "ipv4"),
                want("free", port, me, "tcp", "ipv4").with("how", how),
            ],
        )?;
    }
    Ok(())
}

/// sendto(MSG_FASTOPEN) on an unconnected TCP socket connects it (TCP Fast Open): a claim by
/// connect, made by this process, and its free.
pub fn fast_open_send_claims() -> Outcome {
    let me = std::process::id();
    let listener = tcp_listener(V4, 0)?;
    let target = listener.local_port()?;
    let tracer = Tracer::start(&["--pid", &me.to_string(), "--proto", "tcp", "-4"])?;
    let client = Socket::new(Kind::Tcp, V4)?;
    client.send_to_with(target, libc::MSG_FASTOPEN)?;
    let port = client.local_port()?;
    // The server closes first, so the client's close ends the connection without a TIME_WAIT
    // of its own.
    listener.accept()?.close();
    std::thread::sleep(std::time::Duration::from_millis(50));
    client.close();
    listener.close();
    let trace = tracer.stop()?;
    claimed_and_freed_once(&trace, port, "tcp", "connect", Some(target))
}

/// write() on an unconnected UDP socket: the kernel autobinds a port, then the call fails with
/// EDESTADDRREQ, and the port stays held until close. fentry and kprobe see the autobind
/// itself. The tracepoint backend follows no write() (it is every program's hottest call), so
/// it sees only the release, as a free whose claim it did not see: the limit
/// portwatch/docs/backends.md states.
pub fn udp_write_autobind() -> Outcome {
    let me = std::process::id();
    let tracer = Tracer::start(&["--pid", &me.to_string(), "--proto", "udp", "-4"])?;
    let socket = Socket::new(Kind::Udp, V4)?;
    let written = socket.write();
    let port = socket.local_port()?;
    socket.close();
    let trace = tracer.stop()?;
    is_errno(
        &written,
        EDESTADDRREQ,
        "write() on an unconnected UDP socket",
    )?;
    check(port != 0, || "the failed write() left no port bound".into())?;
    let events = mine(&trace, port);
    if trace.backend == "tracepoint" {
        only(
            &events,
            &[want("free", port, me, "udp", "ipv4").with("claimer_seen", false)],
        )
    } else {
        only(
            &events,
            &[
                want("claim", port, me, "udp", "ipv4").with("how", "autobind"),
                want("free", port, me, "udp", "ipv4").with("how", "autobind"),
            ],
        )
    }
}

/// This process claimed `port` (`how`, naming `peer` when given) and freed it, once each.
fn claimed_and_freed_once(
    trace: &Trace,
    port: u16,
    proto: &str,
    how: &str,
    peer: Option<u16>,
) -> Outcome {
    let me = std::process::id();
    let claim = want("claim", port, me, proto, "ipv4").with("how", how);
    let claim = match peer {
        Some(peer) => claim.with("remote_port", peer),
        None => claim,
    };
    only(
        &mine(trace, port),
        &[
            claim,
            want("free", port, me, proto, "ipv4").with("how", how),
        ],
    )
}

/// MPTCP: a listener and a client, each bound to its own port, one connection accepted, then
/// closed. What every backend reports: both binds as claims by this process, the client's free
/// and the listener's free by this process. Beyond that they differ (portwatch/docs/backends.md's table
/// says how), because the calls act on the MPTCP socket and the TCP subflows behind it are
/// sockets the kernel makes.
pub fn mptcp_binds_are_claims() -> Outcome {
    let me = std::process::id();
    let (server_port, client_port) = (free_port(), free_port());
    let tracer = Tracer::start(&["--port", &format!("{server_port},{client_port}")])?;
    let listener = match Socket::new(Kind::Mptcp, V4) {
        Ok(listener) => listener,
        // A kernel built without MPTCP (Debian's 5.10 cloud kernel): nothing to trace.
        Err(err) if err.raw_os_error() == Some(libc::EPROTONOSUPPORT) => {
            return Err(Skip::because(format!(
                "this kernel has no MPTCP (socket(IPPROTO_MPTCP): {err})"
            )));
        }
        Err(err) => return Err(format!("an MPTCP socket (net.mptcp.enabled=1?): {err}").into()),
    };
    listener.bind(server_port)?;
    listener.listen()?;
    let client = Socket::new(Kind::Mptcp, V4)?;
    client.bind(client_port)?;
    client.connect(server_port)?;
    let accepted = listener.accept()?;
    // The server end closes first: the client's close then leaves no TIME_WAIT of its own.
    accepted.close();
    std::thread::sleep(std::time::Duration::from_millis(100));
    client.close();
    listener.close();
    let trace = tracer.stop()?;
    for port in [server_port, client_port] {
        // Only the sockets this process made are its own: the subflows' events (accepts,
        // autobinds, frees by the kernel's own sockets) differ by backend and are counted out.
        let events = mine(&trace, port);
        for event in ["claim", "free"] {
            exactly(
                &events,
                &want(event, port, me, "tcp", "ipv4").with("how", "bind"),
                1,
            )?;
        }
    }
    Ok(())
}

/// The local port of this process's one claim that names `remote_port` as its peer.
fn claimed_port(trace: &Trace, remote_port: u16) -> Result<u16, String> {
    let claims: Vec<&Value> = trace
        .events
        .iter()
        .filter(|event| {
            event["event"] == "claim"
                && event["pid"] == std::process::id()
                && event["remote_port"] == remote_port
        })
        .collect();
    match claims.as_slice() {
        [claim] => Ok(claim["local_port"].as_u64().unwrap_or(0) as u16),
        _ => {
            let everything: Vec<String> = trace.events.iter().map(Value::to_string).collect();
            Err(format!(
                "expected one claim with remote_port {remote_port}, found {}; the whole trace:\n    {}",
                claims.len(),
                everything.join("\n    ")
            ))
        }
    }
}

fn is_errno(result: &std::io::Result<()>, errno: i32, what: &str) -> Outcome {
    check(
        result
            .as_ref()
            .is_err_and(|err| err.raw_os_error() == Some(errno)),
        || format!("{what} should fail with errno {errno}, got {result:?}"),
    )
}
