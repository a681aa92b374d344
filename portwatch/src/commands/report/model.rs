//! What a report says, folded from the records as they are read: what was captured and lost, the
//! failed claims grouped, ports in use over time and what filled the ephemeral range, the busiest
//! processes, and per port its holders. Memory follows the sockets open at once and the ports
//! used, not the length of the capture: a port with many holders keeps counts, not sockets,
//! unless `--port` or `--detail` asks for every socket. The printers (text, JSON, HTML) only lay
//! this out.

use std::{collections::BTreeMap, ops::RangeInclusive};

use super::{
    failures::{Group, Groups, Tally},
    load::Loaded,
    occupancy::{Destination, Occupancy, Space},
    pressure::{self, RangeSource},
    processes::{Activity, Processes},
    record::{Header, PortEvent, PressureEvent, Process, Record},
    timeline::{Failure, Hold, Timeline, Watcher},
    window::{Bound, Window},
};
use crate::model::{ports::PortSet, proto::Proto};

/// How many processes the busiest list shows.
const BUSIEST: usize = 10;
/// A port with at most this many holders keeps each of them (for the chart and the summary).
pub const FEW: usize = 8;
/// A port that matters (a failed claim on it) keeps this many of its sockets at most.
const KEPT_WHEN_PINNED: usize = 200;
/// Listening sockets kept per port.
const LISTENERS_KEPT: usize = 16;
/// Pressure records kept; more are counted.
const PRESSURE_KEPT: usize = 1000;
/// Destinations listed by their peak.
const DESTINATIONS: usize = 10;

/// The user's narrowing: `--port`, `--since`, `--until`.
#[derive(Clone, Debug, Default)]
pub struct Narrowing {
    pub ports: Option<PortSet>,
    pub since: Option<Bound>,
    pub until: Option<Bound>,
}

/// One capture (one `capture_id`) among the files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capture {
    pub header: Header,
    pub parts: Vec<u64>,
}

/// How the capture ended: its summary, when the files hold one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ending {
    pub end: String,
    pub lost: u64,
    /// Program runs the kernel skipped, where it counted them.
    pub skipped_runs: Option<u64>,
}

/// What the kernel dropped, what the files miss and what they hold: the report always states it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Losses {
    /// Events the kernel could not deliver (ring buffer full), from `lost` records and the
    /// summary, whichever says more.
    pub lost_events: u64,
    /// Records missing from the files (seq gaps).
    pub missing_records: u64,
    /// Lines, files or ends of files that could not be read and were skipped.
    pub skipped: usize,
    /// None: no summary record, so losses after the last `lost` record are unknown.
    pub ending: Option<Ending>,
    /// Event records read, by kind (claim, listen, free, fail, held), before any narrowing.
    pub delivered: BTreeMap<&'static str, u64>,
}

/// One port of one protocol: how busy it was, who held it, and (when few, or asked for) each
/// socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortReport {
    pub proto: Proto,
    pub port: u16,
    /// Sockets that held it in the window.
    pub holds: u64,
    /// Of those, accepted connections (they share a listener's port).
    pub accepted: u64,
    pub holders: Tally<Process>,
    pub listeners: Vec<Hold>,
    pub failures: u64,
    /// Its sockets, each, when the port had few or they were asked for; else empty.
    pub sockets: Vec<Hold>,
    /// Sockets not kept in `sockets`.
    pub sockets_left_out: u64,
    /// Its failed claims, each, when asked for (`--port`, `--detail`).
    pub failed_claims: Vec<Failure>,
    /// Whether the port matters beyond its count: a failed claim on it, or asked for.
    pub pinned: bool,
}

impl PortReport {
    fn new(proto: Proto, port: u16) -> Self {
        Self {
            proto,
            port,
            holds: 0,
            accepted: 0,
            holders: Tally::default(),
            listeners: Vec::new(),
            failures: 0,
            sockets: Vec::new(),
            sockets_left_out: 0,
            failed_claims: Vec::new(),
            pinned: false,
        }
    }

    /// Keeps `hold` if the port's sockets are still kept.
    fn keep(&mut self, hold: Hold, every: bool) {
        if hold.listening && self.listeners.len() < LISTENERS_KEPT {
            self.listeners.push(hold.clone());
        }
        let room = if every {
            usize::MAX
        } else if self.pinned {
            KEPT_WHEN_PINNED
        } else {
            FEW
        };
        let busy = !self.pinned && !every && self.sockets_left_out > 0;
        if !busy && self.sockets.len() < room {
            self.sockets.push(hold);
            return;
        }
        if !self.pinned && !every {
            // Busy and unremarkable: counts say enough; its sockets go.
            self.sockets_left_out += self.sockets.len() as u64;
            self.sockets = Vec::new();
        }
        self.sockets_left_out += 1;
    }
}

