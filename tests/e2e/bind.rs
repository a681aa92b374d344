//! Explicit binds, bind to port 0, listen and accept.

use serde_json::Value;

use crate::{
    Outcome,
    expect::{check, only, want},
    sharing::closed_by_another_process,
    tracer::Tracer,
    workload::{Kind, Socket, V4, V6, free_port, tcp_connection, tcp_listener},
};

/// A TCP server on a known port: claim (bind), listen, the accepted child's claim, and the
/// frees of both, each exactly once, all with this process as the claimer.
pub fn tcp_listener_and_accepted_connection() -> Outcome {
    let me = std::process::id();
    let port = free_port();
    let tracer = Tracer::start(&["--port", &port.to_string()])?;
    let listener = tcp_listener(V4, port)?;
    let (client, accepted, client_port) = tcp_connection(&listener)?;
    // The client closes first and the accepted end waits for its FIN: a passive close, freed
    // at once (no TIME_WAIT on the watched port), before the listener closes.
    client.close();
    accepted.await_peer_close()?;
    accepted.close();
    std::thread::sleep(std::time::Duration::from_millis(50));
    listener.close();
    let trace = tracer.stop()?;
    only(
        &trace.on_port(port),
        &[
            want("claim", port, me, "tcp", "ipv4").with("how", "bind"),
            want("listen", port, me, "tcp", "ipv4"),
            want("claim", port, me, "tcp", "ipv4")
                .with("how", "accept")
                .with("remote_port", client_port),
            want("free", port, me, "tcp", "ipv4")
                .with("how", "accept")
                .with("time_wait", false),
            want("free", port, me, "tcp", "ipv4").with("how", "bind"),
        ],
    )?;
    // The client's own ephemeral port is not watched and must not show up.
    check(trace.on_port(client_port).is_empty(), || {
        format!("unwatched client port {client_port} was reported")
    })
}

/// bind() to port 0 over IPv6: the kernel picks the port; portwatch must report the picked one.
pub fn tcp_bind_any_ipv6() -> Outcome {
    let me = std::process::id();
    let tracer = Tracer::start(&["--pid", &me.to_string()])?;
    let socket = Socket::new(Kind::Tcp, V6)?;
    socket.bind(0)?;
    let port = socket.local_port()?;
    socket.close();
    let trace = tracer.stop()?;
    let events = trace.on_port(port);
    only(
        &events,
        &[
            want("claim", port, me, "tcp", "ipv6")
                .with("how", "bind-any")
                .with("local_addr", "::1"),
            want("free", port, me, "tcp", "ipv6").with("how", "bind-any"),
        ],
    )?;
    let held = events
        .iter()
        .find(|event| event["event"] == "free")
        .and_then(|e| e["held_ns"].as_u64());
    check(held.is_some_and(|ns| ns > 0), || {
        format!("free without held_ns: {events:?}")
    })
}

/// A process already listening when portwatch starts is reported as the current holder, and
/// stays the one named when another process, which got the socket later, closes it last.
pub fn holder_at_start_is_reported() -> Outcome {
    let me = std::process::id();
    let port = free_port();
    let listener = tcp_listener(V6, port)?;
    let tracer = Tracer::start(&["--port", &port.to_string()])?;
    let closer = closed_by_another_process(listener)?;
    let trace = tracer.stop()?;
    check(closer != me, || "the socket was closed here".to_owned())?;
    only(
        &trace.on_port(port),
        &[
            want("held", port, me, "tcp", "ipv6").with("state", "listen"),
            // The kernel saw no claim and the closer released the port, yet the free names this
            // process, from the start-up snapshot, and so counts its claimer as known.
            want("free", port, me, "tcp", "ipv6").with("claimer_seen", Value::Null),
        ],
    )
}

/// listen() on an unbound TCP socket picks a port itself: an autobind claim, then the listen.
pub fn tcp_listen_without_bind() -> Outcome {
    let me = std::process::id();
    let tracer = Tracer::start(&["--pid", &me.to_string()])?;
    let socket = Socket::new(Kind::Tcp, V4)?;
    socket.listen()?;
    let port = socket.local_port()?;
    socket.close();
    let trace = tracer.stop()?;
    only(
        &trace.on_port(port),
        &[
            want("claim", port, me, "tcp", "ipv4").with("how", "autobind"),
            want("listen", port, me, "tcp", "ipv4"),
            want("free", port, me, "tcp", "ipv4").with("how", "autobind"),
        ],
    )
}
