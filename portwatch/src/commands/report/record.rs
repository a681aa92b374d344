//! A capture line as the report uses it, read from the record schema ([`Line`]). A record
//! missing a key the report needs is refused with the key's name, so a torn or edited line is
//! one sentence, not a wrong timeline.

use super::time;
use crate::{
    model::event::Kind,
    model::proto::Proto,
    model::record::{self, Line, Text},
};

/// Who a record names: `pid` and `comm` are null when no process held the socket.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Process {
    pub pid: Option<u32>,
    pub comm: Option<String>,
}

/// The socket that held a port when a claim failed, as the tracer saw it at that moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocker {
    pub process: Process,
    pub state: String,
    pub since: Option<u128>,
    pub how: Option<String>,
    pub local_addr: String,
}

/// A claim, listen, free, fail or held record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortEvent {
    pub ts: u128,
    pub kind: Kind,
    pub proto: Proto,
    pub family: String,
    pub local_addr: String,
    /// 0 on a failure where the kernel found no port to choose.
    pub port: u16,
    pub process: Process,
    pub how: Option<String>,
    pub errno: Option<String>,
    /// On a failure: `None` when the record has no `holder` key, `Some(None)` for `null`.
    pub blocker: Option<Option<Blocker>>,
    pub held_ns: Option<u64>,
    pub time_wait: bool,
    pub time_wait_end: bool,
    pub claimer_seen: bool,
    pub state: Option<String>,
    /// `addr:port` of the peer, when the socket has one.
    pub remote: Option<String>,
    /// The network namespace's inode number: ports are per namespace.
    pub netns: Option<u64>,
    /// On a failure: the tracer's explanation (`exhaustion`), as compact JSON, when it gives one.
    pub exhaustion: Option<String>,
}

/// What a capture header says about the capture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub capture_id: String,
    pub part: u64,
    pub seq: u64,
    pub started: u128,
    pub hostname: String,
    pub backend: String,
    pub kernel: String,
    pub watching: String,
    /// The userspace filters (`--pid`, `--comm`, `--events`) as the tracer was given them.
    pub filters: Vec<String>,
    /// `"32768-60999"` when the header records the ephemeral range (newer captures).
    pub ephemeral_range: Option<String>,
}

/// A `pressure` record: a namespace's ephemeral range filled past the tracer's threshold
/// (`high`) or eased again, with the processes holding most of it.
#[derive(Clone, Debug, PartialEq)]
pub struct PressureEvent {
    pub ts: u128,
    pub proto: Proto,
    pub high: bool,
    pub in_use: u64,
    /// `32768-60999`, as the record gives it.
    pub range: String,
    pub range_size: u64,
    pub share_pct: f64,
    pub netns: Option<u64>,
    pub top: Vec<(Process, u64)>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    Header(Header),
    /// Boxed: most records are events, and the enum would otherwise carry an event's size.
    Event(Box<PortEvent>),
    Pressure(PressureEvent),
    Lost {
        ts: u128,
        count: u64,
    },
    Summary {
        ts: u128,
        end: String,
        lost: u64,
        skipped_runs: Option<u64>,
    },
    /// A record of a kind this report does not know (from a newer portwatch): counted and
    /// named in the report, not an error.
    Other {
        event: String,
    },
}

/// A key the report needs, or the sentence naming it.
fn needed<T>(value: Option<T>, key: &str) -> Result<T, String> {
    value.ok_or_else(|| format!("the record has no {key}"))
}

fn text(value: &Option<Text<'_>>, key: &str) -> Result<String, String> {
    needed(value.as_deref(), key).map(str::to_string)
}

fn optional_text(value: &Option<Text<'_>>) -> Option<String> {
    value.as_deref().map(str::to_string)
}

fn timestamp(value: &Option<Text<'_>>, key: &str) -> Result<u128, String> {
    let text = needed(value.as_deref(), key)?;
    time::parse_rfc3339(text).ok_or_else(|| format!("{key} {text:?} is not an RFC 3339 time"))
}

/// `pid` and `comm` of a record or a nested object; null or absent alike mean no process.
fn process(pid: Option<Option<u32>>, comm: &Option<Option<Text<'_>>>) -> Process {
    Process {
        pid: pid.flatten(),
        comm: comm.as_ref().and_then(Option::as_deref).map(str::to_string),
    }
}

fn endpoint(addr: &Option<Text<'_>>, port: Option<u64>) -> Option<String> {
    let (addr, port) = (addr.as_deref()?, port?);
    Some(if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    })
}

