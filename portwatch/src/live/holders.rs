//! The live table of who holds each watched port: seeded by the start-up snapshot, kept by
//! claims, listens and frees. It answers "who holds this port?" when a claim fails, and names the
//! claimer of a port freed without a seen claim.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ops::RangeInclusive,
};

use foldhash::HashMap;
use portwatch_ebpf::How;

use crate::{
    live::port_sockets::{PortSockets, SocketId},
    model::clock::Timestamp,
    model::event::{Event, Holder, Kind},
    model::proto::Proto,
    model::socket_state::SocketState,
    model::task::{Comm, Task},
};

/// One socket holding a port.
#[derive(Clone, Debug)]
pub struct Entry {
    pub task: Option<Task>,
    pub local_addr: IpAddr,
    pub remote: Option<(IpAddr, u16)>,
    /// How the socket got its port; None when it held it before tracing began.
    pub how: Option<How>,
    pub since: Timestamp,
    pub state: SocketState,
}

impl Entry {
    fn holder(&self) -> Holder {
        Holder {
            task: self.task,
            local_addr: self.local_addr,
            remote: self.remote,
            how: self.how,
            since: self.since,
            state: self.state.name(),
        }
    }

    fn rank(&self) -> u8 {
        self.state.blocking_rank()
    }

    /// Whether the socket's bind bucket was made by a bind() (a bind to the port, a bind(0), a
    /// listener), which a connect's port search skips for every destination. A socket seen
    /// only in the start-up snapshot counts when it listens or is bound only; an established
    /// one is taken for a connect's.
    pub fn made_by_bind(&self) -> bool {
        matches!(self.how, Some(How::Bind | How::BindAny))
            || matches!(self.state, SocketState::Listen | SocketState::BoundInactive)
    }

    /// The destination a connect-made socket (TCP connect, UDP connect) uses its port toward.
    fn toward(&self) -> Option<(IpAddr, (IpAddr, u16))> {
        let (addr, port) = self.remote?;
        matches!(self.how, Some(How::Connect | How::Autobind))
            .then(|| (canonical(self.local_addr), (canonical(addr), port)))
    }
}

/// One destination of one source address, in one namespace and protocol.
pub type Toward = (Option<u32>, Proto, IpAddr, (IpAddr, u16));

/// A port whose occupancy changed: its first socket took it, or its last one gave it back.
/// The holder table is the only place that counts sockets per port; pressure and the metrics
/// learn of ports from these changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortChange {
    pub netns: Option<u32>,
    pub proto: Proto,
    pub port: u16,
    /// True: the port is in use from now on; false: no socket holds it any more.
    pub taken: bool,
}

/// Sockets conflict only within one network namespace, protocol and port.
type Key = (Option<u32>, Proto, u16);

fn key(event: &Event) -> Key {
    (event.netns, event.proto, event.local_port)
}

fn socket_id(local: IpAddr, remote: Option<(IpAddr, u16)>) -> SocketId {
    (
        canonical(local),
        remote.map(|(addr, port)| (canonical(addr), port)),
    )
}

type Sockets = PortSockets<Entry>;

#[derive(Default)]
pub struct Holders {
    ports: HashMap<Key, Sockets>,
    /// Emptied short lists, kept for the next ports claimed. On socket churn every claim is
    /// on a new port and every free empties one; reusing the lists spares an allocation and a
    /// free per event.
    spare_sockets: Vec<Sockets>,
    /// Sockets a connect gave a port, per destination: the ports in use toward it (a 4-tuple
    /// is unique, so sockets and ports are the same count).
    toward: HashMap<Toward, u32>,
    /// Sockets whose bind bucket a bind() made, per port: ports blocked for every connect.
    bound: HashMap<(Option<u32>, Proto), BTreeMap<u16, u32>>,
}

/// How many emptied lists are kept, and how large (in sockets) each may be: a port that once
/// held a busy listener's thousands of connections goes back to the allocator.
const SPARES: usize = 64;
const SPARE_CAPACITY: usize = 8;

