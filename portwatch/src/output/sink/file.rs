//! `--output FILE`: JSON lines for captures that run for weeks. Records are numbered (`seq`,
//! consecutive across parts) and optionally sealed; each part opens with the capture header;
//! `--rotate-size` moves FILE to FILE.1 (FILE.1 to FILE.2, ...) and starts a new part, gzipping
//! the old one in the background with `--compress`; SIGHUP reopens FILE for logrotate.
//!
//! A record is written whole or not at all: records collect in memory and go to the file on
//! flush; if a write fails (a full disk, a removed mount), the file is cut back to its last
//! whole record before the error is returned.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::mpsc,
};

use super::{
    Sink,
    json::{event_fields, lost_fields, pressure_fields},
};
use crate::{
    live::pressure::Pressure,
    model::clock::Timestamp,
    model::event::Event,
    output::capture::{
        Header, Summary,
        seal::{self, Chain},
    },
};

/// What `--output`, `--rotate-size`, `--rotate-keep`, `--compress` and `--seal` asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileOptions {
    pub path: PathBuf,
    /// Start a new part once the current one reaches this many bytes.
    pub rotate_size: Option<u64>,
    /// Rotated parts kept (FILE.1 ... FILE.N); older ones are deleted.
    pub keep: u32,
    pub compress: bool,
    pub seal: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0} is a symbolic link; portwatch does not follow links for its output")]
    Symlink(PathBuf),
    #[error("{0} exists and is not a regular file")]
    NotRegular(PathBuf),
    #[error(
        "{path} belongs to uid {owner}, not to portwatch's user (uid {me}); refusing to append"
    )]
    NotOwned { path: PathBuf, owner: u32, me: u32 },
    #[error("opening {0}: {1}")]
    Io(PathBuf, io::Error),
}

/// Opens FILE for appending records: a new file is created with mode 0600 (never through a
/// symlink); an existing one is appended to only if it is a regular file owned by our user.
pub fn open_output(path: &Path) -> Result<(File, u64), OpenError> {
    let created = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path);
    let file = match created {
        Ok(file) => return Ok((file, 0)),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => OpenOptions::new()
            .append(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|err| match err.raw_os_error() {
                Some(libc::ELOOP) => OpenError::Symlink(path.into()),
                Some(libc::EISDIR) => OpenError::NotRegular(path.into()),
                _ => OpenError::Io(path.into(), err),
            })?,
        Err(err) => return Err(OpenError::Io(path.into(), err)),
    };
    let metadata = file
        .metadata()
        .map_err(|err| OpenError::Io(path.into(), err))?;
    if !metadata.file_type().is_file() {
        return Err(OpenError::NotRegular(path.into()));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if metadata.uid() != me {
        return Err(OpenError::NotOwned {
            path: path.into(),
            owner: metadata.uid(),
            me,
        });
    }
    Ok((file, metadata.len()))
}

/// Records held in memory before they are written regardless of the stream going idle.
const PENDING_MAX: usize = 256 * 1024;

pub struct FileSink {
    options: FileOptions,
    header: Header,
    file: File,
    /// Bytes of the current part that hold whole records.
    written: u64,
    /// Whole records not yet written.
    pending: Vec<u8>,
    /// Records in the current part, header included.
    records_in_part: u64,
    seq: u64,
    part: u32,
    chain: Option<Chain>,
    /// Started at the first rotation with `--compress`, then reused: one thread for the whole
    /// capture, so a capture that runs for weeks does not start one per part.
    compressor: Option<Compressor>,
}

impl FileSink {
    /// Starts a capture in an output file already opened by [`open_output`] (opened early, so a
    /// bad path fails before any eBPF work).
    pub fn start(
        options: FileOptions,
        header: Header,
        (file, written): (File, u64),
    ) -> io::Result<Self> {
        let chain = options.seal.then(|| Chain::starting_after(seal::GENESIS));
        let mut sink = Self {
            options,
            header,
            file,
            written,
            pending: Vec::new(),
            records_in_part: 0,
            seq: 0,
            part: 0,
            chain,
            compressor: None,
        };
        sink.begin_part("started")?;
        Ok(sink)
    }

