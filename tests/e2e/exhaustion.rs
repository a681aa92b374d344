//! Ephemeral exhaustion, explained: a connect that finds no local port carries an `exhaustion`
//! object saying why, and the kernel agrees with it. Every failure it explains must say no
//! port is usable toward its destination, and a connect toward a destination it leaves ports
//! for must succeed.
//!
//! Each scenario runs its sockets on a thread of its own in a new network namespace with a
//! four-port ephemeral range above the host's, so a port-less failure is shown only because the
//! watched ports overlap the namespace's own range.

use std::{
    io,
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use serde_json::Value;

use crate::{
    Outcome, Skip,
    expect::check,
    lifetimes::in_new_namespace,
    tracer::{Trace, Tracer, netns_inode},
    workload::{Kind, Socket, V4, V6, tcp_listener},
};

/// The namespace's range: four ports, outside the host's (32768-60999 by default).
const RANGE: (u16, u16) = (62000, 62003);
const PORTS: usize = 4;
/// Two servers inside the namespace.
const A: u16 = 5432;
const B: u16 = 6379;

/// Runs `work` on a new thread inside a new network namespace: loopback up, the four-port
/// range, `tcp_tw_reuse` as given (0: TIME_WAIT sockets are never taken over). Returns the
/// thread's id and namespace inode with what `work` returned: scenarios run side by side in
/// one process, and a namespace's inode is reused as soon as it is gone.
///
/// The tracer enters the namespace through this thread to read its range, when it handles the
/// thread's first event; so the thread stays (and the namespace with it) until `tracer` has
/// printed an event of the thread's, however far behind a loaded machine leaves the tracer.
fn in_namespace<T: Send>(
    tracer: Option<&Tracer>,
    tw_reuse: u8,
    work: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<(Where, T)> {
    in_new_namespace(RANGE, || {
        std::fs::write("/proc/sys/net/ipv4/tcp_tw_reuse", tw_reuse.to_string())?;
        // SAFETY: gettid has no arguments and cannot fail.
        let tid = unsafe { libc::gettid() } as u32;
        let netns = (tid, netns_inode("/proc/thread-self/ns/net")?);
        let done = work()?;
        if let Some(tracer) = tracer {
            // Not seeing one fails the scenario's own checks, which say what is missing.
            tracer.wait_for(|event| event["tid"] == tid, Duration::from_secs(30));
        }
        Ok((netns, done))
    })
}

fn start() -> Result<Tracer, String> {
    Tracer::start(&[
        "--pid",
        &std::process::id().to_string(),
        "--port",
        &format!("{}-{}", RANGE.0, RANGE.1),
        "--pressure",
        "100",
    ])
}

/// A namespace thread: its id and its namespace's inode.
type Where = (u32, u64);

/// The port-less failures of one namespace thread, in order.
fn failures(trace: &Trace, (tid, netns): Where) -> Vec<&Value> {
    trace
        .events
        .iter()
        .filter(|event| {
            event["event"] == "fail"
                && event["tid"] == tid
                && event["netns"] == netns
                && event["local_port"] == 0
        })
        .collect()
}

/// What a connect did, for the checks: Ok, or its errno.
fn outcome(result: io::Result<()>) -> Result<(), i32> {
    result.map_err(|err| err.raw_os_error().unwrap_or(-1))
}

/// Connects `count` new sockets made by `make` to `port`; every one must connect.
fn connect_all(
    count: usize,
    port: u16,
    make: impl Fn() -> io::Result<Socket>,
) -> io::Result<Vec<Socket>> {
    (0..count)
        .map(|_| {
            let socket = make()?;
            socket.connect(port)?;
            Ok(socket)
        })
        .collect()
}

/// Ports the explanation leaves usable toward `addr:port`: those not blocked for every
/// destination and not taken toward that one.
fn usable_toward(exhaustion: &Value, addr: IpAddr, port: u16) -> i64 {
    let taken = exhaustion["busiest_destinations"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|used| used["addr"] == addr.to_string().as_str() && used["port"] == port)
        .map_or(0, |used| used["ports"].as_i64().unwrap_or(0));
    exhaustion["ports"].as_i64().unwrap_or(0)
        - exhaustion["blocked_for_all"]["ports"].as_i64().unwrap_or(0)
        - taken
}

/// The one failure's explanation: toward `addr:dest`, nothing usable, with these many ports
/// blocked for every destination and taken toward it.
fn explained<'a>(
    trace: &'a Trace,
    netns: Where,
    errno: &str,
    (addr, dest): (IpAddr, u16),
    blocked: i64,
    toward: i64,
) -> Result<&'a Value, Box<dyn std::error::Error + Send + Sync>> {
    let fails = failures(trace, netns);
    check(fails.len() == 1, || {
        format!("expected one port-less failure, got {fails:?}")
    })?;
    let (fail, exhaustion) = (fails[0], &fails[0]["exhaustion"]);
    check(fail["errno"] == errno, || format!("errno: {fail}"))?;
    check(
        exhaustion["range"] == format!("{}-{}", RANGE.0, RANGE.1).as_str()
            && exhaustion["ports"] == PORTS
            && exhaustion["complete"] == true,
        || format!("the explanation should name the namespace's range: {fail}"),
    )?;
    check(
        exhaustion["destination"]["addr"] == addr.to_string().as_str()
            && exhaustion["destination"]["port"] == dest,
        || format!("destination: {exhaustion}"),
    )?;
    // The kernel refused: the explanation must say no port is usable toward it.
    check(exhaustion["usable"] == 0, || {
        format!("the kernel refused, the explanation leaves ports usable: {exhaustion}")
    })?;
    check(
        exhaustion["blocked_for_all"]["ports"] == blocked
            && exhaustion["toward_destination"]["ports"] == toward,
        || format!("expected {blocked} blocked for all and {toward} taken toward: {exhaustion}"),
    )?;
    Ok(exhaustion)
}