/// The ephemeral range and how full it got.
#[derive(Clone, Debug)]
pub struct Ephemeral {
    pub range: Option<RangeInclusive<u16>>,
    pub source: RangeSource,
    /// Per network namespace and protocol.
    pub spaces: Vec<((Option<u64>, Proto), Space)>,
    /// Failed claims per bucket (tcp, udp).
    pub failures: [Vec<u32>; 2],
    /// Where the buckets start and how wide each is.
    pub origin: u128,
    pub bucket_ns: u128,
    /// The destinations toward which most local ports were held at once.
    pub destinations: Vec<((Proto, String), Destination)>,
}

impl Ephemeral {
    pub fn range_size(&self) -> usize {
        pressure::range_size(&self.range)
    }

    /// The fullest namespace of `proto`, by its ephemeral peak.
    pub fn fullest(&self, proto: Proto) -> Option<&((Option<u64>, Proto), Space)> {
        self.spaces
            .iter()
            .filter(|((_, of), _)| *of == proto)
            .max_by_key(|(_, space)| space.ephemeral.peak)
    }
}

#[derive(Clone, Debug)]
pub struct Report {
    pub files: usize,
    pub captures: Vec<Capture>,
    /// Files read as plain `--json` streams (no capture header).
    pub plain_streams: Vec<String>,
    /// The input's own span: its first and last record.
    pub span: Window,
    /// What the report covers: the span narrowed by `--since`/`--until`.
    pub window: Window,
    pub narrowed_ports: Option<String>,
    /// Every socket of the ports in scope was kept (`--port` or `--detail`).
    pub detail: bool,
    pub losses: Losses,
    pub problems: Vec<String>,
    pub problems_not_kept: usize,
    pub notes: Vec<String>,
    pub failure_groups: Vec<Group>,
    pub failures: u64,
    /// Every port held or refused in the window, in port order (tcp before udp).
    pub ports: Vec<PortReport>,
    pub busiest: Vec<Activity>,
    pub processes: usize,
    pub ephemeral: Ephemeral,
    /// The tracer's own `--pressure` crossings in the window.
    pub pressure_events: Vec<PressureEvent>,
    pub pressure_events_not_kept: u64,
    /// Sockets whose claim and close are both in the window, per hold-time decade (tcp, udp).
    pub hold_times: [[u32; BUCKETS.len()]; 2],
}

/// What the watcher of the timeline folds into.
struct State {
    since: u128,
    until: Option<u128>,
    /// Keep every socket of every port in scope.
    every: bool,
    ending: bool,
    occupancy: Occupancy,
    groups: Groups,
    processes: Processes,
    ports: BTreeMap<(&'static str, u16), PortReport>,
    hold_times: [[u32; BUCKETS.len()]; 2],
}

impl State {
    fn in_window(&self, at: u128) -> bool {
        at >= self.since && self.until.is_none_or(|until| at <= until)
    }
}

impl Watcher for State {
    fn opened(&mut self, hold: &Hold, at: u128) {
        let recording = self.in_window(at);
        self.occupancy.opened(hold, at, recording);
    }

    fn time_wait(&mut self, hold: &Hold, at: u128) {
        let recording = self.in_window(at);
        self.occupancy.time_wait(hold, at, recording);
    }

    fn finished(&mut self, hold: Hold, at: u128, counted: bool) {
        if counted && !self.ending {
            let recording = self.in_window(at);
            self.occupancy.closed(&hold, at, recording);
        }
        let window = Window::new(self.since, self.until.unwrap_or(u128::MAX));
        if !window.overlaps(&hold) {
            return;
        }
        let start = hold.from.unwrap_or(window.since).max(window.since);
        // A hold still open at the end of the input ends there.
        let end = hold.occupied_until().unwrap_or(at).min(window.until);
        self.processes.hold(&hold, &window, (start, end));
        if hold.claim_seen {
            let closed = match hold.end {
                super::timeline::End::Closed(at) => Some(at),
                super::timeline::End::TimeWait { closed, .. } => closed,
                super::timeline::End::Open => None,
            };
            if let (Some(from), Some(closed)) = (hold.from, closed) {
                let proto = usize::from(hold.proto == Proto::Udp);
                self.hold_times[proto][bucket(closed.saturating_sub(from))] += 1;
            }
        }
        let port = self
            .ports
            .entry((hold.proto.name(), hold.port))
            .or_insert_with(|| PortReport::new(hold.proto, hold.port));
        port.holds += 1;
        if hold.accepted() {
            port.accepted += 1;
        }
        port.holders.add(hold.process.clone());
        port.keep(hold, self.every);
    }

