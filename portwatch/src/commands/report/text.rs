//! The report as text for a terminal, a summary that fits a screen or two whatever the capture's
//! size: what was captured and lost, the failed claims grouped, how full the ephemeral range got
//! and with what, the busiest processes, the listeners and other notable ports. Then, for the
//! ports `--port` names (or all, with `--detail`), every socket and every failed claim.

use std::io::{self, Write};

use super::{
    model::{self, PortReport, Report},
    timeline::{End, Hold},
    words,
};
use crate::model::proto::Proto;

/// Runs of at least this many brief holds by one process (claim, close, no peer) print as one
/// line: churn would otherwise bury the holders that matter.
const RUN: usize = 4;
/// Failure groups the summary lists; the rest are counted.
const GROUPS: usize = 10;
/// Notable ports the summary lists; the rest are counted.
const PORTS: usize = 15;

/// Pressure records shown without `--detail`.
const PRESSURE_SHOWN: usize = 5;

/// Whether `hold` can join a run that `first` began.
fn same_churn(first: &Hold, hold: &Hold) -> bool {
    let brief = |hold: &Hold| {
        matches!(hold.end, End::Closed(_))
            && hold.claim_seen
            && !hold.listening
            && hold.remote.is_none()
    };
    brief(first)
        && brief(hold)
        && hold.process == first.process
        && hold.how == first.how
        && hold.local_addr == first.local_addr
}

fn write_holds(out: &mut impl Write, holds: &[Hold]) -> io::Result<()> {
    let mut rest = holds;
    while let Some(first) = rest.first() {
        let run = rest
            .iter()
            .take_while(|hold| same_churn(first, hold))
            .count();
        if run >= RUN {
            let longest = rest[..run]
                .iter()
                .filter_map(|hold| Some(hold.occupied_until()? - hold.from?))
                .max()
                .unwrap_or(0);
            writeln!(
                out,
                "    {} -> {}  {}  {}  ({run} holds one after another, each at most {})",
                words::hold_start(first),
                words::hold_end(&rest[run - 1]),
                words::process(&first.process),
                words::hold_detail(first),
                words::duration(longest)
            )?;
            rest = &rest[run..];
        } else {
            writeln!(
                out,
                "    {} -> {}  {}  {}",
                words::hold_start(first),
                words::hold_end(first),
                words::process(&first.process),
                words::hold_detail(first)
            )?;
            rest = &rest[1..];
        }
    }
    Ok(())
}

fn write_failures(out: &mut impl Write, report: &Report) -> io::Result<()> {
    if report.failures == 0 {
        return writeln!(out, "\nfailed claims: none");
    }
    writeln!(
        out,
        "\nfailed claims: {} in {} group(s) (same port, errno and holder)",
        report.failures,
        report.failure_groups.len()
    )?;
    for group in report.failure_groups.iter().take(GROUPS) {
        writeln!(out, "  {}", words::group_head(group))?;
        writeln!(out, "      {}", words::group_who(group))?;
        if let Some(toward) = words::group_destinations(group) {
            writeln!(out, "      {toward}")?;
        }
        if let Some(explained) = &group.sample.exhaustion {
            writeln!(out, "      the tracer explains: {explained}")?;
        }
    }
    let rest = report.failure_groups.len().saturating_sub(GROUPS);
    if rest > 0 {
        let count: u64 = report.failure_groups[GROUPS..]
            .iter()
            .map(|group| group.count)
            .sum();
        writeln!(
            out,
            "  ... {rest} more group(s), {count} failed claim(s): --json lists every group"
        )?;
    }
    Ok(())
}

