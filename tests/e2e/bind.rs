//! Explicit binds, bind to port 0, listen and accept.

use crate::{
    Outcome,
    expect::{in_order, want},
    tracer::Tracer,
    workload::{Kind, Socket, V4, V6, free_port, tcp_connection, tcp_listener},
};

/// A TCP server on a known port: claim (bind), listen, the accepted child's claim, and the
/// frees of both, all with this process as the claimer.
pub fn tcp_listener_and_accepted_connection() -> Outcome {
    let me = std::process::id();
    let port = free_port();
    let tracer = Tracer::start(&["--port", &port.to_string()])?;
    let listener = tcp_listener(V4, port)?;
    let (client, accepted, client_port) = tcp_connection(&listener)?;
    client.close();
    accepted.close();
    listener.close();
    let trace = tracer.stop()?;
    let events = trace.on_port(port);
    in_order(
        &events,
        &[
            want("claim", port, me, "tcp", "ipv4").with("how", "bind"),
            want("listen", port, me, "tcp", "ipv4"),
            want("claim", port, me, "tcp", "ipv4")
                .with("how", "accept")
                .with("remote_port", client_port),
        ],
    )?;
    // The listener and the accepted child each give the port back exactly once.
    crate::expect::exactly(
        &events,
        &want("free", port, me, "tcp", "ipv4").with("how", "bind"),
        1,
    )?;
    crate::expect::exactly(
        &events,
        &want("free", port, me, "tcp", "ipv4").with("how", "accept"),
        1,
    )?;
    // The client's own ephemeral port is not watched and must not show up.
    crate::expect::check(trace.on_port(client_port).is_empty(), || {
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
    in_order(
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
    crate::expect::check(held.is_some_and(|ns| ns > 0), || {
        format!("free without held_ns: {events:?}")
    })
}

/// A process already listening when portwatch starts is reported as the current holder.
pub fn holder_at_start_is_reported() -> Outcome {
    let me = std::process::id();
    let port = free_port();
    let listener = tcp_listener(V6, port)?;
    let tracer = Tracer::start(&["--port", &port.to_string()])?;
    listener.close();
    let trace = tracer.stop()?;
    let events = trace.on_port(port);
    in_order(
        &events,
        &[
            want("held", port, me, "tcp", "ipv6").with("state", "listen"),
            // The claim was never seen, yet the free names this process: from the snapshot.
            want("free", port, me, "tcp", "ipv6"),
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
    in_order(
        &trace.on_port(port),
        &[
            want("claim", port, me, "tcp", "ipv4").with("how", "autobind"),
            want("listen", port, me, "tcp", "ipv4"),
            want("free", port, me, "tcp", "ipv4").with("how", "autobind"),
        ],
    )
}