impl Holders {
    /// Keeps the table in step with one event (before any user filter: the table must see
    /// everything the kernel reported). Returns the port's change of occupancy, if any: a free
    /// of a socket never seen taking its port changes nothing.
    pub fn observe(&mut self, event: &Event) -> Option<PortChange> {
        let (released, taken) = match event.kind {
            Kind::Held => (false, self.put(event, Entry::from_held(event))),
            Kind::Claim => {
                let entry = Entry::from_claim(event);
                let emptied = self.end_time_waits_taken_over(event, &entry);
                (emptied, self.put(event, entry))
            }
            Kind::Listen => self.change(event, |entry| entry.state = SocketState::Listen),
            Kind::Free if event.time_wait => self.change(event, |entry| {
                // The TIME_WAIT socket is known by its connection from now on.
                entry.state = SocketState::TimeWait;
                entry.local_addr = event.local_addr;
                entry.remote = event.remote;
            }),
            Kind::Free => (
                self.take(event).is_some_and(|(_, released)| released),
                false,
            ),
            Kind::Fail => (false, false),
        };
        (released != taken).then_some(PortChange {
            netns: event.netns,
            proto: event.proto,
            port: event.local_port,
            taken,
        })
    }

    /// Takes out the event's socket, changes it and puts it back; (released, taken) as the
    /// port went empty and full again on the way.
    fn change(&mut self, event: &Event, edit: impl FnOnce(&mut Entry)) -> (bool, bool) {
        match self.take(event) {
            Some((mut entry, released)) => {
                edit(&mut entry);
                (released, self.put(event, entry))
            }
            None => (false, false),
        }
    }

    /// The task that holds the very socket this event is about (same addresses and peer),
    /// preferring one with a process.
    pub fn claimer_of(&self, event: &Event) -> Option<Task> {
        self.ports
            .get(&key(event))?
            .under(&socket_id(event.local_addr, event.remote))
            .find_map(|entry| entry.task)
    }

    /// Who holds the port a failed claim wanted: the sockets whose address conflicts with the
    /// one asked for (equal, or either one a wildcard; IPv4 and IPv4-mapped IPv6 alike).
    pub fn holder_for(&self, failed: &Event) -> Option<Holder> {
        let entries = || {
            self.ports
                .get(&key(failed))
                .into_iter()
                .flat_map(|port| port.iter())
        };
        entries()
            .filter(|entry| addresses_conflict(entry.local_addr, failed.local_addr))
            .min_by_key(|entry| entry.rank())
            .or_else(|| entries().min_by_key(|entry| entry.rank()))
            .map(Entry::holder)
    }

    /// Adds a socket; true when it is the port's first.
    fn put(&mut self, event: &Event, entry: Entry) -> bool {
        self.index(event, &entry, true);
        let Self {
            ports,
            spare_sockets,
            ..
        } = self;
        let mut first = false;
        ports
            .entry(key(event))
            .or_insert_with(|| {
                first = true;
                spare_sockets.pop().unwrap_or_default()
            })
            .push(socket_id(entry.local_addr, entry.remote), entry);
        first
    }

    /// Removes the TIME_WAIT sockets listed under the 4-tuple a connect just got: the kernel
    /// lets a connect take over a TIME_WAIT socket's 4-tuple (`tcp_tw_reuse`) only by killing
    /// that socket (`__inet_check_established` in net/ipv4/inet_hashtables.c), an end the
    /// tracepoint backend cannot see. True when that emptied the port.
    fn end_time_waits_taken_over(&mut self, event: &Event, entry: &Entry) -> bool {
        if entry.toward().is_none() {
            return false;
        }
        let key = key(event);
        let id = socket_id(entry.local_addr, entry.remote);
        let Some(port) = self.ports.get_mut(&key) else {
            return false;
        };
        let ended = port.take_all(&id, |held| held.state == SocketState::TimeWait);
        if ended.is_empty() {
            return false;
        }
        let emptied = port.is_empty();
        if emptied && let Some(sockets) = self.ports.remove(&key) {
            keep_spare(&mut self.spare_sockets, sockets);
        }
        for time_wait in &ended {
            self.index(event, time_wait, false);
        }
        emptied
    }

