//! A capture line, typed: the keys `sink/json.rs` and `capture/mod.rs` write, read back for the
//! report. A record missing a key the report needs is refused with the key's name, so a torn or
//! edited line is one sentence, not a wrong timeline.

use serde_json::Value;

use super::time;
use crate::{model::event::Kind, model::proto::Proto};

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
    },
    /// A record of a kind this report does not know (from a newer portwatch): counted and
    /// named in the report, not an error.
    Other {
        event: String,
    },
}

fn text(value: &Value, key: &str) -> Result<String, String> {
    value[key]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("the record has no {key}"))
}

fn optional_text(value: &Value, key: &str) -> Option<String> {
    value[key].as_str().map(str::to_string)
}

fn number(value: &Value, key: &str) -> Result<u64, String> {
    value[key]
        .as_u64()
        .ok_or_else(|| format!("the record has no {key}"))
}

fn timestamp(value: &Value, key: &str) -> Result<u128, String> {
    let text = text(value, key)?;
    time::parse_rfc3339(&text).ok_or_else(|| format!("{key} {text:?} is not an RFC 3339 time"))
}

fn process(value: &Value) -> Process {
    Process {
        pid: value["pid"]
            .as_u64()
            .and_then(|pid| u32::try_from(pid).ok()),
        comm: optional_text(value, "comm"),
    }
}

fn remote(value: &Value) -> Option<String> {
    let addr = value["remote_addr"].as_str()?;
    let port = value["remote_port"].as_u64()?;
    Some(if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    })
}

fn blocker(value: &Value) -> Result<Option<Option<Blocker>>, String> {
    let holder = match value.get("holder") {
        None => return Ok(None),
        Some(Value::Null) => return Ok(Some(None)),
        Some(holder) => holder,
    };
    Ok(Some(Some(Blocker {
        process: process(holder),
        state: text(holder, "state").map_err(|reason| format!("holder: {reason}"))?,
        since: optional_text(holder, "since").and_then(|since| time::parse_rfc3339(&since)),
        how: optional_text(holder, "how"),
        local_addr: optional_text(holder, "local_addr").unwrap_or_default(),
    })))
}

fn proto(value: &Value) -> Result<Proto, String> {
    match text(value, "proto")?.as_str() {
        "tcp" => Ok(Proto::Tcp),
        "udp" => Ok(Proto::Udp),
        other => Err(format!("unknown proto {other:?}")),
    }
}

fn pressure(value: &Value) -> Result<PressureEvent, String> {
    let top = value["top"]
        .as_array()
        .map(|top| {
            top.iter()
                .map(|entry| (process(entry), entry["ports"].as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    Ok(PressureEvent {
        ts: timestamp(value, "ts")?,
        proto: proto(value)?,
        high: text(value, "state")? == "high",
        in_use: number(value, "in_use")?,
        range: text(value, "range")?,
        range_size: number(value, "range_size")?,
        share_pct: value["share_pct"].as_f64().unwrap_or(0.0),
        netns: value["netns"].as_u64(),
        top,
    })
}

fn port_event(value: &Value, kind: Kind) -> Result<PortEvent, String> {
    let proto = proto(value)?;
    let port = number(value, "local_port")?;
    Ok(PortEvent {
        ts: timestamp(value, "ts")?,
        kind,
        proto,
        family: text(value, "family")?,
        local_addr: text(value, "local_addr")?,
        port: u16::try_from(port).map_err(|_| format!("local_port {port} is not a port"))?,
        process: process(value),
        how: optional_text(value, "how"),
        errno: optional_text(value, "errno"),
        blocker: blocker(value)?,
        held_ns: value["held_ns"].as_u64(),
        time_wait: value["time_wait"] == true,
        time_wait_end: value["time_wait_end"] == true,
        claimer_seen: value["claimer_seen"] != false,
        state: optional_text(value, "state"),
        remote: remote(value),
        netns: value["netns"].as_u64(),
        exhaustion: value
            .get("exhaustion")
            .filter(|explained| !explained.is_null())
            .map(Value::to_string),
    })
}

fn header(value: &Value) -> Result<Header, String> {
    Ok(Header {
        capture_id: text(value, "capture_id")?,
        part: number(value, "part")?,
        seq: number(value, "seq")?,
        started: timestamp(value, "started")?,
        hostname: optional_text(value, "hostname").unwrap_or_default(),
        backend: optional_text(value, "backend").unwrap_or_default(),
        kernel: optional_text(value, "kernel").unwrap_or_default(),
        watching: optional_text(value, "watching").unwrap_or_default(),
        filters: value["filters"]
            .as_array()
            .map(|filters| {
                filters
                    .iter()
                    .filter_map(|filter| filter.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        ephemeral_range: optional_text(value, "ephemeral_range"),
    })
}

impl Record {
    /// The record a parsed line holds, or why it cannot be read.
    pub fn from_value(value: &Value) -> Result<Self, String> {
        let event = text(value, "event")?;
        match event.as_str() {
            "capture" => header(value).map(Record::Header),
            "lost" => Ok(Record::Lost {
                ts: timestamp(value, "ts")?,
                count: number(value, "count")?,
            }),
            "summary" => Ok(Record::Summary {
                ts: timestamp(value, "ts")?,
                end: optional_text(value, "end").unwrap_or_default(),
                lost: number(value, "lost")?,
            }),
            "pressure" => pressure(value).map(Record::Pressure),
            name => match Kind::ALL.into_iter().find(|kind| kind.name() == name) {
                Some(kind) => port_event(value, kind).map(|event| Record::Event(Box::new(event))),
                None => Ok(Record::Other {
                    event: name.to_string(),
                }),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(line: &str) -> Result<Record, String> {
        Record::from_value(&serde_json::from_str(line).unwrap())
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
}
