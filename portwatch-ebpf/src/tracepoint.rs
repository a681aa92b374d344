//! The tracepoint backend, for kernels without kprobes or BTF trampolines (this project's CI host
//! among them). Raw syscall tracepoints see claims and failures in the calling process, walking
//! the file descriptor to its socket; tp_btf TCP tracepoints and a cgroup `sock_release` hook see
//! releases, including those at process exit, where no syscall runs.
//!
//! The end of TIME_WAIT shows only as the expiry of the TIME_WAIT socket's timer. It cannot see
//! sockets bound by the kernel itself, binds through io_uring, or a TIME_WAIT cut short (by a
//! reused connection or an RST).

use aya_ebpf::{
    helpers::bpf_probe_read_user,
    macros::{btf_tracepoint, cgroup_sock, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext, SockContext},
};
use portwatch_ebpf::{How, PROTO_TCP, PROTO_UDP};

use crate::{
    emit::{self, Requested},
    globals::global,
    kfunc::{self, Hook},
    lifecycle::{self, Repeat},
    maps::{InFlight, TIME_WAIT_ARMED},
    sock,
};

const EAGAIN: i32 = 11;
const EADDRNOTAVAIL: i32 = 99;
const TCP_FIN_WAIT2: i32 = 5;
const TCP_CLOSE: i32 = 7;
const TCP_CLOSING: i32 = 11;

/// The syscalls this backend follows, named so the enter and exit sides agree.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    Bind,
    Connect,
    Listen,
    Accept,
    Send,
}

#[inline(always)]
fn classify(nr: u32) -> Option<Call> {
    if nr == global!(SYSCALLS.bind) {
        Some(Call::Bind)
    } else if nr == global!(SYSCALLS.connect) {
        Some(Call::Connect)
    } else if nr == global!(SYSCALLS.listen) {
        Some(Call::Listen)
    } else if nr == global!(SYSCALLS.accept) || nr == global!(SYSCALLS.accept4) {
        Some(Call::Accept)
    } else if nr == global!(SYSCALLS.sendto)
        || nr == global!(SYSCALLS.sendmsg)
        || nr == global!(SYSCALLS.sendmmsg)
    {
        Some(Call::Send)
    } else {
        None
    }
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> i32 {
    let regs: u64 = ctx.arg(0);
    let nr: u64 = ctx.arg(1);
    if let Some(call) = classify(nr as u32) {
        on_enter(call, regs);
    }
    0
}

#[inline(always)]
fn on_enter(call: Call, regs: u64) {
    if call == Call::Accept {
        kfunc::remember(
            Hook::Syscall,
            InFlight {
                sk: 0,
                arg: 0,
                port_before: 0,
                requested_port: 0,
                _pad: 0,
            },
        );
        return;
    }
    let fd: u64 = sock::read(regs, global!(OFFSETS.regs_arg0));
    let sk = sock::sock_from_fd(fd);
    let (proto, family) = (sock::protocol(sk), sock::family(sk));
    let port_before = sock::local_port(sk);
    // Not ours to follow: not an inet socket, a filtered protocol, or a send on a socket that
    // already has its port (the hot path of every UDP server).
    if sk == 0
        || !emit::socket_watched(proto, family)
        || (call == Call::Send && (port_before != 0 || proto != PROTO_UDP as u16))
    {
        kfunc::forget(Hook::Syscall);
        return;
    }
    // For bind: the caller's sockaddr, kept to report the address a failed bind asked for.
    let uaddr: u64 = if call == Call::Bind {
        sock::read(regs, global!(OFFSETS.regs_arg1))
    } else {
        0
    };
    let requested_port = if uaddr != 0 {
        // SAFETY: bpf_probe_read_user validates the user address and fails instead of faulting.
        // sin_port and sin6_port both sit at byte 2 of the caller's sockaddr.
        u16::from_be(unsafe { bpf_probe_read_user((uaddr + 2) as *const u16) }.unwrap_or(0))
    } else {
        0
    };
    kfunc::remember(
        Hook::Syscall,
        InFlight {
            sk,
            arg: uaddr,
            port_before,
            requested_port,
            _pad: 0,
        },
    );
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> i32 {
    let regs: u64 = ctx.arg(0);
    let ret: u64 = ctx.arg(1);
    let nr: u64 = sock::read(regs, global!(OFFSETS.regs_syscall_nr));
    let Some(call) = classify(nr as u32) else {
        return 0;
    };
    if let Some(entered) = kfunc::take(Hook::Syscall) {
        on_exit(call, entered, ret as i64);
    }
    0
}

#[inline(always)]
fn on_exit(call: Call, entered: InFlight, ret: i64) {
    let sk = entered.sk;
    match call {
        Call::Bind => lifecycle::bind_returned(
            sk,
            entered.requested_port,
            Requested::User(entered.arg),
            ret as i32,
        ),
        Call::Connect | Call::Send => {
            let how = if call == Call::Connect && sock::protocol(sk) == PROTO_TCP as u16 {
                How::Connect
            } else {
                How::Autobind
            };
            let port_after = sock::local_port(sk);
            if entered.port_before == 0 && port_after != 0 {
                lifecycle::claimed(sk, how);
            } else if entered.port_before != 0 && port_after == 0 {
                // connect(AF_UNSPEC) on a UDP socket without an explicit bind drops its port.
                lifecycle::released(sk, entered.port_before, Repeat::Final);
            } else if ret < 0 && port_after == 0 {
                let errno = -ret as i32;
                if errno == EADDRNOTAVAIL || errno == EAGAIN {
                    lifecycle::failed(sk, how, errno, 0, Requested::Nothing);
                }
            }
        }
        Call::Listen => {
            if ret == 0 {
                if entered.port_before == 0 {
                    lifecycle::claimed(sk, How::Autobind);
                }
                lifecycle::listening(sk);
            }
        }
        Call::Accept => {
            if ret >= 0 {
                let child = sock::sock_from_fd(ret as u64);
                if child != 0 {
                    lifecycle::claimed(child, How::Accept);
                }
            }
        }
    }
}

/// TCP transitions into CLOSE: a connect-, autobind- or bind-any-claimed socket gives its port back
/// here; from FIN_WAIT2 or CLOSING a TIME_WAIT socket usually takes the port over instead.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn tcp_set_state(ctx: BtfTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    if new != TCP_CLOSE || sock::protocol(sk) != PROTO_TCP as u16 {
        return 0;
    }
    let port = sock::source_port(sk);
    if (old == TCP_FIN_WAIT2 || old == TCP_CLOSING) && time_wait_took_over(sk, port) {
        lifecycle::entered_time_wait(sk, port);
    } else if !lifecycle::keeps_port_until_destroyed(sk) {
        lifecycle::released(sk, 0, Repeat::Expected);
    }
    0
}

