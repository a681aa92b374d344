//! Connects that fail because no local port is left (TCP: EADDRNOTAVAIL, UDP autobind: EAGAIN)
//! name where they were going: the fail event carries the destination's address and port, and
//! the source address when the socket was bound to one.
//!
//! Each scenario runs its sockets on a thread of its own in a new network namespace whose
//! ephemeral range is two ports wide, so the range runs out after two connections.

use std::{
    io,
    net::{IpAddr, Ipv4Addr},
};

use serde_json::Value;

use crate::{
    Outcome,
    expect::check,
    lifetimes::in_new_namespace,
    tracer::Tracer,
    workload::{Kind, Socket, V4, V6, tcp_listener},
};

/// The narrowed ephemeral range. Connect tries one parity first, then the other, so both ports
/// serve before it gives up.
const RANGE: (u16, u16) = (40000, 40001);
/// Where the clients connect to, inside the namespace.
const SERVER_PORT: u16 = 5000;
/// A second loopback address of the namespace, for a socket bound to its source address.
const SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// Connects new sockets made by `client` until one fails; returns that error and how many
/// connected (they stay open until then).
fn connect_until_refused(
    mut client: impl FnMut() -> io::Result<Socket>,
) -> io::Result<(io::Error, usize)> {
    let mut held = Vec::new();
    for _ in 0..8 {
        let socket = client()?;
        match socket.connect(SERVER_PORT) {
            Ok(()) => held.push(socket),
            Err(err) => return Ok((err, held.len())),
        }
    }
    Err(io::Error::other(
        "eight connects succeeded in a two-port range",
    ))
}

/// The fail events of this process with the given protocol and family.
fn failures<'a>(events: &'a [Value], proto: &str, family: &str) -> Vec<&'a Value> {
    let me = std::process::id();
    events
        .iter()
        .filter(|event| {
            event["event"] == "fail"
                && event["pid"] == me
                && event["proto"] == proto
                && event["family"] == family
        })
        .collect()
}

/// The one failure with this errno (and source address, if given) that names `remote` as its
/// destination, on [`SERVER_PORT`].
fn one_failure(fails: &[&Value], errno: &str, local_addr: Option<&str>, remote: IpAddr) -> Outcome {
    let remote = remote.to_string();
    let matching = fails
        .iter()
        .filter(|event| {
            event["errno"] == errno
                && event["local_port"] == 0
                && local_addr.is_none_or(|addr| event["local_addr"] == addr)
                && event["remote_addr"] == remote.as_str()
                && event["remote_port"] == SERVER_PORT
        })
        .count();
    check(matching == 1, || {
        format!(
            "expected one {errno} fail from {local_addr:?} to {remote} port {SERVER_PORT}, \
             got {fails:?}"
        )
    })
}

fn expect_refused(outcome: &(io::Error, usize), errno: i32, what: &str) -> Outcome {
    let (err, connected) = outcome;
    check(err.raw_os_error() == Some(errno) && *connected == 2, || {
        format!("{what}: expected two connects, then errno {errno}; got {connected}, then {err}")
    })
}

/// TCP over IPv4: an unbound client, then clients bound to a source address without a port
/// (`IP_BIND_ADDRESS_NO_PORT`), whose failure also names that source.
pub fn tcp_ipv4_names_destination() -> Outcome {
    let tracer = Tracer::start(&["--pid", &std::process::id().to_string(), "--events", "fail"])?;
    let (unbound, bound) = in_new_namespace(RANGE, || {
        let _listener = tcp_listener(V4, SERVER_PORT)?;
        let unbound = connect_until_refused(|| Socket::new(Kind::Tcp, V4))?;
        let bound = connect_until_refused(|| {
            let socket = Socket::new(Kind::Tcp, V4)?;
            socket.set_option(libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)?;
            socket.bind_address(SOURCE, 0)?;
            Ok(socket)
        })?;
        Ok((unbound, bound))
    })?;
    let trace = tracer.stop()?;
    expect_refused(&unbound, libc::EADDRNOTAVAIL, "unbound clients")?;
    expect_refused(&bound, libc::EADDRNOTAVAIL, "clients bound to 127.0.0.2")?;
    let fails = failures(&trace.events, "tcp", "ipv4");
    check(fails.len() == 2, || {
        format!("expected two connect failures, got {fails:?}")
    })?;
    one_failure(&fails, "EADDRNOTAVAIL", Some("127.0.0.2"), V4)?;
    let unbound_fail = fails
        .iter()
        .find(|event| event["local_addr"] != "127.0.0.2")
        .ok_or("no failure of the unbound client")?;
    check(unbound_fail["how"] == "connect", || {
        format!("the failure should say how: {unbound_fail}")
    })?;
    one_failure(&[unbound_fail], "EADDRNOTAVAIL", None, V4)
}

