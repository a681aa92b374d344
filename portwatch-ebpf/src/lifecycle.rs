//! The socket/port state machine every backend feeds: claim, listen, fail, free, TIME_WAIT.
//!
//! Hooks differ per backend and kernel, and several of them can fire for one transition (a
//! socket's TCP state going to CLOSE and then its destruction, say). The per-socket record in
//! [`CLAIMS`] makes each transition report exactly once and lets frees name the claimer.

use portwatch_ebpf::{
    EventKind, FAMILY_INET, FAMILY_INET6, FLAG_CLAIMER_UNSEEN, FLAG_TIME_WAIT, FLAG_TIME_WAIT_END,
    How, PROTO_TCP,
};

use crate::{
    diag,
    emit::{self, Outcome, Requested},
    maps::{CLAIMS, Claim, ClaimState, LISTEN_STOPS, ListenStop, TIME_WAITS},
    sock,
};

const EADDRINUSE: i32 = 98;

/// The socket now holds a port the kernel (or the caller) chose. Reported once per socket.
#[inline(always)]
pub fn claimed(sk: u64, how: How) {
    let port = sock::local_port(sk);
    if port == 0 || !emit::port_watched(port) || already_held(sk, port) {
        return;
    }
    claimed_by(sk, port, how, emit::current_claim(port, how as u8, 0));
}

/// As [`claimed`], for a claim found after the fact: `port` is the one the socket held, and
/// `claimer` the identity its connect recorded on entry (the current task is a softirq's).
#[inline(always)]
pub fn claimed_earlier(sk: u64, port: u16, how: How, claimer: Claim) {
    if port == 0 || !emit::port_watched(port) || already_held(sk, port) {
        return;
    }
    claimed_by(
        sk,
        port,
        how,
        Claim {
            port,
            how: how as u8,
            ..claimer
        },
    );
}

/// Whether the socket's claim of `port` was reported already (several hooks can see one claim).
/// A held claim of another port is not this socket's: it is left by an earlier socket at the same
/// address whose release no hook saw (released while portwatch was still attaching, or in a
/// program run the kernel skipped), and is overwritten rather than allowed to hide this claim
/// and misname its free.
#[inline(always)]
fn already_held(sk: u64, port: u16) -> bool {
    let Some(held) = CLAIMS.get_ptr(sk) else {
        return false;
    };
    // SAFETY: map value pointers stay valid for the duration of the program.
    let held = unsafe { *held };
    if held.state != ClaimState::Held {
        return false;
    }
    if held.port != port {
        diag::stale_claim(held.port, port);
        return false;
    }
    true
}

#[inline(always)]
fn claimed_by(sk: u64, port: u16, how: How, claim: Claim) {
    let (proto, family) = (sock::protocol(sk), sock::family(sk));
    if !emit::socket_watched(proto, family) {
        if family != FAMILY_INET && family != FAMILY_INET6 {
            diag::unknown_family(port, family);
        }
        return;
    }
    if let Err(errno) = CLAIMS.insert(sk, claim, 0) {
        diag::claim_not_recorded(port, errno);
    }
    emit::submit(
        &Outcome {
            how: how as u8,
            ..Outcome::new(EventKind::Claim, port, proto, family, sk)
        },
        &claim,
    );
}

/// A TCP socket started listening.
#[inline(always)]
pub fn listening(sk: u64) {
    let port = sock::local_port(sk);
    let (proto, family) = (sock::protocol(sk), sock::family(sk));
    if port == 0 || !emit::port_watched(port) || !emit::socket_watched(proto, family) {
        return;
    }
    emit::submit(
        &Outcome::new(EventKind::Listen, port, proto, family, sk),
        &emit::current_claim(port, 0, 0),
    );
}

