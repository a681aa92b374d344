//! The fallback for kernels whose sock_diag has no handler for a protocol (`inet_diag`,
//! `tcp_diag` or `udp_diag` built as modules that are not loaded and cannot be, as in a
//! minimal VM): the /proc/net tables, read line by line and filtered in userspace, as `ss` falls
//! back to them. They list every socket of the namespace, so this is slower on a busy host, and
//! /proc/net/tcp never lists bound-only TCP sockets.

use std::{
    fs,
    io::{self, BufRead, BufReader},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use super::{Family, diag::Diagnosed};
use crate::model::proto::Proto;

/// The sockets of one table whose local port `wanted` accepts.
pub fn dump(
    proto: Proto,
    family: Family,
    wanted: impl Fn(u16) -> bool,
) -> io::Result<Vec<Diagnosed>> {
    let path = format!(
        // The calling thread's namespace: the snapshot reads other namespaces from a thread
        // that entered them, and /proc/net is the whole process's (its first thread's).
        "/proc/thread-self/net/{}{}",
        proto.name(),
        match family {
            Family::Ipv4 => "",
            Family::Ipv6 => "6",
        }
    );
    let file = fs::File::open(&path)
        .map_err(|err| io::Error::new(err.kind(), format!("{path}: {err}")))?;
    let lines = BufReader::new(file)
        .lines()
        .skip(1)
        .collect::<io::Result<Vec<_>>>()?;
    Ok(distinct_wanted(&lines, proto, wanted))
}

/// The wanted sockets of a table's lines, each once. The kernel prints a table in chunks, one
/// read at a time, and a table that changes between two reads can print a socket twice (seen:
/// one TIME_WAIT socket listed twice under qemu). Two lines with the same endpoints, state and
/// inode are one socket: a TIME_WAIT's endpoints are unique, and every other socket's inode is.
fn distinct_wanted(lines: &[String], proto: Proto, wanted: impl Fn(u16) -> bool) -> Vec<Diagnosed> {
    let mut sockets: Vec<Diagnosed> = Vec::new();
    for socket in lines.iter().filter_map(|line| parse_line(line, proto)) {
        if wanted(socket.local.port()) && !sockets.contains(&socket) {
            sockets.push(socket);
        }
    }
    sockets
}

fn parse_line(line: &str, proto: Proto) -> Option<Diagnosed> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let local = parse_endpoint(fields.get(1)?)?;
    let remote = parse_endpoint(fields.get(2)?)?;
    if local.port() == 0 {
        return None;
    }
    Some(Diagnosed {
        proto,
        state: u8::from_str_radix(fields.get(3)?, 16).ok()?,
        local,
        remote: (remote.port() != 0).then_some(remote),
        uid: fields.get(7)?.parse().ok()?,
        inode: fields.get(9)?.parse().ok()?,
    })
}

/// `0100007F:EB98` or a 32-digit IPv6 form: the address is printed as the kernel's u32 words in
/// host byte order, the port in hex.
fn parse_endpoint(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Option<Vec<[u8; 4]>> = (0..addr.len() / 8)
        .map(|index| {
            let word = u32::from_str_radix(addr.get(index * 8..index * 8 + 8)?, 16).ok()?;
            Some(word.to_ne_bytes())
        })
        .collect();
    let bytes: Vec<u8> = words?.concat();
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_lines() {
        let v4 = "   0: 0100007F:EB98 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0";
        let socket = parse_line(v4, Proto::Tcp).unwrap();
        assert_eq!(socket.local, "127.0.0.1:60312".parse().unwrap());
        assert_eq!((socket.state, socket.remote), (10, None));
        assert_eq!((socket.uid, socket.inode), (0, 12345));
        let v6 = "   1: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 999 2 0000000000000000 0";
        let socket = parse_line(v6, Proto::Udp).unwrap();
        assert_eq!(socket.local, "[::1]:8080".parse().unwrap());
        assert_eq!((socket.state, socket.uid), (7, 1000));
    }

    #[test]
    fn a_socket_printed_twice_is_one_socket() {
        let time_wait = "  12: 0100007F:5DE8 0100007F:6840 06 00000000:00000000 03:00000D9C 00000000     0        0 0 3 0000000000000000";
        let other = "  13: 0100007F:5DE8 0100007F:6841 06 00000000:00000000 03:00000D9C 00000000     0        0 0 3 0000000000000000";
        let lines = [time_wait, other, time_wait].map(String::from);
        let found = distinct_wanted(&lines, Proto::Tcp, |port| port == 24040);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].remote, Some("127.0.0.1:26688".parse().unwrap()));
        assert_eq!(found[1].remote, Some("127.0.0.1:26689".parse().unwrap()));
    }

    #[test]
    fn reads_this_process_listener_from_the_table() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let found = dump(Proto::Tcp, Family::Ipv4, |p| p == port).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].state, 10);
    }
}
