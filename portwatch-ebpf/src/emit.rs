//! The one place that filters, fills identity, reserves ring-buffer space and submits.

use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
    bpf_get_current_task, bpf_get_current_uid_gid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
    bpf_probe_read_kernel_buf, bpf_probe_read_user_buf,
};
use portwatch_ebpf::{EventKind, FAMILY_INET, FAMILY_INET6, PROTO_TCP, PROTO_UDP, RawEvent};

use crate::{
    diag,
    globals::global,
    maps::{Claim, ClaimState, EVENTS, LOST, WATCHED_PORTS},
    sock,
};

/// Whether events on this port reach userspace. Port 0 stands for "the kernel could not choose
/// one", which only matters to a user watching every port or an ephemeral range.
#[inline(always)]
pub fn port_watched(port: u16) -> bool {
    if global!(SETTINGS.all_ports) != 0 {
        return true;
    }
    if port == 0 {
        return global!(SETTINGS.portless_failures) != 0;
    }
    match WATCHED_PORTS.get(port as u32 >> 6) {
        Some(word) => word & (1u64 << (port & 63)) != 0,
        None => false,
    }
}

/// Whether the protocol and address family are traced at all.
#[inline(always)]
pub fn socket_watched(proto: u16, family: u16) -> bool {
    let proto_ok = if proto == PROTO_TCP as u16 {
        global!(SETTINGS.tcp) != 0
    } else if proto == PROTO_UDP as u16 {
        global!(SETTINGS.udp) != 0
    } else {
        false
    };
    let family_ok = match family {
        FAMILY_INET => global!(SETTINGS.ipv4) != 0,
        FAMILY_INET6 => global!(SETTINGS.ipv6) != 0,
        _ => false,
    };
    proto_ok && family_ok
}

/// A claim record describing the current task, for a socket claiming `port` now.
#[inline(always)]
pub fn current_claim(port: u16, how: u8, flags: u8) -> Claim {
    // SAFETY: these helpers have no preconditions.
    let (pid_tgid, uid_gid, cgroup_id, now) = unsafe {
        (
            bpf_get_current_pid_tgid(),
            bpf_get_current_uid_gid(),
            bpf_get_current_cgroup_id(),
            bpf_ktime_get_ns(),
        )
    };
    // SAFETY: the helper has no preconditions; it returns the current task's address.
    let task = unsafe { bpf_get_current_task() };
    let parent: u64 = sock::read(task, global!(OFFSETS.task_real_parent));
    if parent == 0 {
        diag::parent_unreadable((pid_tgid >> 32) as u32);
    }
    let leader: u64 = sock::read(task, global!(OFFSETS.task_group_leader));
    Claim {
        ts_ns: now,
        cgroup_id,
        start_ns: sock::read(leader, global!(OFFSETS.task_start_boottime)),
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        uid: uid_gid as u32,
        ppid: sock::read(parent, global!(OFFSETS.task_tgid)),
        port,
        how,
        state: ClaimState::Held,
        flags,
        _pad: [0; 3],
        comm: bpf_get_current_comm().unwrap_or_default(),
    }
}

/// What an event says beyond the identity it carries.
pub struct Outcome {
    pub kind: u8,
    pub how: u8,
    pub flags: u8,
    pub errno: i32,
    pub port: u16,
    pub proto: u16,
    pub family: u16,
    /// The socket to read addresses from, or 0 when there is none to read.
    pub sk: u64,
    /// For failed binds: the address the caller asked for, which the socket never got.
    pub requested: Requested,
    /// For failed connects: the address connected to, when the socket does not hold it (the
    /// kernel never set it, or undid it before the hook ran).
    pub destination: Requested,
    /// Set on frees of a seen claim: when the claim happened.
    pub claimed_at: u64,
}

impl Outcome {
    /// An event with nothing beyond what every event has; callers set the rest.
    #[inline(always)]
    pub fn new(kind: EventKind, port: u16, proto: u16, family: u16, sk: u64) -> Self {
        Self {
            kind: kind as u8,
            how: 0,
            flags: 0,
            errno: 0,
            port,
            proto,
            family,
            sk,
            requested: Requested::Nothing,
            destination: Requested::Nothing,
            claimed_at: 0,
        }
    }
}

/// Where a caller's `struct sockaddr` lives, if there is one to read.
#[derive(Clone, Copy)]
pub enum Requested {
    Nothing,
    /// The kernel's copy (kprobe and fentry hooks run after the syscall copied it in).
    Kernel(u64),
    /// The caller's own memory (syscall hooks).
    User(u64),
}