    fn failed(&mut self, failure: Failure) {
        if !self.in_window(failure.ts) {
            return;
        }
        self.groups.add(&failure);
        self.occupancy.failed(failure.proto, failure.ts);
        self.processes.failure(&failure);
        if failure.port == 0 {
            return;
        }
        let port = self
            .ports
            .entry((failure.proto.name(), failure.port))
            .or_insert_with(|| PortReport::new(failure.proto, failure.port));
        port.failures += 1;
        port.pinned = true;
        if self.every {
            port.failed_claims.push(failure);
        }
    }
}

/// Records folded as they are read, so a capture is never held in memory whole.
pub struct Digest {
    narrowing: Narrowing,
    host_range: Option<std::io::Result<RangeInclusive<u16>>>,
    started: bool,
    timeline: Timeline,
    state: State,
    captures: Vec<Capture>,
    first: Option<u128>,
    last: u128,
    lost_in_records: u64,
    ending: Option<Ending>,
    delivered: BTreeMap<&'static str, u64>,
    pressure_events: Vec<PressureEvent>,
    pressure_events_not_kept: u64,
    range_source: RangeSource,
    /// Records of kinds this report does not know, by kind.
    other_kinds: BTreeMap<String, u64>,
}

impl Digest {
    /// `detail`: keep every socket of the ports in scope. `host_range` is this host's ephemeral
    /// range, used when the input records none.
    pub fn new(
        narrowing: Narrowing,
        detail: bool,
        host_range: std::io::Result<RangeInclusive<u16>>,
    ) -> Self {
        let every = detail || narrowing.ports.is_some();
        Self {
            narrowing,
            host_range: Some(host_range),
            started: false,
            timeline: Timeline::default(),
            state: State {
                since: 0,
                until: None,
                every,
                ending: false,
                occupancy: Occupancy::default(),
                groups: Groups::default(),
                processes: Processes::default(),
                ports: BTreeMap::new(),
                hold_times: Default::default(),
            },
            captures: Vec::new(),
            first: None,
            last: 0,
            lost_in_records: 0,
            ending: None,
            delivered: BTreeMap::new(),
            pressure_events: Vec::new(),
            pressure_events_not_kept: 0,
            range_source: RangeSource::Unknown("no event was read".into()),
            other_kinds: BTreeMap::new(),
        }
    }

    /// The window's bounds, from the first record's time.
    fn start(&mut self, first: u128) {
        let window = Window::narrowed(first, u128::MAX, self.narrowing.since, self.narrowing.until);
        self.state.since = window.since;
        self.state.until = (window.until != u128::MAX).then_some(window.until);
    }

    /// The range is settled at the first event: the header's, a pressure record's, or this host's.
    fn settle_range(&mut self) {
        let Some(host) = self.host_range.take() else {
            return;
        };
        let header = self
            .captures
            .iter()
            .find_map(|capture| capture.header.ephemeral_range.as_deref());
        let pressure = self
            .pressure_events
            .first()
            .map(|pressure| pressure.range.as_str());
        let (range, source) = pressure::choose(header, pressure, || host);
        self.range_source = source;
        self.state.occupancy = Occupancy::new(range);
        self.state.occupancy.start_at(self.state.since);
    }

    fn watched(&self, event: &PortEvent) -> bool {
        match &self.narrowing.ports {
            None => true,
            Some(ports) => event.port != 0 && ports.contains(event.port),
        }
    }

