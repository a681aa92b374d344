//! The maps shared by every backend.

use aya_ebpf::bindings::BPF_F_MMAPABLE;
use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap, RingBuf},
};
use portwatch_ebpf::{DEFAULT_RING_BYTES, PORT_BITMAP_WORDS};

/// Events on their way to userspace; userspace sizes it at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// Events that found the ring buffer full, one slot per CPU (userspace sizes it at load time)
/// so counting never contends. A plain array, not a per-CPU one, because only arrays can be
/// mapped: the tracer reads it from memory and never through bpf(). A map lookup from
/// userspace holds the CPU's `bpf_prog_active` while it runs, and a lookup preempted there
/// (migrate_disable leaves it preemptible since Linux 5.11) makes the kernel skip every kprobe
/// and syscall-tracepoint program run on that CPU, uncounted, until it resumes.
#[map]
pub static LOST: Array<u64> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// One bit per port: set when the port is watched. Consulted unless every port is watched.
#[map]
pub static WATCHED_PORTS: Array<u64> = Array::with_max_entries(PORT_BITMAP_WORDS, 0);

/// What the kernel told us about a socket that holds a watched port, keyed by the socket's
/// address. It is how a free names the claimer even when a timer or softirq releases the port,
/// and how repeated hooks on one socket report its claim once.
#[map]
pub static CLAIMS: LruHashMap<u64, Claim> = LruHashMap::with_max_entries(65536, 0);

/// Claims whose port a TIME_WAIT socket holds, keyed by the connection, which the full socket
/// and its TIME_WAIT successor share (their addresses differ, and the syscall-tracepoint backend
/// never sees the TIME_WAIT socket's until it ends).
#[map]
pub static TIME_WAITS: LruHashMap<Connection, Claim> = LruHashMap::with_max_entries(65536, 0);

/// Connections whose TIME_WAIT socket just armed its timer, with the timer's handler. The syscall-tracepoint backend sees
/// a closing socket only as a transition into CLOSE, which looks the same whether or not a
/// TIME_WAIT socket took over (none is made when `tcp_max_tw_buckets` is reached); the timer,
/// armed just before that transition, tells them apart.
#[map]
pub static TIME_WAIT_ARMED: LruHashMap<Connection, u64> = LruHashMap::with_max_entries(8192, 0);

/// The handler every TIME_WAIT socket's timer runs (`tw_timer_handler`), learnt from the first
/// TIME_WAIT start since loading; 0 until then.
#[map]
pub static TIME_WAIT_HANDLER: Array<u64> = Array::with_max_entries(1, 0);

/// The identity of each thread's connect (or TCP Fast Open send) on a TCP socket that has no
/// port yet, keyed by socket, from the syscall's entry to its exit. A refused connect gets its
/// port and gives it back before the syscall returns, in a softirq that runs in whatever task;
/// this is how that release can still report the claim, by the process that made it.
#[map]
pub static CONNECTING: LruHashMap<u64, Claim> = LruHashMap::with_max_entries(8192, 0);

/// Listeners being stopped, keyed by the thread stopping them (see
/// [`crate::lifecycle::listener_stopping`]).
#[map]
pub static LISTEN_STOPS: LruHashMap<u32, ListenStop> = LruHashMap::with_max_entries(1024, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ListenStop {
    pub listener: u64,
    pub port: u16,
    pub _pad: [u8; 6],
}

/// A TCP connection, as both its full socket and its TIME_WAIT socket describe it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Connection {
    pub netns: u32,
    pub family: u16,
    pub local_port: u16,
    pub remote_port: u16,
    pub _pad: u16,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

/// Per-thread state carried from a hook's entry to its exit (syscall enter/exit, kprobe/kretprobe,
/// fentry/fexit), keyed by thread id and hook. LRU, because a thread killed inside a syscall never
/// reaches the exit hook that would remove its entry.
#[map]
pub static IN_FLIGHT: LruHashMap<InFlightKey, InFlight> = LruHashMap::with_max_entries(16384, 0);

/// The claim a socket made, or a marker that its port moved on.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Claim {
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub start_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub ppid: u32,
    pub port: u16,
    pub how: u8,
    pub state: ClaimState,
    /// `FLAG_CLAIMER_UNSEEN` when the claim predates tracing and the identity is a stand-in.
    pub flags: u8,
    pub _pad: [u8; 3],
    pub comm: [u8; 16],
}

#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ClaimState {
    /// The socket holds the port.
    Held = 0,
    /// The port was already reported free (or handed to a TIME_WAIT socket); a later release hook
    /// on the same socket must stay quiet.
    Reported = 1,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct InFlightKey {
    pub tid: u32,
    pub hook: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct InFlight {
    pub sk: u64,
    pub arg: u64,
    pub port_before: u16,
    pub requested_port: u16,
    /// For a bind: its file descriptor, walked to the socket only if the bind fails.
    pub fd: u32,
}
