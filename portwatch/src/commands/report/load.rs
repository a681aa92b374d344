//! Capture files to records, in capture order, through the shared reader. What cannot be read is
//! one sentence naming the file and line: reported and skipped, or, with `--strict`, the end.
//! A plain `--json` stream (no capture header) is read too: it lacks what a header and `seq`
//! tell, and the report says so once.

use std::{collections::HashMap, path::PathBuf};

use super::record::{self, Record};
use crate::{
    model::record::Line,
    output::capture::reader::{self, ReadError},
};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// `--strict` and the input is not whole: the sentence naming file and line.
    #[error("{0}")]
    Malformed(String),
    /// A file could not be opened at all.
    #[error(transparent)]
    Unreadable(ReadError),
    #[error("none of the files is a capture")]
    Empty,
    /// Not portwatch output at all, or captures and plain streams given together.
    #[error("{0}")]
    NotPortwatch(String),
}

/// Problems printed one by one; beyond this they are counted, so garbage input cannot flood the
/// terminal.
const PROBLEMS_SHOWN: usize = 20;

/// What reading every part found besides its records: what was skipped or missing.
#[derive(Debug, Default)]
pub struct Loaded {
    /// One sentence per problem, `FILE:LINE: ...`, in the order found.
    pub problems: Vec<String>,
    /// Records the numbering shows missing (seq gaps), beside the kernel's `lost`.
    pub missing_records: u64,
    /// Lines (or whole files, or the rest of a file) skipped because they could not be read.
    pub skipped: usize,
    /// Problems beyond the first [`PROBLEMS_SHOWN`]: counted, not printed or kept.
    pub problems_not_kept: usize,
    /// Facts about the input that are not faults (a capture whose first parts were not given).
    pub notes: Vec<String>,
    pub files: usize,
    /// Files read as plain `--json` streams, without a capture header.
    pub plain_streams: Vec<String>,
}

/// How a record follows the one before it in its capture.
enum Sequence {
    InOrder,
    Note(String),
    Problem(String),
}

/// Where each capture's numbering stands.
#[derive(Default)]
struct Numbering {
    next_seq: HashMap<String, u64>,
    current: Option<String>,
}

impl Loaded {
    /// Notes a problem and what reading does about it (printed at once by `warn`), or stops
    /// when strict.
    fn problem(
        &mut self,
        sentence: String,
        going_on: &str,
        strict: bool,
        warn: &mut impl FnMut(&str),
    ) -> Result<(), LoadError> {
        if strict {
            return Err(LoadError::Malformed(sentence));
        }
        if self.problems.len() >= PROBLEMS_SHOWN {
            self.problems_not_kept += 1;
            return Ok(());
        }
        let sentence = format!("{sentence}; {going_on}");
        warn(&sentence);
        self.problems.push(sentence);
        Ok(())
    }
}