pub fn write_ephemeral(out: &mut impl Write, report: &Report) -> io::Result<()> {
    let ephemeral = &report.ephemeral;
    let Some(range) = &ephemeral.range else {
        return writeln!(
            out,
            "\nephemeral ports: not measured: the input does not record the range and this host's could not be read ({})",
            words::range_source(&ephemeral.source)
        );
    };
    let size = ephemeral.range_size() as u64;
    writeln!(
        out,
        "\nephemeral ports {}-{} ({size} ports, {}):",
        range.start(),
        range.end(),
        words::range_source(&ephemeral.source)
    )?;
    for proto in [Proto::Tcp, Proto::Udp] {
        let Some(((netns, _), space)) = ephemeral
            .fullest(proto)
            .filter(|(_, space)| space.ephemeral.peak > 0)
        else {
            writeln!(out, "  {}: none in use", proto.name())?;
            continue;
        };
        let peak = u64::from(space.ephemeral.peak);
        let mut line = format!(
            "  {}: peak {peak} in use ({} of the range)",
            proto.name(),
            words::share(peak, size)
        );
        if let Some(at) = space.ephemeral.peak_at {
            line.push_str(&format!(" at {}", words::clock(at)));
        }
        if let Some(netns) = netns {
            line.push_str(&format!(", netns {netns}"));
        }
        let spaces = ephemeral
            .spaces
            .iter()
            .filter(|((_, of), space)| *of == proto && space.ephemeral.peak > 0)
            .count();
        if spaces > 1 {
            line.push_str(&format!(" (the fullest of {spaces} namespaces)"));
        }
        writeln!(out, "{line}")?;
        if let Some(at_peak) = &space.at_peak {
            writeln!(
                out,
                "    then: {} port(s) held only by TIME_WAIT ({}), {} socket(s) on {} port(s)",
                at_peak.time_wait_ports,
                words::share(u64::from(at_peak.time_wait_ports), u64::from(at_peak.ports)),
                at_peak.sockets,
                at_peak.ports
            )?;
            let by_process: Vec<String> = at_peak
                .by_process
                .iter()
                .map(|(process, count)| format!("{} {count}", words::process(process)))
                .collect();
            if !by_process.is_empty() {
                writeln!(out, "    by process: {}", by_process.join(", "))?;
            }
            let toward: Vec<String> = at_peak
                .by_destination
                .iter()
                .map(|(remote, count)| format!("{remote} {count}"))
                .collect();
            if !toward.is_empty() {
                writeln!(out, "    by destination: {}", toward.join(", "))?;
            }
        }
    }
    if let Some(((proto, remote), destination)) = ephemeral.destinations.first() {
        writeln!(
            out,
            "  most local ports toward one destination at once: {} {remote} {} ({} of the range) at {}",
            proto.name(),
            destination.peak,
            words::share(u64::from(destination.peak), size),
            words::clock(destination.peak_at)
        )?;
    }
    Ok(())
}

/// The tracer's `--pressure` crossings: the first few, then how many more and over what time,
/// since a long capture of a busy host crosses its threshold again and again.
pub fn write_pressure(out: &mut impl Write, report: &Report) -> io::Result<()> {
    let events = &report.pressure_events;
    let shown = if report.detail {
        events.len()
    } else {
        events.len().min(PRESSURE_SHOWN)
    };
    for pressure in &events[..shown] {
        writeln!(out, "pressure: {}", words::pressure_event(pressure))?;
    }
    if let (Some(first), Some(last)) = (events.get(shown), events.last()) {
        writeln!(
            out,
            "pressure: {} more record(s) from {} to {}: --detail lists them",
            events.len() - shown,
            words::clock(first.ts),
            words::clock(last.ts)
        )?;
    }
    if report.pressure_events_not_kept > 0 {
        writeln!(
            out,
            "pressure: {} more record(s) after those, counted but not kept",
            report.pressure_events_not_kept
        )?;
    }
    Ok(())
}

fn write_busiest(out: &mut impl Write, report: &Report) -> io::Result<()> {
    if report.busiest.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "\nbusiest processes ({} of {}):",
        report.busiest.len(),
        report.processes
    )?;
    writeln!(
        out,
        "    {:<28} {:>8} {:>7} {:>6} {:>12}",
        "PROCESS", "CLAIMS", "FAILED", "PORTS", "HELD"
    )?;
    for activity in &report.busiest {
        writeln!(
            out,
            "    {:<28} {:>8} {:>7} {:>6} {:>12}",
            words::process(&activity.process),
            activity.claims,
            activity.failures,
            activity.ports,
            words::duration(activity.held_ns)
        )?;
    }
    Ok(())
}

/// One line for a port: its listeners, or its holders by process; accepted and failed counts.
fn port_line(port: &PortReport) -> String {
    let mut parts = Vec::new();
    for listener in port.listeners.iter().take(2) {
        parts.push(format!(
            "listening: {} {} {} -> {}",
            words::process(&listener.process),
            listener.local_addr,
            words::hold_start(listener),
            words::hold_end(listener)
        ));
    }
    if port.listeners.len() > 2 {
        parts.push(format!("{} more listeners", port.listeners.len() - 2));
    }
    let others = port.holds - port.accepted - port.listeners.len() as u64;
    if port.accepted > 0 {
        parts.push(format!("{} accepted connection(s)", port.accepted));
    }
    if others > 0 || port.listeners.is_empty() {
        let holders: Vec<String> = port
            .holders
            .sorted()
            .into_iter()
            .map(|(process, count)| format!("{} ({count})", words::process(process)))
            .collect();
        parts.push(format!(
            "{} socket(s): {}{}",
            port.holds,
            holders.join(", "),
            if port.holders.others > 0 {
                format!(", {} by others", port.holders.others)
            } else {
                String::new()
            }
        ));
    }
    if port.failures > 0 {
        parts.push(format!("{} failed claim(s)", port.failures));
    }
    format!("{} {}  {}", port.proto.name(), port.port, parts.join("; "))
}

