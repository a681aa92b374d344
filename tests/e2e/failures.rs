//! Claims that fail, with the reason.

use crate::{
    Outcome,
    expect::{exactly, in_order, want},
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
    let events = trace.on_port(port);
    for proto in ["tcp", "udp"] {
        in_order(
            &events,
            &[
                want("claim", port, me, proto, "ipv4").with("how", "bind"),
                want("fail", port, me, proto, "ipv4")
                    .with("errno", "EADDRINUSE")
                    .with("how", "bind")
                    .with("local_addr", "127.0.0.1"),
            ],
        )?;
        exactly(&events, &want("fail", port, me, proto, "ipv4"), 1)?;
    }
    Ok(())
}
