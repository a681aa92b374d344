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

impl Report {
    /// `host_range` is this host's ephemeral range, used when the headers record none.
    pub fn build(
        loaded: Loaded,
        narrowing: &Narrowing,
        host_range: std::io::Result<std::ops::RangeInclusive<u16>>,
    ) -> Self {
        let mut captures: Vec<Capture> = Vec::new();
        let mut timeline = Timeline::default();
        let (mut first, mut last) = (u128::MAX, 0u128);
        let (mut lost_in_records, mut ending) = (0u64, None);
        for record in &loaded.records {
            let ts = match record {
                Record::Header(header) => {
                    match captures
                        .iter_mut()
                        .find(|capture| capture.header.capture_id == header.capture_id)
                    {
                        Some(capture) => capture.parts.push(header.part),
                        None => captures.push(Capture {
                            header: header.clone(),
                            parts: vec![header.part],
                        }),
                    }
                    header.started
                }
                Record::Event(event) => {
                    timeline.add(event);
                    event.ts
                }
                Record::Lost { ts, count } => {
                    lost_in_records += count;
                    *ts
                }
                Record::Summary { ts, end, lost } => {
                    ending = Some(Ending {
                        end: end.clone(),
                        lost: *lost,
                    });
                    *ts
                }
            };
            first = first.min(ts);
            last = last.max(ts);
        }
        let span = Window::new(first.min(last), last);
        let window = Window::narrowed(span.since, span.until, narrowing.since, narrowing.until);
        let watched = |port: u16| {
            narrowing
                .ports
                .as_ref()
                .is_none_or(|ports| ports.contains(port))
        };
        let mut by_port = ByPort::new();
        let holds: Vec<&Hold> = timeline
            .holds
            .iter()
            .filter(|hold| watched(hold.port) && window.overlaps(hold))
            .collect();
        for hold in &holds {
            port_entry(&mut by_port, hold.proto, hold.port)
                .holds
                .push((*hold).clone());
        }
        let failures: Vec<&Failure> = timeline
            .failures
            .iter()
            .filter(|failure| window.contains(failure.ts))
            .filter(|failure| failure.port == 0 || watched(failure.port))
            .filter(|failure| failure.port != 0 || narrowing.ports.is_none())
            .collect();
        let mut portless_failures = Vec::new();
        for failure in &failures {
            if failure.port == 0 {
                portless_failures.push((*failure).clone());
            } else {
                port_entry(&mut by_port, failure.proto, failure.port)
                    .failures
                    .push((*failure).clone());
            }
        }
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
                lost_events: lost_in_records.max(ending.as_ref().map_or(0, |e: &Ending| e.lost)),
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