fn write_ports(out: &mut impl Write, report: &Report) -> io::Result<()> {
    let notable = model::notable(report);
    writeln!(
        out,
        "\nlisteners and other notable ports ({} of {} ports held or refused):",
        notable.len().min(PORTS),
        report.ports.len()
    )?;
    if notable.is_empty() {
        writeln!(out, "  none")?;
    }
    for port in notable.iter().take(PORTS) {
        writeln!(out, "  {}", port_line(port))?;
    }
    if notable.len() > PORTS {
        writeln!(out, "  ... {} more", notable.len() - PORTS)?;
    }
    let rest: Vec<&PortReport> = report
        .ports
        .iter()
        .filter(|port| {
            report
                .ephemeral
                .range
                .as_ref()
                .is_some_and(|range| range.contains(&port.port))
                && port.listeners.is_empty()
                && !port.pinned
        })
        .collect();
    if !rest.is_empty() {
        writeln!(
            out,
            "  and {} ephemeral port(s) held {} time(s) in all (counted above, not listed)",
            rest.len(),
            rest.iter().map(|port| port.holds).sum::<u64>()
        )?;
    }
    if !report.detail {
        writeln!(
            out,
            "\nevery socket of a port: --port PORT (or --detail for all ports)"
        )?;
    }
    Ok(())
}

/// Every socket and failed claim of the ports in scope (today's per-port view).
fn write_detail(out: &mut impl Write, report: &Report) -> io::Result<()> {
    for port in &report.ports {
        writeln!(out, "\n{} port {}", port.proto.name(), port.port)?;
        if !port.sockets.is_empty() {
            writeln!(out, "  holders:")?;
        }
        write_holds(out, &port.sockets)?;
        if !port.failed_claims.is_empty() {
            writeln!(out, "  failed claims:")?;
        }
        for failure in &port.failed_claims {
            writeln!(
                out,
                "    {}  {}  {}; {}",
                words::clock(failure.ts),
                words::process(&failure.process),
                words::failed_claim(failure),
                words::blocker(failure)
            )?;
        }
    }
    Ok(())
}

