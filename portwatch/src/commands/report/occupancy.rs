//! Ports in use over time, counted as the holds open and close: per network namespace and
//! protocol, all watched ports and the ephemeral range apart, TIME_WAIT apart within each, as a
//! series of at most [`BUCKETS`] buckets whatever the capture's length (a bucket keeps its
//! fullest moment). For the ephemeral range also the peak and what filled it then: by process,
//! by destination, and how much of it was TIME_WAIT; and per destination (remote addr:port) the
//! most local ports toward it at once, which is what one destination's connects run out of.
//!
//! A port is in use while any socket holds it, TIME_WAIT included, so a port shared by a
//! listener and its accepted connections counts once.

use std::ops::RangeInclusive;

use foldhash::HashMap;

use super::{
    record::Process,
    timeline::{End, Hold},
};
use crate::model::proto::Proto;

/// Buckets in a series: enough for a chart's width, few enough for `--json`.
pub const BUCKETS: usize = 400;
/// The first bucket width; it doubles whenever the capture outgrows the series.
const FIRST_WIDTH_NS: u128 = 1_000_000;
/// Entries kept in a composition (by process, by destination).
const TOP: usize = 5;

/// A bucket of a series: its fullest moment and where it ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    pub peak: u32,
    /// Ports held only by TIME_WAIT sockets at that fullest moment.
    pub time_wait_at_peak: u32,
    pub last: u32,
    pub last_time_wait: u32,
    pub touched: bool,
}

impl Bucket {
    fn record(&mut self, in_use: u32, time_wait: u32) {
        if !self.touched || in_use > self.peak {
            self.peak = in_use;
            self.time_wait_at_peak = time_wait;
        }
        self.last = in_use;
        self.last_time_wait = time_wait;
        self.touched = true;
    }

    fn merge(self, later: Bucket) -> Bucket {
        if !later.touched {
            return self;
        }
        if !self.touched {
            return later;
        }
        let (peak, time_wait_at_peak) = if later.peak > self.peak {
            (later.peak, later.time_wait_at_peak)
        } else {
            (self.peak, self.time_wait_at_peak)
        };
        Bucket {
            peak,
            time_wait_at_peak,
            last: later.last,
            last_time_wait: later.last_time_wait,
            touched: true,
        }
    }
}

/// Every bucket's peak, untouched buckets carrying the value before them: `(in use, TIME_WAIT)`.
pub fn filled(buckets: &[Bucket]) -> Vec<(u32, u32)> {
    let mut carried = (0, 0);
    buckets
        .iter()
        .map(|bucket| {
            if bucket.touched {
                let point = (bucket.peak, bucket.time_wait_at_peak);
                carried = (bucket.last, bucket.last_time_wait);
                point
            } else {
                carried
            }
        })
        .collect()
}

/// Where the series stands after its last change: `(in use, TIME_WAIT)`.
pub fn settled(buckets: &[Bucket]) -> (u32, u32) {
    buckets
        .iter()
        .rev()
        .find(|bucket| bucket.touched)
        .map_or((0, 0), |bucket| (bucket.last, bucket.last_time_wait))
}

/// Ports in use in one set of ports, now and over time.
#[derive(Clone, Debug, Default)]
pub struct Counter {
    pub in_use: u32,
    pub time_wait: u32,
    pub peak: u32,
    pub peak_at: Option<u128>,
    pub series: Vec<Bucket>,
}

impl Counter {
    fn observe(&mut self, at: u128, bucket: Option<usize>) {
        if self.in_use > self.peak {
            self.peak = self.in_use;
            self.peak_at = Some(at);
        }
        if let Some(bucket) = bucket {
            if self.series.len() <= bucket {
                self.series.resize(bucket + 1, Bucket::default());
            }
            self.series[bucket].record(self.in_use, self.time_wait);
        }
    }
}

/// What filled the ephemeral range at its peak.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Composition {
    pub ports: u32,
    pub at: u128,
    /// Ports held only by TIME_WAIT sockets then.
    pub time_wait_ports: u32,
    /// Sockets on ephemeral ports then (a port shared by several counts each).
    pub sockets: u32,
    /// Ports held, per process (a port two processes share counts for each).
    pub by_process: Vec<(Process, u32)>,
    /// Local ports toward each destination.
    pub by_destination: Vec<(String, u32)>,
}

/// One network namespace's ports of one protocol.
#[derive(Clone, Debug, Default)]
pub struct Space {
    pub all: Counter,
    pub ephemeral: Counter,
    pub ephemeral_sockets: u32,
    /// The peak's composition, taken when the count first falls from a new peak.
    pub at_peak: Option<Composition>,
    pending: bool,
}

/// The most local ports toward one destination at once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Destination {
    pub now: u32,
    pub peak: u32,
    pub peak_at: u128,
}

