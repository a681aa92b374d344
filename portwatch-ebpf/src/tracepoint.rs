//! The tracepoint backend, for kernels without kprobes or BTF trampolines (this project's CI host
//! among them). It hooks only what runs for socket calls, so the rest of the host pays nothing
//! beyond the kernel's slow syscall path that any syscall tracepoint switches on:
//!
//! * the per-syscall tracepoints of bind, connect, listen, accept(4) and the sends, which walk
//!   a file descriptor to its socket only when the call can change what a watched port holds;
//! * cgroup `post_bind4/6`, which hands a successful bind its socket directly, so a bind needs
//!   no descriptor walk unless it fails;
//! * tp_btf TCP tracepoints and a cgroup `sock_release` hook for releases, including those at
//!   process exit, where no syscall runs.
//!
//! The end of TIME_WAIT shows only as the expiry of the TIME_WAIT socket's timer. It cannot see
//! claims by connects or sends through io_uring, or a TIME_WAIT cut short (by a reused
//! connection or an RST).

use aya_ebpf::{
    EbpfContext,
    helpers::bpf_probe_read_user,
    macros::{btf_tracepoint, cgroup_sock, tracepoint},
    programs::{BtfTracePointContext, SockContext, TracePointContext},
};
use portwatch_ebpf::{FAMILY_INET, FAMILY_INET6, How, PROTO_TCP, PROTO_UDP};

use crate::{
    diag,
    emit::{self, Requested},
    globals::global,
    kfunc::{self, Hook},
    lifecycle::{self, Repeat},
    maps::{CONNECTING, InFlight, TIME_WAIT_ARMED, TIME_WAIT_HANDLER},
    sock,
};

const EAGAIN: i32 = 11;
const EADDRNOTAVAIL: i32 = 99;
const TCP_SYN_SENT: i32 = 2;
const TCP_FIN_WAIT2: i32 = 5;
const TCP_CLOSE: i32 = 7;
const TCP_CLOSING: i32 = 11;
const TCP_LISTEN: u8 = 10;
const TCP_TIME_WAIT: u8 = 6;
const AF_UNSPEC: u16 = 0;

/// Where a syscall tracepoint's record keeps its arguments (enter) or return value (exit): the
/// same on every kernel and architecture (`/sys/kernel/tracing/events/syscalls/*/format`).
const RECORD_ARGS: usize = 16;

/// The syscalls this backend follows, named so the enter and exit sides agree.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    Bind,
    Connect,
    Listen,
    Accept,
    Send,
}

/// A 64-bit word of the tracepoint's record: an argument, or the return value.
#[inline(always)]
fn record<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: tracepoint programs may read their record directly; every offset used here is
    // inside the smallest syscall record (the first two arguments at 16 and 24).
    unsafe { core::ptr::read_volatile((ctx.as_ptr() as *const u8).add(offset).cast::<T>()) }
}

// One program per call, each on that call's `syscalls:sys_enter_*` and `sys_exit_*`: the kernel
// never runs a program on a CPU where it is already running, and on a kernel that preempts
// there (Debian's 7.x) a run can be preempted halfway, so one program for every call would let
// any send on the host skip a listen's run on the same CPU. Apart, only the same call meets.

/// One syscall tracepoint program: `$side` (`entered` or `exited`) of `$call`, attached to the
/// tracepoints the program table in `portwatch_ebpf::programs` names for it.
macro_rules! syscall_program {
    ($name:ident, $side:ident, $call:ident) => {
        #[doc = concat!("`", stringify!($side), "` for the ", stringify!($call), " call.")]
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            $side(&ctx, Call::$call)
        }
    };
}

syscall_program!(sys_enter_bind, entered, Bind);
syscall_program!(sys_enter_connect, entered, Connect);
syscall_program!(sys_enter_listen, entered, Listen);
syscall_program!(sys_enter_send, entered, Send);
syscall_program!(sys_exit_bind, exited, Bind);
syscall_program!(sys_exit_connect, exited, Connect);
syscall_program!(sys_exit_listen, exited, Listen);
syscall_program!(sys_exit_accept, exited, Accept);
syscall_program!(sys_exit_send, exited, Send);

