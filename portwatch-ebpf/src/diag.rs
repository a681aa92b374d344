//! Rare states the kernel programs do not expect, reported through aya-log when portwatch runs
//! with `--debug-kernel`, so that a user on an unusual kernel can send a useful report.
//!
//! Without the flag userspace freezes aya-log's level global (`AYA_LOG_LEVEL`, read-only data)
//! to 0 before loading, the verifier sees every branch below as never taken, and none of this
//! runs. The log calls ignore their context argument, so they take `&()` and can sit in helpers
//! shared by every kind of program. They name no socket address: in tp_btf and fentry programs a
//! socket is a typed pointer, which the verifier will not let a formatter take apart.

use aya_log_ebpf::{debug, warn};

/// A socket reached the state machine with a family the hooks should never pass on.
#[inline(always)]
pub fn unknown_family(port: u16, family: u16) {
    warn!(
        &(),
        "a socket on port {} has address family {}, neither AF_INET nor AF_INET6", port, family
    );
}

/// The claim map refused an insert (LRU maps evict instead, so this is a kernel out of memory).
#[inline(always)]
pub fn claim_not_recorded(port: u16, errno: i32) {
    warn!(
        &(),
        "a claim of port {} was not recorded (map insert error {})", port, errno
    );
}

/// A held claim of another port sat at a new socket's address: some release was never seen.
#[inline(always)]
pub fn stale_claim(stale_port: u16, port: u16) {
    warn!(
        &(),
        "a socket claiming port {} sits where an unreleased claim of port {} was recorded",
        port,
        stale_port
    );
}

/// A bind failed, but the descriptor its entry named no longer leads to a socket.
#[inline(always)]
pub fn unpaired_bind_exit(fd: u32, errno: i32) {
    warn!(
        &(),
        "bind on fd {} failed with errno {}, but the fd no longer resolves to a socket", fd, errno
    );
}

/// A task's parent could not be read (the probe read faulted), so events carry ppid 0.
#[inline(always)]
pub fn parent_unreadable(pid: u32) {
    warn!(&(), "pid {}: task->real_parent could not be read", pid);
}

/// A close from FIN_WAIT2 or CLOSING armed no TIME_WAIT timer: the TIME_WAIT table was full, or
/// the timer went unseen; the port is reported free at once.
#[inline(always)]
pub fn no_time_wait(port: u16) {
    debug!(
        &(),
        "a socket closed from FIN_WAIT2/CLOSING on port {} without a TIME_WAIT timer", port
    );
}