/// A bind returned: the socket has the port it asked for (or, asking for 0, one the kernel
/// chose), or the bind failed. `requested` is where the caller's address can be read.
#[inline(always)]
pub fn bind_returned(sk: u64, requested_port: u16, requested: Requested, ret: i32) {
    let how = if requested_port == 0 {
        How::BindAny
    } else {
        How::Bind
    };
    if ret == 0 {
        claimed(sk, how);
    } else {
        failed(sk, how, -ret, requested_port, requested, Requested::Nothing);
    }
}

/// A listen returned. `port_before` is the socket's port before it (0: unbound, so a success
/// autobound one). Listening needs the port in the listening hash, which fails with EADDRINUSE
/// when another listener holds it (both bound with SO_REUSEADDR) or no port is left to autobind.
#[inline(always)]
pub fn listen_returned(sk: u64, port_before: u16, ret: i32) {
    if ret == 0 {
        if port_before == 0 {
            claimed(sk, How::Autobind);
        }
        listening(sk);
    } else if ret == -EADDRINUSE {
        let how = if port_before == 0 {
            How::Autobind
        } else {
            How::Bind
        };
        failed(
            sk,
            how,
            EADDRINUSE,
            port_before,
            Requested::Nothing,
            Requested::Nothing,
        );
    }
}

/// A bind, connect or autobind could not get a port. `port` is the one asked for, 0 when the
/// kernel was to choose; `requested` the address a failed bind asked for; `destination` the
/// address a failed connect asked for, when the socket no longer (or never did) hold it.
#[inline(always)]
pub fn failed(
    sk: u64,
    how: How,
    errno: i32,
    port: u16,
    requested: Requested,
    destination: Requested,
) {
    let (proto, family) = (sock::protocol(sk), sock::family(sk));
    if !emit::port_watched(port) || !emit::socket_watched(proto, family) {
        return;
    }
    emit::submit(
        &Outcome {
            how: how as u8,
            errno,
            requested,
            destination,
            ..Outcome::new(EventKind::Fail, port, proto, family, sk)
        },
        &emit::current_claim(port, how as u8, 0),
    );
}

/// Whether a later hook will see the same socket release its port again.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Repeat {
    /// This is the last hook for the socket: forget it.
    Final,
    /// A later hook (destruction after a CLOSE transition) will fire: remember it was reported.
    Expected,
}

/// The socket gave its port back. `port_now` is what the hook can still read from the socket,
/// used only when the claim was not seen.
#[inline(always)]
pub fn released(sk: u64, port_now: u16, repeat: Repeat) {
    released_with(sk, port_now, repeat, 0);
}

/// A TCP socket handed its port to a TIME_WAIT socket: the port stays held, and the end of
/// TIME_WAIT, found by connection, is the real release.
#[inline(always)]
pub fn entered_time_wait(sk: u64, port_now: u16) {
    if let Some(claim) = released_with(sk, port_now, Repeat::Expected, FLAG_TIME_WAIT) {
        let _ = TIME_WAITS.insert(sock::connection(sk, claim.port), claim, 0);
    }
}

/// A TIME_WAIT socket ended: the port is really free now.
#[inline(always)]
pub fn left_time_wait(tw: u64) {
    let port = sock::local_port(tw);
    let family = sock::family(tw);
    if port == 0 || !emit::port_watched(port) || !emit::socket_watched(PROTO_TCP as u16, family) {
        return;
    }
    let connection = sock::connection(tw, port);
    let (claim, claimed_at) = match TIME_WAITS.get_ptr(connection) {
        Some(claim) => {
            // SAFETY: map value pointers stay valid for the duration of the program.
            let claim = unsafe { *claim };
            let _ = TIME_WAITS.remove(connection);
            // A claim made before tracing carries the TIME_WAIT start as its time: no held_ns.
            let seen = claim.flags & FLAG_CLAIMER_UNSEEN == 0;
            (claim, if seen { claim.ts_ns } else { 0 })
        }
        None => (emit::current_claim(port, 0, FLAG_CLAIMER_UNSEEN), 0),
    };
    emit::submit(
        &Outcome {
            how: claim.how,
            flags: FLAG_TIME_WAIT_END,
            claimed_at,
            ..Outcome::new(EventKind::Free, port, PROTO_TCP as u16, family, tw)
        },
        &claim,
    );
}

