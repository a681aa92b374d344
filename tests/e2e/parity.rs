//! Places where the backends used to disagree (issue 9): each scenario asserts the same events
//! on every backend.

use crate::{
    Outcome,
    expect::{exactly, in_order, want},
    tracer::Tracer,
    workload::{Kind, Socket, V4, free_port},
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
    let events = trace.on_port(port);
    exactly(&events, &want("listen", port, me, "tcp", "ipv4"), 1)?;
    in_order(
        &events,
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
    crate::expect::check(
        refused
            .as_ref()
            .is_err_and(|err| err.raw_os_error() == Some(EADDRINUSE)),
        || format!("the second listen() should fail with EADDRINUSE, got {refused:?}"),
    )?;
    let events = trace.on_port(port);
    exactly(&events, &want("listen", port, me, "tcp", "ipv4"), 1)?;
    exactly(
        &events,
        &want("fail", port, me, "tcp", "ipv4")
            .with("how", "bind")
            .with("errno", "EADDRINUSE"),
        1,
    )
}