/// Whether a TIME_WAIT socket was made for this closing connection: exactly, when its timer is
/// recognisable (it was armed moments ago); otherwise assumed, as the kernel makes one unless
/// its TIME_WAIT table is full.
#[inline(always)]
fn time_wait_took_over(sk: u64, port: u16) -> bool {
    if global!(TW_TIMER_HANDLER) == 0 {
        return true;
    }
    TIME_WAIT_ARMED.remove(sock::connection(sk, port)).is_ok()
}

/// Whether a kernel timer is a TIME_WAIT socket's, and if so that socket.
#[inline(always)]
fn time_wait_socket(timer: u64) -> Option<u64> {
    let handler: u64 = sock::read(timer, global!(OFFSETS.timer_function));
    (handler != 0 && handler == global!(TW_TIMER_HANDLER))
        .then(|| timer - global!(OFFSETS.tw_timer) as u64)
}

/// A timer is armed: for a TIME_WAIT socket, that is the moment it takes over a port.
#[btf_tracepoint(function = "timer_start")]
pub fn timer_start(ctx: BtfTracePointContext) -> i32 {
    if let Some(tw) = time_wait_socket(ctx.arg(0)) {
        let port = sock::local_port(tw);
        if port != 0 && emit::port_watched(port) {
            let _ = TIME_WAIT_ARMED.insert(sock::connection(tw, port), 1, 0);
        }
    }
    0
}

/// A TCP socket is destroyed: whatever port it still held is released.
#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn tcp_destroy(ctx: BtfTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    lifecycle::released(sk, sock::source_port(sk), Repeat::Final);
    0
}

/// A timer fires: if it is a TIME_WAIT socket's, that socket is about to end. No tracepoint
/// marks the end of TIME_WAIT itself, but its timer is recognisable by its handler.
#[btf_tracepoint(function = "timer_expire_entry")]
pub fn timer_expire(ctx: BtfTracePointContext) -> i32 {
    if let Some(tw) = time_wait_socket(ctx.arg(0)) {
        lifecycle::left_time_wait(tw);
    }
    0
}

/// Any socket is released, including at process exit. UDP ports are returned here.
#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    let sk = ctx.sock as u64;
    if sock::protocol(sk) == PROTO_UDP as u16 {
        lifecycle::released(sk, sock::local_port(sk), Repeat::Final);
    }
    1
}