    /// Writes the header that opens every part.
    fn begin_part(&mut self, reason: &'static str) -> io::Result<()> {
        self.part += 1;
        self.records_in_part = 0;
        let (header, part, sealed) = (self.header.clone(), self.part, self.chain.is_some());
        let chain_prev = match &self.chain {
            Some(chain) if part > 1 => Some(seal::to_hex(&chain.last())),
            _ => None,
        };
        self.append(|out| header.write_fields(out, part, reason, sealed, chain_prev.as_deref()))
    }

    /// Adds one record: `{"seq":N,<fields>[,"seal":"..."]}`.
    fn record(&mut self, fields: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> io::Result<()> {
        if let Some(limit) = self.options.rotate_size
            && self.records_in_part > 1
            && self.written + self.pending.len() as u64 >= limit
        {
            self.rotate()?;
        }
        self.append(fields)
    }

    fn append(&mut self, fields: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> io::Result<()> {
        // A burst (a full ring buffer drained at once) must not grow the buffer, and with it the
        // tracer's memory for the rest of the capture.
        if self.pending.len() >= PENDING_MAX {
            self.flush()?;
        }
        let start = self.pending.len();
        self.seq += 1;
        write!(self.pending, "{{\"seq\":{},", self.seq)?;
        fields(&mut self.pending)?;
        self.pending.push(b'}');
        if let Some(chain) = &mut self.chain {
            let seal = chain.seal(&self.pending[start..]);
            self.pending.pop();
            write!(self.pending, ",\"seal\":\"{seal}\"}}")?;
        }
        self.pending.push(b'\n');
        self.records_in_part += 1;
        Ok(())
    }

    /// A write failed after `sent` bytes of the pending records reached the file: keep the
    /// whole records among them and cut off the torn one, so the file never ends mid-line.
    fn cut_back(&mut self, sent: usize, err: io::Error) -> io::Result<()> {
        let whole = self.pending[..sent]
            .iter()
            .rposition(|&byte| byte == b'\n')
            .map_or(0, |newline| newline + 1);
        let _ = self.file.set_len(self.written + whole as u64);
        self.written += whole as u64;
        self.pending.drain(..whole);
        Err(context(err, "writing the capture file", &self.options.path))
    }

    /// FILE becomes FILE.1 (FILE.1 becomes FILE.2, ...), and a new part starts in a new FILE.
    fn rotate(&mut self) -> io::Result<()> {
        self.flush()?;
        self.finish_compressing()?;
        let path = &self.options.path;
        let numbered = |n: u32, gz: bool| {
            let mut name = path.as_os_str().to_owned();
            name.push(format!(".{n}{}", if gz { ".gz" } else { "" }));
            PathBuf::from(name)
        };
        for gz in [false, true] {
            remove_if_present(&numbered(self.options.keep, gz))?;
            for n in (1..self.options.keep).rev() {
                rename_if_present(&numbered(n, gz), &numbered(n + 1, gz))?;
            }
        }
        let rotated = numbered(1, false);
        // FILE may be gone already (moved by logrotate before its SIGHUP): nothing to rotate.
        if rename_if_present(path, &rotated)? && self.options.compress {
            self.compressor
                .get_or_insert_with(Compressor::start)
                .compress(rotated)?;
        }
        self.reopen_file()?;
        self.begin_part("rotated")
    }

    fn reopen_file(&mut self) -> io::Result<()> {
        let opened =
            open_output(&self.options.path).map_err(|err| io::Error::other(err.to_string()))?;
        (self.file, self.written) = opened;
        Ok(())
    }

    /// Waits until the part given to the compressor last is compressed.
    fn finish_compressing(&mut self) -> io::Result<()> {
        self.compressor.as_mut().map_or(Ok(()), Compressor::wait)
    }
}

impl Sink for FileSink {
    fn event(&mut self, event: &Event) -> io::Result<()> {
        self.record(|out| event_fields(out, event))
    }

    fn lost(&mut self, ts: Timestamp, count: u64) -> io::Result<()> {
        self.record(|out| lost_fields(out, ts, count))
    }

    fn pressure(&mut self, pressure: &Pressure) -> io::Result<()> {
        self.record(|out| pressure_fields(out, pressure))
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut sent = 0;
        while sent < self.pending.len() {
            match self.file.write(&self.pending[sent..]) {
                Ok(0) => {
                    return self.cut_back(sent, io::ErrorKind::WriteZero.into());
                }
                Ok(n) => sent += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return self.cut_back(sent, err),
            }
        }
        self.written += sent as u64;
        self.pending.clear();
        Ok(())
    }

    fn reopen(&mut self) -> io::Result<()> {
        self.flush()?;
        self.reopen_file()?;
        self.begin_part("reopened")?;
        self.flush()
    }

    fn finish(&mut self, summary: &Summary) -> io::Result<()> {
        self.append(|out| summary.write_fields(out))?;
        self.flush()?;
        self.file
            .sync_all()
            .map_err(|err| context(err, "syncing the capture file", &self.options.path))?;
        if let Some(chain) = &self.chain {
            eprintln!(
                "portwatch: capture {} ends at seq {} with seal {}",
                self.options.path.display(),
                self.seq,
                seal::to_hex(&chain.last())
            );
        }
        self.finish_compressing()
    }
}

fn context(err: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(err.kind(), format!("{what} {}: {err}", path.display()))
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => {
            Err(context(err, "removing old part", path))
        }
        _ => Ok(()),
    }
}

/// Whether `from` was there to rename.
fn rename_if_present(from: &Path, to: &Path) -> io::Result<bool> {
    match fs::rename(from, to) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(context(err, "rotating", from)),
    }
}