#[inline(always)]
fn entered(ctx: &TracePointContext, call: Call) -> u32 {
    let arg0: u64 = record(ctx, RECORD_ARGS);
    let arg1: u64 = record(ctx, RECORD_ARGS + 8);
    match call {
        Call::Bind => bind_entered(arg0, arg1),
        Call::Accept => {}
        call => socket_call_entered(call, arg0, arg1),
    }
    0
}

/// The family and port a caller's sockaddr asks for; `sin_port` and `sin6_port` both sit at
/// byte 2, after the family.
#[inline(always)]
fn requested(uaddr: u64) -> (u16, u16) {
    // SAFETY: bpf_probe_read_user validates the user address and fails instead of faulting.
    let head: [u16; 2] =
        unsafe { bpf_probe_read_user(uaddr as *const [u16; 2]) }.unwrap_or([0xffff, 0]);
    (head[0], u16::from_be(head[1]))
}

/// A bind is entered. Its claim is reported by `post_bind`, which has the socket; only a bind
/// that could fail on a watched port (or, asking for port 0, be a port-less failure) is
/// remembered, with what its failure event needs.
#[inline(always)]
fn bind_entered(fd: u64, uaddr: u64) {
    let (family, port) = requested(uaddr);
    if !matches!(family, AF_UNSPEC | FAMILY_INET | FAMILY_INET6) || !emit::port_watched(port) {
        return;
    }
    kfunc::remember(
        Hook::Syscall,
        InFlight {
            arg: uaddr,
            requested_port: port,
            fd: fd as u32,
            ..InFlight::default()
        },
    );
}

/// A connect, listen or send is entered: remember the socket's port, to see at exit whether the
/// call claimed (or, for a UDP disconnect, dropped) one.
#[inline(always)]
fn socket_call_entered(call: Call, fd: u64, uaddr: u64) {
    let sk = sock::sock_from_fd(fd);
    if sk == 0 {
        return;
    }
    let (proto, family) = (sock::protocol(sk), sock::family(sk));
    let port_before = sock::local_port(sk);
    let follow = match call {
        // A connect changes the port of an unbound socket, or drops a UDP socket's (AF_UNSPEC).
        Call::Connect => {
            port_before == 0 || (proto == PROTO_UDP as u16 && requested(uaddr).0 == AF_UNSPEC)
        }
        // A listen reports on its own port, or autobinds one; listening again changes nothing
        // (the kernel only adjusts the backlog).
        Call::Listen => {
            (port_before == 0 || emit::port_watched(port_before)) && sock::state(sk) != TCP_LISTEN
        }
        // Only a send on an unbound socket claims a port (not the hot path of a server): a UDP
        // autobind, or a TCP Fast Open connect (`MSG_FASTOPEN`).
        _ => port_before == 0,
    };
    if !follow || !emit::socket_watched(proto, family) {
        return;
    }
    if port_before == 0 && call != Call::Listen && proto == PROTO_TCP as u16 {
        let _ = CONNECTING.insert(sk, emit::current_claim(0, How::Connect as u8, 0), 0);
    }
    kfunc::remember(
        Hook::Syscall,
        InFlight {
            sk,
            // Where the connect's address is, for its failure (the kernel clears the socket's
            // destination port on the way out, and UDP fails before setting it).
            arg: if call == Call::Connect { uaddr } else { 0 },
            port_before,
            ..InFlight::default()
        },
    );
}

#[inline(always)]
fn exited(ctx: &TracePointContext, call: Call) -> u32 {
    let ret: i64 = record(ctx, RECORD_ARGS);
    match call {
        Call::Accept => {
            if ret >= 0 {
                let child = sock::sock_from_fd(ret as u64);
                if child != 0 {
                    lifecycle::claimed(child, How::Accept);
                }
            }
        }
        call => {
            if let Some(entered) = kfunc::take(Hook::Syscall) {
                on_exit(call, entered, ret);
            }
        }
    }
    0
}

