//! The sockets holding ports now, asked of the kernel through sock_diag netlink the way modern
//! `ss` does, with the ports filtered in the kernel, and the processes holding them, found
//! through their inodes in /proc/<pid>/fd. Used at trace start (`held` events) and by `who`.

mod bytecode;
mod diag;
pub mod namespaces;
mod owners;
mod procnet;

use std::{collections::HashSet, net::SocketAddr, os::fd::AsRawFd as _};

use diag::Diagnosed;
pub use diag::Family;
pub use namespaces::{Namespace, Scope};
pub use owners::Owner;

use crate::{
    host::proc_stat,
    model::clock::Timestamp,
    model::event::{Event, Kind},
    model::ports::PortSet,
    model::proto::Proto,
    model::task::{Comm, Task},
};

/// `TCP_NEW_SYN_RECV`: a connection request still being handshaken, on its listener's port.
const TCP_NEW_SYN_RECV: u8 = 12;
const TCP_TIME_WAIT: u8 = 6;
/// `TCP_BOUND_INACTIVE`: asks for sockets bound but neither listening nor connected, which
/// sock_diag lists since Linux 6.8 ("tcp: Dump bound-only sockets in inet_diag") and
/// /proc/net/tcp never does. Such sockets come back in state `TCP_CLOSE` (7), the only TCP
/// sockets in that state a dump returns.
const TCP_BOUND_INACTIVE: u8 = 13;
const TCP_CLOSE: u8 = 7;
const BOUND_INACTIVE_SINCE: (u32, u32) = (6, 8);

/// Which sockets to ask for.
#[derive(Clone, Debug)]
pub struct Query {
    /// None: every port.
    pub ports: Option<PortSet>,
    pub protos: Vec<Proto>,
    pub families: Vec<Family>,
    pub netns: Scope,
}

/// A socket holding a port, with the processes holding it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Socket {
    pub proto: Proto,
    pub state: &'static str,
    pub local: SocketAddr,
    pub remote: Option<SocketAddr>,
    /// The socket's owner (its creator's uid), known even when its process is not; None for
    /// TIME_WAIT sockets and connection requests, for which the kernel reports no owner.
    pub uid: Option<u32>,
    /// 0 when no file refers to the socket (TIME_WAIT, connection requests, orphans).
    pub inode: u32,
    /// Every process holding the socket, in ascending pid order; empty when none was found.
    pub owners: Vec<Owner>,
    /// The inode of its network namespace.
    pub netns: u32,
}

#[derive(Debug)]
pub struct Snapshot {
    pub sockets: Vec<Socket>,
    /// Processes whose descriptors this caller may not read: their sockets show no process.
    pub unreadable_processes: usize,
    /// What the snapshot cannot show on this kernel, in one sentence each.
    pub notes: Vec<String>,
    /// The namespaces looked in, by inode; portwatch's own is `own_netns`.
    pub namespaces: Vec<Namespace>,
    pub own_netns: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("reading this namespace's {} {} sockets: {cause}", proto.name(), family.name())]
    Dump {
        proto: Proto,
        family: Family,
        cause: std::io::Error,
    },
    #[error(
        "no process is in network namespace {0} and no bind mount keeps it under /run/netns, \
         /run/docker/netns or /run/user/*/netns"
    )]
    NoSuchNamespace(u32),
}

/// One namespace's sockets, or why they could not be read.
struct Dumped {
    sockets: Vec<Diagnosed>,
    /// Protocols this kernel's sock_diag has no handler for (read from /proc/net instead).
    without_sock_diag: Vec<Proto>,
}