/// A thread that gzips rotated parts, one at a time.
struct Compressor {
    parts: mpsc::Sender<PathBuf>,
    done: mpsc::Receiver<io::Result<()>>,
    /// A part was handed over and its outcome not yet collected.
    pending: bool,
}

impl Compressor {
    fn start() -> Self {
        let (parts, todo) = mpsc::channel::<PathBuf>();
        let (report, done) = mpsc::channel();
        std::thread::spawn(move || {
            for part in todo {
                if report.send(gzip(&part)).is_err() {
                    break;
                }
            }
        });
        Self {
            parts,
            done,
            pending: false,
        }
    }

    fn compress(&mut self, part: PathBuf) -> io::Result<()> {
        self.wait()?;
        self.parts
            .send(part)
            .map_err(|_| io::Error::other("the compression thread ended"))?;
        self.pending = true;
        Ok(())
    }

    fn wait(&mut self) -> io::Result<()> {
        if !std::mem::take(&mut self.pending) {
            return Ok(());
        }
        self.done
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("the compression thread ended")))
    }
}

/// FILE.1 → FILE.1.gz, through a temporary name so that a reader never sees half a gzip file.
fn gzip(path: &Path) -> io::Result<()> {
    let mut gz_name = path.as_os_str().to_owned();
    gz_name.push(".gz");
    let gz_path = PathBuf::from(gz_name);
    let mut tmp_name = gz_path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp_path = PathBuf::from(tmp_name);
    let mut input = File::open(path).map_err(|err| context(err, "compressing", path))?;
    let output = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp_path)
        .map_err(|err| context(err, "compressing into", &tmp_path))?;
    let mut encoder = flate2::write::GzEncoder::new(output, flate2::Compression::default());
    io::copy(&mut input, &mut encoder).map_err(|err| context(err, "compressing", path))?;
    encoder
        .finish()
        .and_then(|file| file.sync_all())
        .map_err(|err| context(err, "compressing into", &tmp_path))?;
    fs::rename(&tmp_path, &gz_path).map_err(|err| context(err, "renaming", &tmp_path))?;
    fs::remove_file(path).map_err(|err| context(err, "removing", path))
}
