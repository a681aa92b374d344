//! Capture files: JSON lines that describe themselves. Each file (each rotated part too) opens
//! with a `capture` header saying what was watched, how and on which host; every record carries
//! `seq`, consecutive across parts; with `--seal`, a BLAKE3 hash chain links every record to the
//! one before; the last part ends with a `summary`. The writer is [`crate::output::sink::FileSink`];
//! [`reader`] reads parts back for `verify` and `report`.

pub mod reader;
pub mod seal;

use std::{io, io::Write};

use foldhash::HashMap;

use crate::{
    model::clock::Timestamp,
    model::event::Kind,
    model::record::{Clock, Counts, Line},
};

/// What a capture says about itself, the same in every part.
#[derive(Clone, Debug)]
pub struct Header {
    /// Random per capture: parts with the same id belong to one capture.
    pub capture_id: String,
    pub version: &'static str,
    pub backend: String,
    pub kernel: String,
    pub hostname: String,
    pub boot_id: String,
    /// `ports 60312 (tcp+udp, ipv4+ipv6)`, as the status line says it.
    pub watching: String,
    /// The userspace filters (`--pid`, `--comm`, `--events`), as given; empty when none.
    pub filters: Vec<String>,
    pub started: Timestamp,
    /// CLOCK_MONOTONIC at `started`: kernel timestamps map to wall time through this pair.
    pub monotonic_ns: u64,
    pub audit: bool,
    /// This host's `net.ipv4.ip_local_port_range`, `32768-60999`, so a report can weigh the
    /// ephemeral ports in use against it.
    pub ephemeral_range: Option<String>,
}

impl Header {
    /// The header's keys, without braces. `part` counts files of this capture from 1;
    /// `chain_prev` links a sealed capture's later part to the last seal of the part before.
    pub fn write_fields(
        &self,
        out: &mut impl Write,
        part: u32,
        reason: &str,
        sealed: bool,
        chain_prev: Option<&str>,
    ) -> io::Result<()> {
        let (now, started) = (Timestamp::now().rfc3339(), self.started.rfc3339());
        let line = Line {
            ts: Some(now.into()),
            event: "capture".into(),
            capture_id: Some(self.capture_id.as_str().into()),
            part: Some(part.into()),
            reason: Some(reason.into()),
            version: Some(self.version.into()),
            backend: Some(self.backend.as_str().into()),
            kernel: Some(self.kernel.as_str().into()),
            hostname: Some(self.hostname.as_str().into()),
            boot_id: Some(self.boot_id.as_str().into()),
            ephemeral_range: self.ephemeral_range.as_deref().map(Into::into),
            watching: Some(self.watching.as_str().into()),
            filters: Some(
                self.filters
                    .iter()
                    .map(|filter| filter.as_str().into())
                    .collect(),
            ),
            started: Some(started.as_str().into()),
            clock: Some(Clock {
                monotonic_ns: self.monotonic_ns,
                wall: started.as_str().into(),
            }),
            audit: Some(self.audit),
            sealing: Some(sealed.then_some(seal::ALGORITHM.into())),
            chain_prev: chain_prev.map(Into::into),
            ..Line::default()
        };
        write_without_braces(out, &line)
    }
}

/// `line` as JSON keys and values, for a writer that adds keys of its own around them.
fn write_without_braces(out: &mut impl Write, line: &Line<'_>) -> io::Result<()> {
    let object = serde_json::to_vec(line)?;
    out.write_all(&object[1..object.len() - 1])
}

/// How a capture ended, for its last record.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub counts: HashMap<Kind, u64>,
    pub lost: u64,
    /// Runs of the programs the kernel skipped, when it counts them (Linux 6.7 and later):
    /// events never made, so not among the lost.
    pub skipped_runs: Option<u64>,
    pub started: Option<Timestamp>,
    /// `interrupt`, `terminate`, `duration`, `count`, `closed-pipe` or `error`.
    pub end: &'static str,
}

