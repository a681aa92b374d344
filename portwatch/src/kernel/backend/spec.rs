//! What the tracing command asks of the kernel side: which backend, and the filters and sizes
//! the programs are loaded with. The only input the backends and the loader take.

use crate::model::ports::PortSet;

/// The backend asked for: one by name, or the best that attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    Auto,
    Fentry,
    Kprobe,
    Tracepoint,
}

/// The filters the kernel programs apply before submitting a record, the ring's size and
/// whether their diagnostics are on.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub choice: Choice,
    /// None: every port.
    pub ports: Option<PortSet>,
    /// Deliver failures that have no port (the kernel found none to choose).
    pub portless_failures: bool,
    pub tcp: bool,
    pub udp: bool,
    pub ipv4: bool,
    pub ipv6: bool,
    pub ring_bytes: u32,
    /// Whether the programs' aya-log diagnostics are on.
    pub debug_kernel: bool,
}
