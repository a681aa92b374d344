//! The report as one JSON object, for machines: the same facts as the text, times in RFC 3339,
//! durations in nanoseconds, `null` where the capture does not know.

use std::io::{self, Write};

use serde_json::{Value, json};

use super::{
    failures::{Group, Tally},
    model::{Ephemeral, PortReport, Report},
    occupancy::{self, Counter},
    pressure::RangeSource,
    record::Process,
    timeline::{End, Failure, Hold},
    words::rfc3339,
};
use crate::model::proto::Proto;

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
        "time_wait_end_assumed": hold.time_wait_assumed,
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
        "remote": failure.remote,
        "holder": failure.blocker.as_ref().map(|blocker| json!({
            "pid": blocker.process.pid,
            "comm": blocker.process.comm,
            "state": blocker.state,
            "since": time(blocker.since),
            "how": blocker.how,
            "local_addr": blocker.local_addr,
        })),
        "held_by_in_capture": failure.held_by_in_capture.iter().map(process).collect::<Vec<_>>(),
        "exhaustion": failure.exhaustion.as_deref().and_then(|text| serde_json::from_str::<Value>(text).ok()),
    })
}

fn tally<K: PartialEq>(tally: &Tally<K>, key: impl Fn(&K) -> Value) -> Value {
    json!({
        "top": tally.sorted().into_iter().map(|(k, count)| json!({"of": key(k), "count": count})).collect::<Vec<_>>(),
        "others": tally.others,
    })
}

fn group(group: &Group) -> Value {
    json!({
        "proto": group.key.proto.name(),
        "port": group.key.port,
        "errno": group.key.errno,
        "how": group.key.how,
        "count": group.count,
        "first": rfc3339(group.first),
        "last": rfc3339(group.last),
        "claimers": tally(&group.claimers, process),
        "destinations": tally(&group.destinations, |remote| json!(remote)),
        "sample": failure(&group.sample),
    })
}

fn port(port: &PortReport) -> Value {
    json!({
        "proto": port.proto.name(),
        "port": port.port,
        "holds": port.holds,
        "accepted": port.accepted,
        "failure_count": port.failures,
        "holders_by_process": tally(&port.holders, process),
        "listeners": port.listeners.iter().map(hold).collect::<Vec<_>>(),
        "holders": port.sockets.iter().map(hold).collect::<Vec<_>>(),
        "holders_left_out": port.sockets_left_out,
        "failures": port.failed_claims.iter().map(failure).collect::<Vec<_>>(),
    })
}

/// A series as numbers: per bucket the fullest moment's ports in use and TIME_WAIT-only ports.
fn series(counter: &Counter) -> Value {
    let points = occupancy::filled(&counter.series);
    json!({
        "peak": counter.peak,
        "peak_at": time(counter.peak_at),
        "in_use": points.iter().map(|point| point.0).collect::<Vec<_>>(),
        "time_wait": points.iter().map(|point| point.1).collect::<Vec<_>>(),
    })
}

fn occupancy_json(ephemeral: &Ephemeral) -> Value {
    json!({
        "from": rfc3339(ephemeral.origin),
        "bucket_ns": ephemeral.bucket_ns as u64,
        "failures": {"tcp": ephemeral.failures[0], "udp": ephemeral.failures[1]},
        "spaces": ephemeral.spaces.iter().map(|((netns, proto), space)| json!({
            "netns": netns,
            "proto": proto.name(),
            "all_ports": series(&space.all),
            "ephemeral": series(&space.ephemeral),
            "at_peak": space.at_peak.as_ref().map(|at_peak| json!({
                "at": rfc3339(at_peak.at),
                "ports": at_peak.ports,
                "time_wait_ports": at_peak.time_wait_ports,
                "sockets": at_peak.sockets,
                "by_process": at_peak.by_process.iter().map(|(p, count)| json!({"pid": p.pid, "comm": p.comm, "sockets": count})).collect::<Vec<_>>(),
                "by_destination": at_peak.by_destination.iter().map(|(remote, count)| json!({"remote": remote, "sockets": count})).collect::<Vec<_>>(),
            })),
        })).collect::<Vec<_>>(),
    })
}

/// The fullest namespace's ephemeral peak, per protocol.
fn peaks(ephemeral: &Ephemeral) -> Vec<Value> {
    [Proto::Tcp, Proto::Udp]
        .into_iter()
        .map(|proto| {
            let fullest = ephemeral.fullest(proto);
            json!({
                "proto": proto.name(),
                "ports": fullest.map_or(0, |(_, space)| space.ephemeral.peak),
                "at": time(fullest.and_then(|(_, space)| space.ephemeral.peak_at)),
                "netns": fullest.and_then(|((netns, _), _)| *netns),
            })
        })
        .collect()
}

/// Everything but the ports.
fn head(report: &Report) -> Value {
    let ephemeral = &report.ephemeral;
    json!({
        "files": report.files,
        "captures": report.captures.iter().map(|capture| json!({
            "capture_id": capture.header.capture_id,
            "parts": capture.parts,
            "hostname": capture.header.hostname,
            "kernel": capture.header.kernel,
            "backend": capture.header.backend,
            "watching": capture.header.watching,
            "filters": capture.header.filters,
            "started": rfc3339(capture.header.started),
        })).collect::<Vec<_>>(),
        "plain_streams": report.plain_streams,
        "span": {"from": rfc3339(report.span.since), "to": rfc3339(report.span.until)},
        "window": {"from": rfc3339(report.window.since), "to": rfc3339(report.window.until)},
        "narrowed_ports": report.narrowed_ports,
        "detail": report.detail,
        "lost": {
            "events": report.losses.lost_events,
            "missing_records": report.losses.missing_records,
            "skipped": report.losses.skipped,
            "summary_seen": report.losses.ending.is_some(),
            "end": report.losses.ending.as_ref().map(|ending| ending.end.clone()),
            "skipped_runs": report.losses.ending.as_ref().and_then(|ending| ending.skipped_runs),
        },
        "delivered": report.losses.delivered,
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
        "failures": report.failures,
        "failure_groups": report.failure_groups.iter().map(group).collect::<Vec<_>>(),
        "busiest": report.busiest.iter().map(|activity| json!({
            "pid": activity.process.pid,
            "comm": activity.process.comm,
            "claims": activity.claims,
            "failures": activity.failures,
            "ports": activity.ports,
            "held_ns": activity.held_ns as u64,
        })).collect::<Vec<_>>(),
        "processes": report.processes,
        "ephemeral": {
            "range": ephemeral.range.as_ref().map(|range| format!("{}-{}", range.start(), range.end())),
            "size": ephemeral.range_size(),
            "range_from": match &ephemeral.source {
                RangeSource::Header => "capture".to_string(),
                RangeSource::PressureRecord => "pressure record".to_string(),
                RangeSource::ThisHost => "this host".to_string(),
                RangeSource::Unknown(reason) => format!("unknown: {reason}"),
            },
            "peaks": peaks(ephemeral),
            "destinations": ephemeral.destinations.iter().map(|((proto, remote), destination)| json!({
                "proto": proto.name(),
                "remote": remote,
                "peak": destination.peak,
                "at": rfc3339(destination.peak_at),
            })).collect::<Vec<_>>(),
        },
        "occupancy": occupancy_json(ephemeral),
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