    pub fn add(&mut self, record: Record) {
        let ts = match &record {
            Record::Header(header) => Some(header.started),
            Record::Event(event) => Some(event.ts),
            Record::Pressure(pressure) => Some(pressure.ts),
            Record::Lost { ts, .. } | Record::Summary { ts, .. } => Some(*ts),
            Record::Other { .. } => None,
        };
        if let Some(ts) = ts {
            if !self.started {
                self.started = true;
                self.start(ts);
            }
            self.first = Some(self.first.map_or(ts, |first| first.min(ts)));
            self.last = self.last.max(ts);
        }
        match record {
            Record::Header(header) => {
                match self
                    .captures
                    .iter_mut()
                    .find(|capture| capture.header.capture_id == header.capture_id)
                {
                    Some(capture) => capture.parts.push(header.part),
                    None => self.captures.push(Capture {
                        parts: vec![header.part],
                        header,
                    }),
                }
            }
            Record::Event(event) => {
                *self.delivered.entry(event.kind.name()).or_default() += 1;
                self.settle_range();
                if self.watched(&event) {
                    self.timeline.add(&event, &mut self.state);
                }
            }
            Record::Pressure(pressure) => {
                if !self.state.in_window(pressure.ts) {
                } else if self.pressure_events.len() < PRESSURE_KEPT {
                    self.pressure_events.push(pressure);
                } else {
                    self.pressure_events_not_kept += 1;
                }
            }
            Record::Other { event } => *self.other_kinds.entry(event).or_default() += 1,
            Record::Lost { count, .. } => self.lost_in_records += count,
            Record::Summary {
                end,
                lost,
                skipped_runs,
                ..
            } => {
                self.ending = Some(Ending {
                    end,
                    lost,
                    skipped_runs,
                })
            }
        }
    }