/// Fills the range with connections to `server` (port `A`) and closes them client first, so
/// every port of the range is held by a TIME_WAIT socket toward it.
fn leave_in_time_wait(server: &Socket) -> io::Result<()> {
    let clients = connect_all(PORTS, A, || Socket::new(Kind::Tcp, V4))?;
    let accepted = (0..PORTS)
        .map(|_| server.accept())
        .collect::<io::Result<Vec<_>>>()?;
    drop(clients);
    std::thread::sleep(Duration::from_millis(100));
    drop(accepted);
    std::thread::sleep(Duration::from_millis(100));
    Ok(())
}

/// The kernel connected toward `B` after the failure: the explanation must have left a port.
fn another_destination_connected(exhaustion: &Value, addr: IpAddr, connected: bool) -> Outcome {
    let usable = usable_toward(exhaustion, addr, B);
    check(connected == (usable > 0), || {
        format!("connect to port {B} connected={connected}, the explanation leaves {usable}")
    })
}

fn one_destination_full(family: IpAddr) -> Outcome {
    let tracer = start()?;
    let (netns, (fifth, other)) = in_namespace(Some(&tracer), 0, || {
        let _servers = (tcp_listener(family, A)?, tcp_listener(family, B)?);
        let _clients = connect_all(PORTS, A, || Socket::new(Kind::Tcp, family))?;
        let fifth = outcome(Socket::new(Kind::Tcp, family)?.connect(A));
        let other = Socket::new(Kind::Tcp, family)?;
        let connected = outcome(other.connect(B));
        Ok((fifth, connected))
    })?;
    let trace = tracer.stop()?;
    check(fifth == Err(libc::EADDRNOTAVAIL), || {
        format!("the fifth connect: {fifth:?}")
    })?;
    let exhaustion = explained(&trace, netns, "EADDRNOTAVAIL", (family, A), 0, PORTS as i64)?;
    check(
        exhaustion["toward_destination"]["by_state"]["established"] == PORTS
            && exhaustion["toward_destination"]["holders"][0]["pid"] == std::process::id(),
        || format!("holders toward the destination: {exhaustion}"),
    )?;
    another_destination_connected(exhaustion, family, other.is_ok())?;
    // The namespace's range is all bound, and the destination full; the other one is not.
    let pressure: Vec<&Value> = trace
        .events
        .iter()
        .filter(|event| event["event"] == "pressure" && event["netns"] == netns.1)
        .collect();
    let scoped = |scope: &str| {
        pressure
            .iter()
            .filter(|event| event["scope"] == scope && event["state"] == "high")
            .collect::<Vec<_>>()
    };
    let (namespace, destination) = (scoped("namespace"), scoped("destination"));
    check(
        namespace.len() == 1 && namespace[0]["in_use"] == PORTS,
        || format!("one namespace pressure event, four ports bound: {pressure:?}"),
    )?;
    check(
        destination.len() == 1
            && destination[0]["remote_port"] == A
            && destination[0]["in_use"] == PORTS
            && destination[0]["usable"] == PORTS,
        || format!("one destination full, toward port {A}: {pressure:?}"),
    )
}