    /// Takes out the entry an event about a socket refers to: the same socket of the same
    /// process, else a socket of that process claimed before it had a peer (bind, then connect;
    /// a wildcard bind gets a specific address when it connects), else the same socket of
    /// whichever process. True with it when it was the port's last socket.
    fn take(&mut self, event: &Event) -> Option<(Entry, bool)> {
        let key = key(event);
        let port = self.ports.get_mut(&key)?;
        let pid = event.task.as_ref().map(|task| task.pid);
        let same_pid = |entry: &Entry| entry.task.as_ref().map(|task| task.pid) == pid;
        let exact = socket_id(event.local_addr, event.remote);
        let unconnected = [
            socket_id(event.local_addr, None),
            socket_id(IpAddr::V4(Ipv4Addr::UNSPECIFIED), None),
            socket_id(IpAddr::V6(Ipv6Addr::UNSPECIFIED), None),
        ];
        let entry = std::iter::once(exact)
            .chain(unconnected)
            .find_map(|id| port.take(&id, same_pid))
            .or_else(|| port.take(&exact, |_| true))?;
        let last = port.is_empty();
        if last && let Some(emptied) = self.ports.remove(&key) {
            keep_spare(&mut self.spare_sockets, emptied);
        }
        self.index(event, &entry, false);
        Some((entry, last))
    }

    /// Keeps the destination and bound-port counts in step with a socket added or removed.
    fn index(&mut self, event: &Event, entry: &Entry, added: bool) {
        if let Some((source, destination)) = entry.toward() {
            let key = (event.netns, event.proto, source, destination);
            if added {
                *self.toward.entry(key).or_default() += 1;
            } else if decrement(self.toward.get_mut(&key)) {
                self.toward.remove(&key);
            }
        }
        if entry.made_by_bind() {
            let ports = self.bound.entry((event.netns, event.proto)).or_default();
            if added {
                *ports.entry(event.local_port).or_default() += 1;
            } else if decrement(ports.get_mut(&event.local_port)) {
                ports.remove(&event.local_port);
            }
        }
    }

    /// The destinations with most ports in use toward them, busiest first.
    pub fn top_destinations(&self, limit: usize) -> Vec<(Toward, u32)> {
        let mut top: Vec<(Toward, u32)> = self
            .toward
            .iter()
            .map(|(toward, ports)| (*toward, *ports))
            .collect();
        top.sort_by_key(|((netns, proto, source, destination), ports)| {
            (
                std::cmp::Reverse(*ports),
                *netns,
                proto.name(),
                *source,
                *destination,
            )
        });
        top.truncate(limit);
        top
    }

    /// Ports in use toward one destination from one source address.
    pub fn toward_count(&self, toward: &Toward) -> u32 {
        self.toward.get(toward).copied().unwrap_or(0)
    }

    /// The destination a connect-made event's socket uses its port toward.
    pub fn toward_of(event: &Event) -> Option<Toward> {
        let (source, destination) = Entry::from_claim(event).toward()?;
        Some((event.netns, event.proto, source, destination))
    }

    /// Ports of `range` a bind() made the bucket of: unusable for every connect.
    pub fn bound_in(&self, netns: Option<u32>, proto: Proto, range: &RangeInclusive<u16>) -> usize {
        self.bound
            .get(&(netns, proto))
            .map_or(0, |ports| ports.range(range.clone()).count())
    }

    /// The sockets holding one port of one namespace and protocol.
    pub fn sockets_on(
        &self,
        netns: Option<u32>,
        proto: Proto,
        port: u16,
    ) -> impl Iterator<Item = &Entry> {
        self.ports
            .get(&(netns, proto, port))
            .into_iter()
            .flat_map(|sockets| sockets.iter())
    }

    /// The processes holding most ports in `range` of one namespace and protocol, busiest
    /// first: who is using up the ephemeral range.
    pub fn top_claimers(
        &self,
        netns: Option<u32>,
        proto: Proto,
        range: &RangeInclusive<u16>,
        limit: usize,
    ) -> Vec<(Option<Task>, usize)> {
        // Keyed by (pid, comm), None for sockets without a process.
        type Process = Option<(u32, Comm)>;
        let mut ports_by_process: HashMap<Process, (Option<&Task>, usize)> = HashMap::default();
        for ((ns, p, port), sockets) in &self.ports {
            if *ns != netns || *p != proto || !range.contains(port) {
                continue;
            }
            for entry in sockets.iter() {
                let id = entry.task.as_ref().map(|task| (task.pid, task.comm));
                ports_by_process
                    .entry(id)
                    .or_insert((entry.task.as_ref(), 0))
                    .1 += 1;
            }
        }
        let mut top: Vec<(Option<Task>, usize)> = ports_by_process
            .into_values()
            .map(|(task, count)| (task.cloned(), count))
            .collect();
        top.sort_by_key(|(_, ports)| std::cmp::Reverse(*ports));
        top.truncate(limit);
        top
    }

