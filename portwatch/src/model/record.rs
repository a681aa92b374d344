//! The record schema: every key of every JSON line portwatch writes (`--json` on stdout and
//! capture files) and reads back (`report`), defined once, in [`Line`].
//!
//! Readers deserialize a line into a [`Line`] in one pass, borrowing its strings. The event
//! writer (`output::sink::json`) builds its lines by hand, because that is the hot path; its
//! round-trip tests hold it to this definition: each line it writes reads back into a
//! [`Line`] that serializes to the same JSON value, so a key written but not defined here (or
//! written with another type) fails them. Keys a newer portwatch adds are ignored on reading.
//!
//! Several kinds of record share one flat shape, told apart by `event`: port events (`claim`,
//! `listen`, `free`, `fail`, `held`), `lost`, `pressure`, `summary` and the capture header
//! (`capture`). Keys that a record writes as `null` when it has no value (`pid`, `holder`,
//! `sealing`, ...) are `Option<Option<_>>`: absent, null, or a value.

use std::{borrow::Cow, ops::Deref};

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use serde_with::skip_serializing_none;

/// One JSON line, of any kind.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, bound(deserialize = "'de: 'a"))]
pub struct Line<'a> {
    /// Capture files number every record, consecutively across parts.
    pub seq: Option<u64>,
    pub ts: Option<Text<'a>>,
    /// The record's kind; empty when the line has none.
    pub event: Text<'a>,

    // The capture header (`capture`).
    pub capture_id: Option<Text<'a>>,
    /// Counts the capture's files from 1.
    pub part: Option<u64>,
    /// Why this part began: `start`, `size`, `reopen`.
    pub reason: Option<Text<'a>>,
    pub version: Option<Text<'a>>,
    pub backend: Option<Text<'a>>,
    pub kernel: Option<Text<'a>>,
    pub hostname: Option<Text<'a>>,
    pub boot_id: Option<Text<'a>>,
    /// This host's `net.ipv4.ip_local_port_range`, `32768-60999`.
    pub ephemeral_range: Option<Text<'a>>,
    /// `ports 60312 (tcp+udp, ipv4+ipv6)`, as the status line says it.
    pub watching: Option<Text<'a>>,
    /// The userspace filters, `pid=12`, `comm=nginx`.
    pub filters: Option<Vec<Text<'a>>>,
    pub started: Option<Text<'a>>,
    pub clock: Option<Clock<'a>>,
    pub audit: Option<bool>,
    /// The seal's algorithm, null when the capture is not sealed.
    #[serde(deserialize_with = "nullable")]
    pub sealing: Option<Option<Text<'a>>>,
    /// A later part's link to the last seal of the part before.
    pub chain_prev: Option<Text<'a>>,

    // Port events.
    pub proto: Option<Text<'a>>,
    pub family: Option<Text<'a>>,
    pub local_addr: Option<Text<'a>>,
    /// 0 on a failure where the kernel found no port to choose.
    pub local_port: Option<u64>,
    // Who: every key null when no process holds the socket. Inline rather than a flattened
    // `TaskKeys`, which would make serde read every event line through a buffer.
    #[serde(deserialize_with = "nullable")]
    pub pid: Option<Option<u32>>,
    #[serde(deserialize_with = "nullable")]
    pub tid: Option<Option<u32>>,
    #[serde(deserialize_with = "nullable")]
    pub ppid: Option<Option<u32>>,
    #[serde(deserialize_with = "nullable")]
    pub comm: Option<Option<Text<'a>>>,
    pub uid: Option<u64>,
    pub how: Option<Text<'a>>,
    pub errno: Option<Text<'a>>,
    /// On a failure: who held the port, null when nobody the tracer knows of.
    #[serde(deserialize_with = "nullable")]
    pub holder: Option<Option<Holder<'a>>>,
    pub hint: Option<Text<'a>>,
    /// On a failed connect: why no port was left (`model::exhaustion`'s shape).
    pub exhaustion: Option<Value>,
    pub held_ns: Option<u64>,
    pub time_wait: Option<bool>,
    pub time_wait_end: Option<bool>,
    /// Written only as `false`: the free's claim was not seen.
    pub claimer_seen: Option<bool>,
    /// A socket state (`held`), or `high`/`normal` (`pressure`).
    pub state: Option<Text<'a>>,
    pub remote_addr: Option<Text<'a>>,
    pub remote_port: Option<u64>,
    pub cgroup_id: Option<u64>,
    pub netns: Option<u64>,
    /// The container of the process (`model::container`'s shape).
    pub container: Option<Value>,
    // `--audit`: what /proc said about the process (each null when it would not say), or
    // `exited` when it was gone before it could be asked.
    pub exited: Option<bool>,
    #[serde(deserialize_with = "nullable")]
    pub exe: Option<Option<Text<'a>>>,
    #[serde(deserialize_with = "nullable")]
    pub cmdline: Option<Option<Text<'a>>>,
    #[serde(deserialize_with = "nullable")]
    pub user: Option<Option<Text<'a>>>,
    #[serde(deserialize_with = "nullable")]
    pub parent_comm: Option<Option<Text<'a>>>,
    #[serde(deserialize_with = "nullable")]
    pub cgroup: Option<Option<Text<'a>>>,
    #[serde(deserialize_with = "nullable")]
    pub unit: Option<Option<Text<'a>>>,

    // `lost`.
    pub count: Option<u64>,

    // `pressure`.
    pub in_use: Option<u64>,
    pub range: Option<Text<'a>>,
    pub range_size: Option<u64>,
    pub share_pct: Option<f64>,
    pub threshold_pct: Option<u64>,
    /// `namespace` or `destination`.
    pub scope: Option<Text<'a>>,
    pub source_addr: Option<Text<'a>>,
    pub usable: Option<u64>,
    pub top: Option<Vec<Claimer<'a>>>,

    // `summary`.
    pub end: Option<Text<'a>>,
    pub counts: Option<Counts>,
    pub lost: Option<u64>,
    /// Program runs the kernel skipped (absent where the kernel does not count them).
    pub skipped_runs: Option<u64>,
    pub duration_ns: Option<u64>,

    /// Sealed captures: the record's link in the hash chain.
    pub seal: Option<Text<'a>>,
}