/// TCP over IPv6, to `::1`.
pub fn tcp_ipv6_names_destination() -> Outcome {
    let tracer = Tracer::start(&["--pid", &std::process::id().to_string(), "--events", "fail"])?;
    let refused = in_new_namespace(RANGE, || {
        let _listener = tcp_listener(V6, SERVER_PORT)?;
        connect_until_refused(|| Socket::new(Kind::Tcp, V6))
    })?;
    let trace = tracer.stop()?;
    expect_refused(&refused, libc::EADDRNOTAVAIL, "IPv6 clients")?;
    one_failure(
        &failures(&trace.events, "tcp", "ipv6"),
        "EADDRNOTAVAIL",
        None,
        V6,
    )
}

/// UDP over IPv4 and IPv6: with both ports of the range bound, a connect on an unbound socket
/// cannot autobind and fails with EAGAIN. An IPv6 socket may also connect to an IPv4 address
/// (`AF_INET`); its failure names the IPv4-mapped address.
pub fn udp_connect_names_destination() -> Outcome {
    let tracer = Tracer::start(&["--pid", &std::process::id().to_string(), "--events", "fail"])?;
    let refused = in_new_namespace(RANGE, || {
        let mut results = Vec::new();
        for family in [V4, V6] {
            let holders = [RANGE.0, RANGE.1].map(|port| {
                let socket = Socket::new(Kind::Udp, family)?;
                socket.bind_any_address(port)?;
                Ok::<_, io::Error>(socket)
            });
            let _holders = holders.into_iter().collect::<io::Result<Vec<_>>>()?;
            let client = Socket::new(Kind::Udp, family)?;
            results.push(client.connect(SERVER_PORT));
            if family == V6 {
                results.push(ipv6_socket_connects_to_ipv4());
            }
        }
        Ok(results)
    })?;
    let trace = tracer.stop()?;
    for (result, what) in refused.iter().zip(["ipv4", "ipv6", "IPv4 from IPv6"]) {
        check(
            result
                .as_ref()
                .is_err_and(|err| err.raw_os_error() == Some(libc::EAGAIN)),
            || format!("{what} UDP connect should fail with EAGAIN, got {result:?}"),
        )?;
    }
    let mapped: IpAddr = "::ffff:127.0.0.1".parse().expect("an IPv6 address");
    for (family, remotes) in [("ipv4", &[V4][..]), ("ipv6", &[V6, mapped][..])] {
        let fails = failures(&trace.events, "udp", family);
        for &remote in remotes {
            one_failure(&fails, "EAGAIN", None, remote)?;
        }
        check(fails.iter().all(|fail| fail["how"] == "autobind"), || {
            format!("the failures should say how: {fails:?}")
        })?;
    }
    Ok(())
}

/// connect() of a new IPv6 UDP socket to 127.0.0.1 as an `AF_INET` address, which the kernel
/// accepts on sockets that are not IPv6-only.
fn ipv6_socket_connects_to_ipv4() -> io::Result<()> {
    // SAFETY: socket() takes plain integers.
    let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: sockaddr_in is plain data; all-zero is a valid starting value.
    let mut address: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    address.sin_family = libc::AF_INET as libc::sa_family_t;
    address.sin_port = SERVER_PORT.to_be();
    address.sin_addr.s_addr = u32::from_ne_bytes(Ipv4Addr::LOCALHOST.octets());
    // SAFETY: address is a valid sockaddr_in of the length given; fd is ours and closed once.
    unsafe {
        let ret = libc::connect(
            fd,
            &address as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let result = if ret == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        };
        libc::close(fd);
        result
    }
}