/// The sockets matching `query` now, in every namespace it asks for, sorted by port,
/// protocol, state, namespace (portwatch's own first), address.
pub fn take(query: &Query) -> Result<Snapshot, SnapshotError> {
    let own_netns = own_netns();
    let mut namespaces = namespaces::list();
    match query.netns {
        Scope::All => {}
        Scope::Only(inode) => {
            namespaces.retain(|namespace| namespace.inode == inode);
            if namespaces.is_empty() {
                return Err(SnapshotError::NoSuchNamespace(inode));
            }
        }
    }
    let mut found: Vec<(u32, Diagnosed)> = Vec::new();
    let mut without_sock_diag: Vec<Proto> = Vec::new();
    let mut notes = Vec::new();
    let (own, others): (Vec<&Namespace>, Vec<&Namespace>) = namespaces
        .iter()
        .partition(|namespace| Some(namespace.inode) == own_netns);
    // Ours is read from here, as before: a failure there is the snapshot's failure.
    if !own.is_empty() {
        add(
            &mut found,
            &mut without_sock_diag,
            own_netns.unwrap_or(0),
            dump_here(query)?,
        );
    }
    if !others.is_empty() {
        let mut refused = 0;
        match enter_each(&others, query) {
            None => notes.push(format!(
                "no thread could be started to enter the {} other network namespace(s): \
                 their sockets are not shown",
                others.len()
            )),
            Some(entered) => {
                for (namespace, outcome) in others.iter().zip(entered) {
                    match outcome {
                        Ok(dumped) => {
                            add(&mut found, &mut without_sock_diag, namespace.inode, dumped)
                        }
                        Err(Entering::Refused) => refused += 1,
                        Err(Entering::Gone) => {}
                        Err(Entering::Failed(err)) => {
                            notes.push(format!("network namespace {}: {err}", namespace.inode))
                        }
                    }
                }
            }
        }
        if refused > 0 {
            notes.push(format!(
                "{refused} other network namespace(s) could not be entered (that takes \
                 CAP_SYS_ADMIN): their sockets are not shown; run as root to see them"
            ));
        }
    }
    finish(
        found,
        without_sock_diag,
        notes,
        query,
        namespaces,
        own_netns,
    )
}

fn add(
    found: &mut Vec<(u32, Diagnosed)>,
    without_sock_diag: &mut Vec<Proto>,
    netns: u32,
    dumped: Dumped,
) {
    found.extend(dumped.sockets.into_iter().map(|socket| (netns, socket)));
    for proto in dumped.without_sock_diag {
        if !without_sock_diag.contains(&proto) {
            without_sock_diag.push(proto);
        }
    }
}

/// Why another namespace's sockets are missing.
enum Entering {
    /// Not permitted (no CAP_SYS_ADMIN).
    Refused,
    /// Its last process exited, or its bind mount went, since it was listed.
    Gone,
    Failed(SnapshotError),
}

/// Threads reading other namespaces at most: each TCP dump walks the kernel's established
/// hash table, which every namespace shares unless `tcp_child_ehash_entries` gives it its own
/// (262144 buckets on a 4 GiB host), so a namespace costs about the same however few sockets
/// it has, and the dumps spread over the CPUs.
const READERS: usize = 4;

/// Reads the namespaces from a few threads that each enter one after another: a thread may
/// change its network namespace on its own, and these end afterwards, so no thread of
/// portwatch is left anywhere but where it started.
fn enter_each(namespaces: &[&Namespace], query: &Query) -> Option<Vec<Result<Dumped, Entering>>> {
    let read = |share: &[&Namespace]| -> Vec<Result<Dumped, Entering>> {
        share
            .iter()
            .map(|namespace| {
                let file =
                    std::fs::File::open(&namespace.path).map_err(|err| match err.kind() {
                        std::io::ErrorKind::PermissionDenied => Entering::Refused,
                        _ => Entering::Gone,
                    })?;
                // SAFETY: the descriptor is an open network namespace file; only this thread
                // changes namespace, and it ends when the reading is done.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(match std::io::Error::last_os_error().raw_os_error() {
                        Some(libc::EPERM) => Entering::Refused,
                        _ => Entering::Gone,
                    });
                }
                dump_here(query).map_err(Entering::Failed)
            })
            .collect()
    };
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let share = namespaces.len().div_ceil(cpus.clamp(1, READERS));
    std::thread::scope(|scope| {
        let readers: Vec<_> = namespaces
            .chunks(share.max(1))
            .map(|chunk| {
                std::thread::Builder::new()
                    .name("portwatch-netns".into())
                    .spawn_scoped(scope, move || read(chunk))
            })
            .collect::<Result<_, _>>()
            .ok()?;
        let mut outcomes = Vec::with_capacity(namespaces.len());
        for reader in readers {
            outcomes.extend(reader.join().ok()?);
        }
        Some(outcomes)
    })
}