/// Four connections to one server use the range up for it; a connect to another server still
/// finds a port (the 4-tuple, not the port, must be unique).
pub fn one_destination_exhausted_another_connects() -> Outcome {
    one_destination_full(V4)
}

/// The same over IPv6.
pub fn one_destination_exhausted_ipv6() -> Outcome {
    one_destination_full(V6)
}

/// Clients that closed first keep their ports in TIME_WAIT toward the server; with
/// `tcp_tw_reuse` off the next connect to it fails, and the explanation says TIME_WAIT.
pub fn time_wait_exhaustion() -> Outcome {
    let tracer = start()?;
    let (netns, (fifth, other)) = in_namespace(Some(&tracer), 0, || {
        let servers = (tcp_listener(V4, A)?, tcp_listener(V4, B)?);
        leave_in_time_wait(&servers.0)?;
        let fifth = outcome(Socket::new(Kind::Tcp, V4)?.connect(A));
        let other = Socket::new(Kind::Tcp, V4)?;
        Ok((fifth, outcome(other.connect(B))))
    })?;
    let trace = tracer.stop()?;
    check(fifth == Err(libc::EADDRNOTAVAIL), || {
        format!("the fifth connect: {fifth:?}")
    })?;
    let exhaustion = explained(&trace, netns, "EADDRNOTAVAIL", (V4, A), 0, PORTS as i64)?;
    check(
        exhaustion["toward_destination"]["by_state"]["time_wait"] == PORTS
            && exhaustion["busiest_destinations"][0]["time_wait"] == PORTS,
        || format!("the ports should be in TIME_WAIT: {exhaustion}"),
    )?;
    another_destination_connected(exhaustion, V4, other.is_ok())
}

/// With `tcp_tw_reuse` a connect takes over a TIME_WAIT socket's 4-tuple, and the kernel kills
/// that socket on the way (an end the tracepoint backend cannot see): four clients closed into
/// TIME_WAIT, four new ones reuse their ports, and the fifth fails with the four connections,
/// not eight sockets, counted toward the server.
pub fn time_wait_reuse_is_counted_once() -> Outcome {
    let tracer = start()?;
    let (netns, (reused, fifth, other)) = in_namespace(Some(&tracer), 1, || {
        let servers = (tcp_listener(V4, A)?, tcp_listener(V4, B)?);
        leave_in_time_wait(&servers.0)?;
        // A TIME_WAIT socket is taken over once its last timestamp is over a second old.
        std::thread::sleep(Duration::from_millis(2200));
        let reused = connect_all(PORTS, A, || Socket::new(Kind::Tcp, V4));
        let fifth = outcome(Socket::new(Kind::Tcp, V4)?.connect(A));
        let other = Socket::new(Kind::Tcp, V4)?;
        Ok((reused.map(|_| ()), fifth, outcome(other.connect(B))))
    })?;
    let trace = tracer.stop()?;
    check(reused.is_ok() && fifth == Err(libc::EADDRNOTAVAIL), || {
        format!("the four reusing connects: {reused:?}; the fifth: {fifth:?}")
    })?;
    let exhaustion = explained(&trace, netns, "EADDRNOTAVAIL", (V4, A), 0, PORTS as i64)?;
    check(
        exhaustion["toward_destination"]["by_state"] == serde_json::json!({ "established": PORTS }),
        || format!("four established connections, no TIME_WAIT left: {exhaustion}"),
    )?;
    another_destination_connected(exhaustion, V4, other.is_ok())
}

