//! Ephemeral-port pressure, live: the share of each network namespace's ephemeral range in use,
//! per protocol. Crossing the threshold is one `pressure` event (with the top claimers); falling
//! back below 90% of it is another. `EADDRNOTAVAIL` shows the end state; this shows it coming.
//!
//! A port counts as in use from its claim until its real release: a TIME_WAIT socket still
//! holds it. Ports held before tracing count once the start-up snapshot reports them.

use std::ops::RangeInclusive;

use foldhash::HashMap;

use crate::{
    host::netns::RangeReader,
    host::snapshot,
    live::holders::Holders,
    model::clock::Timestamp,
    model::event::{Event, Kind, Proto, Task},
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
    /// Sockets per port (several connections may share a local port).
    ports: HashMap<u16, u32>,
    high: bool,
}

pub struct PressureWatch {
    threshold_pct: u8,
    usage: HashMap<(Option<u32>, Proto), Usage>,
    /// Each namespace's ephemeral range, read once (None: unknown, not tracked).
    ranges: HashMap<Option<u32>, Option<RangeInclusive<u16>>>,
    /// Reads other namespaces' ranges; None where it could not be started.
    reader: Option<RangeReader>,
}

impl PressureWatch {
    /// `own_range`: portwatch's own namespace's range, already read.
    pub fn new(
        threshold_pct: u8,
        reader: Option<RangeReader>,
        own_range: Option<RangeInclusive<u16>>,
    ) -> Self {
        let own_netns = snapshot::own_netns();
        Self {
            threshold_pct,
            usage: HashMap::default(),
            ranges: [(own_netns, own_range.clone()), (None, own_range)]
                .into_iter()
                .collect(),
            reader,
        }
    }

    /// Counts the event's port in or out; returns a crossing if this event made one.
    pub fn observe(&mut self, event: &Event, holders: &Holders) -> Option<Pressure> {
        let delta: i32 = match event.kind {
            Kind::Claim | Kind::Held => 1,
            Kind::Free if !event.time_wait => -1,
            _ => return None,
        };
        let range = self.range_of(event)?;
        if !range.contains(&event.local_port) {
            return None;
        }
        let usage = self.usage.entry((event.netns, event.proto)).or_default();
        let sockets = usage.ports.entry(event.local_port).or_default();
        *sockets = sockets.saturating_add_signed(delta);
        if *sockets == 0 {
            usage.ports.remove(&event.local_port);
        }
        let size = usize::from(range.end() - range.start()) + 1;
        let share = usage.ports.len() * 100;
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
            proto: event.proto,
            netns: event.netns,
            high: usage.high,
            in_use: usage.ports.len(),
            top: holders.top_claimers(event.netns, event.proto, &range, TOP),
            range,
            threshold_pct: self.threshold_pct,
        })
    }

    fn range_of(&mut self, event: &Event) -> Option<RangeInclusive<u16>> {
        if let Some(known) = self.ranges.get(&event.netns) {
            return known.clone();
        }
        let range = {
            let pid = event.task.as_ref().map(|task| task.pid)?;
            let netns = event.netns?;
            let range = self
                .reader
                .as_mut()
                .and_then(|reader| reader.range_of(pid, netns));
            if range.is_none() {
                eprintln!(
                    "portwatch: note: the ephemeral range of network namespace {netns} is \
                     unknown (entering it needs CAP_SYS_ADMIN); no pressure events for it"
                );
            }
            range
        };
        self.ranges.insert(event.netns, range.clone());
        range
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::model::event::fixtures::sample;

    fn event(kind: Kind, port: u16) -> Event {
        let mut event = sample();
        event.kind = kind;
        event.netns = Some(7);
        event.time_wait = false;
        event.local_port = port;
        event.local_addr = IpAddr::V4(Ipv4Addr::LOCALHOST);
        event
    }

    #[test]
    fn crosses_up_at_the_threshold_and_down_below_ninety_percent_of_it() {
        let mut watch = PressureWatch::new(80, None, None);
        watch.ranges.insert(Some(7), Some(100..=109));
        let mut holders = Holders::default();
        let mut crossings = Vec::new();
        for port in 100..108 {
            let claim = event(Kind::Claim, port);
            holders.observe(&claim);
            crossings.extend(watch.observe(&claim, &holders));
        }
        assert_eq!(crossings.len(), 1);
        let up = &crossings[0];
        assert!(up.high);
        assert_eq!((up.in_use, up.range_size(), up.share_pct()), (8, 10, 80.0));
        assert_eq!(up.top[0].1, 8);
        // Back to normal below 72%: 8 → 7 ports is 70%.
        let down = watch.observe(&event(Kind::Free, 100), &holders);
        assert!(down.is_some_and(|down| !down.high && down.in_use == 7));
        assert!(watch.observe(&event(Kind::Free, 101), &holders).is_none());
    }

    #[test]
    fn a_time_wait_still_holds_its_port_and_other_ports_do_not_count() {
        let mut watch = PressureWatch::new(50, None, None);
        watch.ranges.insert(Some(7), Some(100..=101));
        let holders = Holders::default();
        assert!(watch.observe(&event(Kind::Claim, 5000), &holders).is_none());
        assert!(watch.observe(&event(Kind::Claim, 100), &holders).is_some());
        let mut time_wait = event(Kind::Free, 100);
        time_wait.time_wait = true;
        assert!(watch.observe(&time_wait, &holders).is_none());
        let mut end = event(Kind::Free, 100);
        end.time_wait_end = true;
        assert!(watch.observe(&end, &holders).is_some_and(|p| !p.high));
    }
}
