//! Floods: every event the kernel produced is either delivered or counted as lost, exactly,
//! whatever the ring buffer's size and however slow the reader.

use crate::{
    Outcome, Skip,
    expect::check,
    tracer::{Trace, Tracer, flood_alone},
    workload::{Kind, Socket, V4, free_port},
};

/// What one tracer made of a flood on `port` by this process.
struct Tally {
    delivered: u64,
    lost: u64,
    /// The tracer's warning that the kernel skipped runs of its programs, if it gave one.
    skipped: Option<String>,
}

impl Tally {
    /// Claims and frees on `port` by this process, and the `lost` events' counts, which must
    /// agree with the summary line.
    fn of(trace: &Trace, port: u16) -> Result<Tally, String> {
        let me = std::process::id();
        let delivered = trace
            .on_port(port)
            .iter()
            .filter(|event| {
                event["pid"] == me && (event["event"] == "claim" || event["event"] == "free")
            })
            .count() as u64;
        let lost = trace
            .events
            .iter()
            .filter(|event| event["event"] == "lost")
            .map(|event| {
                event["count"]
                    .as_u64()
                    .ok_or("a lost event without a count")
            })
            .sum::<Result<u64, _>>()?;
        if trace.summary_count("lost") != Some(lost) {
            return Err(format!(
                "summary {:?} does not say lost={lost}",
                trace.summary()
            ));
        }
        let skipped = trace
            .stderr
            .iter()
            .find(|line| line.starts_with("portwatch: warning: the kernel skipped"))
            .cloned();
        Ok(Tally {
            delivered,
            lost,
            skipped,
        })
    }

    /// Delivered and lost must add up to what the load caused. Where the kernel itself
    /// skipped program runs (the program already running on that CPU, or a bpf() call holding
    /// it) and said so, a shortfall is theirs and cannot be checked: the scenario is skipped
    /// with the warning.
    fn check(&self, caused: u64, what: &str) -> Outcome {
        if let Some(warning) = &self.skipped
            && self.delivered + self.lost < caused
        {
            return Err(Skip::because(format!(
                "{what}: {} delivered + {} lost of {caused} caused, and the tracer said: {warning}",
                self.delivered, self.lost
            )));
        }
        check(self.delivered + self.lost == caused, || {
            format!(
                "{what}: {} delivered + {} lost != {caused} caused",
                self.delivered, self.lost
            )
        })
    }
}

/// UDP bind+close `rounds` times on `port`: two events each.
fn churn(port: u16, rounds: u64) -> std::io::Result<u64> {
    for _ in 0..rounds {
        Socket::rebinding(Kind::Udp, V4)?.bind(port)?;
    }
    Ok(2 * rounds)
}

/// A stalled reader and a tiny ring buffer: the overflow must be counted and reported, and every
/// event must be either delivered or counted as lost.
pub fn ring_buffer_overflow_is_counted() -> Outcome {
    const ROUNDS: u64 = 300;
    let _alone = flood_alone();
    let port = free_port();
    let tracer = Tracer::start(&["--port", &port.to_string(), "--ring-kib", "4"])?;
    tracer.pause();
    let caused = churn(port, ROUNDS)?;
    tracer.resume();
    let trace = tracer.stop()?;
    let tally = Tally::of(&trace, port)?;
    check(tally.lost > 0, || {
        format!(
            "no loss reported with a 4 KiB buffer; {} delivered",
            tally.delivered
        )
    })?;
    tally.check(caused, "stalled 4 KiB ring")
}

/// A flood as fast as one thread makes it, traced at once by a tracer with the default ring and
/// one with a 4 KiB ring (`--ring-kib 4`): both account for every event. The numbers go to
/// stderr for portwatch/docs/reliability.md.
pub fn flood_is_accounted_exactly() -> Outcome {
    const ROUNDS: u64 = 20_000;
    let _alone = flood_alone();
    let port = free_port();
    let default_ring = Tracer::start(&["--port", &port.to_string()])?;
    let tiny_ring = Tracer::start(&["--port", &port.to_string(), "--ring-kib", "4"])?;
    let caused = churn(port, ROUNDS)?;
    let tiny = Tally::of(&tiny_ring.stop()?, port)?;
    let default = Tally::of(&default_ring.stop()?, port)?;
    for (ring, tally) in [("default 1024 KiB", &default), ("4 KiB", &tiny)] {
        eprintln!(
            "e2e: flood, ring {ring}: caused {caused}, delivered {}, lost {}",
            tally.delivered, tally.lost
        );
    }
    default.check(caused, "default ring")?;
    tiny.check(caused, "4 KiB ring")
}
