//! Capture files: JSON lines that describe themselves. Each file (each rotated part too) opens
//! with a `capture` header saying what was watched, how and on which host; every record carries
//! `seq`, consecutive across parts; with `--seal`, a BLAKE3 hash chain links every record to the
//! one before; the last part ends with a `summary`. The writer is [`crate::output::sink::FileSink`];
//! [`reader`] reads parts back for `verify` and `report`.

pub mod reader;
pub mod seal;

use std::{io, io::Write};

use foldhash::HashMap;

use crate::{model::clock::Timestamp, model::event::Kind, model::json::quote};

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
    /// The header's keys, without braces. `part` counts files of this capture from 1.
    pub fn write_fields(
        &self,
        out: &mut impl Write,
        part: u32,
        reason: &str,
        sealed: bool,
    ) -> io::Result<()> {
        write!(
            out,
            "\"ts\":\"{}\",\"event\":\"capture\",\"capture_id\":\"{}\",\"part\":{part},\"reason\":\"{reason}\",\"version\":\"{}\",\"backend\":\"{}\",\"kernel\":",
            Timestamp::now().rfc3339(),
            self.capture_id,
            self.version,
            self.backend,
        )?;
        quote(out, &self.kernel)?;
        out.write_all(b",\"hostname\":")?;
        quote(out, &self.hostname)?;
        write!(out, ",\"boot_id\":\"{}\",", self.boot_id)?;
        if let Some(range) = &self.ephemeral_range {
            write!(out, "\"ephemeral_range\":\"{range}\",")?;
        }
        out.write_all(b"\"watching\":")?;
        quote(out, &self.watching)?;
        out.write_all(b",\"filters\":[")?;
        for (index, filter) in self.filters.iter().enumerate() {
            if index > 0 {
                out.write_all(b",")?;
            }
            quote(out, filter)?;
        }
        write!(
            out,
            "],\"started\":\"{}\",\"clock\":{{\"monotonic_ns\":{},\"wall\":\"{}\"}},\"audit\":{},\"sealing\":{}",
            self.started.rfc3339(),
            self.monotonic_ns,
            self.started.rfc3339(),
            self.audit,
            if sealed {
                format!("\"{}\"", seal::ALGORITHM)
            } else {
                "null".into()
            }
        )
    }
}

/// How a capture ended, for its last record.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub counts: HashMap<Kind, u64>,
    pub lost: u64,
    pub started: Option<Timestamp>,
    /// `interrupt`, `terminate`, `duration`, `count`, `closed-pipe` or `error`.
    pub end: &'static str,
}

impl Summary {
    /// `claim=3 listen=1 free=3 fail=1 held=0 lost=0`, as the stderr line shows it.
    pub fn counts_line(&self) -> String {
        let mut parts: Vec<String> = Kind::ALL
            .iter()
            .map(|kind| format!("{}={}", kind.name(), self.count(*kind)))
            .collect();
        parts.push(format!("lost={}", self.lost));
        parts.join(" ")
    }

    fn count(&self, kind: Kind) -> u64 {
        self.counts.get(&kind).copied().unwrap_or(0)
    }

    /// The summary record's keys, without braces.
    pub fn write_fields(&self, out: &mut impl Write) -> io::Result<()> {
        let now = Timestamp::now();
        write!(
            out,
            "\"ts\":\"{}\",\"event\":\"summary\",\"end\":\"{}\",\"counts\":{{",
            now.rfc3339(),
            self.end
        )?;
        for (index, kind) in Kind::ALL.iter().enumerate() {
            if index > 0 {
                out.write_all(b",")?;
            }
            write!(out, "\"{}\":{}", kind.name(), self.count(*kind))?;
        }
        write!(out, "}},\"lost\":{}", self.lost)?;
        if let Some(started) = self.started {
            write!(out, ",\"duration_ns\":{}", now.nanos_since(started))?;
        }
        Ok(())
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
