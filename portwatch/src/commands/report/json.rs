//! The report as one JSON object, for machines: the same facts as the text, times in RFC 3339,
//! durations in nanoseconds, `null` where the capture does not know.

use std::io::{self, Write};

use serde_json::{Value, json};

use super::{
    model::{PortReport, Report},
    pressure::RangeSource,
    record::Process,
    timeline::{End, Failure, Hold},
    words::rfc3339,
};

fn process(process: &Process) -> Value {
    json!({"pid": process.pid, "comm": process.comm})
}

fn time(nanos: Option<u128>) -> Value {
    nanos.map_or(Value::Null, |nanos| Value::String(rfc3339(nanos)))
}

fn hold(hold: &Hold) -> Value {
    let (closed, time_wait, time_wait_end) = match &hold.end {
        End::Open => (None, false, None),
        End::Closed(at) => (Some(*at), false, None),
        End::TimeWait { closed, ended } => (*closed, true, *ended),
    };
    json!({
        "pid": hold.process.pid,
        "comm": hold.process.comm,
        "how": hold.how,
        "family": hold.family,
        "local_addr": hold.local_addr,
        "remote": hold.remote,
        "from": time(hold.from),
        "claim_seen": hold.claim_seen,
        "listening": hold.listening,
        "closed": time(closed),
        "time_wait": time_wait,
        "time_wait_end": time(time_wait_end),
        "until": time(hold.occupied_until()),
        "held_ns": match (hold.from, hold.occupied_until()) {
            (Some(from), Some(until)) => json!(until.saturating_sub(from) as u64),
            _ => Value::Null,
        },
    })
}

fn failure(failure: &Failure) -> Value {
    json!({
        "ts": rfc3339(failure.ts),
        "proto": failure.proto.name(),
        "port": failure.port,
        "family": failure.family,
        "local_addr": failure.local_addr,
        "pid": failure.process.pid,
        "comm": failure.process.comm,
        "how": failure.how,
        "errno": failure.errno,
        "holder": failure.blocker.as_ref().map(|blocker| json!({
            "pid": blocker.process.pid,
            "comm": blocker.process.comm,
            "state": blocker.state,
            "since": time(blocker.since),
            "how": blocker.how,
            "local_addr": blocker.local_addr,
        })),
        "held_by_in_capture": failure.held_by_in_capture.iter().map(process).collect::<Vec<_>>(),
    })
}

fn port(port: &PortReport) -> Value {
    json!({
        "proto": port.proto.name(),
        "port": port.port,
        "holders": port.holds.iter().map(hold).collect::<Vec<_>>(),
        "failures": port.failures.iter().map(failure).collect::<Vec<_>>(),
    })
}

/// Everything but the ports.
fn head(report: &Report) -> Value {
    let pressure = &report.pressure;
    json!({
        "files": report.files,
        "captures": report.captures.iter().map(|capture| json!({
            "capture_id": capture.header.capture_id,
            "parts": capture.parts,
            "hostname": capture.header.hostname,
            "kernel": capture.header.kernel,
            "backend": capture.header.backend,
            "watching": capture.header.watching,
            "started": rfc3339(capture.header.started),
        })).collect::<Vec<_>>(),
        "span": {"from": rfc3339(report.span.since), "to": rfc3339(report.span.until)},
        "window": {"from": rfc3339(report.window.since), "to": rfc3339(report.window.until)},
        "narrowed_ports": report.narrowed_ports,
        "lost": {
            "events": report.losses.lost_events,
            "missing_records": report.losses.missing_records,
            "skipped": report.losses.skipped,
            "summary_seen": report.losses.ending.is_some(),
            "end": report.losses.ending.as_ref().map(|ending| ending.end.clone()),
        },
        "problems": report.problems,
        "notes": report.notes,
        "pressure_events": report.pressure_events.iter().map(|pressure| json!({
            "ts": rfc3339(pressure.ts),
            "proto": pressure.proto.name(),
            "state": if pressure.high { "high" } else { "normal" },
            "in_use": pressure.in_use,
            "range": pressure.range,
            "range_size": pressure.range_size,
            "share_pct": pressure.share_pct,
            "netns": pressure.netns,
            "top": pressure.top.iter().map(|(holder, ports)| json!({
                "pid": holder.pid, "comm": holder.comm, "ports": ports,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "portless_failures": report.portless_failures.iter().map(failure).collect::<Vec<_>>(),
        "busiest": report.busiest.iter().map(|activity| json!({
            "pid": activity.process.pid,
            "comm": activity.process.comm,
            "claims": activity.claims,
            "failures": activity.failures,
            "ports": activity.ports,
            "held_ns": activity.held_ns as u64,
        })).collect::<Vec<_>>(),
        "ephemeral": {
            "range": pressure.range.as_ref().map(|range| format!("{}-{}", range.start(), range.end())),
            "size": pressure.range_size(),
            "range_from": match &pressure.source {
                RangeSource::Header => "capture".to_string(),
                RangeSource::PressureRecord => "pressure record".to_string(),
                RangeSource::ThisHost => "this host".to_string(),
                RangeSource::Unknown(reason) => format!("unknown: {reason}"),
            },
            "peaks": pressure.peaks.iter().map(|peak| json!({
                "proto": peak.proto.name(),
                "ports": peak.ports,
                "at": time(peak.at),
                "netns": peak.netns,
            })).collect::<Vec<_>>(),
        },
    })
}

/// One line of JSON. The ports, which can be most of a busy capture, are written one at a time
/// after the rest, so the whole document is never built in memory.
pub fn write(out: &mut impl Write, report: &Report) -> io::Result<()> {
    let mut head = serde_json::to_vec(&head(report))?;
    // `{...}` without its closing brace, to go on with the ports.
    head.pop();
    out.write_all(&head)?;
    out.write_all(b",\"ports\":[")?;
    for (index, entry) in report.ports.iter().enumerate() {
        if index > 0 {
            out.write_all(b",")?;
        }
        serde_json::to_writer(&mut *out, &port(entry))?;
    }
    out.write_all(b"]}\n")
}