    /// Sockets in the table, for tests and for watching the table's size in a soak.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.ports.values().map(|port| port.iter().count()).sum()
    }
}

/// Counts one down; true when it reached zero (and its key should go).
fn decrement(count: Option<&mut u32>) -> bool {
    count.is_some_and(|count| {
        *count -= 1;
        *count == 0
    })
}

/// Keeps an emptied port's list for reuse, unless enough are kept or it is large (or a table).
fn keep_spare(spares: &mut Vec<Sockets>, emptied: Sockets) {
    let small = emptied
        .list_capacity()
        .is_some_and(|capacity| capacity <= SPARE_CAPACITY);
    if spares.len() < SPARES && small {
        spares.push(emptied);
    }
}

impl Entry {
    fn from_held(event: &Event) -> Self {
        Entry {
            task: event.task,
            local_addr: event.local_addr,
            remote: event.remote,
            how: None,
            since: event.ts,
            // The snapshot's words become the one state type here.
            state: event
                .state
                .map_or(SocketState::Unknown, SocketState::from_name),
        }
    }

    fn from_claim(event: &Event) -> Self {
        let connected = match event.proto {
            Proto::Tcp => matches!(event.how, Some(How::Connect | How::Accept)),
            Proto::Udp => event.remote.is_some(),
        };
        Entry {
            task: event.task,
            local_addr: event.local_addr,
            remote: event.remote,
            how: event.how,
            since: event.ts,
            state: SocketState::claimed(event.proto, connected),
        }
    }
}