/// The sockets of the calling thread's network namespace.
fn dump_here(query: &Query) -> Result<Dumped, SnapshotError> {
    let program = query
        .ports
        .as_ref()
        .map(|ports| bytecode::local_port_in(ports.ranges()));
    let wanted = |port: u16| {
        query
            .ports
            .as_ref()
            .is_none_or(|ports| ports.contains(port))
    };
    let mut found = Vec::new();
    let mut without_sock_diag = Vec::new();
    for &proto in &query.protos {
        let states = match proto {
            Proto::Tcp => tcp_states(),
            Proto::Udp => u32::MAX,
        };
        // TCP's hash tables are walked once for both families where the kernel allows it.
        let every_family = proto == Proto::Tcp
            && query.families.contains(&Family::Ipv4)
            && query.families.contains(&Family::Ipv6);
        let dumped =
            match every_family.then(|| diag::dump_tcp_every_family(states, program.as_deref())) {
                Some(Ok(dumped)) => dumped,
                _ => dump_per_family(
                    query,
                    proto,
                    states,
                    program.as_deref(),
                    wanted,
                    &mut without_sock_diag,
                )?,
            };
        // A covering program may pass a few ports around the wanted ones.
        found.extend(
            dumped
                .into_iter()
                .filter(|socket| wanted(socket.local.port())),
        );
    }
    Ok(Dumped {
        sockets: found,
        without_sock_diag,
    })
}

/// One protocol's sockets, a family at a time, read from /proc/net where this kernel's
/// sock_diag has no handler for the protocol (which is then added to `without_sock_diag`).
fn dump_per_family(
    query: &Query,
    proto: Proto,
    states: u32,
    program: Option<&[u8]>,
    wanted: impl Fn(u16) -> bool + Copy,
    without_sock_diag: &mut Vec<Proto>,
) -> Result<Vec<Diagnosed>, SnapshotError> {
    let mut dumped = Vec::new();
    for &family in &query.families {
        let sockets = match diag::dump(proto, family, states, program) {
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {
                if !without_sock_diag.contains(&proto) {
                    without_sock_diag.push(proto);
                }
                procnet::dump(proto, family, wanted)
            }
            other => other,
        };
        dumped.extend(sockets.map_err(|cause| SnapshotError::Dump {
            proto,
            family,
            cause,
        })?);
    }
    Ok(dumped)
}

/// Notes, owners and order for the sockets of every namespace read.
fn finish(
    found: Vec<(u32, Diagnosed)>,
    without_sock_diag: Vec<Proto>,
    mut notes: Vec<String>,
    query: &Query,
    namespaces: Vec<Namespace>,
    own_netns: Option<u32>,
) -> Result<Snapshot, SnapshotError> {
    notes.extend(without_sock_diag.iter().map(|proto| {
        let name = proto.name();
        format!(
            "this kernel's sock_diag cannot list {name} sockets (no inet_diag/{name}_diag \
                 module loaded, and none could be): read /proc/net/{name} instead{}",
            if *proto == Proto::Tcp {
                ", which lists no TCP sockets that are bound but neither listening nor \
                     connected"
            } else {
                ""
            }
        )
    }));
    if query.protos.contains(&Proto::Tcp)
        && !without_sock_diag.contains(&Proto::Tcp)
        && let Some(release) = kernel_release().filter(|release| !lists_bound_inactive(release))
    {
        notes.push(format!(
            "kernel {release} predates Linux 6.8, whose sock_diag first lists TCP sockets that \
             are bound but neither listening nor connected: such sockets are not shown"
        ));
    }
    // Socket inodes are unique across namespaces: one scan of /proc finds every owner.
    let inodes: HashSet<u32> = found
        .iter()
        .map(|(_, socket)| socket.inode)
        .filter(|&inode| inode != 0)
        .collect();
    let mut owners = owners::find(&inodes);
    let mut sockets: Vec<Socket> = found
        .into_iter()
        .map(|(netns, socket)| Socket {
            netns,
            proto: socket.proto,
            state: state_name(socket.proto, socket.state),
            local: socket.local,
            remote: socket.remote,
            uid: (!matches!(socket.state, TCP_TIME_WAIT | TCP_NEW_SYN_RECV)).then_some(socket.uid),
            inode: socket.inode,
            owners: owners.by_inode.remove(&socket.inode).unwrap_or_default(),
        })
        .collect();
    // Per port and protocol: listeners and other unconnected sockets, then connections, then
    // TIME_WAIT, as a person reads them.
    let rank = |state: &str| match state {
        "listen" | "unconnected" | "bound_inactive" => 0,
        "time_wait" => 2,
        _ => 1,
    };
    sockets.sort_by_key(|socket| {
        (
            socket.local.port(),
            socket.proto.name(),
            rank(socket.state),
            Some(socket.netns) != own_netns,
            socket.netns,
            socket.local,
            socket.remote,
        )
    });
    Ok(Snapshot {
        sockets,
        unreadable_processes: owners.unreadable,
        notes,
        namespaces,
        own_netns,
    })
}

