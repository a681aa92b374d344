//! Why the kernel found no local port: the explanation that goes with a connect's
//! `EADDRNOTAVAIL` (and a UDP autobind's `EAGAIN`, a bind(0)'s `EADDRINUSE`) that has no port.
//! Computed from the live holder table at the moment of the failure, by the kernel's own rules.
//!
//! TCP connect, from `__inet_hash_connect` in net/ipv4/inet_hashtables.c (torvalds/linux at
//! 00c1d298d486, the same logic since v6.1):
//! - the scan covers `ip_local_port_range` of the socket's namespace, `high++; remaining =
//!   high - low; if (!local_ports && remaining > 1) remaining &= ~1U;`: with an odd-sized range
//!   one port is not tried by a given connect (which one depends on the random offset);
//! - `if (inet_is_local_reserved_port(net, port)) continue;`: reserved ports are never tried;
//! - `if (tb->fastreuse >= 0 || tb->fastreuseport >= 0) goto next_port;`: a port whose bind
//!   bucket a bind() made (a bind to that port, a bind(0), a listener) is skipped for every
//!   destination, as long as any socket (a TIME_WAIT one too) still holds it; a bucket that a
//!   connect made has both at -1 and can be shared;
//! - `if (!check_established(death_row, sk, port, &tw)) goto ok;`: a shared port is usable
//!   unless a socket with the same 4-tuple (source address, port, destination address and
//!   port) exists; `__inet_check_established` lets a TIME_WAIT one be taken over when
//!   `twsk_unique` allows it (`net.ipv4.tcp_tw_reuse`: 1 always, 2 on loopback, once the
//!   TIME_WAIT is older than `tcp_tw_reuse_delay`, 1 s by default, and had timestamps);
//! - the bind buckets are per namespace and port, shared by IPv4 and IPv6 (the table's key has
//!   no family), so an IPv6 listener blocks the port for IPv4 connects too;
//! - `offset &= ~1U` and `step = 2`: connect tries ports of `low`'s parity first and the other
//!   parity second (`inet_csk_find_open_port`, bind(0), the reverse): the order, not the set.
//!
//! A socket bound with `IP_BIND_ADDRESS_NO_PORT` gets its port in this same scan at connect, so
//! it shares ports like a plain connect; without it, its bind(0) takes a port through
//! `inet_csk_find_open_port` and its bucket blocks the port for every other connect.
//!
//! UDP connect autobinds (`udp_lib_get_port` with port 0 in net/ipv4/udp.c): a port is taken
//! only if no UDP socket of the namespace holds it (`udp_lib_lport_inuse`, by address, with an
//! unbound address conflicting with all): UDP shares no port by 4-tuple. Out of ports, it fails
//! with `EAGAIN` (`inet_autobind`).

use std::{net::IpAddr, ops::RangeInclusive, time::Duration};

use foldhash::HashMap;
use portwatch_ebpf::How;

use crate::{
    live::holders::{Entry, Holders, PortChange},
    model::clock::Timestamp,
    model::event::Event,
    model::exhaustion::{Destination, Exhaustion, Share},
    model::ports::PortSet,
    model::proto::Proto,
    model::socket_state::SocketState,
};

/// How many holders and destinations an explanation names.
const TOP: usize = 5;

/// How long an explanation stands for further failures toward the same destination. Walking a
/// full default range (28232 ports) of the holder table takes tens of milliseconds; a storm of
/// failing connects must not stall the event loop that long each.
const REUSE_FOR_NS: u128 = 1_000_000_000;
/// How many recent explanations are kept before they are all dropped.
const RECENT: usize = 1024;

/// Explains failures, reusing a recent explanation for the same destination as long as no
/// port of its namespace was taken since.
#[derive(Default)]
pub struct Explainer {
    recent: HashMap<(Option<u32>, Proto), ByDestination>,
}

/// A namespace's recent explanations, by the failed connect's destination.
type ByDestination = HashMap<Option<(IpAddr, u16)>, Box<Exhaustion>>;