    pub fn finish(mut self, loaded: Loaded) -> Report {
        self.settle_range();
        self.state.occupancy.settle();
        self.state.ending = true;
        let Digest {
            narrowing,
            timeline,
            mut state,
            captures,
            first,
            last,
            lost_in_records,
            ending,
            delivered,
            pressure_events,
            pressure_events_not_kept,
            range_source,
            other_kinds,
            ..
        } = self;
        timeline.finish(&mut state);
        let first = first.unwrap_or(last);
        let span = Window::new(first.min(last), last);
        let window = Window::narrowed(span.since, span.until, narrowing.since, narrowing.until);
        let mut notes = loaded.notes;
        for (kind, count) in &other_kinds {
            notes.push(format!(
                "{count} `{kind}` record(s) of a kind this report does not read"
            ));
        }
        let State {
            every,
            occupancy,
            groups,
            processes,
            ports,
            hold_times,
            ..
        } = state;
        let failures = groups.total;
        let (busiest, processes) = processes.busiest(BUSIEST);
        let mut destinations: Vec<((Proto, String), Destination)> =
            occupancy.destinations.clone().into_iter().collect();
        destinations.sort_by(|a, b| b.1.peak.cmp(&a.1.peak).then_with(|| a.0.1.cmp(&b.0.1)));
        destinations.truncate(DESTINATIONS);
        let ephemeral = Ephemeral {
            range: occupancy.range().cloned(),
            source: range_source,
            origin: occupancy.origin().unwrap_or(window.since),
            bucket_ns: occupancy.bucket_width(),
            failures: occupancy.failures.clone(),
            spaces: occupancy.into_spaces(),
            destinations,
        };
        let mut ports: Vec<PortReport> = ports.into_values().collect();
        for port in &mut ports {
            port.pinned |= narrowing.ports.is_some();
        }
        Report {
            files: loaded.files,
            captures,
            plain_streams: loaded.plain_streams,
            span,
            window,
            narrowed_ports: narrowing.ports.as_ref().map(PortSet::describe),
            detail: every,
            losses: Losses {
                lost_events: lost_in_records.max(ending.as_ref().map_or(0, |e| e.lost)),
                missing_records: loaded.missing_records,
                skipped: loaded.skipped,
                ending,
                delivered,
            },
            problems: loaded.problems,
            problems_not_kept: loaded.problems_not_kept,
            notes,
            failure_groups: groups.into_sorted(),
            failures,
            ports,
            busiest,
            processes,
            ephemeral,
            pressure_events,
            pressure_events_not_kept,
            hold_times,
        }
    }
}

/// Ports worth a line of their own in a summary: listened on, refused, asked for, or outside
/// the ephemeral range (bound on purpose) with few holders. Busiest first.
pub fn notable(report: &Report) -> Vec<&PortReport> {
    let range = report.ephemeral.range.clone();
    let mut notable: Vec<&PortReport> = report
        .ports
        .iter()
        .filter(|port| {
            !port.listeners.is_empty()
                || port.pinned
                || range
                    .as_ref()
                    .is_some_and(|range| !range.contains(&port.port))
        })
        .collect();
    notable.sort_by(|a, b| {
        (b.failures, !b.listeners.is_empty(), b.holds, a.port).cmp(&(
            a.failures,
            !a.listeners.is_empty(),
            a.holds,
            b.port,
        ))
    });
    notable
}

/// Decades of hold time, the socket's own hold from claim to close (TIME_WAIT not counted).
pub const BUCKETS: [&str; 10] = [
    "<1us", "1-10us", "10-100us", "0.1-1ms", "1-10ms", "10-100ms", "0.1-1s", "1-10s", "10-100s",
    ">=100s",
];

pub fn bucket(nanos: u128) -> usize {
    let mut bucket = 0;
    let mut bound = 1_000u128;
    while nanos >= bound && bucket < BUCKETS.len() - 1 {
        bucket += 1;
        bound *= 10;
    }
    bucket
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_times_fall_in_decades() {
        assert_eq!(BUCKETS[bucket(999)], "<1us");
        assert_eq!(BUCKETS[bucket(1_000)], "1-10us");
        assert_eq!(BUCKETS[bucket(150_000_000)], "0.1-1s");
        assert_eq!(BUCKETS[bucket(u128::MAX)], ">=100s");
    }
    use crate::commands::report::record::Record;

    fn report(lines: &[&str], narrowing: Narrowing) -> Report {
        let mut digest = Digest::new(narrowing, false, Ok(1..=2));
        for line in lines {
            digest.add(Record::parse(line).unwrap());
        }
        digest.finish(Loaded::default())
    }

    const HEADER: &str = r#"{"seq":1,"ts":"2026-11-26T05:00:00Z","event":"capture","capture_id":"c","part":1,"started":"2026-11-26T05:00:00Z","watching":"ports 40000-40099"}"#;
    const CLAIM: &str = r#"{"seq":2,"ts":"2026-11-26T05:00:01Z","event":"claim","proto":"tcp","family":"ipv4","local_addr":"127.0.0.1","local_port":40001,"pid":7,"comm":"load","how":"connect"}"#;
    const FAIL: &str = r#"{"seq":3,"ts":"2026-11-26T05:00:02Z","event":"fail","proto":"tcp","family":"ipv4","local_addr":"0.0.0.0","local_port":0,"pid":7,"comm":"load","how":"connect","errno":"EADDRNOTAVAIL","remote_addr":"10.0.0.1","remote_port":80}"#;
    const PRESSURE: &str = r#"{"seq":4,"ts":"2026-11-26T05:00:03Z","event":"pressure","proto":"tcp","state":"high","in_use":90,"range":"40000-40099","range_size":100,"share_pct":90.0,"threshold_pct":80,"top":[]}"#;
    const FUTURE: &str = r#"{"seq":5,"ts":"2026-11-26T05:00:04Z","event":"teleport"}"#;
    const LOST: &str = r#"{"seq":6,"ts":"2026-11-26T05:00:05Z","event":"lost","count":4}"#;
    const SUMMARY: &str =
        r#"{"seq":7,"ts":"2026-11-26T05:00:06Z","event":"summary","end":"interrupt","lost":4}"#;

    #[test]
    fn a_capture_folds_into_ports_losses_and_pressure() {
        let pressure_first = [HEADER, PRESSURE, CLAIM, FAIL, FUTURE, LOST, SUMMARY];
        let report = report(&pressure_first, Narrowing::default());
        assert_eq!(report.ports.len(), 1);
        assert_eq!(
            report.ports[0].sockets[0].end,
            crate::commands::report::timeline::End::Open
        );
        assert_eq!(report.failure_groups[0].key.errno, "EADDRNOTAVAIL");
        assert_eq!(
            report.failure_groups[0].destinations.sorted()[0].0,
            "10.0.0.1:80"
        );
        assert_eq!(report.losses.lost_events, 4);
        assert_eq!(report.losses.delivered.get("claim"), Some(&1));
        assert_eq!(
            report.losses.ending.as_ref().map(|e| e.end.as_str()),
            Some("interrupt")
        );
        // The pressure record's range wins over this host's.
        assert_eq!(report.ephemeral.source, RangeSource::PressureRecord);
        let (_, tcp) = report.ephemeral.fullest(Proto::Tcp).unwrap();
        assert_eq!(
            (report.ephemeral.range_size(), tcp.ephemeral.peak),
            (100, 1)
        );
        assert_eq!(report.pressure_events.len(), 1);
        assert!(report.notes[0].contains("`teleport`"));
    }

    #[test]
    fn narrowing_by_port_and_time_leaves_the_rest_out() {
        let narrowing = Narrowing {
            ports: Some(PortSet::new(vec![40002..=40002])),
            since: None,
            until: Some(Bound::AfterStart(std::time::Duration::from_millis(500))),
        };
        let report = report(&[HEADER, CLAIM, FAIL, SUMMARY], narrowing);
        assert!(report.ports.is_empty() && report.failure_groups.is_empty());
        assert_eq!(report.ephemeral.source, RangeSource::ThisHost);
        assert_eq!(report.window.until - report.window.since, 500_000_000);
    }
}
