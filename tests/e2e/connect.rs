//! TCP connect without bind: the kernel picks an ephemeral port.

use crate::{
    expect::{in_order, want},
    tracer::Tracer,
    workload::{Kind, Socket, V4, V6},
};

fn connect_claims_ephemeral_port(family: std::net::IpAddr, name: &str) -> Result<(), String> {
    let me = std::process::id();
    let listener = Socket::new(Kind::Tcp, family).map_err(|e| e.to_string())?;
    listener.bind(0).map_err(|e| e.to_string())?;
    listener.listen().map_err(|e| e.to_string())?;
    let server_port = listener.local_port().map_err(|e| e.to_string())?;
    let tracer = Tracer::start(&["--pid", &me.to_string(), "--events", "claim,free"])?;
    let client = Socket::new(Kind::Tcp, family).map_err(|e| e.to_string())?;
    client.connect(server_port).map_err(|e| e.to_string())?;
    let port = client.local_port().map_err(|e| e.to_string())?;
    let accepted = listener.accept().map_err(|e| e.to_string())?;
    // The client closes first: its port passes to a TIME_WAIT socket.
    client.close();
    std::thread::sleep(std::time::Duration::from_millis(100));
    accepted.close();
    let trace = tracer.stop();
    in_order(
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

pub fn tcp_connect_ipv4() -> Result<(), String> {
    connect_claims_ephemeral_port(V4, "ipv4")
}

pub fn tcp_connect_ipv6() -> Result<(), String> {
    connect_claims_ephemeral_port(V6, "ipv6")
}