fn blocker(holder: &Option<Option<record::Holder<'_>>>) -> Result<Option<Option<Blocker>>, String> {
    let holder = match holder {
        None => return Ok(None),
        Some(None) => return Ok(Some(None)),
        Some(Some(holder)) => holder,
    };
    Ok(Some(Some(Blocker {
        process: process(holder.task.pid, &holder.task.comm),
        state: text(&holder.state, "state").map_err(|reason| format!("holder: {reason}"))?,
        since: holder.since.as_deref().and_then(time::parse_rfc3339),
        how: optional_text(&holder.how),
        local_addr: optional_text(&holder.local_addr).unwrap_or_default(),
    })))
}

fn proto(line: &Line<'_>) -> Result<Proto, String> {
    match needed(line.proto.as_deref(), "proto")? {
        "tcp" => Ok(Proto::Tcp),
        "udp" => Ok(Proto::Udp),
        other => Err(format!("unknown proto {other:?}")),
    }
}

fn pressure(line: &Line<'_>) -> Result<PressureEvent, String> {
    let top = line
        .top
        .iter()
        .flatten()
        .map(|entry| (process(entry.task.pid, &entry.task.comm), entry.ports))
        .collect();
    Ok(PressureEvent {
        ts: timestamp(&line.ts, "ts")?,
        proto: proto(line)?,
        high: needed(line.state.as_deref(), "state")? == "high",
        in_use: needed(line.in_use, "in_use")?,
        range: text(&line.range, "range")?,
        range_size: needed(line.range_size, "range_size")?,
        share_pct: line.share_pct.unwrap_or(0.0),
        netns: line.netns,
        top,
    })
}

fn port_event(line: &Line<'_>, kind: Kind) -> Result<PortEvent, String> {
    let proto = proto(line)?;
    let port = needed(line.local_port, "local_port")?;
    Ok(PortEvent {
        ts: timestamp(&line.ts, "ts")?,
        kind,
        proto,
        family: text(&line.family, "family")?,
        local_addr: text(&line.local_addr, "local_addr")?,
        port: u16::try_from(port).map_err(|_| format!("local_port {port} is not a port"))?,
        process: process(line.pid, &line.comm),
        how: optional_text(&line.how),
        errno: optional_text(&line.errno),
        blocker: blocker(&line.holder)?,
        held_ns: line.held_ns,
        time_wait: line.time_wait == Some(true),
        time_wait_end: line.time_wait_end == Some(true),
        claimer_seen: line.claimer_seen != Some(false),
        state: optional_text(&line.state),
        remote: endpoint(&line.remote_addr, line.remote_port),
        netns: line.netns,
        exhaustion: line
            .exhaustion
            .as_ref()
            .filter(|explained| !explained.is_null())
            .map(serde_json::Value::to_string),
    })
}

fn header(line: &Line<'_>) -> Result<Header, String> {
    Ok(Header {
        capture_id: text(&line.capture_id, "capture_id")?,
        part: needed(line.part, "part")?,
        seq: needed(line.seq, "seq")?,
        started: timestamp(&line.started, "started")?,
        hostname: optional_text(&line.hostname).unwrap_or_default(),
        backend: optional_text(&line.backend).unwrap_or_default(),
        kernel: optional_text(&line.kernel).unwrap_or_default(),
        watching: optional_text(&line.watching).unwrap_or_default(),
        filters: line
            .filters
            .iter()
            .flatten()
            .map(|filter| filter.to_string())
            .collect(),
        ephemeral_range: optional_text(&line.ephemeral_range),
    })
}

impl Record {
    /// The record a line holds, or why it cannot be read.
    pub fn from_line(line: &Line<'_>) -> Result<Self, String> {
        match line.event.as_ref() {
            "" => Err("the record has no event".into()),
            "capture" => header(line).map(Record::Header),
            "lost" => Ok(Record::Lost {
                ts: timestamp(&line.ts, "ts")?,
                count: needed(line.count, "count")?,
            }),
            "summary" => Ok(Record::Summary {
                ts: timestamp(&line.ts, "ts")?,
                end: optional_text(&line.end).unwrap_or_default(),
                lost: needed(line.lost, "lost")?,
                skipped_runs: line.skipped_runs,
            }),
            "pressure" => pressure(line).map(Record::Pressure),
            name => match Kind::ALL.into_iter().find(|kind| kind.name() == name) {
                Some(kind) => port_event(line, kind).map(|event| Record::Event(Box::new(event))),
                None => Ok(Record::Other {
                    event: name.to_string(),
                }),
            },
        }
    }

    /// Reads one line of text: a JSON object of a known or unknown kind.
    #[cfg(test)]
    pub fn parse(text: &str) -> Result<Self, String> {
        let line = Line::parse(text).map_err(|err| unreadable(&err))?;
        Self::from_line(&line)
    }
}

