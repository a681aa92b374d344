//! The holder behind every EADDRINUSE: who held the port the failed bind wanted, in the cases
//! that confuse people.

use std::{
    io::{BufRead, BufReader},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use serde_json::Value;

use crate::{
    Outcome,
    expect::check,
    lifetimes::HOLDER_ENV,
    tracer::{Trace, Tracer},
    workload::{Kind, Socket, V4, V6, free_port, tcp_listener},
};

const ANY4: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
const ANY6: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

/// Binds a fresh socket that must fail with EADDRINUSE.
fn bind_must_fail(kind: Kind, family: IpAddr, addr: IpAddr, port: u16) -> Outcome {
    let socket = Socket::new(kind, family)?;
    let error = socket
        .bind_to(addr, port)
        .expect_err("the port is held: the bind must fail");
    check(error.raw_os_error() == Some(libc::EADDRINUSE), || {
        format!("bind {addr}:{port} failed with {error}, not EADDRINUSE")
    })
}

/// The `holder` of the one EADDRINUSE on `port`, checked against what the scenario set up.
fn check_holder(
    trace: &Trace,
    port: u16,
    proto: &str,
    pid: u32,
    state: &str,
    addr: &str,
) -> Outcome {
    let fails: Vec<&Value> = trace
        .on_port(port)
        .into_iter()
        .filter(|event| event["event"] == "fail" && event["proto"] == proto)
        .collect();
    check(fails.len() == 1, || {
        format!("{proto} port {port}: expected one fail, got {fails:?}")
    })?;
    let holder = &fails[0]["holder"];
    check(holder.is_object(), || {
        format!(
            "{proto} port {port}: the fail names no holder: {}",
            fails[0]
        )
    })?;
    check(
        holder["pid"] == pid && holder["state"] == state && holder["local_addr"] == addr,
        || {
            format!(
                "{proto} port {port}: expected holder pid {pid} state {state} at {addr}, got {holder}"
            )
        },
    )?;
    check(
        holder["since"].is_string() && holder["comm"].is_string(),
        || format!("holder without since/comm: {holder}"),
    )
}

/// Listener, dual stack, wildcard, TIME_WAIT, SO_REUSEPORT group, UDP, and holders that were
/// there before tracing began: each failed bind names the socket that blocked it.
pub fn eaddrinuse_names_its_holder() -> Outcome {
    let me = std::process::id();
    let ports: Vec<u16> = (0..8).map(|_| free_port()).collect();
    let [
        listen,
        dual,
        wildcard,
        time_wait,
        group,
        udp,
        early_tcp,
        early_udp,
    ] = ports[..]
    else {
        unreachable!("eight ports")
    };
    // Holders from before the trace: a child process listening on TCP and bound on UDP.
    let mut early = Command::new(std::env::current_exe()?)
        .env(HOLDER_ENV, format!("{early_tcp},{early_udp}"))
        .stdout(Stdio::piped())
        .spawn()?;
    let mut ready = String::new();
    BufReader::new(early.stdout.take().expect("piped")).read_line(&mut ready)?;
    let early_pid = early.id();
    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
    let tracer = Tracer::start(&["--port", &list.join(",")]);
    let outcome = tracer.map_err(Into::into).and_then(|tracer| {
        let caused = cause_conflicts(&ports);
        let trace = tracer.stop();
        caused?;
        check_holder(&trace, listen, "tcp", me, "listen", "127.0.0.1")?;
        check_holder(&trace, dual, "tcp", me, "listen", "::")?;
        check_holder(&trace, wildcard, "tcp", me, "listen", "0.0.0.0")?;
        check_holder(&trace, time_wait, "tcp", me, "time_wait", "127.0.0.1")?;
        check_holder(&trace, group, "tcp", me, "listen", "127.0.0.1")?;
        check_holder(&trace, udp, "udp", me, "unconnected", "127.0.0.1")?;
        check_holder(&trace, early_tcp, "tcp", early_pid, "listen", "127.0.0.1")?;
        check_holder(&trace, early_udp, "udp", early_pid, "unconnected", "::1")
    });
    early.kill()?;
    early.wait()?;
    outcome
}

fn cause_conflicts(ports: &[u16]) -> Outcome {
    let &[
        listen,
        dual,
        wildcard,
        time_wait,
        group,
        udp,
        early_tcp,
        early_udp,
    ] = ports
    else {
        unreachable!("eight ports")
    };
    let _listener = tcp_listener(V4, listen)?;
    bind_must_fail(Kind::Tcp, V4, V4, listen)?;

    let dual_stack = Socket::new(Kind::Tcp, V6)?;
    dual_stack.bind_to(ANY6, dual)?;
    dual_stack.listen()?;
    bind_must_fail(Kind::Tcp, V4, ANY4, dual)?;

    let any = Socket::new(Kind::Tcp, V4)?;
    any.bind_to(ANY4, wildcard)?;
    any.listen()?;
    bind_must_fail(Kind::Tcp, V4, V4, wildcard)?;

    // The client closes first: its explicitly bound port stays in TIME_WAIT.
    let server = tcp_listener(V4, 0)?;
    let client = Socket::new(Kind::Tcp, V4)?;
    client.bind(time_wait)?;
    client.connect(server.local_port()?)?;
    let accepted = server.accept()?;
    client.close();
    thread::sleep(Duration::from_millis(50));
    accepted.close();
    thread::sleep(Duration::from_millis(100));
    bind_must_fail(Kind::Tcp, V4, V4, time_wait)?;

    let members: Vec<Socket> = (0..2)
        .map(|_| -> std::io::Result<Socket> {
            let member = Socket::new(Kind::Tcp, V4)?;
            member.reuse_port()?;
            member.bind(group)?;
            member.listen()?;
            Ok(member)
        })
        .collect::<Result<_, _>>()?;
    bind_must_fail(Kind::Tcp, V4, V4, group)?;

    let datagram = Socket::new(Kind::Udp, V4)?;
    datagram.bind(udp)?;
    bind_must_fail(Kind::Udp, V4, V4, udp)?;

    bind_must_fail(Kind::Tcp, V4, V4, early_tcp)?;
    bind_must_fail(Kind::Udp, V6, V6, early_udp)?;
    drop((members, server));
    Ok(())
}
