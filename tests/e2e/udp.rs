//! UDP: explicit bind, and the autobind of a send or connect on an unbound socket.

use crate::{
    Outcome,
    expect::{only, want},
    tracer::Tracer,
    workload::{Kind, Socket, V4, V6, free_port},
};

pub fn udp_bind_ipv6() -> Outcome {
    let me = std::process::id();
    let port = free_port();
    let tracer = Tracer::start(&["--port", &port.to_string(), "--proto", "udp"])?;
    let socket = Socket::new(Kind::Udp, V6)?;
    socket.bind(port)?;
    socket.close();
    let trace = tracer.stop()?;
    only(
        &trace.on_port(port),
        &[
            want("claim", port, me, "udp", "ipv6").with("how", "bind"),
            want("free", port, me, "udp", "ipv6").with("how", "bind"),
        ],
    )
}

/// sendto() without bind: the kernel autobinds an ephemeral port.
pub fn udp_send_autobind_ipv4() -> Outcome {
    let me = std::process::id();
    let target = free_port();
    let tracer = Tracer::start(&["--pid", &me.to_string(), "--proto", "udp"])?;
    let socket = Socket::new(Kind::Udp, V4)?;
    socket.send_to(target)?;
    // A second send must not claim again.
    socket.send_to(target)?;
    let port = socket.local_port()?;
    socket.close();
    let trace = tracer.stop()?;
    // One claim only: the second send finds the port bound.
    only(
        &trace.on_port(port),
        &[
            want("claim", port, me, "udp", "ipv4").with("how", "autobind"),
            want("free", port, me, "udp", "ipv4").with("how", "autobind"),
        ],
    )
}

/// connect() on an unbound UDP socket also autobinds. The syscall hooks see the claim when
/// connect returns, peer set; fentry and kprobe see it when the port is picked, before the peer
/// is, so only the free carries it there.
pub fn udp_connect_autobind_ipv6() -> Outcome {
    let me = std::process::id();
    let target = free_port();
    let tracer = Tracer::start(&["--pid", &me.to_string(), "-6", "--proto", "udp"])?;
    let socket = Socket::new(Kind::Udp, V6)?;
    socket.connect(target)?;
    let port = socket.local_port()?;
    socket.close();
    let trace = tracer.stop()?;
    let claim = want("claim", port, me, "udp", "ipv6").with("how", "autobind");
    let claim = if trace.backend == "tracepoint" {
        claim.with("remote_port", target)
    } else {
        claim
    };
    only(
        &trace.on_port(port),
        &[
            claim,
            want("free", port, me, "udp", "ipv6").with("remote_port", target),
        ],
    )
}
