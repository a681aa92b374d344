//! The sockets that already hold watched ports when tracing starts, read from /proc like `ss`
//! does, with the owning processes found through /proc/<pid>/fd.

use std::{
    collections::HashMap,
    fs,
    io::{BufRead, BufReader},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use crate::{
    clock::Timestamp,
    event::{Event, Kind, Proto, Task},
};

/// A socket listed in /proc/net/{tcp,udp}{,6}.
#[derive(Debug, PartialEq)]
struct Listed {
    proto: Proto,
    local: (IpAddr, u16),
    remote: (IpAddr, u16),
    state: &'static str,
    uid: u32,
    inode: u64,
}

/// The process owning a socket inode.
#[derive(Clone, Debug)]
pub struct Owner {
    pub pid: u32,
    pub comm: String,
}

/// Current holders of ports accepted by `wanted`, as `held` events.
pub fn held(wanted: impl Fn(Proto, &IpAddr, u16) -> bool) -> Vec<Event> {
    let listed: Vec<Listed> = [
        ("/proc/net/tcp", Proto::Tcp),
        ("/proc/net/tcp6", Proto::Tcp),
        ("/proc/net/udp", Proto::Udp),
        ("/proc/net/udp6", Proto::Udp),
    ]
    .into_iter()
    .flat_map(|(path, proto)| listed_in(path, proto, &wanted))
    .collect();
    if listed.is_empty() {
        return Vec::new();
    }
    let owners = socket_owners();
    let now = Timestamp::now();
    let netns = own_netns();
    listed
        .into_iter()
        .map(|socket| {
            let owner = owners.get(&socket.inode);
            Event {
                ts: now,
                kind: Kind::Held,
                proto: socket.proto,
                local_addr: socket.local.0,
                local_port: socket.local.1,
                remote: (socket.remote.1 != 0).then_some(socket.remote),
                task: owner.map(|owner| Task {
                    pid: owner.pid,
                    tid: owner.pid,
                    ppid: 0,
                    comm: owner.comm.clone(),
                    start_ns: 0,
                }),
                uid: socket.uid,
                how: None,
                errno: None,
                held_ns: None,
                time_wait: socket.state == "time_wait",
                time_wait_end: false,
                claimer_seen: true,
                state: Some(socket.state),
                cgroup_id: None,
                netns,
                holder: None,
                hint: None,
                audit: None,
            }
        })
        .collect()
}

/// The wanted sockets of one /proc/net table, read line by line: on a busy host the table holds
/// hundreds of thousands of sockets (TIME_WAIT included), tens of megabytes as one string.
fn listed_in(
    path: &str,
    proto: Proto,
    wanted: &impl Fn(Proto, &IpAddr, u16) -> bool,
) -> Vec<Listed> {
    let Ok(file) = fs::File::open(path) else {
        return Vec::new();
    };
    BufReader::new(file)
        .lines()
        .skip(1)
        .map_while(Result::ok)
        .filter_map(|line| parse_line(&line, proto))
        .filter(|socket| wanted(socket.proto, &socket.local.0, socket.local.1))
        .collect()
}

fn parse_line(line: &str, proto: Proto) -> Option<Listed> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let local = parse_endpoint(fields.get(1)?)?;
    let remote = parse_endpoint(fields.get(2)?)?;
    let state_code = u8::from_str_radix(fields.get(3)?, 16).ok()?;
    if local.1 == 0 {
        return None;
    }
    Some(Listed {
        proto,
        local,
        remote,
        state: state_name(proto, state_code),
        uid: fields.get(7)?.parse().ok()?,
        inode: fields.get(9)?.parse().ok()?,
    })
}

/// `0100007F:EB98` or a 32-digit IPv6 form: the address is printed as the kernel's u32 words in
/// host byte order, the port in hex.
fn parse_endpoint(text: &str) -> Option<(IpAddr, u16)> {
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
    Some((ip, port))
}

fn state_name(proto: Proto, code: u8) -> &'static str {
    match (proto, code) {
        (Proto::Udp, 7) => "unconnected",
        (Proto::Udp, 1) => "connected",
        (_, 1) => "established",
        (_, 2) => "syn_sent",
        (_, 3) => "syn_recv",
        (_, 4) => "fin_wait1",
        (_, 5) => "fin_wait2",
        (_, 6) => "time_wait",
        (_, 7) => "close",
        (_, 8) => "close_wait",
        (_, 9) => "last_ack",
        (_, 10) => "listen",
        (_, 11) => "closing",
        _ => "unknown",
    }
}

/// Maps socket inodes to the process holding them, scanning every /proc/<pid>/fd.
fn socket_owners() -> HashMap<u64, Owner> {
    let mut owners = HashMap::new();
    let Ok(processes) = fs::read_dir("/proc") else {
        return owners;
    };
    for process in processes.flatten() {
        let Some(pid) = process
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        let mut comm = None;
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = target
                .to_str()
                .and_then(|text| text.strip_prefix("socket:["))
                .and_then(|text| text.strip_suffix(']'))
                .and_then(|text| text.parse::<u64>().ok())
            else {
                continue;
            };
            let comm = comm.get_or_insert_with(|| {
                fs::read_to_string(process.path().join("comm"))
                    .map(|text| text.trim_end().to_string())
                    .unwrap_or_default()
            });
            owners.entry(inode).or_insert_with(|| Owner {
                pid,
                comm: comm.clone(),
            });
        }
    }
    owners
}

fn own_netns() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self/ns/net")
        .ok()
        .map(|meta| meta.ino() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_lines() {
        let v4 = "   0: 0100007F:EB98 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0";
        let listed = parse_line(v4, Proto::Tcp).unwrap();
        assert_eq!(listed.local, (IpAddr::V4(Ipv4Addr::LOCALHOST), 60312));
        assert_eq!(listed.state, "listen");
        assert_eq!((listed.uid, listed.inode), (0, 12345));
        let v6 = "   1: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 999 2 0000000000000000 0";
        let listed = parse_line(v6, Proto::Udp).unwrap();
        assert_eq!(listed.local, (IpAddr::V6(Ipv6Addr::LOCALHOST), 8080));
        assert_eq!(listed.state, "unconnected");
        assert_eq!(listed.uid, 1000);
    }

    #[test]
    fn finds_a_real_listener_and_its_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = held(|proto, _, p| proto == Proto::Tcp && p == port);
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].task.as_ref().unwrap().pid, std::process::id());
        assert_eq!(held[0].state, Some("listen"));
    }
}