impl Summary {
    /// `claim=3 listen=1 free=3 fail=1 held=0 lost=0 skipped_runs=0`, as the stderr line shows
    /// it (without `skipped_runs` where the kernel does not count them).
    pub fn counts_line(&self) -> String {
        let mut parts: Vec<String> = Kind::ALL
            .iter()
            .map(|kind| format!("{}={}", kind.name(), self.count(*kind)))
            .collect();
        parts.push(format!("lost={}", self.lost));
        if let Some(skipped) = self.skipped_runs {
            parts.push(format!("skipped_runs={skipped}"));
        }
        parts.join(" ")
    }

    fn count(&self, kind: Kind) -> u64 {
        self.counts.get(&kind).copied().unwrap_or(0)
    }

    /// The summary record's keys, without braces.
    pub fn write_fields(&self, out: &mut impl Write) -> io::Result<()> {
        let now = Timestamp::now();
        let line = Line {
            ts: Some(now.rfc3339().into()),
            event: "summary".into(),
            end: Some(self.end.into()),
            counts: Some(Counts {
                claim: self.count(Kind::Claim),
                listen: self.count(Kind::Listen),
                free: self.count(Kind::Free),
                fail: self.count(Kind::Fail),
                held: self.count(Kind::Held),
            }),
            lost: Some(self.lost),
            skipped_runs: self.skipped_runs,
            duration_ns: self
                .started
                .map(|started| u64::try_from(now.nanos_since(started)).unwrap_or(u64::MAX)),
            ..Line::default()
        };
        write_without_braces(out, &line)
    }
}

/// Facts about this host for the header: kernel release, hostname, boot id.
pub fn host_facts() -> (String, String, String) {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .map(|text| text.trim().to_string())
            .unwrap_or_else(|_| "unknown".into())
    };
    (
        read("/proc/sys/kernel/osrelease"),
        read("/proc/sys/kernel/hostname"),
        read("/proc/sys/kernel/random/boot_id"),
    )
}

/// A random id for one capture (the kernel's UUID generator: no dependency needed).
pub fn new_capture_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|uuid| uuid.trim().to_string())
        .unwrap_or_else(|_| format!("{:032x}", Timestamp::now().nanos()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            capture_id: "c0ffee".into(),
            version: "0.1.0",
            backend: "tracepoint".into(),
            kernel: "6.18.0".into(),
            hostname: "host \"one\"".into(),
            boot_id: "b007".into(),
            watching: "ports 60312 (tcp+udp, ipv4+ipv6)".into(),
            filters: vec!["pid=12".into()],
            started: Timestamp::from_unix_nanos(1_795_669_141_123_456_789),
            monotonic_ns: 42,
            audit: false,
            ephemeral_range: Some("32768-60999".into()),
        }
    }

    fn object(fields: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> String {
        let mut out = b"{".to_vec();
        fields(&mut out).unwrap();
        out.push(b'}');
        String::from_utf8(out).unwrap()
    }

    /// The header and summary are written from the record schema and read back the same.
    #[test]
    fn header_and_summary_read_back_as_written() {
        let text = object(|out| header().write_fields(out, 2, "size", true, Some("ab")));
        let line = Line::parse(&text).unwrap();
        assert_eq!(line.event, "capture");
        assert_eq!(line.hostname.as_deref(), Some("host \"one\""));
        assert_eq!(line.sealing, Some(Some(seal::ALGORITHM.into())));
        assert_eq!(line.chain_prev.as_deref(), Some("ab"));
        assert_eq!(line.clock.map(|clock| clock.monotonic_ns), Some(42));
        let unsealed = object(|out| header().write_fields(out, 1, "started", false, None));
        assert!(unsealed.contains(",\"sealing\":null"), "{unsealed}");
        let summary = Summary {
            counts: [(Kind::Claim, 3), (Kind::Held, 1)].into_iter().collect(),
            lost: 2,
            skipped_runs: Some(4),
            started: Some(Timestamp::from_unix_nanos(0)),
            end: "interrupt",
        };
        let text = object(|out| summary.write_fields(out));
        let line = Line::parse(&text).unwrap();
        assert_eq!(line.skipped_runs, Some(4));
        let counts = line.counts.unwrap();
        assert_eq!((counts.claim, counts.held, counts.free), (3, 1, 0));
        assert_eq!(
            summary.counts_line(),
            "claim=3 listen=0 free=0 fail=0 held=1 lost=2 skipped_runs=4"
        );
    }
}
