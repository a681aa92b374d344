//! Which events a load run should make a tracer deliver, and which it did deliver.
//!
//! Events are counted by key: the event kind, refined by `how` on claims and by `time_wait` on
//! frees (`claim/bind-any`, `free/time-wait`, `listen`, ...). Only events whose `pid` is the load
//! generator count as "delivered", so whatever else the host does while the benchmark runs cannot
//! be mistaken for (or hide) a lost event.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{Context, Result};

use super::load::Workload;

/// Event counts by key.
pub type Counts = BTreeMap<String, u64>;

/// Events one workload causes: `per_op` for every op, `once` for its setup socket (the listener
/// or the UDP sink, claimed before the clock starts and closed after it stops).
struct Expected {
    per_op: &'static [(&'static str, u64)],
    once: &'static [(&'static str, u64)],
}

/// PROVISIONAL: the portwatch events each workload should cause, from portwatch's contract while
/// its kernel-side event mapping is being finalised. Verified against the real binary by
/// `bench --quick` (which fails on any difference); a difference is reported to portwatch's
/// owner, never absorbed by editing these numbers to match.
///
/// - bind: the bind to port 0 is a `bind-any` claim; close frees it.
/// - connect: the client's connect and the server's accept each claim; both closes free, and the
///   server end (which closes first) frees into TIME_WAIT. Once: the listener's claim, listen, free.
/// - udp: sendto on an unbound socket `autobind`s; close frees. Once: the sink's claim and free.
/// - syscalls: nothing.
fn expected(workload: Workload) -> Expected {
    match workload {
        Workload::Bind => Expected {
            per_op: &[("claim/bind-any", 1), ("free", 1)],
            once: &[],
        },
        Workload::Connect => Expected {
            per_op: &[
                ("claim/connect", 1),
                ("claim/accept", 1),
                ("free", 1),
                ("free/time-wait", 1),
            ],
            once: &[("claim/bind-any", 1), ("listen", 1), ("free", 1)],
        },
        Workload::Udp => Expected {
            per_op: &[("claim/autobind", 1), ("free", 1)],
            once: &[("claim/bind-any", 1), ("free", 1)],
        },
        Workload::Syscalls => Expected {
            per_op: &[],
            once: &[],
        },
    }
}

/// The events `ops` ops of `workload` cause, by portwatch key.
///
/// `time_wait_overflows` is how many TIME_WAIT sockets the kernel declined to create during the
/// run (see `netstat`): each turns one `free/time-wait` into a plain `free`.
pub fn caused(workload: Workload, ops: u64, time_wait_overflows: u64) -> Counts {
    let expected = expected(workload);
    let mut counts = Counts::new();
    for &(key, n) in expected.per_op {
        *counts.entry(key.to_owned()).or_default() += n * ops;
    }
    for &(key, n) in expected.once {
        *counts.entry(key.to_owned()).or_default() += n;
    }
    if let Some(time_wait) = counts.get_mut("free/time-wait") {
        let skipped = time_wait_overflows.min(*time_wait);
        *time_wait -= skipped;
        *counts.entry("free".to_owned()).or_default() += skipped;
    }
    counts.retain(|_, n| *n > 0);
    counts
}

/// Drops the refinements, keeping kinds only: bpftrace's lines say claim/listen/free, not how.
pub fn kinds(counts: &Counts) -> Counts {
    let mut kinds = Counts::new();
    for (key, n) in counts {
        let kind = key.split_once('/').map_or(key.as_str(), |(kind, _)| kind);
        *kinds.entry(kind.to_owned()).or_default() += n;
    }
    kinds
}

/// What a tracer wrote to its output file.
#[derive(Default)]
pub struct Delivered {
    /// Events whose pid is the load generator, by key.
    pub by_load: Counts,
    /// Every event from any process, by kind (to check against portwatch's summary line).
    pub by_kind: Counts,
    /// Every event from any process (the denominator of CPU seconds per million events).
    pub total: u64,
    /// Events the tracer reported it lost.
    pub lost: u64,
}

impl Delivered {
    fn add(&mut self, pid: Option<u64>, load_pid: u32, key: String) {
        let kind = key.split_once('/').map_or(key.as_str(), |(kind, _)| kind);
        *self.by_kind.entry(kind.to_owned()).or_default() += 1;
        self.total += 1;
        if pid == Some(u64::from(load_pid)) {
            *self.by_load.entry(key).or_default() += 1;
        }
    }
}

/// Reads portwatch's `--json` output: one object per line with an `event` key.
pub fn read_portwatch(path: &Path, load_pid: u32) -> Result<Delivered> {
    let mut delivered = Delivered::default();
    for (index, line) in lines(path)?.enumerate() {
        let line = line?;
        let event: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not JSON: {line}", path.display(), index + 1))?;
        let kind = event["event"]
            .as_str()
            .with_context(|| format!("{}:{}: no `event` key", path.display(), index + 1))?;
        let key = match kind {
            "lost" => {
                delivered.lost += event["count"].as_u64().unwrap_or(0);
                continue;
            }
            "claim" => format!("claim/{}", event["how"].as_str().unwrap_or("?")),
            // The end of a TIME_WAIT that began in an earlier round (they last 60 s): a real
            // event, but not one this round's operations caused, so it is counted as delivered
            // without being held against the load.
            "free" if event["time_wait_end"] == true => {
                delivered.add(None, load_pid, "free".to_owned());
                continue;
            }
            "free" if event["time_wait"] == true => "free/time-wait".to_owned(),
            other => other.to_owned(),
        };
        delivered.add(event["pid"].as_u64(), load_pid, key);
    }
    Ok(delivered)
}

/// Reads the bpftrace script's output: `<kind> <probe> pid=N ...` lines, `Lost N events` lines,
/// and bpftrace's own chatter (`Attaching N probes...`), which is skipped.
pub fn read_bpftrace(path: &Path, load_pid: u32) -> Result<Delivered> {
    let mut delivered = Delivered::default();
    for line in lines(path)? {
        let line = line?;
        let mut words = line.split_whitespace();
        match words.next() {
            Some("Lost") => {
                delivered.lost += words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            }
            Some(kind @ ("claim" | "listen" | "free")) => {
                let pid = words
                    .find_map(|word| word.strip_prefix("pid="))
                    .and_then(|pid| pid.parse().ok());
                delivered.add(pid, load_pid, kind.to_owned());
            }
            _ => {}
        }
    }
    Ok(delivered)
}

/// Parses `portwatch: summary claim=N listen=N ...` into counts by kind.
pub fn parse_summary(line: &str) -> Option<Counts> {
    let fields = line.strip_prefix("portwatch: summary")?;
    fields
        .split_whitespace()
        .map(|field| {
            let (kind, n) = field.split_once('=')?;
            Some((kind.to_owned(), n.parse().ok()?))
        })
        .collect()
}

fn lines(path: &Path) -> Result<impl Iterator<Item = std::io::Result<String>>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(BufReader::with_capacity(1 << 20, file).lines())
}
