//! TCP connect without bind: the kernel picks an ephemeral port.

use crate::{
    Outcome,
    expect::{only, want},
    tracer::Tracer,
    workload::{V4, V6, tcp_connection, tcp_listener},
};

fn connect_claims_ephemeral_port(family: std::net::IpAddr, name: &str) -> Outcome {
    let me = std::process::id();
    let listener = tcp_listener(family, 0)?;
    let server_port = listener.local_port()?;
    let tracer = Tracer::start(&["--pid", &me.to_string(), "--events", "claim,free"])?;
    let (client, accepted, port) = tcp_connection(&listener)?;
    // The client closes first: its port passes to a TIME_WAIT socket.
    client.close();
    std::thread::sleep(std::time::Duration::from_millis(100));
    accepted.close();
    let trace = tracer.stop()?;
    // The TIME_WAIT ends 60 s later, after the trace: two events only.
    only(
        &trace.on_port(port),
        &[
            want("claim", port, me, "tcp", name)
                .with("how", "connect")
                .with("remote_port", server_port),
            want("free", port, me, "tcp", name)
                .with("how", "connect")
                .with("time_wait", true),
        ],
    )
}

pub fn tcp_connect_ipv4() -> Outcome {
    connect_claims_ephemeral_port(V4, "ipv4")
}

pub fn tcp_connect_ipv6() -> Outcome {
    connect_claims_ephemeral_port(V6, "ipv6")
}