/// Hands every readable record to `each`, in capture order.
pub fn load(
    paths: &[PathBuf],
    strict: bool,
    mut warn: impl FnMut(&str),
    mut each: impl FnMut(Record),
) -> Result<Loaded, LoadError> {
    let (mut parts, errors) = reader::open_each_headed_or_not(paths);
    if let Some(unreadable) = errors.into_iter().next() {
        return Err(LoadError::Unreadable(unreadable));
    }
    let mut loaded = Loaded {
        files: parts.len(),
        ..Loaded::default()
    };
    if parts.is_empty() {
        return Err(LoadError::Empty);
    }
    let plain: Vec<&reader::Part> = parts.iter().filter(|part| part.order.is_none()).collect();
    if let (Some(stream), Some(capture)) = (
        plain.first(),
        parts.iter().find(|part| part.order.is_some()),
    ) {
        return Err(LoadError::NotPortwatch(format!(
            "{} is a plain --json stream and {} a capture: report them separately",
            stream.path, capture.path
        )));
    }
    loaded.plain_streams = plain.iter().map(|part| part.path.clone()).collect();
    let mut numbering = Numbering::default();
    for part in &mut parts {
        let headed = part.order.is_some();
        let mut last_line = 0;
        while let Some(line) = part.next_line() {
            let line = match line {
                Ok(line) => line,
                Err(error) => {
                    loaded.skipped += 1;
                    loaded.problem(
                        format!(
                            "{}:{}: the file breaks off here ({})",
                            part.path,
                            last_line + 1,
                            error_cause(&error)
                        ),
                        "the rest of it is skipped",
                        strict,
                        &mut warn,
                    )?;
                    break;
                }
            };
            last_line = line.number;
            // Named only when something is wrong: most lines never need it.
            let where_ = || format!("{}:{}", part.path, line.number);
            let parsed = Line::parse(&line.text).map_err(|err| record::unreadable(&err));
            let seq = parsed.as_ref().ok().and_then(|parsed| parsed.seq);
            let record = parsed.and_then(|parsed| Record::from_line(&parsed));
            let record = match record {
                Ok(record) => record,
                // A file that does not open with a portwatch record is not portwatch output.
                Err(reason) if !headed && line.number == 1 => {
                    return Err(LoadError::NotPortwatch(format!(
                        "{}: neither a capture header nor a portwatch --json record ({reason}): is it portwatch output?",
                        where_()
                    )));
                }
                Err(reason) => {
                    loaded.skipped += 1;
                    loaded.problem(
                        format!("{}: {reason}", where_()),
                        "line skipped",
                        strict,
                        &mut warn,
                    )?;
                    numbering.skip_one();
                    continue;
                }
            };
            if !headed {
                each(record);
                continue;
            }
            match numbering.check(&record, seq, &where_, &mut loaded.missing_records) {
                Sequence::InOrder => {}
                Sequence::Note(note) => loaded.notes.push(note),
                Sequence::Problem(sentence) => {
                    loaded.problem(sentence, "reading on", strict, &mut warn)?
                }
            }
            each(record);
        }
    }
    Ok(loaded)
}

fn error_cause(error: &ReadError) -> String {
    match error {
        ReadError::Io { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

impl Numbering {
    /// An unreadable line stood for one record: the next one is not missing another.
    fn skip_one(&mut self) {
        if let Some(next) = self
            .current
            .as_ref()
            .and_then(|current| self.next_seq.get_mut(current))
        {
            *next += 1;
        }
    }

    fn check(
        &mut self,
        record: &Record,
        seq: Option<u64>,
        where_: &dyn Fn() -> String,
        missing: &mut u64,
    ) -> Sequence {
        let mut note = None;
        if let Record::Header(header) = record {
            self.current = Some(header.capture_id.clone());
            if !self.next_seq.contains_key(&header.capture_id) {
                self.next_seq.insert(header.capture_id.clone(), header.seq);
                if header.part != 1 {
                    note = Some(format!(
                        "capture {} begins at part {} ({}): its earlier parts were not given",
                        header.capture_id,
                        header.part,
                        where_()
                    ));
                }
            }
        }
        let Some(next) = self
            .current
            .as_ref()
            .and_then(|current| self.next_seq.get_mut(current))
        else {
            return Sequence::Problem(format!("{}: a record before any capture header", where_()));
        };
        let Some(seq) = seq else {
            return Sequence::Problem(format!("{}: the record has no seq", where_()));
        };
        let due = *next;
        *next = seq.max(due) + 1;
        match seq {
            seq if seq > due => {
                *missing += seq - due;
                Sequence::Problem(format!(
                    "{}: seq {seq} where {due} was due: {} records missing (a part or lines were removed)",
                    where_(),
                    seq - due
                ))
            }
            seq if seq < due => Sequence::Problem(format!(
                "{}: seq {seq} where {due} was due: records repeated or out of order",
                where_()
            )),
            _ => note.map_or(Sequence::InOrder, Sequence::Note),
        }
    }
}