pub fn write(out: &mut impl Write, report: &Report) -> io::Result<()> {
    writeln!(out, "portwatch report")?;
    for line in words::coverage(report) {
        writeln!(out, "  {line}")?;
    }
    writeln!(out, "{}", words::losses(&report.losses))?;
    writeln!(out, "{}", words::delivered(&report.losses))?;
    if !report.problems.is_empty() {
        writeln!(
            out,
            "unreadable input: {} problem(s), printed on stderr as they were found",
            report.problems.len() + report.problems_not_kept
        )?;
    }
    if report.ports.is_empty() && report.failures == 0 {
        writeln!(out, "\nno port was claimed, held or refused in this window")?;
    }
    write_failures(out, report)?;
    write_ephemeral(out, report)?;
    write_pressure(out, report)?;
    write_busiest(out, report)?;
    write_ports(out, report)?;
    if report.detail {
        write_detail(out, report)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::report::{
        load::Loaded,
        model::{Digest, Narrowing},
        record::Record,
    };

    fn text(lines: &[String], detail: bool) -> String {
        let mut digest = Digest::new(Narrowing::default(), detail, Ok(40000..=49999));
        for line in lines {
            digest.add(Record::parse(line).unwrap());
        }
        let mut out = Vec::new();
        write(&mut out, &digest.finish(Loaded::default())).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn at(second: u32, micros: u32) -> String {
        format!("2026-12-03T10:00:{second:02}.{micros:06}Z")
    }

    fn claim(ts: &str, port: u16) -> String {
        format!(
            r#"{{"ts":"{ts}","event":"claim","proto":"tcp","family":"ipv4","local_addr":"127.0.0.1","local_port":{port},"pid":9,"comm":"bench","how":"connect","remote_addr":"127.0.0.1","remote_port":6379}}"#
        )
    }

    fn free(ts: &str, port: u16) -> String {
        format!(
            r#"{{"ts":"{ts}","event":"free","proto":"tcp","family":"ipv4","local_addr":"127.0.0.1","local_port":{port},"pid":9,"comm":"bench","how":"connect","time_wait":true,"remote_addr":"127.0.0.1","remote_port":6379}}"#
        )
    }

    fn refused(ts: &str, pid: u32) -> String {
        format!(
            r#"{{"ts":"{ts}","event":"fail","proto":"tcp","family":"ipv4","local_addr":"127.0.0.1","local_port":6379,"pid":{pid},"comm":"rival","how":"bind","errno":"EADDRINUSE","holder":{{"pid":1,"comm":"redis","state":"listen","since":"{ts}","local_addr":"127.0.0.1","how":"bind"}}}}"#
        )
    }

    #[test]
    fn thousands_of_connections_and_grouped_failures_fit_a_screen() {
        let mut lines = vec![
            r#"{"ts":"2026-12-03T10:00:00Z","event":"held","proto":"tcp","family":"ipv4","local_addr":"127.0.0.1","local_port":6379,"pid":1,"comm":"redis","state":"listen"}"#.to_string(),
        ];
        for i in 0..5000u32 {
            let port = 40000 + i as u16;
            lines.push(claim(&at(1 + i / 1000, i % 1000 * 100), port));
            lines.push(free(&at(1 + i / 1000, i % 1000 * 100 + 50), port));
        }
        lines.push(refused(&at(7, 1), 20));
        lines.push(refused(&at(8, 2), 21));
        lines.push(refused(&at(9, 3), 20));
        let text = text(&lines, false);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() < 60, "{} lines:\n{text}", lines.len());
        let group = lines
            .iter()
            .position(|line| line.contains("tcp 6379  bind 127.0.0.1: EADDRINUSE  3x from 10:00:07.000001 to 10:00:09.000003"))
            .unwrap_or_else(|| panic!("no failure group:\n{text}"));
        assert!(group < 15, "the failure is at line {group}:\n{text}");
        assert!(lines[group + 1].contains("by rival[20] (2), rival[21]; held by redis[1] (listen"));
        assert!(
            text.contains("tcp: peak 5000 in use (50.0% of the range)"),
            "{text}"
        );
        assert!(
            text.contains("then: 5000 port(s) held only by TIME_WAIT (100.0%)"),
            "{text}"
        );
        assert!(text.contains("by process: bench[9] 5000"), "{text}");
        assert!(
            text.contains("by destination: 127.0.0.1:6379 5000"),
            "{text}"
        );
        assert!(
            text.contains("tcp 6379  listening: redis[1] 127.0.0.1 before the capture"),
            "{text}"
        );
        assert!(
            text.contains("and 5000 ephemeral port(s) held 5000 time(s)"),
            "{text}"
        );
    }

    #[test]
    fn pressure_records_beyond_a_few_are_counted_with_their_times() {
        let lines: Vec<String> = (0..40u32)
            .map(|i| {
                format!(
                    r#"{{"ts":"{}","event":"pressure","proto":"tcp","state":"{}","in_use":{},"range":"40000-49999","range_size":10000,"share_pct":80.0}}"#,
                    at(1 + i, 0),
                    if i % 2 == 0 { "high" } else { "normal" },
                    8000 - i % 2 * 1000
                )
            })
            .collect();
        let summary = text(&lines, false);
        let pressure: Vec<&str> = summary
            .lines()
            .filter(|line| line.starts_with("pressure: "))
            .collect();
        assert_eq!(pressure.len(), 6, "{summary}");
        assert!(
            pressure[0].starts_with("pressure: 10:00:01.000000 tcp high"),
            "{summary}"
        );
        assert_eq!(
            pressure[5],
            "pressure: 35 more record(s) from 10:00:06.000000 to 10:00:40.000000: --detail lists them"
        );
        let detail = text(&lines, true);
        assert_eq!(
            detail
                .lines()
                .filter(|line| line.starts_with("pressure: "))
                .count(),
            40,
            "{detail}"
        );
    }

    #[test]
    fn detail_lists_every_socket() {
        let lines = vec![claim(&at(1, 0), 40001), free(&at(2, 0), 40001)];
        let text = text(&lines, true);
        assert!(text.contains("\ntcp port 40001\n  holders:\n    10:00:01.000000 -> 10:00:02.000000 + TIME_WAIT to the end"), "{text}");
    }
}