/// Why a line could not be read, in the reader's words: a line cut short, text that is not
/// JSON, or JSON that is not a portwatch record (serde names the key and its column).
pub fn unreadable(err: &serde_json::Error) -> String {
    match err.classify() {
        serde_json::error::Category::Eof => "not a JSON record (a torn or truncated line)".into(),
        serde_json::error::Category::Data => format!("not a portwatch record: {err}"),
        _ => format!("not a JSON record: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(line: &str) -> Result<Record, String> {
        Record::parse(line)
    }

    /// What the live writer writes, the report reads back as the same event.
    #[test]
    fn an_event_written_reads_back_equal() {
        use crate::output::sink::{Sink, json::JsonSink};
        let event = crate::model::event::fixtures::sample();
        let mut sink = JsonSink::new(Vec::new());
        sink.event(&event).unwrap();
        let text = String::from_utf8(sink.into_inner()).unwrap();
        let Record::Event(read) = Record::parse(text.trim_end()).unwrap() else {
            panic!("not an event: {text}")
        };
        let task = event.task.as_ref().unwrap();
        let expected = PortEvent {
            ts: event.ts.nanos(),
            kind: event.kind,
            proto: event.proto,
            family: event.family_name().into(),
            local_addr: event.local_addr.to_string(),
            port: event.local_port,
            process: Process {
                pid: Some(task.pid),
                comm: Some(task.comm.as_str().to_string()),
            },
            how: Some("connect".into()),
            errno: None,
            blocker: None,
            held_ns: event.held_ns,
            time_wait: event.time_wait,
            time_wait_end: event.time_wait_end,
            claimer_seen: event.claimer_seen,
            state: None,
            remote: Some("127.0.0.1:8080".into()),
            netns: event.netns.map(u64::from),
            exhaustion: None,
        };
        assert_eq!(*read, expected);
    }

    #[test]
    fn a_failure_keeps_its_holder() {
        let Record::Event(fail) = record(
            r#"{"seq":5,"ts":"2026-11-26T05:01:17.000000002Z","event":"fail","proto":"tcp","family":"ipv4","local_addr":"0.0.0.0","local_port":60312,"pid":7,"tid":7,"ppid":1,"comm":"nc","uid":0,"how":"bind","errno":"EADDRINUSE","holder":{"pid":6,"tid":6,"ppid":1,"comm":"srv","state":"listen","since":"2026-11-26T05:01:17.000000001Z","local_addr":"127.0.0.1","how":"bind"}}"#,
        )
        .unwrap() else {
            panic!("not an event")
        };
        assert_eq!(fail.kind, Kind::Fail);
        assert_eq!(fail.errno.as_deref(), Some("EADDRINUSE"));
        let blocker = fail.blocker.unwrap().unwrap();
        assert_eq!(blocker.process.pid, Some(6));
        assert_eq!(blocker.state, "listen");
        assert_eq!(blocker.since, Some(1_795_669_277_000_000_001));
    }

    #[test]
    fn missing_keys_are_named() {
        assert_eq!(
            record(r#"{"seq":1,"ts":"2026-11-26T05:01:17Z","event":"claim"}"#),
            Err("the record has no proto".into())
        );
        assert_eq!(
            record(r#"{"seq":1,"ts":"2026-11-26T05:01:17Z"}"#),
            Err("the record has no event".into())
        );
        assert_eq!(
            record(r#"{"seq":1,"event":"warp"}"#),
            Ok(Record::Other {
                event: "warp".into()
            })
        );
    }

    #[test]
    fn a_pressure_record_keeps_its_range_and_top_claimers() {
        let Record::Pressure(pressure) = record(
            r#"{"seq":9,"ts":"2026-11-26T05:01:17Z","event":"pressure","proto":"tcp","state":"high","in_use":90,"range":"40000-40099","range_size":100,"share_pct":90.0,"threshold_pct":80,"netns":4026531840,"top":[{"pid":7,"tid":7,"ppid":1,"comm":"load","ports":88}]}"#,
        )
        .unwrap() else {
            panic!("not a pressure record")
        };
        assert!(pressure.high);
        assert_eq!(
            (pressure.in_use, pressure.range.as_str()),
            (90, "40000-40099")
        );
        assert_eq!(pressure.top[0].0.pid, Some(7));
        assert_eq!(pressure.top[0].1, 88);
    }

    #[test]
    fn an_unreadable_line_says_what_is_wrong_with_it() {
        let torn = Record::parse(r#"{"seq":1,"ts":"2026-12-03T10:00:00Z","event":"cla"#);
        assert_eq!(
            torn.unwrap_err(),
            "not a JSON record (a torn or truncated line)"
        );
        let not_json = Record::parse("hello").unwrap_err();
        assert!(
            not_json.starts_with("not a JSON record: expected value"),
            "{not_json}"
        );
        let partial = Record::parse(r#"{"seq":2,"event":"summary","counts":{}}"#).unwrap_err();
        assert!(
            partial.starts_with("not a portwatch record: missing field `claim`"),
            "{partial}"
        );
    }
}