/// A socket bound to a port of the range and a listener on another block those ports for
/// every connect: two connects to one server fit, the third fails, and the explanation counts
/// one bound port, one listening.
pub fn bound_ports_block_every_destination() -> Outcome {
    let tracer = start()?;
    let (netns, (third, other)) = in_namespace(Some(&tracer), 0, || {
        let _servers = (tcp_listener(V4, A)?, tcp_listener(V4, B)?);
        let bound = Socket::new(Kind::Tcp, V4)?;
        bound.bind(RANGE.0)?;
        let _listener = tcp_listener(V4, RANGE.0 + 1)?;
        let _clients = connect_all(2, A, || Socket::new(Kind::Tcp, V4))?;
        let third = outcome(Socket::new(Kind::Tcp, V4)?.connect(A));
        let other = Socket::new(Kind::Tcp, V4)?;
        Ok((third, outcome(other.connect(B)), bound))
    })
    .map(|(netns, (third, other, _bound))| (netns, (third, other)))?;
    let trace = tracer.stop()?;
    check(third == Err(libc::EADDRNOTAVAIL), || {
        format!("the third connect: {third:?}")
    })?;
    let exhaustion = explained(&trace, netns, "EADDRNOTAVAIL", (V4, A), 2, 2)?;
    check(
        exhaustion["blocked_for_all"]["bound"] == 1
            && exhaustion["blocked_for_all"]["listening"] == 1,
        || format!("one bound, one listening: {exhaustion}"),
    )?;
    another_destination_connected(exhaustion, V4, other.is_ok())
}

/// Clients that bind(0) before connecting take a port each for good: four of them leave no
/// port for a plain connect to another server. With `IP_BIND_ADDRESS_NO_PORT` the port is
/// chosen at connect and shared: four such clients to one server leave the range open to
/// another.
pub fn bind_before_connect_with_and_without_no_port() -> Outcome {
    let tracer = start()?;
    let (netns, plain) = in_namespace(Some(&tracer), 0, || {
        let _servers = (tcp_listener(V4, A)?, tcp_listener(V4, B)?);
        let bound = connect_all(PORTS, A, || {
            let socket = Socket::new(Kind::Tcp, V4)?;
            socket.bind(0)?;
            Ok(socket)
        })?;
        let plain = outcome(Socket::new(Kind::Tcp, V4)?.connect(B));
        drop(bound);
        Ok(plain)
    })?;
    let (no_port_netns, no_port) = in_namespace(Some(&tracer), 0, || {
        let _servers = (tcp_listener(V4, A)?, tcp_listener(V4, B)?);
        let client = || {
            let socket = Socket::new(Kind::Tcp, V4)?;
            socket.set_option(libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)?;
            socket.bind_address(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)?;
            Ok(socket)
        };
        let _clients = connect_all(PORTS, A, client)?;
        let other = client()?;
        Ok(outcome(other.connect(B)))
    })?;
    let trace = tracer.stop()?;
    let unexplained = failures(&trace, no_port_netns);
    check(unexplained.is_empty(), || {
        format!("no failure expected with IP_BIND_ADDRESS_NO_PORT: {unexplained:?}")
    })?;
    check(plain == Err(libc::EADDRNOTAVAIL), || {
        format!("a connect after four bind(0) clients: {plain:?}")
    })?;
    check(no_port.is_ok(), || {
        format!("with IP_BIND_ADDRESS_NO_PORT the other server should connect: {no_port:?}")
    })?;
    let exhaustion = explained(&trace, netns, "EADDRNOTAVAIL", (V4, B), PORTS as i64, 0)?;
    check(exhaustion["blocked_for_all"]["bound"] == PORTS, || {
        format!("four bound ports: {exhaustion}")
    })
}

/// UDP shares no port: with the range's ports held by connected UDP sockets, a UDP connect to
/// another destination cannot autobind (EAGAIN), and the explanation counts every port blocked.
pub fn udp_connect_exhaustion() -> Outcome {
    let tracer = start()?;
    let (netns, refused) = in_namespace(Some(&tracer), 0, || {
        let _clients = connect_all(PORTS, A, || Socket::new(Kind::Udp, V4))?;
        Ok(outcome(Socket::new(Kind::Udp, V4)?.connect(B)))
    })?;
    let trace = tracer.stop()?;
    check(refused == Err(libc::EAGAIN), || {
        format!("the fifth UDP connect: {refused:?}")
    })?;
    explained(&trace, netns, "EAGAIN", (V4, B), PORTS as i64, 0).map(drop)
}