impl Explainer {
    pub fn explain(&mut self, event: &Event, holders: &Holders, facts: &Facts) -> Box<Exhaustion> {
        let namespace = (event.netns, event.proto);
        if let Some(recent) = self
            .recent
            .get(&namespace)
            .and_then(|recent| recent.get(&event.remote))
            && event.ts.nanos_since(recent.as_of) < REUSE_FOR_NS
            && recent.range == facts.range
        {
            return recent.clone();
        }
        if self.recent.len() >= RECENT {
            self.recent.clear();
        }
        let fresh = Box::new(explain(event, holders, facts));
        self.recent
            .entry(namespace)
            .or_default()
            .insert(event.remote, fresh.clone());
        fresh
    }

    /// A port of the namespace was taken: its explanations are out of date.
    pub fn port_taken(&mut self, change: &PortChange) {
        if !self.recent.is_empty() {
            self.recent.remove(&(change.netns, change.proto));
        }
    }
}

/// What the namespace's TIME_WAIT sockets allow, when portwatch can read it (its own
/// namespace's sysctls only: others need entering, which the tracer cannot do any more).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimeWaitReuse {
    /// `net.ipv4.tcp_tw_reuse`: 0 never, 1 always, 2 loopback only.
    pub mode: u8,
    /// `net.ipv4.tcp_tw_reuse_delay` (Linux 6.13 and later; 1 s before).
    pub delay: Duration,
}

impl TimeWaitReuse {
    /// This namespace's setting.
    pub fn read() -> Option<Self> {
        let read = |name: &str| {
            std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok())
        };
        Some(Self {
            mode: u8::try_from(read("tcp_tw_reuse")?).ok()?,
            delay: Duration::from_millis(read("tcp_tw_reuse_delay").unwrap_or(1000)),
        })
    }

    /// Whether a new connect may take over this TIME_WAIT socket's 4-tuple at `now`.
    fn allows(&self, entry: &Entry, now: Timestamp) -> bool {
        let loopback = entry.local_addr.is_loopback()
            || entry.remote.is_some_and(|(addr, _)| addr.is_loopback());
        let old_enough = now.nanos_since(entry.since) > self.delay.as_nanos();
        match self.mode {
            1 => old_enough,
            2 => loopback && old_enough,
            _ => false,
        }
    }
}

/// What the namespace knows about its own ports, beyond the holder table.
pub struct Facts<'a> {
    pub range: RangeInclusive<u16>,
    /// `ip_local_reserved_ports` in the range; None when unknown (another namespace).
    pub reserved: Option<&'a [RangeInclusive<u16>]>,
    /// None when unknown (another namespace).
    pub time_wait_reuse: Option<TimeWaitReuse>,
    /// The ports the holder table follows (None: all).
    pub watched: Option<&'a PortSet>,
}

/// Whether a failure is one the kernel's port search gave up on: no port, and the errno that
/// search returns.
pub fn applies(event: &Event) -> bool {
    event.local_port == 0
        && matches!(
            (event.proto, event.errno),
            (Proto::Tcp, Some(libc::EADDRNOTAVAIL | libc::EADDRINUSE))
                | (Proto::Udp, Some(libc::EAGAIN | libc::EADDRINUSE))
        )
}

