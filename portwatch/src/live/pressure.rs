//! Ephemeral-port pressure, live, at two scopes. Per namespace and protocol: the ports of its
//! ephemeral range bound by any socket. That share is not exhaustion: a connect needs a port
//! whose 4-tuple toward its destination is free, so one port serves many destinations. Per
//! destination (namespace, protocol, source address, destination address and port): the ports
//! in use toward it against the ports still usable for it (the range, minus the ports a bind()
//! holds, which no connect may share); that one reaching 100% is the next connect's
//! `EADDRNOTAVAIL`. Crossing the threshold is one `pressure` event (with the top claimers);
//! falling back below 90% of it is another.
//!
//! A port counts as in use from its claim until its real release: a TIME_WAIT socket still
//! holds it. Ports held before tracing count once the start-up snapshot reports them; toward a
//! destination, only connections seen made count.

use std::{net::IpAddr, ops::RangeInclusive};

use foldhash::{HashMap, HashSet};

use crate::{
    host::ns_ranges::NamespaceRanges,
    live::holders::{Holders, PortChange, Toward},
    model::clock::Timestamp,
    model::event::Event,
    model::proto::Proto,
    model::task::Task,
};

/// How many claimers a pressure event names.
const TOP: usize = 5;

/// One crossing of the threshold, up or down.
#[derive(Clone, Debug, PartialEq)]
pub struct Pressure {
    pub ts: Timestamp,
    pub proto: Proto,
    pub netns: Option<u32>,
    pub high: bool,
    pub in_use: usize,
    pub range: RangeInclusive<u16>,
    pub threshold_pct: u8,
    pub top: Vec<(Option<Task>, usize)>,
    /// Per destination: which, and how many ports of the range are usable for it; None for
    /// the namespace's count (`in_use` is then the ports bound in the range).
    pub toward: Option<Destination>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Destination {
    pub source: IpAddr,
    pub addr: IpAddr,
    pub port: u16,
    /// The range's ports not bound by a bind(): what `in_use` is a share of.
    pub usable: usize,
}

impl Pressure {
    pub fn range_size(&self) -> usize {
        usize::from(self.range.end() - self.range.start()) + 1
    }

    /// What `in_use` is counted against: the range, or the ports usable toward the destination.
    pub fn capacity(&self) -> usize {
        self.toward
            .as_ref()
            .map_or_else(|| self.range_size(), |toward| toward.usable)
    }

    pub fn share_pct(&self) -> f64 {
        self.in_use as f64 * 100.0 / self.capacity().max(1) as f64
    }
}

/// Whether a count crossed the threshold of `capacity`, given the side it was on: up at the
/// threshold, back down below 90% of it (so a share hovering at the line does not report
/// every step).
fn crossed(high: bool, count: usize, capacity: usize, threshold_pct: u8) -> bool {
    let (share, threshold) = (count * 100, usize::from(threshold_pct));
    if high {
        share * 10 < threshold * capacity * 9
    } else {
        share >= threshold * capacity
    }
}

#[derive(Default)]
struct Usage {
    /// Ports of the range held by at least one socket.
    ports: usize,
    high: bool,
}

pub struct PressureWatch {
    threshold_pct: u8,
    usage: HashMap<(Option<u32>, Proto), Usage>,
    /// Destinations above the threshold now.
    high_toward: HashSet<Toward>,
}

impl PressureWatch {
    pub fn new(threshold_pct: u8) -> Self {
        Self {
            threshold_pct,
            usage: HashMap::default(),
            high_toward: HashSet::default(),
        }
    }

    /// After a connect's claim or its socket's free: a crossing if the ports in use toward
    /// its destination crossed the threshold of the ports usable for it.
    pub fn observe_destination(
        &mut self,
        event: &Event,
        holders: &Holders,
        ranges: &mut NamespaceRanges,
    ) -> Option<Pressure> {
        let toward = Holders::toward_of(event)?;
        let range = ranges.range_of(event)?;
        if !range.contains(&event.local_port) {
            return None;
        }
        let in_use = holders.toward_count(&toward) as usize;
        let size = usize::from(range.end() - range.start()) + 1;
        let usable = size.saturating_sub(holders.bound_in(event.netns, event.proto, &range));
        let high = self.high_toward.contains(&toward);
        if !crossed(high, in_use, usable, self.threshold_pct) {
            return None;
        }
        if high {
            self.high_toward.remove(&toward);
        } else {
            self.high_toward.insert(toward);
        }
        let (netns, proto, source, (addr, port)) = toward;
        Some(Pressure {
            ts: event.ts,
            proto,
            netns,
            high: !high,
            in_use,
            top: holders.top_claimers(netns, proto, &range, TOP),
            range,
            threshold_pct: self.threshold_pct,
            toward: Some(Destination {
                source,
                addr,
                port,
                usable,
            }),
        })
    }

