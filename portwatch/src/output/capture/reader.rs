//! Reading capture files back: plain or gzipped parts (told apart by their first bytes, not their
//! names), put in capture order by their headers, line by line.

use std::{
    fs::File,
    io::{self, BufRead, BufReader, Read},
    path::{Path, PathBuf},
};

use crate::model::record;

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
    /// Where the part's header puts it among the others: its capture's start, the capture's
    /// id and the part's number. None for a plain `--json` stream, which has no header.
    pub order: Option<(String, String, u64)>,
    lines: io::Lines<Box<dyn BufRead>>,
    first: Option<String>,
    number: usize,
}

/// One line of a part, as text: readers parse it with the record schema.
pub struct Line {
    pub number: usize,
    pub text: String,
}

impl Part {
    /// Opens a part and reads its header. `-` is standard input.
    pub fn open(path: &Path) -> Result<Self, ReadError> {
        Self::open_with(path, true)
    }

    /// Opens a part or a plain `--json` stream, which has no header (its `header` is then
    /// `null`, and its first line is read as a record).
    pub fn open_headed_or_not(path: &Path) -> Result<Self, ReadError> {
        Self::open_with(path, false)
    }

    fn open_with(path: &Path, header_required: bool) -> Result<Self, ReadError> {
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
        let order = first
            .as_deref()
            .and_then(|line| record::Line::parse(line).ok())
            .filter(|line| line.event == "capture")
            .map(|header| {
                (
                    header.started.unwrap_or_default().into_owned(),
                    header.capture_id.unwrap_or_default().into_owned(),
                    header.part.unwrap_or(0),
                )
            });
        if order.is_none() && header_required {
            return Err(ReadError::NoHeader { path: name.clone() });
        }
        Ok(Self {
            path: name,
            order,
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
        Some(Ok(Line {
            number: self.number,
            text,
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
    open_each_with(paths, Part::open)
}

/// Like [`open_each_in_order`], but a file without a header opens too (a plain `--json`
/// stream); such files keep the order they were given in, before the captures.
pub fn open_each_headed_or_not(paths: &[PathBuf]) -> (Vec<Part>, Vec<ReadError>) {
    open_each_with(paths, Part::open_headed_or_not)
}

fn open_each_with(
    paths: &[PathBuf],
    open: fn(&Path) -> Result<Part, ReadError>,
) -> (Vec<Part>, Vec<ReadError>) {
    let (mut parts, mut errors) = (Vec::new(), Vec::new());
    for path in paths {
        match open(path) {
            Ok(part) => parts.push(part),
            Err(error) => errors.push(error),
        }
    }
    // A stable sort: headerless files (None) come first, in the order given.
    parts.sort_by(|a, b| a.order.cmp(&b.order));
    (parts, errors)
}
