//! What a report says, built from a capture's records and the user's narrowing: per port, the
//! holders and the failures; the busiest processes; ephemeral pressure; and what the capture
//! lost or left out. The printers (text, JSON, HTML) only lay this out.

use std::collections::BTreeMap;

use super::{
    load::Loaded,
    pressure::{Pressure, RangeSource},
    processes::{self, Activity},
    record::{Header, PressureEvent, Record},
    timeline::{Failure, Hold, Timeline},
    window::{Bound, Window},
};
use crate::{model::event::Proto, model::ports::PortSet};

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

#[derive(Clone, Debug, PartialEq)]
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
    /// The tracer's own `--pressure` crossings in the window.
    pub pressure_events: Vec<PressureEvent>,
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
    pressure_events: Vec<PressureEvent>,
    /// Records of kinds this report does not know, by kind.
    other_kinds: BTreeMap<String, u64>,
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
            Record::Pressure(pressure) => {
                let ts = pressure.ts;
                self.pressure_events.push(pressure);
                ts
            }
            Record::Other { event } => {
                *self.other_kinds.entry(event).or_default() += 1;
                return;
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
            pressure_events,
            other_kinds,
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
        let range_of = |text: &str| {
            crate::model::ports::parse_spec(text)
                .ok()
                .and_then(|ranges| ranges.into_iter().next())
        };
        let header_range = captures
            .iter()
            .find_map(|capture| capture.header.ephemeral_range.as_deref())
            .and_then(range_of);
        let pressure_range = pressure_events
            .first()
            .and_then(|pressure| range_of(&pressure.range));
        let (range, source) = match (header_range, pressure_range, host_range) {
            (Some(range), _, _) => (Some(range), RangeSource::Header),
            (None, Some(range), _) => (Some(range), RangeSource::PressureRecord),
            (None, None, Ok(range)) => (Some(range), RangeSource::ThisHost),
            (None, None, Err(err)) => (None, RangeSource::Unknown(err.to_string())),
        };
        let mut notes = loaded.notes;
        for (kind, count) in &other_kinds {
            notes.push(format!(
                "{count} `{kind}` record(s) of a kind this report does not read"
            ));
        }
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
            notes,
            pressure_events: pressure_events
                .into_iter()
                .filter(|pressure| window.contains(pressure.ts))
                .collect(),
            ports: by_port.into_values().collect(),
            portless_failures,
            busiest,
            pressure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::report::record::Record;

    fn records(lines: &[&str]) -> Folded {
        let mut folded = Folded::default();
        for line in lines {
            folded.add(Record::from_value(&serde_json::from_str(line).unwrap()).unwrap());
        }
        folded
    }

    const HEADER: &str = r#"{"seq":1,"ts":"2026-11-26T05:00:00Z","event":"capture","capture_id":"c","part":1,"started":"2026-11-26T05:00:00Z","watching":"ports 40000-40099"}"#;
    const CLAIM: &str = r#"{"seq":2,"ts":"2026-11-26T05:00:01Z","event":"claim","proto":"tcp","family":"ipv4","local_addr":"127.0.0.1","local_port":40001,"pid":7,"comm":"load","how":"connect"}"#;
    const FAIL: &str = r#"{"seq":3,"ts":"2026-11-26T05:00:02Z","event":"fail","proto":"tcp","family":"ipv4","local_addr":"0.0.0.0","local_port":0,"pid":7,"comm":"load","how":"connect","errno":"EADDRNOTAVAIL"}"#;
    const PRESSURE: &str = r#"{"seq":4,"ts":"2026-11-26T05:00:03Z","event":"pressure","proto":"tcp","state":"high","in_use":90,"range":"40000-40099","range_size":100,"share_pct":90.0,"threshold_pct":80,"top":[]}"#;
    const FUTURE: &str = r#"{"seq":5,"ts":"2026-11-26T05:00:04Z","event":"teleport"}"#;
    const LOST: &str = r#"{"seq":6,"ts":"2026-11-26T05:00:05Z","event":"lost","count":4}"#;
    const SUMMARY: &str =
        r#"{"seq":7,"ts":"2026-11-26T05:00:06Z","event":"summary","end":"interrupt","lost":4}"#;

    #[test]
    fn a_capture_folds_into_ports_losses_and_pressure() {
        let folded = records(&[HEADER, CLAIM, FAIL, PRESSURE, FUTURE, LOST, SUMMARY]);
        let host: std::io::Result<std::ops::RangeInclusive<u16>> = Ok(1..=2);
        let report = Report::build(folded, Loaded::default(), &Narrowing::default(), host);
        assert_eq!(report.ports.len(), 1);
        assert_eq!(
            report.ports[0].holds[0].end,
            crate::commands::report::timeline::End::Open
        );
        assert_eq!(report.portless_failures[0].errno, "EADDRNOTAVAIL");
        assert_eq!(report.losses.lost_events, 4);
        assert_eq!(
            report.losses.ending.as_ref().map(|e| e.end.as_str()),
            Some("interrupt")
        );
        // The pressure record's range wins over this host's.
        assert_eq!(report.pressure.source, RangeSource::PressureRecord);
        assert_eq!(
            (report.pressure.range_size(), report.pressure.peaks[0].ports),
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
        let folded = records(&[HEADER, CLAIM, FAIL, SUMMARY]);
        let report = Report::build(folded, Loaded::default(), &narrowing, Ok(1..=2));
        assert!(report.ports.is_empty() && report.portless_failures.is_empty());
        assert_eq!(report.pressure.source, RangeSource::ThisHost);
        assert_eq!(report.window.until - report.window.since, 500_000_000);
    }
}
