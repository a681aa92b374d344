//! The report as text for a terminal: what the capture covers and lost, then per port its holders
//! and failed claims, the busiest processes and the ephemeral peak.

use std::io::{self, Write};

use super::{
    model::Report,
    timeline::{End, Hold},
    words,
};

/// Runs of at least this many brief holds by one process (claim, close, no peer) print as one
/// line: churn would otherwise bury the holders that matter.
const RUN: usize = 4;

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

pub fn write(out: &mut impl Write, report: &Report) -> io::Result<()> {
    writeln!(out, "portwatch report")?;
    for line in words::coverage(report) {
        writeln!(out, "  {line}")?;
    }
    writeln!(out, "{}", words::losses(&report.losses))?;
    writeln!(
        out,
        "{}",
        words::pressure(&report.pressure, words::watching(report))
    )?;
    for pressure in &report.pressure_events {
        writeln!(out, "pressure: {}", words::pressure_event(pressure))?;
    }
    if report.ports.is_empty() && report.portless_failures.is_empty() {
        writeln!(out, "\nno port was claimed, held or refused in this window")?;
    }
    for port in &report.ports {
        writeln!(out, "\n{} port {}", port.proto.name(), port.port)?;
        if !port.holds.is_empty() {
            writeln!(out, "  holders:")?;
        }
        write_holds(out, &port.holds)?;
        if !port.failures.is_empty() {
            writeln!(out, "  failed claims:")?;
        }
        for failure in &port.failures {
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
    if !report.portless_failures.is_empty() {
        writeln!(
            out,
            "\nfailed claims with no port (none was free to choose):"
        )?;
        for failure in &report.portless_failures {
            writeln!(
                out,
                "    {}  {}  {} {}",
                words::clock(failure.ts),
                words::process(&failure.process),
                failure.proto.name(),
                words::failed_claim(failure)
            )?;
        }
    }
    if !report.busiest.is_empty() {
        writeln!(out, "\nbusiest processes:")?;
        writeln!(
            out,
            "    {:<24} {:>7} {:>7} {:>6} {:>12}",
            "PROCESS", "CLAIMS", "FAILED", "PORTS", "HELD"
        )?;
        for activity in &report.busiest {
            writeln!(
                out,
                "    {:<24} {:>7} {:>7} {:>6} {:>12}",
                words::process(&activity.process),
                activity.claims,
                activity.failures,
                activity.ports,
                words::duration(activity.held_ns)
            )?;
        }
    }
    Ok(())
}