pub type SpaceKey = (Option<u64>, Proto);

#[derive(Debug, Default)]
pub struct Occupancy {
    range: Option<RangeInclusive<u16>>,
    origin: Option<u128>,
    width: u128,
    /// Sockets per port: (not in TIME_WAIT, in TIME_WAIT).
    ports: HashMap<(SpaceKey, u16), (u32, u32)>,
    spaces: HashMap<SpaceKey, Space>,
    /// Failed claims per bucket, per protocol (tcp, udp).
    pub failures: [Vec<u32>; 2],
    /// Ephemeral ports held per process, and their sockets per port (a TIME_WAIT socket and
    /// the connection that reuses its port share one).
    by_process: HashMap<(SpaceKey, Process), u32>,
    process_sockets: HashMap<((SpaceKey, Process), u16), u32>,
    /// Local ports toward each destination, and their sockets per port.
    pub destinations: HashMap<(Proto, String), Destination>,
    destination_sockets: HashMap<((SpaceKey, String), u16), u32>,
}

/// A change to the count of sockets on a port.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Change {
    Open { time_wait: bool },
    ToTimeWait,
    Close { time_wait: bool },
}

impl Occupancy {
    pub fn new(range: Option<RangeInclusive<u16>>) -> Self {
        Self {
            range,
            width: FIRST_WIDTH_NS,
            ..Self::default()
        }
    }

    /// The series' buckets start here (the window's start).
    pub fn start_at(&mut self, origin: u128) {
        self.origin.get_or_insert(origin);
    }

    pub fn range(&self) -> Option<&RangeInclusive<u16>> {
        self.range.as_ref()
    }

    pub fn origin(&self) -> Option<u128> {
        self.origin
    }

    pub fn bucket_width(&self) -> u128 {
        self.width
    }

    /// The bucket of `at`, coarsening every series until it fits.
    fn bucket(&mut self, at: u128) -> Option<usize> {
        let origin = self.origin?;
        let mut index = at.saturating_sub(origin) / self.width;
        while index >= BUCKETS as u128 {
            self.coarsen();
            index = at.saturating_sub(origin) / self.width;
        }
        Some(index as usize)
    }

    fn coarsen(&mut self) {
        self.width *= 2;
        let halve = |series: &mut Vec<Bucket>| {
            *series = series
                .chunks(2)
                .map(|pair| pair[0].merge(pair.get(1).copied().unwrap_or_default()))
                .collect();
        };
        for space in self.spaces.values_mut() {
            halve(&mut space.all.series);
            halve(&mut space.ephemeral.series);
        }
        for counts in &mut self.failures {
            *counts = counts.chunks(2).map(|pair| pair.iter().sum()).collect();
        }
    }

    pub fn ephemeral(&self, port: u16) -> bool {
        self.range
            .as_ref()
            .is_some_and(|range| range.contains(&port))
    }

    /// A failed claim at `at`, marked on the series.
    pub fn failed(&mut self, proto: Proto, at: u128) {
        if let Some(bucket) = self.bucket(at) {
            let counts = &mut self.failures[usize::from(proto == Proto::Udp)];
            if counts.len() <= bucket {
                counts.resize(bucket + 1, 0);
            }
            counts[bucket] += 1;
        }
    }

    pub fn opened(&mut self, hold: &Hold, at: u128, recording: bool) {
        let time_wait = matches!(hold.end, End::TimeWait { .. });
        self.change(hold, at, recording, Change::Open { time_wait });
    }

    pub fn time_wait(&mut self, hold: &Hold, at: u128, recording: bool) {
        self.change(hold, at, recording, Change::ToTimeWait);
    }

    pub fn closed(&mut self, hold: &Hold, at: u128, recording: bool) {
        let time_wait = matches!(hold.end, End::TimeWait { .. });
        self.change(hold, at, recording, Change::Close { time_wait });
    }