#[inline(always)]
fn on_exit(call: Call, entered: InFlight, ret: i64) {
    let sk = entered.sk;
    match call {
        Call::Bind => {
            // Successful binds were reported by post_bind.
            if ret < 0 {
                let sk = sock::sock_from_fd(entered.fd as u64);
                if sk == 0 {
                    diag::unpaired_bind_exit(entered.fd, -ret as i32);
                    return;
                }
                lifecycle::bind_returned(
                    sk,
                    entered.requested_port,
                    Requested::User(entered.arg),
                    ret as i32,
                );
            }
        }
        Call::Connect | Call::Send => {
            let tcp = sock::protocol(sk) == PROTO_TCP as u16;
            if tcp && entered.port_before == 0 {
                let _ = CONNECTING.remove(sk);
            }
            let how = if tcp { How::Connect } else { How::Autobind };
            let port_after = sock::local_port(sk);
            if entered.port_before == 0 && port_after != 0 {
                lifecycle::claimed(sk, how);
            } else if entered.port_before != 0 && port_after == 0 {
                // connect(AF_UNSPEC) on a UDP socket without an explicit bind drops its port.
                lifecycle::released(sk, entered.port_before, Repeat::Final);
            } else if ret < 0 && port_after == 0 {
                let errno = -ret as i32;
                if errno == EADDRNOTAVAIL || errno == EAGAIN {
                    let destination = match entered.arg {
                        0 => Requested::Nothing,
                        uaddr => Requested::User(uaddr),
                    };
                    lifecycle::failed(sk, how, errno, 0, Requested::Nothing, destination);
                }
            }
        }
        Call::Listen => lifecycle::listen_returned(sk, entered.port_before, ret as i32),
        Call::Accept => {}
    }
}

/// A bind got its port: the socket is at hand, so no descriptor walk. Runs inside the bind (in
/// the binder's task), after `sys_enter_bind` left the requested port for a watched one.
#[inline(always)]
fn bound(ctx: &SockContext) {
    // SAFETY: post_bind programs may read src_port (host order) from their context.
    let port = unsafe { (*ctx.sock).src_port } as u16;
    if port == 0 || !emit::port_watched(port) {
        return;
    }
    let how = match kfunc::peek(Hook::Syscall) {
        Some(entered) if entered.requested_port == port => How::Bind,
        _ => How::BindAny,
    };
    lifecycle::claimed(ctx.sock as u64, how);
}

/// Always allows the bind: this hook only watches.
#[cgroup_sock(post_bind4)]
pub fn post_bind4(ctx: SockContext) -> i32 {
    bound(&ctx);
    1
}

/// Always allows the bind: this hook only watches.
#[cgroup_sock(post_bind6)]
pub fn post_bind6(ctx: SockContext) -> i32 {
    bound(&ctx);
    1
}

/// TCP transitions into CLOSE. The kernel has returned the port by now unless the socket was
/// bound to it explicitly (then destruction returns it), or a TIME_WAIT socket took it over
/// (from FIN_WAIT2 or CLOSING). A listener's close goes on to drop its accept queue.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn tcp_set_state(ctx: BtfTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    if new != TCP_CLOSE || sock::protocol(sk) != PROTO_TCP as u16 {
        return 0;
    }
    // `inet_num` reads 0 once the port is returned; `inet_sport` still names it.
    let port = sock::source_port(sk);
    if port != 0 && !emit::port_watched(port) {
        return 0;
    }
    if old == TCP_LISTEN as i32 {
        lifecycle::listener_stopping(sk, port);
    }
    let closing = old == TCP_FIN_WAIT2 || old == TCP_CLOSING;
    if closing && time_wait_took_over(sk, port) {
        lifecycle::entered_time_wait(sk, port);
        return 0;
    }
    if closing {
        diag::no_time_wait(port);
    }
    if sock::local_port(sk) == 0 {
        if old == TCP_SYN_SENT {
            claimed_while_connecting(sk, port);
        }
        lifecycle::released(sk, port, Repeat::Expected);
    }
    0
}

