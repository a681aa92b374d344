//! What a report says, built from a capture's records and the user's narrowing: per port, the
//! holders and the failures; the busiest processes; ephemeral pressure; and what the capture
//! lost or left out. The printers (text, JSON, HTML) only lay this out.

use std::collections::BTreeMap;

use super::{
    load::Loaded,
    pressure::{Pressure, RangeSource},
    processes::{self, Activity},
    record::{Header, Record},
    timeline::{Failure, Hold, Timeline},
    window::{Bound, Window},
};
use crate::{event::Proto, ports::PortSet};

/// How many processes the busiest list shows.
const BUSIEST: usize = 10;

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
}

/// What the kernel dropped and what the files miss: the report always states both.
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
}

/// Everything about one port of one protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortReport {
    pub proto: Proto,
    pub port: u16,
    pub holds: Vec<Hold>,
    pub failures: Vec<Failure>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub files: usize,
    pub captures: Vec<Capture>,
    /// The capture's own span: its first and last record.
    pub span: Window,
    /// What the report covers: the span narrowed by `--since`/`--until`.
    pub window: Window,
    pub narrowed_ports: Option<String>,
    pub losses: Losses,
    pub problems: Vec<String>,
    pub notes: Vec<String>,
    pub ports: Vec<PortReport>,
    /// Failures where the kernel found no port to give (port 0).
    pub portless_failures: Vec<Failure>,
    pub busiest: Vec<Activity>,
    pub pressure: Pressure,
}

type ByPort = BTreeMap<(u16, &'static str), PortReport>;

fn port_entry(by_port: &mut ByPort, proto: Proto, port: u16) -> &mut PortReport {
    by_port
        .entry((port, proto.name()))
        .or_insert_with(|| PortReport {
            proto,
            port,
            holds: Vec::new(),
            failures: Vec::new(),
        })
}

/// Records folded as they are read, so a capture is never held in memory whole.
#[derive(Debug, Default)]
pub struct Folded {
    captures: Vec<Capture>,
    timeline: Timeline,
    first: Option<u128>,
    last: u128,
    lost_in_records: u64,
    ending: Option<Ending>,
}

impl Folded {
    pub fn add(&mut self, record: Record) {
        let ts = match record {
            Record::Header(header) => {
                let started = header.started;
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
                started
            }
            Record::Event(event) => {
                self.timeline.add(&event);
                event.ts
            }
            Record::Lost { ts, count } => {
                self.lost_in_records += count;
                ts
            }
            Record::Summary { ts, end, lost } => {
                self.ending = Some(Ending { end, lost });
                ts
            }
        };
        self.first = Some(self.first.map_or(ts, |first| first.min(ts)));
        self.last = self.last.max(ts);
    }
}

impl Report {
    /// `host_range` is this host's ephemeral range, used when the headers record none.
    pub fn build(
        folded: Folded,
        loaded: Loaded,
        narrowing: &Narrowing,
        host_range: std::io::Result<std::ops::RangeInclusive<u16>>,
    ) -> Self {
        let Folded {
            captures,
            timeline,
            first,
            last,
            lost_in_records,
            ending,
        } = folded;
        let first = first.unwrap_or(last);
        let span = Window::new(first.min(last), last);
        let window = Window::narrowed(span.since, span.until, narrowing.since, narrowing.until);
        let watched = |port: u16| {
            narrowing
                .ports
                .as_ref()
                .is_none_or(|ports| ports.contains(port))
        };
        let mut by_port = ByPort::new();
        let mut portless_failures = Vec::new();
        for hold in timeline.holds {
            if watched(hold.port) && window.overlaps(&hold) {
                port_entry(&mut by_port, hold.proto, hold.port)
                    .holds
                    .push(hold);
            }
        }
        for failure in timeline.failures {
            if !window.contains(failure.ts) {
                continue;
            }
            if failure.port == 0 {
                if narrowing.ports.is_none() {
                    portless_failures.push(failure);
                }
            } else if watched(failure.port) {
                port_entry(&mut by_port, failure.proto, failure.port)
                    .failures
                    .push(failure);
            }
        }
        let holds: Vec<&Hold> = by_port.values().flat_map(|port| &port.holds).collect();
        let failures: Vec<&Failure> = by_port
            .values()
            .flat_map(|port| &port.failures)
            .chain(&portless_failures)
            .collect();
        let header_range = captures
            .iter()
            .find_map(|capture| capture.header.ephemeral_range.as_deref())
            .and_then(|text| crate::ports::parse_spec(text).ok())
            .and_then(|ranges| ranges.into_iter().next());
        let (range, source) = match (header_range, host_range) {
            (Some(range), _) => (Some(range), RangeSource::Header),
            (None, Ok(range)) => (Some(range), RangeSource::ThisHost),
            (None, Err(err)) => (None, RangeSource::Unknown(err.to_string())),
        };
        let pressure = Pressure::measure(&holds, range, source, &window);
        let busiest = processes::busiest(&holds, &failures, &window, BUSIEST);
        Self {
            files: loaded.files,
            captures,
            span,
            window,
            narrowed_ports: narrowing.ports.as_ref().map(PortSet::describe),
            losses: Losses {
                lost_events: lost_in_records.max(ending.as_ref().map_or(0, |e| e.lost)),
                missing_records: loaded.missing_records,
                skipped: loaded.skipped,
                ending,
            },
            problems: loaded.problems,
            notes: loaded.notes,
            ports: by_port.into_values().collect(),
            portless_failures,
            busiest,
            pressure,
        }
    }
}
