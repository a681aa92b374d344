//! Reading capture files back: plain or gzipped parts (told apart by their first bytes, not their
//! names), put in capture order by their headers, line by line.

use std::{
    fs::File,
    io::{self, BufRead, BufReader, Read},
    path::{Path, PathBuf},
};

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{path} does not start with a capture header (is it a portwatch --output file?)")]
    NoHeader { path: String },
}

/// A capture file's lines, numbered from 1.
pub struct Part {
    pub path: String,
    /// The first line, parsed: every part opens with a `capture` header.
    pub header: Value,
    lines: io::Lines<Box<dyn BufRead>>,
    first: Option<String>,
    number: usize,
}

/// One line of a part; `value` is None when it is not a JSON object.
pub struct Line {
    pub number: usize,
    pub text: String,
    pub value: Option<Value>,
}

impl Part {
    /// Opens a part and reads its header. `-` is standard input.
    pub fn open(path: &Path) -> Result<Self, ReadError> {
        let name = path.display().to_string();
        let io_error = |source| ReadError::Io {
            path: name.clone(),
            source,
        };
        let reader: Box<dyn Read> = if path == Path::new("-") {
            Box::new(io::stdin())
        } else {
            Box::new(File::open(path).map_err(io_error)?)
        };
        let mut reader = BufReader::with_capacity(256 * 1024, reader);
        let gzipped = reader
            .fill_buf()
            .map_err(io_error)?
            .starts_with(&[0x1f, 0x8b]);
        let reader: Box<dyn BufRead> = if gzipped {
            Box::new(BufReader::with_capacity(
                256 * 1024,
                flate2::bufread::MultiGzDecoder::new(reader),
            ))
        } else {
            Box::new(reader)
        };
        let mut lines = reader.lines();
        let first = lines.next().transpose().map_err(io_error)?;
        let header = first
            .as_deref()
            .and_then(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|value| value["event"] == "capture")
            .ok_or_else(|| ReadError::NoHeader { path: name.clone() })?;
        Ok(Self {
            path: name,
            header,
            lines,
            first,
            number: 0,
        })
    }

    /// The next line, the header first. A read error (a corrupt gzip stream, say) ends the
    /// part with that error.
    pub fn next_line(&mut self) -> Option<Result<Line, ReadError>> {
        let text = match self.first.take() {
            Some(first) => first,
            None => match self.lines.next()? {
                Ok(text) => text,
                Err(source) => {
                    return Some(Err(ReadError::Io {
                        path: self.path.clone(),
                        source,
                    }));
                }
            },
        };
        self.number += 1;
        let value = serde_json::from_str::<Value>(&text)
            .ok()
            .filter(Value::is_object);
        Some(Ok(Line {
            number: self.number,
            text,
            value,
        }))
    }
}

/// Opens every part and puts them in capture order: by capture start, then part number. Shell
/// globs list `ports.jsonl ports.jsonl.1.gz ports.jsonl.2.gz`, newest first; this undoes that.
pub fn open_in_order(paths: &[PathBuf]) -> Result<Vec<Part>, ReadError> {
    let (parts, errors) = open_each_in_order(paths);
    match errors.into_iter().next() {
        Some(error) => Err(error),
        None => Ok(parts),
    }
}

/// Like [`open_in_order`], but a file that cannot be opened or has no header does not stop the
/// others: its error is returned beside the parts that opened, in the order the paths came.
pub fn open_each_in_order(paths: &[PathBuf]) -> (Vec<Part>, Vec<ReadError>) {
    let (mut parts, mut errors) = (Vec::new(), Vec::new());
    for path in paths {
        match Part::open(path) {
            Ok(part) => parts.push(part),
            Err(error) => errors.push(error),
        }
    }
    parts.sort_by(|a, b| {
        let key = |part: &Part| {
            (
                part.header["started"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                part.header["capture_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                part.header["part"].as_u64().unwrap_or(0),
            )
        };
        key(a).cmp(&key(b))
    });
    (parts, errors)
}