/// The start-up holders as `held` events, and what the caller should tell the user.
pub struct Held {
    /// Made one at a time as the caller takes them: a host can hold a hundred thousand
    /// TIME_WAIT sockets, and a list of their events would be the tracer's largest allocation.
    pub events: HeldEvents,
    pub notes: Vec<String>,
}

/// The snapshot's sockets, each turned into its `held` event when asked for.
pub struct HeldEvents {
    sockets: std::vec::IntoIter<Socket>,
    now: Timestamp,
}

impl Iterator for HeldEvents {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        let socket = self.sockets.next()?;
        let owner = socket.owners.first();
        Some(Event {
            ts: self.now,
            kind: Kind::Held,
            proto: socket.proto,
            local_addr: socket.local.ip(),
            local_port: socket.local.port(),
            remote: socket.remote.map(|remote| (remote.ip(), remote.port())),
            task: owner.map(|owner| {
                let (ppid, start_ns) = proc_stat::parent_and_start(owner.pid).unwrap_or((0, 0));
                Task {
                    pid: owner.pid,
                    tid: owner.pid,
                    ppid,
                    comm: Comm::from(owner.comm.as_str()),
                    start_ns,
                }
            }),
            uid: socket.uid.unwrap_or(0),
            how: None,
            errno: None,
            held_ns: None,
            time_wait: socket.state == "time_wait",
            time_wait_end: false,
            claimer_seen: true,
            state: Some(socket.state),
            cgroup_id: None,
            netns: Some(socket.netns),
            holder: None,
            hint: None,
            audit: None,
            exhaustion: None,
            container: None,
        })
    }
}

/// Current holders of the ports `query` asks for, as `held` events.
pub fn held(query: &Query) -> Held {
    let (sockets, notes) = match take(query) {
        Ok(snapshot) => (snapshot.sockets, snapshot.notes),
        Err(err) => (Vec::new(), vec![format!("{err}; no held events")]),
    };
    Held {
        events: HeldEvents {
            sockets: sockets.into_iter(),
            now: Timestamp::now(),
        },
        notes,
    }
}

/// Every TCP state, TIME_WAIT, connection requests and bound-only sockets included.
fn tcp_states() -> u32 {
    (1..=TCP_BOUND_INACTIVE).fold(0, |mask, state| mask | 1 << state)
}

pub fn state_name(proto: Proto, code: u8) -> &'static str {
    match (proto, code) {
        (Proto::Udp, 7) => "unconnected",
        (Proto::Udp, 1) => "connected",
        (_, 1) => "established",
        (_, 2) => "syn_sent",
        (_, 3) | (_, TCP_NEW_SYN_RECV) => "syn_recv",
        (_, 4) => "fin_wait1",
        (_, 5) => "fin_wait2",
        (_, TCP_TIME_WAIT) => "time_wait",
        (_, TCP_CLOSE | TCP_BOUND_INACTIVE) => "bound_inactive",
        (_, 8) => "close_wait",
        (_, 9) => "last_ack",
        (_, 10) => "listen",
        (_, 11) => "closing",
        _ => "unknown",
    }
}

fn kernel_release() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|text| text.trim().to_string())
}

/// Whether a kernel release (`6.18.44-fc`, `5.10.0-46-cloud-amd64`) lists bound-only TCP
/// sockets in sock_diag. Unparsable releases are given the benefit of the doubt.
fn lists_bound_inactive(release: &str) -> bool {
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|part| part.parse::<u32>().ok());
    match (numbers.next().flatten(), numbers.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= BOUND_INACTIVE_SINCE,
        _ => true,
    }
}

