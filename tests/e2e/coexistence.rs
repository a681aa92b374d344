//! portwatch beside others: a second instance, and the traced processes themselves, which must
//! not notice it.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use crate::{
    Outcome,
    expect::{check, exactly, want},
    tracer::Tracer,
    workload::{Kind, Socket, V4, free_port},
};

/// Two instances at once, A on ports {a, shared} and B on UDP only of {shared, b}: each sees
/// exactly its own part of one workload, and stopping A leaves B working.
pub fn two_instances_with_overlapping_filters() -> Outcome {
    let me = std::process::id();
    let (a, shared, b) = (free_port(), free_port(), free_port());
    let first = Tracer::start(&["--port", &format!("{a},{shared}")])?;
    let second = Tracer::start(&["--port", &format!("{shared},{b}"), "--proto", "udp"])?;
    let round = |kinds: &[Kind]| -> std::io::Result<()> {
        for port in [a, shared, b] {
            for &kind in kinds {
                Socket::rebinding(kind, V4)?.bind(port)?;
            }
        }
        Ok(())
    };
    round(&[Kind::Udp, Kind::Tcp])?;
    let first = first.stop()?;
    round(&[Kind::Udp])?;
    let second = second.stop()?;

    for (port, proto, count) in [
        (a, "udp", 1),
        (a, "tcp", 1),
        (shared, "udp", 1),
        (shared, "tcp", 1),
    ] {
        for event in ["claim", "free"] {
            exactly(
                &first.on_port(port),
                &want(event, port, me, proto, "ipv4"),
                count,
            )?;
        }
    }
    check(first.on_port(b).is_empty(), || {
        format!("A saw B's port {b}")
    })?;
    // B: both rounds of UDP on its ports, no TCP, nothing of A's.
    for port in [shared, b] {
        for event in ["claim", "free"] {
            exactly(
                &second.on_port(port),
                &want(event, port, me, "udp", "ipv4"),
                2,
            )?;
        }
        check(
            second
                .on_port(port)
                .iter()
                .all(|event| event["proto"] == "udp"),
            || format!("B (--proto udp) saw TCP on {port}"),
        )?;
    }
    check(second.on_port(a).is_empty(), || {
        format!("B saw A's port {a}")
    })
}

/// One workload's observable results: what each call returned and what data came back.
fn workload(port: u16) -> Vec<String> {
    fn outcome<T, E: std::borrow::Borrow<std::io::Error>>(result: Result<T, E>) -> String {
        match result {
            Ok(_) => "ok".to_owned(),
            Err(err) => format!("{:?}", err.borrow().raw_os_error()),
        }
    }
    let local = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut results = Vec::new();
    let listener = TcpListener::bind(local);
    results.push(format!("listen {}", outcome(listener.as_ref())));
    results.push(format!("second bind {}", outcome(TcpListener::bind(local))));
    if let Ok(listener) = &listener {
        let exchange = (|| {
            let mut client = TcpStream::connect(local)?;
            let (mut server, _) = listener.accept()?;
            client.write_all(b"ping")?;
            let mut buffer = [0; 4];
            server.read_exact(&mut buffer)?;
            Ok::<_, std::io::Error>(buffer)
        })();
        results.push(format!(
            "tcp exchange {:?}",
            exchange.map_err(|e| e.raw_os_error())
        ));
    }
    let udp = UdpSocket::bind(local);
    results.push(format!("udp bind {}", outcome(udp.as_ref())));
    results.push(format!(
        "udp second bind {}",
        outcome(UdpSocket::bind(local))
    ));
    if let Ok(udp) = &udp {
        let echo = (|| {
            let sender = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
            sender.send_to(b"pong", local)?;
            udp.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut buffer = [0; 4];
            let (read, _) = udp.recv_from(&mut buffer)?;
            Ok::<_, std::io::Error>(buffer[..read].to_vec())
        })();
        results.push(format!("udp echo {:?}", echo.map_err(|e| e.raw_os_error())));
    }
    drop((listener, udp));
    // TEST-NET-1 is never a local address.
    results.push(format!(
        "bind foreign {}",
        outcome(TcpListener::bind((Ipv4Addr::new(192, 0, 2, 1), port)))
    ));
    // A port of its own that nothing ever listened on: the listener above may live on for a
    // moment in another scenario's child, forked before it exec'd.
    let closed = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    results.push(format!(
        "connect refused {}",
        outcome(TcpStream::connect(closed))
    ));
    results
}

/// The traced never notice: the same workload gives the same results (successes, errnos,
/// data) without portwatch and with one watching every port.
pub fn traced_processes_see_no_difference() -> Outcome {
    let without = workload(free_port());
    let tracer = Tracer::start(&["--events", "fail"])?;
    let with = workload(free_port());
    tracer.stop()?;
    check(with == without, || {
        format!("without portwatch: {without:?}\n   with portwatch: {with:?}")
    })?;
    check(
        without
            .iter()
            .any(|r| r.contains(&libc::EADDRINUSE.to_string()))
            && without
                .iter()
                .any(|r| r.contains(&libc::ECONNREFUSED.to_string())),
        || format!("the workload did not hit its failures: {without:?}"),
    )
}
