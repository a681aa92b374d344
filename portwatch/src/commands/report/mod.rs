//! `portwatch report FILE...`: what happened in a capture. Reads the parts through the shared
//! capture reader, folds the events into per-port timelines ([`timeline`]), measures ([`model`],
//! [`processes`], [`pressure`]) and lays the result out as text, JSON or one HTML page.

mod chart;
mod html;
mod json;
pub(crate) mod load;
mod model;
mod pressure;
mod processes;
mod record;
mod text;
mod time;
mod timeline;
mod window;
mod words;

use std::{
    fs,
    io::{self, Write},
    path::PathBuf,
};

pub use load::LoadError;
pub use model::Narrowing;
pub use time::parse_rfc3339;
pub use window::Bound;

use crate::model::ports;

/// What `portwatch report` was asked for, validated.
#[derive(Clone, Debug)]
pub struct Options {
    pub files: Vec<PathBuf>,
    pub narrowing: Narrowing,
    pub json: bool,
    pub html: Option<PathBuf>,
    pub strict: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{0}")]
    Chart(String),
    #[error("writing {path}: {source}")]
    Write { path: String, source: io::Error },
}

impl ReportError {
    /// 1 when `--strict` met bad input or the report could not be written, 2 when the files
    /// cannot be read at all (as `verify`).
    pub fn exit_code(&self) -> u8 {
        match self {
            ReportError::Load(LoadError::Malformed(_))
            | ReportError::Chart(_)
            | ReportError::Write { .. } => 1,
            ReportError::Load(_) => 2,
        }
    }
}

pub fn run(options: &Options) -> Result<(), ReportError> {
    let mut folded = model::Folded::default();
    let loaded = load::load(
        &options.files,
        options.strict,
        |sentence| eprintln!("portwatch report: {sentence}"),
        |record| folded.add(record),
    )?;
    let report = model::Report::build(folded, loaded, &options.narrowing, ports::ephemeral());
    if let Some(path) = &options.html {
        let page = html::page(&report).map_err(ReportError::Chart)?;
        fs::write(path, page).map_err(|source| ReportError::Write {
            path: path.display().to_string(),
            source,
        })?;
    }
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let written = if options.json {
        json::write(&mut out, &report)
    } else {
        text::write(&mut out, &report)
    }
    .and_then(|()| out.flush());
    match written {
        // `| head`: the reader has what it wanted.
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(source) => Err(ReportError::Write {
            path: "standard output".into(),
            source,
        }),
        Ok(()) => Ok(()),
    }
}