/// An IPv4-mapped IPv6 address is the IPv4 address it maps.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether two local addresses on one port collide in the kernel's bind tables: equal, or
/// either is a wildcard. An IPv6 wildcard (`[::]`, dual-stack unless IPV6_V6ONLY) also covers
/// IPv4; an IPv4 wildcard covers IPv4 and IPv4-mapped addresses only.
fn addresses_conflict(held: IpAddr, wanted: IpAddr) -> bool {
    let (held, wanted) = (canonical(held), canonical(wanted));
    if held == wanted {
        return true;
    }
    match (held, wanted) {
        (IpAddr::V6(held), _) if held.is_unspecified() => true,
        (_, IpAddr::V6(wanted)) if wanted.is_unspecified() => true,
        (IpAddr::V4(held), IpAddr::V4(_)) if held.is_unspecified() => true,
        (IpAddr::V4(_), IpAddr::V4(wanted)) if wanted.is_unspecified() => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::model::event::fixtures::sample;

    fn event(kind: Kind, addr: IpAddr, remote: Option<(IpAddr, u16)>, pid: u32) -> Event {
        let mut event = sample();
        event.kind = kind;
        event.local_addr = addr;
        event.remote = remote;
        event.time_wait = false;
        event.how = Some(How::Bind);
        if let Some(task) = &mut event.task {
            task.pid = pid;
        }
        event
    }

    const ANY4: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    const ANY6: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
    const LO4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    const LO6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

    #[test]
    fn a_listener_is_the_holder_and_leaves_on_free() {
        let mut holders = Holders::default();
        holders.observe(&event(Kind::Claim, LO4, None, 10));
        holders.observe(&event(Kind::Listen, LO4, None, 10));
        let holder = holders
            .holder_for(&event(Kind::Fail, LO4, None, 11))
            .unwrap();
        assert_eq!((holder.state, holder.task.unwrap().pid), ("listen", 10));
        holders.observe(&event(Kind::Free, LO4, None, 10));
        assert!(
            holders
                .holder_for(&event(Kind::Fail, LO4, None, 11))
                .is_none()
        );
        assert_eq!(holders.len(), 0);
    }

    #[test]
    fn a_reused_table_holds_only_its_new_port() {
        let mut holders = Holders::default();
        let on = |kind, port, pid| {
            let mut event = event(kind, LO4, None, pid);
            event.local_port = port;
            event
        };
        holders.observe(&on(Kind::Claim, 5000, 10));
        holders.observe(&on(Kind::Free, 5000, 10));
        assert_eq!(holders.spare_sockets.len(), 1);
        holders.observe(&on(Kind::Claim, 5001, 11));
        assert_eq!(holders.spare_sockets.len(), 0);
        assert!(holders.holder_for(&on(Kind::Fail, 5000, 12)).is_none());
        let holder = holders.holder_for(&on(Kind::Fail, 5001, 12)).unwrap();
        assert_eq!(holder.task.unwrap().pid, 11);
        assert_eq!(holders.len(), 1);
    }

    #[test]
    fn wildcards_and_dual_stack_conflict_like_the_kernel() {
        assert!(addresses_conflict(ANY6, LO4));
        assert!(addresses_conflict(ANY4, LO4));
        assert!(addresses_conflict(LO4, ANY4));
        assert!(addresses_conflict(LO4, ANY6));
        assert!(!addresses_conflict(ANY4, LO6));
        assert!(!addresses_conflict(
            LO4,
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))
        ));
        let mapped = IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped());
        assert!(addresses_conflict(mapped, LO4));
    }

    #[test]
    fn a_time_wait_keeps_holding_until_its_end() {
        let mut holders = Holders::default();
        let peer = Some((LO4, 8080));
        holders.observe(&event(Kind::Claim, LO4, peer, 10));
        let mut time_wait = event(Kind::Free, LO4, peer, 10);
        time_wait.time_wait = true;
        holders.observe(&time_wait);
        let holder = holders
            .holder_for(&event(Kind::Fail, ANY4, None, 11))
            .unwrap();
        assert_eq!(holder.state, "time_wait");
        let mut end = event(Kind::Free, LO4, peer, 10);
        end.time_wait_end = true;
        holders.observe(&end);
        assert_eq!(holders.len(), 0);
    }

    #[test]
    fn a_connect_that_takes_over_a_time_wait_ends_it() {
        let mut holders = Holders::default();
        let peer = Some((LO4, 5432));
        let connect = |pid| {
            let mut claim = event(Kind::Claim, LO4, peer, pid);
            claim.how = Some(How::Connect);
            claim
        };
        let first = holders.observe(&connect(10));
        assert!(first.is_some_and(|change| change.taken));
        let mut time_wait = event(Kind::Free, LO4, peer, 10);
        time_wait.time_wait = true;
        holders.observe(&time_wait);
        let toward = Holders::toward_of(&connect(11)).unwrap();
        assert_eq!(holders.toward_count(&toward), 1);
        // The same 4-tuple again: the kernel killed the TIME_WAIT socket to hand it over, and
        // the port never went free.
        assert_eq!(holders.observe(&connect(11)), None);
        assert_eq!(holders.toward_count(&toward), 1);
        assert_eq!(holders.len(), 1);
        let holder = holders
            .holder_for(&event(Kind::Fail, ANY4, None, 12))
            .unwrap();
        assert_eq!(
            (holder.state, holder.task.map(|task| task.pid)),
            ("established", Some(11))
        );
    }

    #[test]
    fn a_socket_bound_before_it_connected_is_followed_into_time_wait() {
        let mut holders = Holders::default();
        holders.observe(&event(Kind::Claim, ANY4, None, 10));
        let peer = Some((LO4, 8080));
        let mut time_wait = event(Kind::Free, LO4, peer, 10);
        time_wait.time_wait = true;
        holders.observe(&time_wait);
        let holder = holders
            .holder_for(&event(Kind::Fail, LO4, None, 11))
            .unwrap();
        assert_eq!((holder.state, holder.remote), ("time_wait", peer));
        let mut end = event(Kind::Free, LO4, peer, 0);
        end.time_wait_end = true;
        holders.observe(&end);
        assert_eq!(holders.len(), 0);
    }

    #[test]
    fn the_claimer_of_a_free_is_found_by_the_whole_socket() {
        let mut holders = Holders::default();
        let mut held = event(Kind::Held, LO4, Some((LO4, 20123)), 10);
        held.state = Some("established");
        holders.observe(&held);
        let other = event(Kind::Free, LO4, Some((LO4, 20121)), 0);
        assert!(holders.claimer_of(&other).is_none());
        let same = event(Kind::Free, LO4, Some((LO4, 20123)), 0);
        assert_eq!(holders.claimer_of(&same).unwrap().pid, 10);
    }
}
