//! The ABI shared by the kernel programs and userspace.
//!
//! Everything here is `#[repr(C)]` and `Copy` so that one definition serves both sides: the kernel
//! writes [`RawEvent`]s into the ring buffer and userspace reads them back byte for byte, and
//! userspace hands [`Offsets`] and [`Settings`] to the programs as read-only globals.
#![no_std]

pub mod programs;

/// What happened to a local port. Stored in [`RawEvent::kind`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Claim = 1,
    Listen = 2,
    Free = 3,
    Fail = 4,
}

/// How a claim (or a failed claim) tried to get its port. Stored in [`RawEvent::how`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    Unknown = 0,
    /// bind() to a non-zero port.
    Bind = 1,
    /// bind() to port 0: the kernel chose.
    BindAny = 2,
    /// A TCP connect() without a bound port: the kernel chose an ephemeral port.
    Connect = 3,
    /// A UDP send or connect, or a listen, on an unbound socket: the kernel chose.
    Autobind = 4,
    /// accept() returned a socket that shares the listener's port.
    Accept = 5,
}

impl How {
    pub fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Bind,
            2 => Self::BindAny,
            3 => Self::Connect,
            4 => Self::Autobind,
            5 => Self::Accept,
            _ => Self::Unknown,
        }
    }
}

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const FAMILY_INET: u16 = 2;
pub const FAMILY_INET6: u16 = 10;

/// [`RawEvent::flags`]: the port passed to a TIME_WAIT socket, which still holds it.
pub const FLAG_TIME_WAIT: u8 = 1 << 0;
/// [`RawEvent::flags`]: the TIME_WAIT socket ended; this is the real release.
pub const FLAG_TIME_WAIT_END: u8 = 1 << 1;
/// [`RawEvent::flags`]: the claim happened before tracing began, so the identity fields describe
/// the task that was running when the port was freed, not the claimer.
pub const FLAG_CLAIMER_UNSEEN: u8 = 1 << 2;

/// One port event as the kernel records it. Addresses and ports are in host byte order for ports
/// and network byte order for addresses (as the kernel stores them), so userspace can print them
/// without knowing which hook produced them.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawEvent {
    /// CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns).
    pub ts_ns: u64,
    /// For `free`: nanoseconds since the claim was seen, 0 when it was not.
    pub held_ns: u64,
    pub cgroup_id: u64,
    /// When the process (thread group leader) started: CLOCK_BOOTTIME nanoseconds. With the pid,
    /// it names one process even after the pid is reused.
    pub start_ns: u64,
    pub netns: u32,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    /// The parent's pid, read in the kernel so that even a process gone a millisecond later has one.
    pub ppid: u32,
    /// For `fail`: the positive errno.
    pub errno: i32,
    pub local_port: u16,
    pub remote_port: u16,
    pub family: u16,
    pub kind: u8,
    pub how: u8,
    pub proto: u8,
    pub flags: u8,
    pub _pad: [u8; 6],
    /// For a failed bind: the address it asked for. For a failed connect: the source address
    /// the socket still had when the hook saw the failure. A bound one always shows; one the
    /// route chose shows where the hook runs before the kernel clears it (kprobe and fentry; the
    /// tracepoint backend sees the syscall return, after recent kernels cleared it).
    pub local_addr: [u8; 16],
    /// For a failed connect: the destination it asked for (with `remote_port`), IPv4-mapped
    /// when an IPv6 socket connected to an IPv4 address.
    pub remote_addr: [u8; 16],
    pub comm: [u8; 16],
}

/// Byte offsets of the kernel struct fields the programs read, taken from the running kernel's
/// BTF at load time. aya has no CO-RE for Rust programs, so this is how one object file serves
/// every kernel layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Offsets {
    pub skc_family: u32,
    pub skc_state: u32,
    pub skc_num: u32,
    pub skc_dport: u32,
    pub skc_rcv_saddr: u32,
    pub skc_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    pub skc_v6_daddr: u32,
    pub skc_net: u32,
    pub net_ns_inum: u32,
    pub sk_protocol: u32,
    pub inet_sport: u32,
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_fd: u32,
    pub fdt_max_fds: u32,
    pub file_private_data: u32,
    pub socket_file: u32,
    pub socket_sk: u32,
    pub timer_function: u32,
    pub tw_timer: u32,
    pub task_real_parent: u32,
    pub task_tgid: u32,
    pub task_group_leader: u32,
    /// `task_struct.start_boottime` (`real_start_time` before 5.5).
    pub task_start_boottime: u32,
}

/// Filters applied in the kernel so that unwatched events never reach userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Settings {
    /// Non-zero: every port is watched and the port bitmap is not consulted.
    pub all_ports: u8,
    /// Non-zero: failures with no port (the kernel could not choose one) are delivered.
    pub portless_failures: u8,
    /// Non-zero: deliver TCP events.
    pub tcp: u8,
    /// Non-zero: deliver UDP events.
    pub udp: u8,
    pub ipv4: u8,
    pub ipv6: u8,
    pub _pad: [u8; 2],
    /// Events are submitted without waking the reader, which polls on a short timer, except
    /// when the unread data passes a multiple of this many bytes.
    pub wakeup_bytes: u32,
}

/// Words in the watched-port bitmap: 65536 bits.
pub const PORT_BITMAP_WORDS: u32 = 1024;

/// Default ring buffer size in bytes; userspace may resize it at load time.
pub const DEFAULT_RING_BYTES: u32 = 1 << 20;

#[cfg(feature = "user")]
mod user {
    // SAFETY: all four are repr(C) structs of plain integers and byte arrays with explicit
    // padding fields, so every bit pattern is valid and there is no uninitialised padding.
    unsafe impl aya::Pod for super::Offsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Settings {}
    // SAFETY: as above.
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RawEvent {}
}