/// A namespace gone before the tracer could read its range leaves nothing behind: the kernel
/// gives its inode to the next namespace, whose range must still be read and whose failure
/// explained. The tracer is stopped (SIGSTOP) while the first namespace claims a port and
/// goes, so it reaches that claim only once the thread is gone.
pub fn a_namespace_gone_unread_does_not_hide_the_next() -> Outcome {
    let tracer = start()?;
    tracer.pause();
    let (gone, ()) = in_namespace(None, 0, || {
        Socket::new(Kind::Udp, V4)?.bind(0)?;
        Ok(())
    })?;
    // The kernel frees a namespace's inode in a work queue, after the namespace is gone.
    std::thread::sleep(Duration::from_secs(1));
    let resume = {
        let pid = tracer.pid();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            // SAFETY: kill with a valid signal to the tracer this scenario started.
            unsafe { libc::kill(pid as i32, libc::SIGCONT) };
        })
    };
    let (netns, refused) = in_namespace(Some(&tracer), 0, || {
        let _clients = connect_all(PORTS, A, || Socket::new(Kind::Udp, V4))?;
        Ok(outcome(Socket::new(Kind::Udp, V4)?.connect(B)))
    })?;
    resume.join().map_err(|_| "the resuming thread panicked")?;
    let trace = tracer.stop()?;
    check(refused == Err(libc::EAGAIN), || {
        format!("the fifth UDP connect: {refused:?}")
    })?;
    explained(&trace, netns, "EAGAIN", (V4, B), PORTS as i64, 0)?;
    // Only a reused inode makes this the case it names.
    if gone.1 != netns.1 {
        return Err(Skip::because(format!(
            "the kernel gave the second namespace another inode ({} after {}): nothing reused",
            netns.1, gone.1
        )));
    }
    Ok(())
}

/// `portwatch ephemeral` (one shot, no eBPF), run inside the namespace: a listener on a port
/// of the range and three connections to one server; it must say no port is usable toward
/// that server exactly when the kernel then refuses the connect, and advise reserving the
/// listener's port.
pub fn one_shot_view_agrees_with_the_kernel() -> Outcome {
    let (_, (view, refused, other)) = in_namespace(None, 0, || {
        let _servers = (tcp_listener(V4, A)?, tcp_listener(V4, B)?);
        let _inside = tcp_listener(V4, RANGE.1)?;
        let _clients = connect_all(PORTS - 1, A, || Socket::new(Kind::Tcp, V4))?;
        let view = std::process::Command::new(crate::tracer::binary())
            .arg("ephemeral")
            .output()?;
        let refused = outcome(Socket::new(Kind::Tcp, V4)?.connect(A));
        let other = Socket::new(Kind::Tcp, V4)?;
        Ok((view, refused, outcome(other.connect(B))))
    })?;
    let text = String::from_utf8_lossy(&view.stdout);
    check(view.status.success(), || {
        format!(
            "portwatch ephemeral failed: {text}{}",
            String::from_utf8_lossy(&view.stderr)
        )
    })?;
    let wanted = [
        format!(
            "this namespace: ephemeral range {}-{} (4 ports), 4 in use (tcp)",
            RANGE.0, RANGE.1
        ),
        "blocked for every destination: 1 (0 bound, 1 listening, 0 reserved)".into(),
        format!("toward 127.0.0.1:{A}: 3 ports (0 time_wait)"),
        format!("a connect to 127.0.0.1:{A} finds 0 usable ports"),
        format!(
            "reserve it with `sysctl -w net.ipv4.ip_local_reserved_ports={}`",
            RANGE.1
        ),
    ];
    for line in &wanted {
        check(text.contains(line.as_str()), || {
            format!("expected {line:?} in:\n{text}")
        })?;
    }
    check(refused == Err(libc::EADDRNOTAVAIL) && other.is_ok(), || {
        format!("the kernel: connect to {A} {refused:?}, to {B} {other:?}")
    })
}