    fn change(&mut self, hold: &Hold, at: u128, recording: bool, change: Change) {
        let space_key = (hold.netns, hold.proto);
        let ephemeral = self.ephemeral(hold.port);
        let sockets = self.ports.entry((space_key, hold.port)).or_default();
        let before = *sockets;
        match change {
            Change::Open { time_wait: false } => sockets.0 += 1,
            Change::Open { time_wait: true } => sockets.1 += 1,
            Change::ToTimeWait => {
                sockets.0 = sockets.0.saturating_sub(1);
                sockets.1 += 1;
            }
            Change::Close { time_wait: false } => sockets.0 = sockets.0.saturating_sub(1),
            Change::Close { time_wait: true } => sockets.1 = sockets.1.saturating_sub(1),
        }
        let after = *sockets;
        if after == (0, 0) {
            self.ports.remove(&(space_key, hold.port));
        }
        let used = |(active, waiting): (u32, u32)| u32::from(active + waiting > 0);
        let waiting_only = |(active, waiting): (u32, u32)| u32::from(active == 0 && waiting > 0);
        let bucket = if recording { self.bucket(at) } else { None };
        let space = self.spaces.entry(space_key).or_default();
        let falls = ephemeral && used(after) < used(before);
        if falls && space.pending {
            space.pending = false;
            // Taking a composition walks the live tallies: on a slow climb, only every half
            // percent more is worth one, unless the tallies are small.
            let peak = space.ephemeral.peak;
            let due = space
                .at_peak
                .as_ref()
                .is_none_or(|taken| peak >= taken.ports + (peak / 200).max(1))
                || self.by_process.len() + self.destinations.len() < 256;
            if due {
                space.at_peak = Some(composition(
                    space,
                    &self.by_process,
                    &self.destinations,
                    space_key,
                ));
            }
        }
        let count = |counter: &mut Counter| {
            counter.in_use = counter.in_use + used(after) - used(before);
            counter.time_wait = counter.time_wait + waiting_only(after) - waiting_only(before);
            if recording {
                counter.observe(at, bucket);
            }
        };
        count(&mut space.all);
        if !ephemeral {
            return;
        }
        let peak_before = space.ephemeral.peak;
        count(&mut space.ephemeral);
        if space.ephemeral.peak > peak_before {
            space.pending = true;
        }
        let delta: i32 = match change {
            Change::Open { .. } => 1,
            Change::ToTimeWait => 0,
            Change::Close { .. } => -1,
        };
        if delta == 0 {
            return;
        }
        space.ephemeral_sockets = space.ephemeral_sockets.saturating_add_signed(delta);
        let by_process = (space_key, hold.process.clone());
        let ports = port_change(&mut self.process_sockets, &by_process, hold.port, delta);
        if ports != 0 {
            let count = self.by_process.entry(by_process.clone()).or_default();
            *count = count.saturating_add_signed(ports);
            if *count == 0 {
                self.by_process.remove(&by_process);
            }
        }
        if let Some(remote) = &hold.remote {
            let toward = (space_key, remote.clone());
            let ports = port_change(&mut self.destination_sockets, &toward, hold.port, delta);
            if ports != 0 {
                let destination = self
                    .destinations
                    .entry((hold.proto, remote.clone()))
                    .or_default();
                destination.now = destination.now.saturating_add_signed(ports);
                if recording && destination.now > destination.peak {
                    destination.peak = destination.now;
                    destination.peak_at = at;
                }
            }
        }
    }

    /// The namespaces and protocols, in order (no namespace first, tcp before udp).
    pub fn into_spaces(self) -> Vec<(SpaceKey, Space)> {
        let mut spaces: Vec<(SpaceKey, Space)> = self.spaces.into_iter().collect();
        spaces.sort_by_key(|((netns, proto), _)| (*netns, proto.name()));
        spaces
    }

    #[cfg(test)]
    fn space(&self, netns: Option<u64>, proto: Proto) -> &Space {
        &self.spaces[&(netns, proto)]
    }

    /// The end of the input: a peak not yet followed by a fall is the state now.
    pub fn settle(&mut self) {
        let keys: Vec<SpaceKey> = self.spaces.keys().copied().collect();
        for key in keys {
            let space = &self.spaces[&key];
            if space.pending {
                let taken = composition(space, &self.by_process, &self.destinations, key);
                let space = self.spaces.get_mut(&key).expect("present");
                space.at_peak = Some(taken);
                space.pending = false;
            }
        }
    }
}

/// Adds `delta` sockets to `key`'s `port`; returns how the number of its ports changed.
fn port_change<K: std::hash::Hash + Eq + Clone>(
    sockets: &mut HashMap<(K, u16), u32>,
    key: &K,
    port: u16,
    delta: i32,
) -> i32 {
    let entry = (key.clone(), port);
    let count = sockets.entry(entry.clone()).or_default();
    let before = *count;
    *count = count.saturating_add_signed(delta);
    let after = *count;
    if after == 0 {
        sockets.remove(&entry);
    }
    i32::from(after > 0) - i32::from(before > 0)
}

