//! What the return of each traced kernel function means. Shared by the fentry/fexit and the
//! kprobe/kretprobe backends, which differ only in how they get at arguments and return values.

use portwatch_ebpf::How;

const AF_UNSPEC: u16 = 0;

use crate::{
    emit::Requested,
    globals::global,
    lifecycle::{self, Repeat},
    maps::{IN_FLIGHT, InFlight, InFlightKey},
    sock,
};

/// Identifies a hook in [`IN_FLIGHT`] so that nested hooks on one thread never mix their state.
#[repr(u32)]
#[derive(Clone, Copy)]
pub enum Hook {
    Bind = 1,
    Bind6 = 2,
    HashConnect = 3,
    Autobind = 4,
    /// Whether the socket entering `inet_csk_listen_start` was unbound.
    ListenStart = 5,
    /// The socket itself, for the kretprobe of `inet_csk_listen_start`.
    ListenSocket = 6,
    Syscall = 7,
    /// The address a datagram connect on an unbound socket asked for, for its autobind.
    DgramConnect = 8,
}

#[inline(always)]
pub fn in_flight_key(hook: Hook) -> InFlightKey {
    InFlightKey {
        tid: aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32,
        hook: hook as u32,
    }
}

#[inline(always)]
pub fn remember(hook: Hook, state: InFlight) {
    let _ = IN_FLIGHT.insert(in_flight_key(hook), state, 0);
}

/// What the hook's entry left, without removing it (the exit still takes it).
#[inline(always)]
pub fn peek(hook: Hook) -> Option<InFlight> {
    // SAFETY: map value pointers stay valid for the duration of the program.
    IN_FLIGHT
        .get_ptr(in_flight_key(hook))
        .map(|state| unsafe { *state })
}

#[inline(always)]
pub fn take(hook: Hook) -> Option<InFlight> {
    let key = in_flight_key(hook);
    // SAFETY: map value pointers stay valid for the duration of the program.
    let state = IN_FLIGHT.get_ptr(key).map(|state| unsafe { *state });
    if state.is_some() {
        let _ = IN_FLIGHT.remove(key);
    }
    state
}

/// `__inet_bind` / `__inet6_bind` returned. `uaddr` is the kernel's copy of the caller's address.
#[inline(always)]
pub fn after_bind(sk: u64, uaddr: u64, ret: i32) {
    let requested_port = u16::from_be(sock::read(uaddr, 2));
    lifecycle::bind_returned(sk, requested_port, Requested::Kernel(uaddr), ret);
}

/// `__inet_hash_connect` returned: a TCP connect got (or could not get) its local port.
#[inline(always)]
pub fn after_hash_connect(sk: u64, ret: i32) {
    if ret == 0 {
        lifecycle::claimed(sk, How::Connect);
    } else {
        // The socket holds the destination here: the kernel sets it before choosing a port and
        // clears the port only after this returns.
        lifecycle::failed(
            sk,
            How::Connect,
            -ret,
            0,
            Requested::Nothing,
            Requested::Nothing,
        );
    }
}

/// `inet_dgram_connect(sock, uaddr, ...)` is entered (UDP connect, IPv4 and IPv6). On an unbound
/// socket it autobinds next, and `inet_autobind` has no address to name in its failure: the
/// kernel's copy of the caller's address is remembered for it. A disconnect (`AF_UNSPEC`)
/// autobinds nothing.
#[inline(always)]
pub fn before_dgram_connect(socket: u64, uaddr: u64) {
    let sk: u64 = sock::read(socket, global!(OFFSETS.socket_sk));
    let family: u16 = sock::read(uaddr, 0);
    if sk != 0 && family != AF_UNSPEC && sock::local_port(sk) == 0 {
        remember(
            Hook::DgramConnect,
            InFlight {
                sk,
                arg: uaddr,
                ..InFlight::default()
            },
        );
    }
}

/// `inet_autobind` returned: a send or connect on an unbound socket got (or did not get) a port.
/// A connect entered on this socket left its address (a send's is not traced).
#[inline(always)]
pub fn after_autobind(sk: u64, ret: i32) {
    let connecting = take(Hook::DgramConnect).filter(|call| call.sk == sk);
    if ret == 0 {
        lifecycle::claimed(sk, How::Autobind);
    } else {
        let destination = connecting.map_or(Requested::Nothing, |call| Requested::Kernel(call.arg));
        lifecycle::failed(sk, How::Autobind, -ret, 0, Requested::Nothing, destination);
    }
}

/// `inet_csk_listen_start` is entered: remember whether the socket is unbound, because listen
/// then picks a port itself.
#[inline(always)]
pub fn before_listen_start(sk: u64) {
    if sock::local_port(sk) == 0 {
        remember(
            Hook::ListenStart,
            InFlight {
                sk,
                ..InFlight::default()
            },
        );
    }
}

#[inline(always)]
pub fn after_listen_start(sk: u64, ret: i32) {
    let port_before = if take(Hook::ListenStart).is_some() {
        0
    } else {
        sock::local_port(sk)
    };
    lifecycle::listen_returned(sk, port_before, ret);
}

/// `inet_csk_listen_stop` is entered: the listener drops its accept queue next. Its port is read
/// from `inet_sport`, as `inet_num` is already 0 when closing returned it.
#[inline(always)]
pub fn before_listen_stop(sk: u64) {
    lifecycle::listener_stopping(sk, sock::source_port(sk));
}

/// `inet_csk_accept` returned the accepted socket (or NULL).
#[inline(always)]
pub fn after_accept(child: u64) {
    if child != 0 {
        lifecycle::claimed(child, How::Accept);
    }
}

/// `inet_put_port` (TCP) or `udp_lib_unhash` (UDP) is entered: the socket leaves the port table.
#[inline(always)]
pub fn port_table_left(sk: u64) {
    lifecycle::released(sk, sock::local_port(sk), Repeat::Final);
}

/// A TIME_WAIT socket takes over `sk`'s port.
#[inline(always)]
pub fn time_wait_began(sk: u64) {
    lifecycle::entered_time_wait(sk, sock::local_port(sk));
}