/// Copies `out.len()` bytes at `offset` into a caller's sockaddr; false when there is none or
/// the read faults.
#[inline(always)]
fn read_sockaddr(at: Requested, offset: u64, out: &mut [u8]) -> bool {
    // SAFETY: the probe-read helpers validate the source address and fail instead of faulting;
    // they write at most `out.len()` bytes.
    unsafe {
        match at {
            Requested::Kernel(addr) => {
                bpf_probe_read_kernel_buf((addr + offset) as *const u8, out).is_ok()
            }
            Requested::User(addr) => {
                bpf_probe_read_user_buf((addr + offset) as *const u8, out).is_ok()
            }
            Requested::Nothing => false,
        }
    }
}

/// Copies the IP address out of a sockaddr of the socket's family: `sin_addr` at byte 4,
/// `sin6_addr` at byte 8.
#[inline(always)]
fn read_requested_address(requested: Requested, family: u16, out: &mut [u8; 16]) {
    if family == FAMILY_INET6 {
        read_sockaddr(requested, 8, &mut out[..]);
    } else {
        read_sockaddr(requested, 4, &mut out[..4]);
    }
}

/// Copies the address and port a connect asked for into the event. The sockaddr's own family
/// decides its layout: an IPv6 socket may connect to an `AF_INET` address (UDP does), which is
/// then shown as the IPv4-mapped address the socket would use.
#[inline(always)]
fn read_destination(destination: Requested, family: u16, event: &mut RawEvent) {
    let mut head = [0u8; 4];
    if !read_sockaddr(destination, 0, &mut head) {
        return;
    }
    let sa_family = u16::from_ne_bytes([head[0], head[1]]);
    let mut addr = [0u8; 16];
    let read = match sa_family {
        FAMILY_INET6 if family == FAMILY_INET6 => read_sockaddr(destination, 8, &mut addr),
        FAMILY_INET if family == FAMILY_INET6 => {
            addr[10] = 0xff;
            addr[11] = 0xff;
            read_sockaddr(destination, 4, &mut addr[12..])
        }
        FAMILY_INET => read_sockaddr(destination, 4, &mut addr[..4]),
        _ => false,
    };
    if read {
        event.remote_addr = addr;
        event.remote_port = u16::from_be_bytes([head[2], head[3]]);
    }
}

/// What one event takes in the ring: its 8-byte record header, then the event padded to 8 bytes.
const RECORD_BYTES: u64 = 8 + (core::mem::size_of::<RawEvent>() as u64).div_ceil(8) * 8;

/// Reserves and submits one event; counts it as lost when the ring buffer is full.
#[inline(always)]
pub fn submit(outcome: &Outcome, who: &Claim) {
    let Some(mut entry) = EVENTS.reserve::<RawEvent>(0) else {
        // SAFETY: the helper has no preconditions.
        let cpu = unsafe { bpf_get_smp_processor_id() };
        // Userspace gives the array a slot per possible CPU; slot 0 takes any count beyond.
        if let Some(lost) = LOST.get_ptr_mut(cpu).or_else(|| LOST.get_ptr_mut(0)) {
            // SAFETY: the pointer is a slot of the array, valid and aligned; each CPU counts
            // into its own, so no two programs write it at once.
            unsafe { *lost += 1 };
        }
        return;
    };
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let event = entry.write(RawEvent {
        ts_ns: now,
        held_ns: if outcome.claimed_at != 0 {
            now.saturating_sub(outcome.claimed_at)
        } else {
            0
        },
        cgroup_id: who.cgroup_id,
        start_ns: who.start_ns,
        netns: 0,
        pid: who.pid,
        tid: who.tid,
        uid: who.uid,
        ppid: who.ppid,
        errno: outcome.errno,
        local_port: outcome.port,
        remote_port: 0,
        family: outcome.family,
        kind: outcome.kind,
        how: outcome.how,
        proto: outcome.proto as u8,
        flags: outcome.flags | who.flags,
        _pad: [0; 6],
        local_addr: [0; 16],
        remote_addr: [0; 16],
        comm: who.comm,
    });
    if outcome.sk != 0 {
        sock::read_endpoints(
            outcome.sk,
            outcome.family,
            sock::Endpoints {
                local_addr: &mut event.local_addr,
                remote_addr: &mut event.remote_addr,
                remote_port: &mut event.remote_port,
                netns: &mut event.netns,
            },
        );
    }
    // After the socket's own endpoints: a failed bind's socket never got the address it asked
    // for, so the request is what the event shows.
    read_requested_address(outcome.requested, outcome.family, &mut event.local_addr);
    read_destination(outcome.destination, outcome.family, event);
    // Batched delivery: the reader polls on a short timer and is woken only each time the unread
    // data passes another multiple of `wakeup_bytes`, so a busy ring costs it (and the CPUs that
    // send the wakeup interrupt) one wakeup per batch, however far behind it is.
    let unread = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let every = global!(SETTINGS.wakeup_bytes) as u64;
    let wakeup = if every != 0 && unread / every != unread.saturating_sub(RECORD_BYTES) / every {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(wakeup as u64);
}