/// The ephemeral range of `space` as it stands: who holds it, toward where.
fn composition(
    space: &Space,
    by_process: &HashMap<(SpaceKey, Process), u32>,
    destinations: &HashMap<(Proto, String), Destination>,
    key: SpaceKey,
) -> Composition {
    let mut processes: Vec<(Process, u32)> = by_process
        .iter()
        .filter(|((space, _), _)| *space == key)
        .map(|((_, process), count)| (process.clone(), *count))
        .collect();
    processes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    processes.truncate(TOP);
    let mut toward: Vec<(String, u32)> = destinations
        .iter()
        .filter(|((proto, _), destination)| *proto == key.1 && destination.now > 0)
        .map(|((_, remote), destination)| (remote.clone(), destination.now))
        .collect();
    toward.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    toward.truncate(TOP);
    Composition {
        ports: space.ephemeral.in_use,
        at: space.ephemeral.peak_at.unwrap_or_default(),
        time_wait_ports: space.ephemeral.time_wait,
        sockets: space.ephemeral_sockets,
        by_process: processes,
        by_destination: toward,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        commands::report::timeline::{Timeline, Watcher, tests::event},
        model::event::Kind,
    };

    struct Counting(Occupancy);

    impl Watcher for Counting {
        fn opened(&mut self, hold: &Hold, at: u128) {
            self.0.opened(hold, at, true);
        }
        fn time_wait(&mut self, hold: &Hold, at: u128) {
            self.0.time_wait(hold, at, true);
        }
        fn finished(&mut self, hold: Hold, at: u128, counted: bool) {
            if counted {
                self.0.closed(&hold, at, true);
            }
        }
        fn failed(&mut self, failure: crate::commands::report::timeline::Failure) {
            self.0.failed(failure.proto, failure.ts);
        }
    }

    fn run(events: Vec<crate::commands::report::record::PortEvent>) -> Occupancy {
        let mut timeline = Timeline::default();
        let mut counting = Counting(Occupancy::new(Some(40000..=40009)));
        counting.0.start_at(0);
        for event in &events {
            timeline.add(event, &mut counting);
        }
        counting.0.settle();
        counting.0
    }

    #[test]
    fn ports_held_at_once_count_once_each_and_time_wait_keeps_them() {
        let mut time_wait = event(Kind::Free, 40001, 1, 20);
        time_wait.time_wait = true;
        let mut accepted = event(Kind::Claim, 40000, 1, 12);
        accepted.remote = Some("127.0.0.1:9".into());
        accepted.how = Some("accept".into());
        let occupancy = run(vec![
            event(Kind::Claim, 40000, 1, 10),
            accepted,
            event(Kind::Claim, 40001, 1, 11),
            time_wait,
            event(Kind::Claim, 40002, 2, 30),
            event(Kind::Claim, 80, 2, 31),
            event(Kind::Free, 40002, 2, 40),
        ]);
        let space = occupancy.space(None, Proto::Tcp);
        assert_eq!(
            (space.ephemeral.peak, space.ephemeral.peak_at),
            (3, Some(30))
        );
        assert_eq!(space.all.peak, 4);
        let at_peak = space.at_peak.as_ref().unwrap();
        assert_eq!(
            (at_peak.ports, at_peak.time_wait_ports, at_peak.sockets),
            (3, 1, 4)
        );
        // Ports, not sockets: process 1's listener and accepted socket share 40000.
        assert_eq!(
            at_peak
                .by_process
                .iter()
                .map(|(process, ports)| (process.pid, *ports))
                .collect::<Vec<_>>(),
            vec![(Some(1), 2), (Some(2), 1)]
        );
        assert_eq!(at_peak.by_destination, vec![("127.0.0.1:9".to_string(), 1)]);
        // The series' fullest bucket holds the peak, TIME_WAIT apart.
        let fullest = filled(&space.ephemeral.series).into_iter().max().unwrap();
        assert_eq!(fullest, (3, 1));
    }

    #[test]
    fn each_namespace_has_its_own_ports() {
        let events = [(1, 40000), (2, 40000), (2, 40001)]
            .into_iter()
            .map(|(netns, port)| {
                let mut claim = event(Kind::Claim, port, 1, 10);
                claim.netns = Some(netns);
                claim
            })
            .collect();
        let occupancy = run(events);
        assert_eq!(occupancy.space(Some(2), Proto::Tcp).ephemeral.peak, 2);
        assert_eq!(occupancy.space(Some(1), Proto::Tcp).ephemeral.peak, 1);
    }

    #[test]
    fn a_long_capture_keeps_its_buckets_and_peak() {
        let mut events = Vec::new();
        for i in 0..5000u128 {
            let ts = i * 1_000_000_000;
            events.push(event(Kind::Claim, 40000 + (i % 10) as u16, 1, ts));
            events.push(event(Kind::Free, 40000 + (i % 10) as u16, 1, ts + 1));
        }
        let occupancy = run(events);
        let series = &occupancy.space(None, Proto::Tcp).ephemeral.series;
        assert!(series.len() <= BUCKETS && series.len() > BUCKETS / 4);
        assert!(filled(series).iter().all(|&(peak, _)| peak == 1));
    }
}
