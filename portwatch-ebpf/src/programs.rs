//! Every program of the kernel object, listed once: its name, the backend that loads it, what
//! it hooks and how. Userspace loads and attaches from this table, and a unit test in portwatch
//! checks it against the object itself, so a program renamed, added or dropped on one side fails
//! the build's tests instead of a backend at run time.

/// The backends, each a set of the programs below.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Fentry,
    Kprobe,
    Tracepoint,
}

/// What a program is attached as, with what that needs to know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// At a kernel function's entry; fits whatever its parameters.
    FEntry,
    /// At a kernel function's return. A program that reads the return value is written for a
    /// function of `parameters` parameters: the value is the context slot after them, a
    /// constant in the program, so functions whose parameter count changed between kernels have
    /// one program per count. None: the program reads no return value and fits any count.
    FExit {
        parameters: Option<u32>,
    },
    KProbe,
    KRetProbe,
    /// `syscalls:sys_enter_<call>` for each of these calls.
    SyscallEnter(&'static [&'static str]),
    /// `syscalls:sys_exit_<call>` for each of these calls.
    SyscallExit(&'static [&'static str]),
    /// tp_btf on this tracepoint.
    BtfTracepoint(&'static str),
    /// A cgroup socket hook; the program's section names its attach point.
    CgroupSock,
}

/// One program of the object.
#[derive(Clone, Copy, Debug)]
pub struct Program {
    /// The program's name in the object (its function's name in this crate).
    pub name: &'static str,
    pub backend: Backend,
    /// For fentry and kprobe programs, the hook in [`FUNCTIONS`] naming the kernel function.
    pub hook: &'static str,
    pub kind: Kind,
}

/// The kernel functions the fentry and kprobe backends hook, by hook name, with the names to
/// try in order (`inet_twsk_hashdance` became `inet_twsk_hashdance_schedule`).
pub const FUNCTIONS: [(&str, &[&str]); 12] = [
    ("bind", &["__inet_bind"]),
    ("bind6", &["__inet6_bind"]),
    ("hash_connect", &["__inet_hash_connect"]),
    ("dgram_connect", &["inet_dgram_connect"]),
    ("autobind", &["inet_autobind"]),
    ("listen_start", &["inet_csk_listen_start"]),
    ("accept", &["inet_csk_accept"]),
    ("listen_stop", &["inet_csk_listen_stop"]),
    ("put_port", &["inet_put_port"]),
    ("udp_unhash", &["udp_lib_unhash"]),
    (
        "time_wait_start",
        &["inet_twsk_hashdance_schedule", "inet_twsk_hashdance"],
    ),
    (
        "time_wait_end",
        &["inet_twsk_bind_unhash", "inet_twsk_kill"],
    ),
];

const fn program(name: &'static str, backend: Backend, hook: &'static str, kind: Kind) -> Program {
    Program {
        name,
        backend,
        hook,
        kind,
    }
}

const fn fentry(name: &'static str, hook: &'static str) -> Program {
    program(name, Backend::Fentry, hook, Kind::FEntry)
}

const fn fexit(name: &'static str, hook: &'static str, parameters: u32) -> Program {
    let parameters = Some(parameters);
    program(name, Backend::Fentry, hook, Kind::FExit { parameters })
}

const fn kprobe(name: &'static str, hook: &'static str) -> Program {
    program(name, Backend::Kprobe, hook, Kind::KProbe)
}

const fn kretprobe(name: &'static str, hook: &'static str) -> Program {
    program(name, Backend::Kprobe, hook, Kind::KRetProbe)
}

const fn tracepoint(name: &'static str, kind: Kind) -> Program {
    program(name, Backend::Tracepoint, name, kind)
}