    /// Counts a port that the holder table saw taken or given back; returns a crossing if
    /// this change made one.
    pub fn observe(
        &mut self,
        event: &Event,
        change: &PortChange,
        holders: &Holders,
        ranges: &mut NamespaceRanges,
    ) -> Option<Pressure> {
        let range = ranges.range_of(event)?;
        if !range.contains(&change.port) {
            return None;
        }
        let usage = self.usage.entry((change.netns, change.proto)).or_default();
        if change.taken {
            usage.ports += 1;
        } else {
            // Every release follows a take the table counted.
            usage.ports -= 1;
        }
        let size = usize::from(range.end() - range.start()) + 1;
        if !crossed(usage.high, usage.ports, size, self.threshold_pct) {
            return None;
        }
        usage.high = !usage.high;
        Some(Pressure {
            ts: event.ts,
            proto: change.proto,
            netns: change.netns,
            high: usage.high,
            in_use: usage.ports,
            top: holders.top_claimers(change.netns, change.proto, &range, TOP),
            range,
            threshold_pct: self.threshold_pct,
            toward: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::{model::event::Kind, model::event::fixtures::sample};

    fn event(kind: Kind, port: u16) -> Event {
        let mut event = sample();
        event.kind = kind;
        event.netns = Some(7);
        event.time_wait = false;
        event.local_port = port;
        event.local_addr = IpAddr::V4(Ipv4Addr::LOCALHOST);
        event.remote = None;
        event
    }

    /// Feeds an event through the holder table and, on a change, the watch.
    fn feed(
        watch: &mut PressureWatch,
        holders: &mut Holders,
        ranges: &mut NamespaceRanges,
        event: &Event,
    ) -> Option<Pressure> {
        let change = holders.observe(event)?;
        watch.observe(event, &change, holders, ranges)
    }

    fn ranges(range: RangeInclusive<u16>) -> NamespaceRanges {
        let mut ranges = NamespaceRanges::new(None, None);
        ranges.insert(Some(7), range);
        ranges
    }

    #[test]
    fn crosses_up_at_the_threshold_and_down_below_ninety_percent_of_it() {
        let mut watch = PressureWatch::new(80);
        let mut ranges = ranges(100..=109);
        let mut holders = Holders::default();
        let mut crossings = Vec::new();
        for port in 100..108 {
            let claim = event(Kind::Claim, port);
            crossings.extend(feed(&mut watch, &mut holders, &mut ranges, &claim));
        }
        assert_eq!(crossings.len(), 1);
        let up = &crossings[0];
        assert!(up.high);
        assert_eq!((up.in_use, up.range_size(), up.share_pct()), (8, 10, 80.0));
        assert_eq!(up.top[0].1, 8);
        // Back to normal below 72%: 8 → 7 ports is 70%.
        let down = feed(
            &mut watch,
            &mut holders,
            &mut ranges,
            &event(Kind::Free, 100),
        );
        assert!(down.is_some_and(|down| !down.high && down.in_use == 7));
        let free = event(Kind::Free, 101);
        assert!(feed(&mut watch, &mut holders, &mut ranges, &free).is_none());
    }

    #[test]
    fn a_time_wait_still_holds_its_port_and_other_ports_do_not_count() {
        let mut watch = PressureWatch::new(50);
        let mut ranges = ranges(100..=101);
        let mut holders = Holders::default();
        let mut feed = |event: &Event| feed(&mut watch, &mut holders, &mut ranges, event);
        assert!(feed(&event(Kind::Claim, 5000)).is_none());
        assert!(feed(&event(Kind::Claim, 100)).is_some());
        let mut time_wait = event(Kind::Free, 100);
        time_wait.time_wait = true;
        assert!(feed(&time_wait).is_none());
        let mut end = event(Kind::Free, 100);
        end.time_wait_end = true;
        assert!(feed(&end).is_some_and(|p| !p.high));
        // A free never seen taken changes nothing (and does not count below zero).
        assert!(feed(&event(Kind::Free, 101)).is_none());
    }

    #[test]
    fn a_destination_is_full_when_its_usable_ports_are_and_others_are_not() {
        let mut watch = PressureWatch::new(100);
        let mut ranges = ranges(100..=102);
        let mut holders = Holders::default();
        let mut bound = event(Kind::Claim, 100);
        bound.how = Some(portwatch_ebpf::How::BindAny);
        holders.observe(&bound);
        let connect = |port, peer| {
            let mut event = event(Kind::Claim, port);
            event.how = Some(portwatch_ebpf::How::Connect);
            event.remote = Some((IpAddr::V4(Ipv4Addr::LOCALHOST), peer));
            event
        };
        let mut crossings = Vec::new();
        for (port, peer) in [(101, 5432), (101, 6379), (102, 5432)] {
            let claim = connect(port, peer);
            holders.observe(&claim);
            crossings.extend(watch.observe_destination(&claim, &holders, &mut ranges));
        }
        assert_eq!(crossings.len(), 1, "{crossings:?}");
        let full = &crossings[0];
        let toward = full.toward.as_ref().unwrap();
        assert_eq!((toward.port, toward.usable, full.in_use), (5432, 2, 2));
        assert_eq!(full.share_pct(), 100.0);
        let mut free = connect(102, 5432);
        free.kind = Kind::Free;
        holders.observe(&free);
        let eased = watch.observe_destination(&free, &holders, &mut ranges);
        assert!(eased.is_some_and(|eased| !eased.high && eased.in_use == 1));
    }
}
