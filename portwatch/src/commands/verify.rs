//! `portwatch verify FILE...`: checks that a capture is whole. Records must be numbered without
//! gaps across every part, parts must follow one another, and in a sealed capture every record's
//! seal must match the chain. Names the first file and line that does not.

use std::{fmt, path::PathBuf};

use crate::{
    model::record,
    output::capture::{
        reader::{self, Line},
        seal::{self, Chain},
    },
};

/// What `verify` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Whole(Report),
    /// The first place where the capture is not what it claims to be.
    Broken {
        path: String,
        line: usize,
        reason: String,
    },
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub files: usize,
    pub records: u64,
    pub sealed: bool,
    pub summary_seen: bool,
    pub last_seal: Option<String>,
    /// Captures whose first part was not among the files (rotated away).
    pub starts_late: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ok: {} file(s), {} records, no gaps",
            self.files, self.records
        )?;
        match &self.last_seal {
            Some(last) if self.sealed => write!(f, ", every seal matches (last {last})")?,
            _ => write!(f, ", not sealed (only numbering and parts were checked)")?,
        }
        if !self.summary_seen {
            write!(
                f,
                "; no summary at the end: the capture is still running or was cut short"
            )?;
        }
        for note in &self.starts_late {
            write!(f, "; {note}")?;
        }
        Ok(())
    }
}

/// Where a capture's chain and numbering stand while its records are read.
struct Position {
    capture_id: String,
    part: u64,
    next_seq: u64,
    chain: Option<Chain>,
}

pub fn verify(paths: &[PathBuf]) -> Result<Verdict, reader::ReadError> {
    let mut parts = reader::open_in_order(paths)?;
    let mut report = Report {
        files: parts.len(),
        ..Report::default()
    };
    let mut position: Option<Position> = None;
    for part in &mut parts {
        while let Some(line) = part.next_line() {
            let line = line?;
            if let Err(reason) = check_line(&line, &mut position, &mut report) {
                return Ok(Verdict::Broken {
                    path: part.path.clone(),
                    line: line.number,
                    reason,
                });
            }
        }
    }
    report.last_seal = position
        .as_ref()
        .and_then(|position| position.chain.as_ref())
        .map(|chain| seal::to_hex(&chain.last()));
    Ok(Verdict::Whole(report))
}

fn check_line(
    line: &Line,
    position: &mut Option<Position>,
    report: &mut Report,
) -> Result<(), String> {
    let record =
        record::Line::parse(&line.text).map_err(|_| "not a JSON record (a torn or edited line)")?;
    if record.event == "capture" {
        begin_part(&record, position, report)?;
    }
    let position = position
        .as_mut()
        .ok_or("a record before any capture header")?;
    let seq = record.seq.ok_or("the record has no seq")?;
    if seq != position.next_seq {
        return Err(format!(
            "seq {seq} where {} was due: {}",
            position.next_seq,
            if seq > position.next_seq {
                "records are missing"
            } else {
                "records are repeated or out of order"
            }
        ));
    }
    position.next_seq += 1;
    if let Some(chain) = &mut position.chain {
        let (record, carried) = seal::split(&line.text).ok_or("the record carries no seal")?;
        if chain.seal(record.as_bytes()) != carried {
            return Err(
                "the seal does not match: this record, or one before it, was changed".into(),
            );
        }
    }
    report.records += 1;
    report.summary_seen = record.event == "summary";
    Ok(())
}

/// A header: the start of a capture, or the next part of the one being read.
fn begin_part(
    header: &record::Line<'_>,
    position: &mut Option<Position>,
    report: &mut Report,
) -> Result<(), String> {
    let capture_id = header
        .capture_id
        .as_deref()
        .ok_or("a header without capture_id")?;
    let part = header.part.ok_or("a header without part")?;
    let seq = header.seq.ok_or("the record has no seq")?;
    let sealed = header.sealing.as_ref().and_then(Option::as_deref) == Some(seal::ALGORITHM);
    let chain_prev = match header.chain_prev.as_deref() {
        Some(hex) => Some(seal::from_hex(hex).ok_or("a header with a malformed chain_prev")?),
        None => None,
    };
    match position {
        Some(current) if current.capture_id == capture_id => {
            if part != current.part + 1 {
                return Err(format!(
                    "part {part} follows part {}: a part is missing",
                    current.part
                ));
            }
            if let (Some(chain), Some(prev)) = (&current.chain, chain_prev)
                && chain.last() != prev
            {
                return Err("this part does not continue the previous part's chain".into());
            }
            current.part = part;
        }
        _ => {
            if part != 1 {
                report.starts_late.push(format!(
                    "capture {capture_id} begins at part {part} (earlier parts not given)"
                ));
            }
            report.sealed = sealed;
            *position = Some(Position {
                capture_id: capture_id.to_string(),
                part,
                next_seq: seq,
                chain: sealed.then(|| Chain::starting_after(chain_prev.unwrap_or(seal::GENESIS))),
            });
        }
    }
    Ok(())
}
