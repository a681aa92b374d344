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
    workload::{Kind, Socket, V4, V6, free_port, tcp_connection, tcp_listener},
};

const ANY4: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
const ANY6: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

/// Binds a fresh socket that must fail with EADDRINUSE.
fn bind_must_fail(kind: Kind, family: IpAddr, addr: IpAddr, port: u16) -> Outcome {
    let socket = Socket::new(kind, family)?;
    let error = socket
        .bind_address(addr, port)
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

/// One port per case.
struct Ports {
    listen: u16,
    dual: u16,
    wildcard: u16,
    time_wait: u16,
    group: u16,
    udp: u16,
    early_tcp: u16,
    early_udp: u16,
}

impl Ports {
    fn pick() -> Self {
        Self {
            listen: free_port(),
            dual: free_port(),
            wildcard: free_port(),
            time_wait: free_port(),
            group: free_port(),
            udp: free_port(),
            early_tcp: free_port(),
            early_udp: free_port(),
        }
    }

    fn list(&self) -> String {
        [
            self.listen,
            self.dual,
            self.wildcard,
            self.time_wait,
            self.group,
            self.udp,
            self.early_tcp,
            self.early_udp,
        ]
        .map(|port| port.to_string())
        .join(",")
    }
}

/// Listener, dual stack, wildcard, TIME_WAIT, SO_REUSEPORT group, UDP, and holders that were
/// there before tracing began: each failed bind names the socket that blocked it.
pub fn eaddrinuse_names_its_holder() -> Outcome {
    let me = std::process::id();
    let ports = Ports::pick();
    // Holders from before the trace: a child process listening on TCP and bound on UDP.
    let mut early = Command::new(std::env::current_exe()?)
        .env(
            HOLDER_ENV,
            format!("{},{}", ports.early_tcp, ports.early_udp),
        )
        .stdout(Stdio::piped())
        .spawn()?;
    let mut ready = String::new();
    BufReader::new(early.stdout.take().expect("piped")).read_line(&mut ready)?;
    let early_pid = early.id();
    let tracer = Tracer::start(&["--port", &ports.list()]);
    let outcome = tracer.map_err(Into::into).and_then(|tracer| {
        let caused = cause_conflicts(&ports);
        let trace = tracer.stop()?;
        caused?;
        let p = &ports;
        check_holder(&trace, p.listen, "tcp", me, "listen", "127.0.0.1")?;
        check_holder(&trace, p.dual, "tcp", me, "listen", "::")?;
        check_holder(&trace, p.wildcard, "tcp", me, "listen", "0.0.0.0")?;
        check_holder(&trace, p.time_wait, "tcp", me, "time_wait", "127.0.0.1")?;
        check_holder(&trace, p.group, "tcp", me, "listen", "127.0.0.1")?;
        check_holder(&trace, p.udp, "udp", me, "unconnected", "127.0.0.1")?;
        check_holder(&trace, p.early_tcp, "tcp", early_pid, "listen", "127.0.0.1")?;
        check_holder(&trace, p.early_udp, "udp", early_pid, "unconnected", "::1")
    });
    early.kill()?;
    early.wait()?;
    outcome
}

fn cause_conflicts(ports: &Ports) -> Outcome {
    let &Ports {
        listen,
        dual,
        wildcard,
        time_wait,
        group,
        udp,
        early_tcp,
        early_udp,
    } = ports;
    let _listener = tcp_listener(V4, listen)?;
    bind_must_fail(Kind::Tcp, V4, V4, listen)?;

    let dual_stack = Socket::new(Kind::Tcp, V6)?;
    dual_stack.bind_address(ANY6, dual)?;
    dual_stack.listen()?;
    bind_must_fail(Kind::Tcp, V4, ANY4, dual)?;

    let any = Socket::new(Kind::Tcp, V4)?;
    any.bind_address(ANY4, wildcard)?;
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

/// A server port inside the ephemeral range, taken by a bind(0) that the kernel happened to
/// give it: the failure says so and how to reserve the port.
pub fn ephemeral_holder_comes_with_a_hint() -> Outcome {
    let me = std::process::id();
    let taker = Socket::new(Kind::Tcp, V4)?;
    let tracer = Tracer::start(&["--ephemeral", "--pid", &me.to_string()])?;
    taker.bind(0)?;
    let port = taker.local_port()?;
    bind_must_fail(Kind::Tcp, V4, V4, port)?;
    let trace = tracer.stop()?;
    let fail = trace
        .on_port(port)
        .into_iter()
        .find(|event| event["event"] == "fail")
        .ok_or_else(|| format!("no fail on {port}: {:?}", trace.events))?;
    check(
        fail["holder"]["how"] == "bind-any"
            && fail["hint"].as_str().is_some_and(|hint| {
                hint.contains("ip_local_reserved_ports") && hint.contains(&port.to_string())
            }),
        || format!("the failure carries no reservation hint: {fail}"),
    )
}

/// One port held at once by a listener, an accepted connection and a TIME_WAIT socket: a failed
/// bind names the listener; with the listener gone, the connection; the TIME_WAIT socket only
/// when nothing else is left (SO_REUSEADDR would let a bind past it).
pub fn listener_first_time_wait_last() -> Outcome {
    let me = std::process::id();
    let port = free_port();
    let tracer = Tracer::start(&["--port", &port.to_string()])?;
    let caused = (|| -> Outcome {
        let listener = tcp_listener(V4, port)?;
        let (peer, connection, _) = tcp_connection(&listener)?;
        // This connection's accepted end closes first: it is left in TIME_WAIT on the port.
        let (client, accepted, _) = tcp_connection(&listener)?;
        accepted.close();
        thread::sleep(Duration::from_millis(50));
        client.close();
        thread::sleep(Duration::from_millis(100));
        bind_must_fail(Kind::Tcp, V4, V4, port)?;
        listener.close();
        bind_must_fail(Kind::Tcp, V4, V4, port)?;
        // The peer closes first, so the connection's close is passive and frees the port at
        // once (an active one would linger in FIN_WAIT2, still holding it).
        peer.close();
        connection.await_peer_close()?;
        connection.close();
        thread::sleep(Duration::from_millis(50));
        bind_must_fail(Kind::Tcp, V4, V4, port)
    })();
    let trace = tracer.stop()?;
    caused?;
    let holders: Vec<(&Value, &Value)> = trace
        .on_port(port)
        .into_iter()
        .filter(|event| event["event"] == "fail")
        .map(|fail| (&fail["holder"]["state"], &fail["holder"]["pid"]))
        .collect();
    check(
        holders
            == [
                (&"listen".into(), &me.into()),
                (&"established".into(), &me.into()),
                (&"time_wait".into(), &me.into()),
            ],
        || format!("the failed binds named holders (state, pid) {holders:?}"),
    )
}
