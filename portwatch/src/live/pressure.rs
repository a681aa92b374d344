//! Ephemeral-port pressure, live: the share of each network namespace's ephemeral range in use,
//! per protocol. Crossing the threshold is one `pressure` event (with the top claimers); falling
//! back below 90% of it is another. `EADDRNOTAVAIL` shows the end state; this shows it coming.
//!
//! A port counts as in use from its claim until its real release: a TIME_WAIT socket still
//! holds it. Ports held before tracing count once the start-up snapshot reports them.

use std::ops::RangeInclusive;

use foldhash::HashMap;

use crate::{
    host::ns_ranges::NamespaceRanges,
    live::holders::{Holders, PortChange},
    model::clock::Timestamp,
    model::event::{Event, Proto, Task},
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
}

impl Pressure {
    pub fn range_size(&self) -> usize {
        usize::from(self.range.end() - self.range.start()) + 1
    }

    pub fn share_pct(&self) -> f64 {
        self.in_use as f64 * 100.0 / self.range_size() as f64
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
}

impl PressureWatch {
    pub fn new(threshold_pct: u8) -> Self {
        Self {
            threshold_pct,
            usage: HashMap::default(),
        }
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
        let share = usage.ports * 100;
        let threshold = usize::from(self.threshold_pct);
        let crossed = if !usage.high && share >= threshold * size {
            true
        } else {
            // Back to normal below 90% of the threshold, so a share hovering at the line does
            // not report every step.
            usage.high && share * 10 < threshold * size * 9
        };
        if !crossed {
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
}
