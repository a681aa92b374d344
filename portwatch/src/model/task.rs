//! The task behind an event, and its name as the kernel keeps it.

use std::{borrow::Cow, fmt};

/// The task behind an event: the claimer, or the task that ran when the event happened.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Task {
    pub pid: u32,
    pub tid: u32,
    /// The parent's pid, read in the kernel at the time of the event (0 when unknown).
    pub ppid: u32,
    pub comm: Comm,
    /// When the process started (CLOCK_BOOTTIME ns; 0 when unknown): with the pid, it names one
    /// process even after the pid is reused.
    pub start_ns: u64,
}

/// A process name as the kernel keeps it (`comm`): up to 16 bytes, not necessarily UTF-8.
///
/// Kept inline rather than as a `String`: every event and every entry of the holder table
/// carries one, and copying 17 bytes costs far less than an allocation per copy.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Comm {
    bytes: [u8; 16],
    len: u8,
}

impl Comm {
    /// From the kernel's bytes: up to the first NUL, or all 16 when full.
    pub fn from_kernel(bytes: &[u8]) -> Self {
        let end = bytes
            .iter()
            .position(|&byte| byte == 0)
            .unwrap_or(bytes.len())
            .min(16);
        let mut comm = Comm {
            bytes: [0; 16],
            len: end as u8,
        };
        comm.bytes[..end].copy_from_slice(&bytes[..end]);
        comm
    }

    /// As text, with any byte that is not UTF-8 shown as U+FFFD; allocates only then.
    pub fn as_str(&self) -> Cow<'_, str> {
        let bytes = &self.bytes[..self.len as usize];
        // The plain check first: the lossy one walks chunk by chunk, and names are nearly
        // always valid.
        match std::str::from_utf8(bytes) {
            Ok(text) => Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(bytes),
        }
    }
}

/// From a name read in /proc (at most 15 bytes there); longer text keeps its first 16 bytes,
/// as the kernel would.
impl From<&str> for Comm {
    fn from(text: &str) -> Self {
        Comm::from_kernel(text.as_bytes())
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.as_str(), f)
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}
