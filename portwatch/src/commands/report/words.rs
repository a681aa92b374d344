//! The phrases the text and HTML reports share, so both say the same thing the same way.

use super::{
    failures::Group,
    model::{Losses, Report},
    pressure::RangeSource,
    record::{PressureEvent, Process},
    timeline::{End, Failure, Hold},
};
use crate::{
    model::clock::Timestamp,
    model::text::{human_duration, printable},
};

/// `python3[4242]`, or `no process` for a socket no process held.
pub fn process(process: &Process) -> String {
    match (&process.comm, process.pid) {
        (Some(comm), Some(pid)) => format!("{}[{pid}]", printable(comm)),
        (None, Some(pid)) => format!("pid {pid}"),
        (Some(comm), None) => printable(comm),
        (None, None) => "no process".into(),
    }
}

/// Time of day, UTC, microseconds: `09:50:02.123456`.
pub fn clock(nanos: u128) -> String {
    Timestamp::from_unix_nanos(nanos).time_of_day()
}

pub fn rfc3339(nanos: u128) -> String {
    Timestamp::from_unix_nanos(nanos).rfc3339()
}

pub fn duration(nanos: u128) -> String {
    human_duration(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// `09:50:02.123456` or `before the capture`, with `(claim not captured)` when the claim time
/// comes from a free's `held_ns`.
pub fn hold_start(hold: &Hold) -> String {
    match (hold.from, hold.claim_seen) {
        (None, _) => "before the capture".into(),
        (Some(from), true) => clock(from),
        (Some(from), false) => format!("{} (claim not captured)", clock(from)),
    }
}

/// `09:50:05.456789`, `09:50:05.456789 + TIME_WAIT to 09:51:05.5`, or `still held`.
pub fn hold_end(hold: &Hold) -> String {
    match &hold.end {
        End::Open => "still held at the end".into(),
        End::Closed(at) => clock(*at),
        End::TimeWait { closed, ended } => format!(
            "{} + TIME_WAIT to {}{}",
            closed.map_or("before the capture".into(), clock),
            ended.map_or("the end (its end not seen)".into(), clock),
            if hold.time_wait_assumed {
                " (its end not seen: Linux's 60 s)"
            } else {
                ""
            }
        ),
    }
}

/// `bind, listening, 127.0.0.1` or `accept, 127.0.0.1:60001 <- 127.0.0.1:45678`.
pub fn hold_detail(hold: &Hold) -> String {
    let mut detail = vec![
        hold.how
            .clone()
            .unwrap_or_else(|| "held at start-up".into()),
    ];
    if hold.listening {
        detail.push("listening".into());
    }
    detail.push(match &hold.remote {
        Some(remote) => format!("{} <-> {remote}", hold.local_addr),
        None => hold.local_addr.clone(),
    });
    detail.join(", ")
}

/// Who blocked a failed claim, as the record says, or the capture's holders when it says none.
pub fn blocker(failure: &Failure) -> String {
    match &failure.blocker {
        Some(blocker) => {
            let mut text = format!("held by {} ({}", process(&blocker.process), blocker.state);
            if let Some(since) = blocker.since {
                text.push_str(&format!(" since {}", clock(since)));
            }
            if let Some(how) = &blocker.how {
                text.push_str(&format!(", {how}"));
            }
            text.push_str(&format!(", {})", blocker.local_addr));
            text
        }
        None if failure.port == 0 => "no port was free to choose".into(),
        None if failure.held_by_in_capture.is_empty() => "holder not known".into(),
        None => format!(
            "holder not named; the capture shows {} holding the port",
            failure
                .held_by_in_capture
                .iter()
                .map(process)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// `bind 0.0.0.0: EADDRINUSE`.
pub fn failed_claim(failure: &Failure) -> String {
    format!(
        "{} {}: {}",
        failure.how.as_deref().unwrap_or("claim"),
        failure.local_addr,
        failure.errno
    )
}

/// The sentence on losses every report carries.
pub fn losses(losses: &Losses) -> String {
    let mut text = match losses.lost_events {
        0 => "lost: none (the kernel dropped no events)".to_string(),
        n => format!(
            "lost: {n} events dropped by the kernel (ring buffer full): holds and failures below may be incomplete"
        ),
    };
    match &losses.ending {
        Some(ending) => {
            text.push_str(&format!("; the capture ended ({})", ending.end));
            if let Some(runs @ 1..) = ending.skipped_runs {
                text.push_str(&format!(
                    "; the kernel skipped {runs} runs of portwatch's programs (the program was already running on that CPU, or a bpf() call held it), so events may be missing that no count covers"
                ));
            }
        }
        None => text.push_str(
            "; no summary record: the capture was still running or cut short, so later losses are unknown",
        ),
    }
    if losses.missing_records > 0 {
        text.push_str(&format!(
            "; {} records missing from the files",
            losses.missing_records
        ));
    }
    if losses.skipped > 0 {
        text.push_str(&format!("; {} unreadable lines skipped", losses.skipped));
    }
    text
}

/// `read: 48017 claim, 0 listen, 48017 free, 4 fail, 95 held`: what the input delivered.
pub fn delivered(losses: &Losses) -> String {
    let counts: Vec<String> = crate::model::event::Kind::ALL
        .iter()
        .map(|kind| {
            format!(
                "{} {}",
                losses.delivered.get(kind.name()).copied().unwrap_or(0),
                kind.name()
            )
        })
        .collect();
    format!("read: {} event records", counts.join(", "))
}

/// One sentence for a plain `--json` stream: what it cannot tell.
pub fn plain_stream(path: &str) -> String {
    format!(
        "{path} is a plain --json stream, not a capture: it does not say what was watched, on \
         which host or with which filters, its losses are only its `lost` records (no seq, no \
         summary), and it has no rotated parts"
    )
}

/// `tcp 6379  bind 0.0.0.0: EADDRINUSE  3x 10:00:01.000001 - 10:00:04.000002`.
pub fn group_head(group: &Group) -> String {
    let when = if group.count == 1 {
        format!("1x at {}", clock(group.first))
    } else {
        format!(
            "{}x from {} to {}",
            group.count,
            clock(group.first),
            clock(group.last)
        )
    };
    let port = match group.key.port {
        0 => "(no port)".to_string(),
        port => port.to_string(),
    };
    format!(
        "{} {port}  {}  {when}",
        group.key.proto.name(),
        failed_claim(&group.sample)
    )
}

/// `by redis-server[7] (2), nc[8]; held by ...`.
pub fn group_who(group: &Group) -> String {
    let mut claimers: Vec<String> = group
        .claimers
        .sorted()
        .into_iter()
        .map(|(claimer, count)| match count {
            1 => process(claimer),
            n => format!("{} ({n})", process(claimer)),
        })
        .collect();
    if group.claimers.others > 0 {
        claimers.push(format!("{} more", group.claimers.others));
    }
    format!("by {}; {}", claimers.join(", "), blocker(&group.sample))
}

/// `toward 10.0.0.1:80 (3), 10.0.0.2:80 (1)`, when failed connects say where they went.
pub fn group_destinations(group: &Group) -> Option<String> {
    if group.destinations.top.is_empty() {
        return None;
    }
    let mut toward: Vec<String> = group
        .destinations
        .sorted()
        .into_iter()
        .map(|(remote, count)| format!("{remote} ({count})"))
        .collect();
    if group.destinations.others > 0 {
        toward.push(format!("{} more", group.destinations.others));
    }
    Some(format!("toward {}", toward.join(", ")))
}

/// `12.5%` of `whole`, or `-` when there is no whole.
pub fn share(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".into();
    }
    format!("{:.1}%", part as f64 * 100.0 / whole as f64)
}

/// Where the ephemeral range came from, said after it.
pub fn range_source(source: &RangeSource) -> String {
    match source {
        RangeSource::Header => "as the capture recorded it".into(),
        RangeSource::PressureRecord => "as the input's pressure record gives it".into(),
        RangeSource::ThisHost => {
            "this host's net.ipv4.ip_local_port_range: the input does not record its range".into()
        }
        RangeSource::Unknown(reason) => format!("unknown: {reason}"),
    }
}

/// `10:01:23.346843 tcp high: 90 of 100 ports in use (90.0%), netns 4026531840; most held by
/// load[7] (88)`.
pub fn pressure_event(pressure: &PressureEvent) -> String {
    let mut text = format!(
        "{} {} {}: {} of {} ports in use ({:.1}%, range {})",
        clock(pressure.ts),
        pressure.proto.name(),
        if pressure.high { "high" } else { "normal" },
        pressure.in_use,
        pressure.range_size,
        pressure.share_pct,
        pressure.range
    );
    if let Some(netns) = pressure.netns {
        text.push_str(&format!(", netns {netns}"));
    }
    if !pressure.top.is_empty() {
        let top: Vec<String> = pressure
            .top
            .iter()
            .map(|(holder, ports)| format!("{} ({ports})", process(holder)))
            .collect();
        text.push_str(&format!("; most held by {}", top.join(", ")));
    }
    text
}

/// What the report covers: files, captures, hosts, the time window and the ports.
pub fn coverage(report: &Report) -> Vec<String> {
    let mut lines = Vec::new();
    for capture in &report.captures {
        let header = &capture.header;
        lines.push(format!(
            "capture {} (parts {}) on {}, kernel {}, backend {}, watching {}, filters: {}",
            header.capture_id,
            parts(&capture.parts),
            header.hostname,
            header.kernel,
            header.backend,
            header.watching,
            if header.filters.is_empty() {
                "none".to_string()
            } else {
                header.filters.join(" ")
            }
        ));
    }
    lines.extend(report.plain_streams.iter().map(|path| plain_stream(path)));
    lines.push(format!(
        "{} file(s), from {} to {} ({})",
        report.files,
        rfc3339(report.span.since),
        rfc3339(report.span.until),
        duration(report.span.until - report.span.since)
    ));
    if report.window.since > report.window.until {
        lines.push("the window is empty: --since falls after --until or after the capture".into());
    } else if report.window != report.span || report.narrowed_ports.is_some() {
        let mut narrowed = format!(
            "narrowed to {} - {}",
            rfc3339(report.window.since),
            rfc3339(report.window.until)
        );
        if let Some(ports) = &report.narrowed_ports {
            narrowed.push_str(&format!(", ports {ports}"));
        }
        lines.push(narrowed);
    }
    lines.extend(report.notes.iter().cloned());
    lines
}

/// `1-20` for consecutive parts, `3,5` otherwise.
fn parts(parts: &[u64]) -> String {
    let consecutive = parts.windows(2).all(|pair| pair[1] == pair[0] + 1);
    match (parts.first(), parts.last()) {
        (Some(first), Some(last)) if consecutive && parts.len() > 2 => format!("{first}-{last}"),
        _ => parts
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(","),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::report::model::Ending;

    fn ended(skipped_runs: Option<u64>) -> Losses {
        Losses {
            lost_events: 0,
            missing_records: 0,
            skipped: 0,
            ending: Some(Ending {
                end: "interrupt".into(),
                lost: 0,
                skipped_runs,
            }),
            delivered: Default::default(),
        }
    }

    #[test]
    fn skipped_runs_are_stated_only_when_there_were_some() {
        assert!(losses(&ended(Some(7))).contains("the kernel skipped 7 runs"));
        for quiet in [Some(0), None] {
            assert!(!losses(&ended(quiet)).contains("skipped"), "{quiet:?}");
        }
    }
}