/// The explanation for a failed claim `event` (one [`applies`] to).
pub fn explain(event: &Event, holders: &Holders, facts: &Facts) -> Exhaustion {
    let destination = event.remote;
    let now = event.ts;
    // Only a TCP connect shares ports by 4-tuple; a bind(0) or a UDP autobind needs a port no
    // socket holds (by address; every holder counts here).
    let shares = event.proto == Proto::Tcp && event.how == Some(How::Connect);
    let reserved = |port: u16| {
        facts
            .reserved
            .is_some_and(|ranges| ranges.iter().any(|range| range.contains(&port)))
    };
    let (mut bound, mut listening, mut free, mut usable) = (0, 0, 0, 0);
    let mut toward: HashMap<(Option<u32>, SocketState), Share> = HashMap::default();
    let mut by_destination: HashMap<(IpAddr, u16), Destination> = HashMap::default();
    let mut reserved_count = 0;
    for port in facts.range.clone() {
        if reserved(port) {
            reserved_count += 1;
            continue;
        }
        let mut sockets = holders
            .sockets_on(event.netns, event.proto, port)
            .peekable();
        if sockets.peek().is_none() {
            free += 1;
            usable += 1;
            continue;
        }
        let sockets: Vec<&Entry> = sockets.collect();
        for entry in &sockets {
            if let Some((addr, remote_port)) = entry.remote {
                let used = by_destination
                    .entry((addr, remote_port))
                    .or_insert(Destination {
                        addr,
                        port: remote_port,
                        ports: 0,
                        time_wait: 0,
                    });
                used.ports += 1;
                used.time_wait += usize::from(entry.state == SocketState::TimeWait);
            }
        }
        if !shares || sockets.iter().any(|entry| entry.made_by_bind()) {
            bound += 1;
            listening += usize::from(
                sockets
                    .iter()
                    .any(|entry| entry.state == SocketState::Listen),
            );
            continue;
        }
        let Some((addr, remote_port)) = destination else {
            continue;
        };
        let same_tuple = sockets.iter().find(|entry| {
            entry.remote == Some((addr, remote_port))
                && (event.local_addr.is_unspecified() || entry.local_addr == event.local_addr)
                && !(entry.state == SocketState::TimeWait
                    && facts
                        .time_wait_reuse
                        .is_some_and(|reuse| reuse.allows(entry, now)))
        });
        match same_tuple {
            Some(entry) => {
                let pid = entry.task.as_ref().map(|task| task.pid);
                toward
                    .entry((pid, entry.state))
                    .or_insert(Share {
                        task: entry.task,
                        state: entry.state,
                        ports: 0,
                    })
                    .ports += 1;
            }
            None => usable += 1,
        }
    }
    let size = usize::from(facts.range.end() - facts.range.start()) + 1;
    let mut toward: Vec<Share> = toward.into_values().collect();
    toward.sort_by_key(|share| std::cmp::Reverse(share.ports));
    toward.truncate(TOP);
    let mut busiest: Vec<Destination> = by_destination.into_values().collect();
    busiest.sort_by_key(|used| (std::cmp::Reverse(used.ports), used.addr, used.port));
    busiest.truncate(TOP);
    Exhaustion {
        as_of: event.ts,
        proto: event.proto,
        range: facts.range.clone(),
        tried: if size > 1 { size & !1 } else { size },
        reserved: facts.reserved.map(|_| reserved_count),
        bound,
        listening,
        destination,
        toward,
        free,
        usable: destination.map(|_| usable),
        time_wait_reuse: facts.time_wait_reuse.map(|reuse| reuse.mode),
        busiest,
        top: holders.top_claimers(event.netns, event.proto, &facts.range, TOP),
        complete: facts
            .watched
            .is_none_or(|watched| facts.range.clone().all(|port| watched.contains(port))),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{model::event::Kind, model::event::fixtures::sample};

    const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn claim(port: u16, how: How, remote: Option<(IpAddr, u16)>, pid: u32) -> Event {
        let mut event = sample();
        event.kind = Kind::Claim;
        event.time_wait = false;
        event.local_port = port;
        event.how = Some(how);
        event.remote = remote;
        if let Some(task) = &mut event.task {
            task.pid = pid;
        }
        event
    }

    fn failed_connect(remote: (IpAddr, u16)) -> Event {
        let mut event = claim(0, How::Connect, Some(remote), 99);
        event.kind = Kind::Fail;
        event.local_addr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        event.errno = Some(libc::EADDRNOTAVAIL);
        event
    }

    fn facts(reuse: u8) -> Facts<'static> {
        Facts {
            range: 40000..=40003,
            reserved: Some(&[]),
            time_wait_reuse: Some(TimeWaitReuse {
                mode: reuse,
                delay: Duration::from_secs(1),
            }),
            watched: None,
        }
    }

    #[test]
    fn one_destination_full_leaves_the_range_usable_for_another() {
        let mut holders = Holders::default();
        for port in 40000..=40003 {
            holders.observe(&claim(port, How::Connect, Some((LO, 5432)), 10));
        }
        let full = explain(&failed_connect((LO, 5432)), &holders, &facts(0));
        assert!(applies(&failed_connect((LO, 5432))));
        assert_eq!((full.usable, full.free, full.bound), (Some(0), 0, 0));
        assert_eq!(full.toward[0].ports, 4);
        assert_eq!(full.toward[0].state, SocketState::Established);
        assert_eq!(full.busiest[0].ports, 4);
        let other = explain(&failed_connect((LO, 6379)), &holders, &facts(0));
        assert_eq!(other.usable, Some(4));
        assert!(other.summary().contains("4 usable"), "{}", other.summary());
    }

    #[test]
    fn a_bound_port_is_blocked_for_every_destination_and_reserved_ones_are_skipped() {
        let mut holders = Holders::default();
        holders.observe(&claim(40000, How::BindAny, None, 10));
        let mut listener = claim(40001, How::Bind, None, 11);
        holders.observe(&listener);
        listener.kind = Kind::Listen;
        holders.observe(&listener);
        let reserved = [40002..=40002];
        let facts = Facts {
            reserved: Some(&reserved),
            ..facts(0)
        };
        let explained = explain(&failed_connect((LO, 5432)), &holders, &facts);
        assert_eq!(
            (explained.bound, explained.listening, explained.reserved),
            (2, 1, Some(1))
        );
        assert_eq!((explained.usable, explained.free), (Some(1), 1));
        assert_eq!(explained.to_json()["blocked_for_all"]["ports"], 3);
    }

    #[test]
    fn time_wait_blocks_its_tuple_unless_tcp_tw_reuse_takes_it_over() {
        let mut holders = Holders::default();
        let mut closed = claim(40000, How::Connect, Some((LO, 5432)), 10);
        holders.observe(&closed);
        closed.kind = Kind::Free;
        closed.time_wait = true;
        holders.observe(&closed);
        let mut failed = failed_connect((LO, 5432));
        assert_eq!(explain(&failed, &holders, &facts(0)).usable, Some(3));
        // Loopback reuse, but the TIME_WAIT is younger than the delay: still taken.
        assert_eq!(explain(&failed, &holders, &facts(2)).usable, Some(3));
        failed.ts = Timestamp::from_unix_nanos(closed.ts.nanos() + 2_000_000_000);
        let later = explain(&failed, &holders, &facts(2));
        assert_eq!(later.usable, Some(4));
        assert_eq!(later.busiest[0].time_wait, 1);
    }

    #[test]
    fn udp_and_bind_zero_need_a_port_nobody_holds() {
        let mut holders = Holders::default();
        let mut udp = claim(40000, How::Connect, Some((LO, 53)), 10);
        udp.proto = Proto::Udp;
        holders.observe(&udp);
        let mut failed = failed_connect((LO, 5353));
        failed.proto = Proto::Udp;
        failed.errno = Some(libc::EAGAIN);
        assert!(applies(&failed));
        let explained = explain(&failed, &holders, &facts(0));
        assert_eq!((explained.usable, explained.bound), (Some(3), 1));
    }

    #[test]
    fn an_odd_range_loses_one_port_per_connect_and_unwatched_ports_are_said() {
        let holders = Holders::default();
        let watched = PortSet::new(vec![40000..=40001]);
        let facts = Facts {
            range: 40000..=40004,
            watched: Some(&watched),
            ..facts(0)
        };
        let explained = explain(&failed_connect((LO, 5432)), &holders, &facts);
        assert_eq!((explained.tried, explained.complete), (4, false));
        assert!(explained.summary().contains("4 tried per connect"));
    }
}