/// Every program, each backend's in the order it attaches them: every release hook before any
/// claim hook. A claim recorded while its socket's release went unseen would stay in the claim
/// map after the socket is gone, and the next socket allocated at that address would look as if
/// it had claimed already.
pub const PROGRAMS: [Program; 51] = [
    fentry("put_port_entry", "put_port"),
    fentry("udp_unhash_entry", "udp_unhash"),
    fentry("time_wait_start", "time_wait_start"),
    fentry("time_wait_end", "time_wait_end"),
    fentry("listen_stop_entry", "listen_stop"),
    program(
        "listen_stop_exit",
        Backend::Fentry,
        "listen_stop",
        Kind::FExit { parameters: None },
    ),
    fexit("inet_bind_exit", "bind", 4),
    fexit("inet6_bind_exit", "bind6", 4),
    fexit("hash_connect_exit_4", "hash_connect", 4),
    fexit("hash_connect_exit_5", "hash_connect", 5),
    fentry("dgram_connect_entry", "dgram_connect"),
    fexit("autobind_exit", "autobind", 1),
    fentry("listen_start_entry", "listen_start"),
    fexit("listen_start_exit_1", "listen_start", 1),
    fexit("listen_start_exit_2", "listen_start", 2),
    fexit("accept_exit_2", "accept", 2),
    fexit("accept_exit_4", "accept", 4),
    kprobe("kp_put_port", "put_port"),
    kprobe("kp_udp_unhash", "udp_unhash"),
    kprobe("kp_time_wait_start", "time_wait_start"),
    kprobe("kp_time_wait_end", "time_wait_end"),
    kprobe("kp_listen_stop", "listen_stop"),
    kretprobe("kp_listen_stop_ret", "listen_stop"),
    kprobe("kp_inet_bind", "bind"),
    kretprobe("kp_inet_bind_ret", "bind"),
    kprobe("kp_inet6_bind", "bind6"),
    kretprobe("kp_inet6_bind_ret", "bind6"),
    kprobe("kp_hash_connect", "hash_connect"),
    kretprobe("kp_hash_connect_ret", "hash_connect"),
    kprobe("kp_dgram_connect", "dgram_connect"),
    kprobe("kp_autobind", "autobind"),
    kretprobe("kp_autobind_ret", "autobind"),
    kprobe("kp_listen_start", "listen_start"),
    kretprobe("kp_listen_start_ret", "listen_start"),
    kretprobe("kp_accept_ret", "accept"),
    tracepoint("tcp_set_state", Kind::BtfTracepoint("inet_sock_set_state")),
    tracepoint("tcp_destroy", Kind::BtfTracepoint("tcp_destroy_sock")),
    tracepoint("timer_start", Kind::BtfTracepoint("timer_start")),
    tracepoint("timer_expire", Kind::BtfTracepoint("timer_expire_entry")),
    tracepoint("sock_release", Kind::CgroupSock),
    tracepoint("post_bind4", Kind::CgroupSock),
    tracepoint("post_bind6", Kind::CgroupSock),
    tracepoint("sys_enter_bind", Kind::SyscallEnter(&["bind"])),
    tracepoint("sys_enter_connect", Kind::SyscallEnter(&["connect"])),
    tracepoint("sys_enter_listen", Kind::SyscallEnter(&["listen"])),
    tracepoint("sys_enter_send", Kind::SyscallEnter(SENDS)),
    tracepoint("sys_exit_bind", Kind::SyscallExit(&["bind"])),
    tracepoint("sys_exit_connect", Kind::SyscallExit(&["connect"])),
    tracepoint("sys_exit_listen", Kind::SyscallExit(&["listen"])),
    tracepoint("sys_exit_accept", Kind::SyscallExit(&["accept", "accept4"])),
    tracepoint("sys_exit_send", Kind::SyscallExit(SENDS)),
];

/// The calls that can autobind a port by sending (UDP, or TCP Fast Open).
const SENDS: &[&str] = &["sendto", "sendmsg", "sendmmsg"];

/// One backend's programs, in attach order.
pub fn of(backend: Backend) -> impl Iterator<Item = &'static Program> {
    PROGRAMS
        .iter()
        .filter(move |program| program.backend == backend)
}