/// Who a nested object names (a holder, a pressure record's claimer), with the same keys as
/// a line's own.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, bound(deserialize = "'de: 'a"))]
pub struct TaskKeys<'a> {
    #[serde(deserialize_with = "nullable")]
    pub pid: Option<Option<u32>>,
    #[serde(deserialize_with = "nullable")]
    pub tid: Option<Option<u32>>,
    #[serde(deserialize_with = "nullable")]
    pub ppid: Option<Option<u32>>,
    #[serde(deserialize_with = "nullable")]
    pub comm: Option<Option<Text<'a>>>,
}

/// The socket that held a port when a claim failed.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, bound(deserialize = "'de: 'a"))]
pub struct Holder<'a> {
    #[serde(flatten)]
    pub task: TaskKeys<'a>,
    /// Its socket state: `listen`, `established`, `time_wait`, ...
    pub state: Option<Text<'a>>,
    pub since: Option<Text<'a>>,
    pub local_addr: Option<Text<'a>>,
    pub how: Option<Text<'a>>,
    pub remote_addr: Option<Text<'a>>,
    pub remote_port: Option<u64>,
}

/// One of the processes holding most of a range, on a `pressure` record.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, bound(deserialize = "'de: 'a"))]
pub struct Claimer<'a> {
    #[serde(flatten)]
    pub task: TaskKeys<'a>,
    pub ports: u64,
}

/// The header's clock pair: kernel timestamps map to wall time through it.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, bound(deserialize = "'de: 'a"))]
pub struct Clock<'a> {
    pub monotonic_ns: u64,
    pub wall: Text<'a>,
}

/// A summary's count of each kind of port event.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub claim: u64,
    pub listen: u64,
    pub free: u64,
    pub fail: u64,
    pub held: u64,
}

impl<'a> Line<'a> {
    /// Reads one line; the error is serde's sentence, with the column.
    pub fn parse(text: &'a str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// A string of a line: borrowed from it where it has no escapes (most do not), copied where it
/// has.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Text<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // serde borrows a `Cow` only where a field asks for it.
        #[derive(Deserialize)]
        struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);
        Borrowed::deserialize(deserializer).map(|text| Text(text.0))
    }
}

impl Deref for Text<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'a> From<&'a str> for Text<'a> {
    fn from(text: &'a str) -> Self {
        Text(Cow::Borrowed(text))
    }
}

impl From<String> for Text<'_> {
    fn from(text: String) -> Self {
        Text(Cow::Owned(text))
    }
}

impl Text<'_> {
    pub fn into_owned(self) -> String {
        self.0.into_owned()
    }
}

impl PartialEq<str> for Text<'_> {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for Text<'_> {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

/// A key that may be absent (None), null (Some(None)) or a value.
fn nullable<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}