/// Reports a free once per socket and returns the claim it reported, with `flags` added.
#[inline(always)]
fn released_with(sk: u64, port_now: u16, repeat: Repeat, flags: u8) -> Option<Claim> {
    // A socket whose port reads unwatched never made a claim worth a map lookup.
    if port_now != 0 && !emit::port_watched(port_now) {
        return None;
    }
    let (claim, claimed_at) = match CLAIMS.get_ptr(sk) {
        // SAFETY: map value pointers stay valid for the duration of the program.
        Some(claim) => match unsafe { (*claim).state } {
            // SAFETY: as above.
            ClaimState::Held => (unsafe { *claim }, unsafe { (*claim).ts_ns }),
            _ => {
                if repeat == Repeat::Final {
                    let _ = CLAIMS.remove(sk);
                }
                return None;
            }
        },
        None => {
            if port_now == 0 || !emit::port_watched(port_now) || left_accept_queue(sk, port_now) {
                return None;
            }
            (
                emit::current_claim(port_now, How::Unknown as u8, FLAG_CLAIMER_UNSEEN),
                0,
            )
        }
    };
    let (proto, family) = (sock::protocol(sk), sock::family(sk));
    if !emit::socket_watched(proto, family) {
        return None;
    }
    match repeat {
        Repeat::Final => {
            let _ = CLAIMS.remove(sk);
        }
        Repeat::Expected => {
            let _ = CLAIMS.insert(
                sk,
                Claim {
                    state: ClaimState::Reported,
                    ..claim
                },
                0,
            );
        }
    }
    emit::submit(
        &Outcome {
            how: claim.how,
            flags,
            claimed_at,
            ..Outcome::new(EventKind::Free, claim.port, proto, family, sk)
        },
        &claim,
    );
    Some(claim)
}

/// A listener on `port` is being stopped by this thread: the connections still waiting in its
/// accept queue are destroyed next, in the same call. They never held a port of their own (they
/// share the listener's, and nobody accepted them), so their destruction is no free.
#[inline(always)]
pub fn listener_stopping(listener: u64, port: u16) {
    if port != 0 && emit::port_watched(port) {
        let stop = ListenStop {
            listener,
            port,
            _pad: [0; 6],
        };
        let _ = LISTEN_STOPS.insert(current_tid(), stop, 0);
    }
}

/// The listener this thread was stopping is destroyed, so its accept queue is gone: the syscall
/// hooks see no end of the stop itself.
#[inline(always)]
pub fn listener_destroyed(listener: u64) {
    if this_threads_listen_stop().is_some_and(|stop| stop.listener == listener) {
        let _ = LISTEN_STOPS.remove(current_tid());
    }
}

/// The kernel's listener stop (`inet_csk_listen_stop`) returned: its accept queue is gone.
#[inline(always)]
pub fn listener_stopped() {
    let _ = LISTEN_STOPS.remove(current_tid());
}

/// Whether `sk`, a socket with no claim seen on `port`, is a connection this thread is dropping
/// from the accept queue of a listener it is stopping.
#[inline(always)]
fn left_accept_queue(sk: u64, port: u16) -> bool {
    this_threads_listen_stop().is_some_and(|stop| stop.port == port && stop.listener != sk)
}

#[inline(always)]
fn this_threads_listen_stop() -> Option<ListenStop> {
    let stop = LISTEN_STOPS.get_ptr(current_tid())?;
    // SAFETY: map value pointers stay valid for the duration of the program.
    Some(unsafe { *stop })
}

#[inline(always)]
fn current_tid() -> u32 {
    aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32
}