/// The inode of portwatch's own network namespace, as events carry it in `netns`.
pub fn own_netns() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/net")
        .ok()
        .map(|meta| meta.ino() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(port: u16, proto: Proto) -> Query {
        Query {
            ports: Some(PortSet::new(vec![port..=port])),
            protos: vec![proto],
            families: vec![Family::Ipv4, Family::Ipv6],
            netns: Scope::All,
        }
    }

    #[test]
    fn finds_a_real_listener_and_its_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let events: Vec<Event> = held(&query(port, Proto::Tcp)).events.collect();
        assert_eq!(events.len(), 1, "{events:?}");
        let task = events[0].task.as_ref().unwrap();
        assert_eq!(task.pid, std::process::id());
        assert_eq!(task.ppid, std::os::unix::process::parent_id());
        assert_eq!(events[0].state, Some("listen"));
    }

    #[test]
    fn the_kernel_filter_leaves_other_ports_out() {
        let wanted = std::net::UdpSocket::bind("[::1]:0").unwrap();
        let other = std::net::UdpSocket::bind("[::1]:0").unwrap();
        let port = wanted.local_addr().unwrap().port();
        let snapshot = take(&query(port, Proto::Udp)).unwrap();
        assert_eq!(snapshot.sockets.len(), 1, "{:?}", snapshot.sockets);
        assert_eq!(snapshot.sockets[0].local, wanted.local_addr().unwrap());
        assert_eq!(snapshot.sockets[0].state, "unconnected");
        assert_ne!(other.local_addr().unwrap().port(), port);
    }

    #[test]
    fn the_kernel_itself_drops_unwatched_ports() {
        let sockets: Vec<std::net::UdpSocket> = (0..4)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let ports: Vec<u16> = sockets
            .iter()
            .map(|s| s.local_addr().unwrap().port())
            .collect();
        let program = bytecode::local_port_in(&[ports[0]..=ports[0], ports[2]..=ports[2]]);
        let dumped = diag::dump(Proto::Udp, Family::Ipv4, u32::MAX, Some(&program)).unwrap();
        let mut seen: Vec<u16> = dumped.iter().map(|socket| socket.local.port()).collect();
        seen.sort_unstable();
        let mut wanted = vec![ports[0], ports[2]];
        wanted.sort_unstable();
        assert_eq!(seen, wanted);
    }

    #[test]
    fn one_tcp_dump_returns_both_families_as_the_per_family_dumps_do() {
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = v4.local_addr().unwrap().port();
        // A specific IPv6 address shares the port with an IPv4 one.
        let v6 = std::net::TcpListener::bind(("::1", port)).unwrap();
        let _client = std::net::TcpStream::connect(v6.local_addr().unwrap()).unwrap();
        let program = bytecode::local_port_in(&[port..=port]);
        let mut every: Vec<Diagnosed> =
            diag::dump_tcp_every_family(tcp_states(), Some(&program)).unwrap();
        let mut per_family: Vec<Diagnosed> = [Family::Ipv4, Family::Ipv6]
            .into_iter()
            .flat_map(|family| {
                diag::dump(Proto::Tcp, family, tcp_states(), Some(&program)).unwrap()
            })
            .collect();
        for sockets in [&mut every, &mut per_family] {
            sockets.retain(|socket| socket.local.port() == port);
            sockets.sort_by_key(|socket| (socket.local, socket.remote, socket.state));
        }
        // The IPv4 and IPv6 listeners and the accepted IPv6 connection.
        assert_eq!(every.len(), 3, "{every:?}");
        assert!(every.iter().any(|socket| socket.local.is_ipv4()));
        assert!(every.iter().any(|socket| socket.local.is_ipv6()));
        assert_eq!(every, per_family);
    }

    #[test]
    fn bound_inactive_support_follows_the_release() {
        assert!(lists_bound_inactive("6.18.44-fc-v782"));
        assert!(lists_bound_inactive("6.8.0"));
        assert!(lists_bound_inactive("6.12.118+deb13-cloud-amd64"));
        assert!(!lists_bound_inactive("6.1.0-56-cloud-amd64"));
        assert!(!lists_bound_inactive("5.10.0-46-cloud-amd64"));
        assert!(lists_bound_inactive("weird"));
    }

    #[test]
    fn names_states_per_protocol() {
        assert_eq!(state_name(Proto::Udp, 7), "unconnected");
        assert_eq!(state_name(Proto::Tcp, 7), "bound_inactive");
        assert_eq!(state_name(Proto::Tcp, 13), "bound_inactive");
        assert_eq!(state_name(Proto::Tcp, 12), "syn_recv");
        assert_eq!(tcp_states(), 0x3ffe);
    }
}
