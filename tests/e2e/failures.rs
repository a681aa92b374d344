//! Claims that fail, with the reason.

use crate::{
    Outcome,
    expect::{only, want},
    tracer::Tracer,
    workload::{Kind, Socket, V4, free_port},
};

/// A second bind to a held port fails with EADDRINUSE, for TCP and UDP alike.
pub fn bind_eaddrinuse() -> Outcome {
    let me = std::process::id();
    let port = free_port();
    let tracer = Tracer::start(&["--port", &port.to_string()])?;
    for kind in [Kind::Tcp, Kind::Udp] {
        let holder = Socket::new(kind, V4)?;
        holder.bind(port)?;
        if kind == Kind::Tcp {
            holder.listen()?;
        }
        let second = Socket::new(kind, V4)?;
        let error = second.bind(port).expect_err("a second bind must fail");
        crate::expect::check(error.raw_os_error() == Some(libc::EADDRINUSE), || {
            format!("second bind failed with {error}, not EADDRINUSE")
        })?;
    }
    let trace = tracer.stop()?;
    // Per protocol: the holder's claim (and listen), the refused bind, then the holder's free
    // as the loop's iteration ends (the refused socket never held the port).
    let refused = |proto| {
        want("fail", port, me, proto, "ipv4")
            .with("errno", "EADDRINUSE")
            .with("how", "bind")
            .with("local_addr", "127.0.0.1")
    };
    only(
        &trace.on_port(port),
        &[
            want("claim", port, me, "tcp", "ipv4").with("how", "bind"),
            want("listen", port, me, "tcp", "ipv4"),
            refused("tcp"),
            want("free", port, me, "tcp", "ipv4").with("how", "bind"),
            want("claim", port, me, "udp", "ipv4").with("how", "bind"),
            refused("udp"),
            want("free", port, me, "udp", "ipv4").with("how", "bind"),
        ],
    )
}