/// A connect that got its port and lost it before returning (refused, reset, timed out): the
/// claim the syscall exit would have reported is reported now, by the connecting process.
#[inline(always)]
fn claimed_while_connecting(sk: u64, port: u16) {
    // SAFETY: map value pointers stay valid for the duration of the program.
    if let Some(claimer) = CONNECTING.get_ptr(sk).map(|claimer| unsafe { *claimer }) {
        let _ = CONNECTING.remove(sk);
        lifecycle::claimed_earlier(sk, port, How::Connect, claimer);
    }
}

/// Whether a TIME_WAIT socket was made for this closing connection: its timer was armed moments
/// ago (none is made when the kernel's TIME_WAIT table is full). That timer also confirms which
/// handler TIME_WAIT timers run, so that their expiry can be recognised.
#[inline(always)]
fn time_wait_took_over(sk: u64, port: u16) -> bool {
    let connection = sock::connection(sk, port);
    // SAFETY: map value pointers stay valid for the duration of the program.
    let Some(handler) = TIME_WAIT_ARMED.get_ptr(connection).map(|h| unsafe { *h }) else {
        return false;
    };
    let _ = TIME_WAIT_ARMED.remove(connection);
    if let Some(slot) = TIME_WAIT_HANDLER.get_ptr_mut(0) {
        // SAFETY: the pointer comes from this array's only slot, valid and aligned.
        unsafe { *slot = handler };
    }
    true
}

/// The handler TIME_WAIT timers run, once a TIME_WAIT start has shown it; 0 before.
#[inline(always)]
fn time_wait_handler() -> u64 {
    TIME_WAIT_HANDLER.get(0).copied().unwrap_or(0)
}

/// A timer is armed: for a TIME_WAIT socket, that is the moment it takes over a port. Until the
/// handler is known, any timer whose would-be socket reads as TIME_WAIT is a candidate: a wrong
/// guess only records a connection that no closing socket will look up.
#[btf_tracepoint(function = "timer_start")]
pub fn timer_start(ctx: BtfTracePointContext) -> i32 {
    let timer: u64 = ctx.arg(0);
    let handler: u64 = sock::read(timer, global!(OFFSETS.timer_function));
    let known = time_wait_handler();
    if handler == 0 || (known != 0 && handler != known) {
        return 0;
    }
    let tw = timer - global!(OFFSETS.tw_timer) as u64;
    if known == 0 && sock::state(tw) != TCP_TIME_WAIT {
        return 0;
    }
    let port = sock::local_port(tw);
    if port != 0 && emit::port_watched(port) {
        let _ = TIME_WAIT_ARMED.insert(sock::connection(tw, port), handler, 0);
    }
    0
}

/// A TCP socket is destroyed: whatever port it still holds (`inet_num` not yet zeroed) is
/// released. A listener's destruction also ends the stop of its accept queue.
#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn tcp_destroy(ctx: BtfTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    lifecycle::released(sk, sock::local_port(sk), Repeat::Final);
    // Stops are recorded only for watched ports (`inet_sport` still names a listener's port):
    // other sockets' destruction skips the lookup.
    if emit::port_watched(sock::source_port(sk)) {
        lifecycle::listener_destroyed(sk);
    }
    0
}

/// A timer fires: if it is a TIME_WAIT socket's, that socket is about to end. No tracepoint
/// marks the end of TIME_WAIT itself, but its timer is recognisable by its handler.
#[btf_tracepoint(function = "timer_expire_entry")]
pub fn timer_expire(ctx: BtfTracePointContext) -> i32 {
    let timer: u64 = ctx.arg(0);
    let known = time_wait_handler();
    if known != 0 && sock::read::<u64>(timer, global!(OFFSETS.timer_function)) == known {
        lifecycle::left_time_wait(timer - global!(OFFSETS.tw_timer) as u64);
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
