//! The owned event model every sink consumes, decoded once from the kernel's [`RawEvent`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use portwatch_ebpf::{
    EventKind, FAMILY_INET6, FLAG_CLAIMER_UNSEEN, FLAG_TIME_WAIT, FLAG_TIME_WAIT_END, How,
    PROTO_TCP, PROTO_UDP, RawEvent,
};

use crate::model::{
    clock::Timestamp,
    proto::Proto,
    task::{Comm, Task},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Claim,
    Listen,
    Free,
    Fail,
    Held,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Claim,
        Kind::Listen,
        Kind::Free,
        Kind::Fail,
        Kind::Held,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Claim => "claim",
            Kind::Listen => "listen",
            Kind::Free => "free",
            Kind::Fail => "fail",
            Kind::Held => "held",
        }
    }
}

pub fn how_name(how: How) -> &'static str {
    match how {
        How::Bind => "bind",
        How::BindAny => "bind-any",
        How::Connect => "connect",
        How::Autobind => "autobind",
        How::Accept => "accept",
        How::Unknown => "unknown",
    }
}

/// `--audit`: what /proc said about the process when portwatch looked it up.
#[derive(Clone, Debug, PartialEq)]
pub enum Audit {
    Found(Box<ProcessInfo>),
    /// The process was gone (or its pid reused) before it could be looked up.
    Exited,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessInfo {
    pub exe: Option<String>,
    /// Arguments, NUL-separated in /proc, joined with spaces; bounded in length.
    pub cmdline: Option<String>,
    pub user: Option<String>,
    pub parent_comm: Option<String>,
    pub cgroup: Option<String>,
    /// The systemd unit (`nginx.service`) of a process in no container; a container is the
    /// event's own `container`, on every event.
    pub unit: Option<String>,
}

/// Who held a port when a claim on it failed.
#[derive(Clone, Debug, PartialEq)]
pub struct Holder {
    pub task: Option<Task>,
    pub local_addr: IpAddr,
    pub remote: Option<(IpAddr, u16)>,
    /// How the holder got the port; None when it held it before tracing began.
    pub how: Option<How>,
    /// When the holder claimed it, or when portwatch first saw it hold it.
    pub since: Timestamp,
    pub state: &'static str,
}

/// One port event, as printed.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub ts: Timestamp,
    pub kind: Kind,
    pub proto: Proto,
    pub local_addr: IpAddr,
    pub local_port: u16,
    /// Remote address and port, when the socket has a peer.
    pub remote: Option<(IpAddr, u16)>,
    /// None: no process holds the socket (a TIME_WAIT or kernel socket found at start-up).
    pub task: Option<Task>,
    pub uid: u32,
    /// Claim and fail: how the port was (to be) obtained. Free: how it had been claimed.
    pub how: Option<How>,
    /// Fail: the positive errno.
    pub errno: Option<i32>,
    /// Free: time since the claim, when the claim was seen.
    pub held_ns: Option<u64>,
    /// Free: the port passed to a TIME_WAIT socket and is still held.
    pub time_wait: bool,
    /// Free: a TIME_WAIT socket ended; the real release.
    pub time_wait_end: bool,
    /// False when the claim predates tracing and the identity could not be traced to a claimer.
    pub claimer_seen: bool,
    /// Held: the socket's state at start-up (`listen`, `established`...).
    pub state: Option<&'static str>,
    pub cgroup_id: Option<u64>,
    pub netns: Option<u32>,
    /// Fail with EADDRINUSE (or EADDRNOTAVAIL for one port): Some(None) when nobody in view held
    /// the port, None when the question does not apply.
    pub holder: Option<Option<Holder>>,
    /// Advice that goes with a failure, in one sentence.
    pub hint: Option<String>,
    /// `--audit` only.
    pub audit: Option<Audit>,
    /// Fail without a port: why the kernel found none (boxed: most events have none).
    pub exhaustion: Option<Box<crate::model::exhaustion::Exhaustion>>,
    /// The process's container, when it runs in one (shared: every event of a container
    /// carries the same lookup).
    pub container: Option<std::sync::Arc<crate::model::container::Container>>,
}

impl Event {
    pub fn family_name(&self) -> &'static str {
        match self.local_addr {
            IpAddr::V4(_) => "ipv4",
            IpAddr::V6(_) => "ipv6",
        }
    }

    /// Decodes a kernel record; None for records of a kind or protocol this version does not
    /// know (which a mismatched object file could produce).
    pub fn from_raw(raw: &RawEvent, ts: Timestamp) -> Option<Self> {
        let kind = match raw.kind {
            k if k == EventKind::Claim as u8 => Kind::Claim,
            k if k == EventKind::Listen as u8 => Kind::Listen,
            k if k == EventKind::Free as u8 => Kind::Free,
            k if k == EventKind::Fail as u8 => Kind::Fail,
            _ => return None,
        };
        let proto = match raw.proto {
            PROTO_TCP => Proto::Tcp,
            PROTO_UDP => Proto::Udp,
            _ => return None,
        };
        let v6 = raw.family == FAMILY_INET6;
        let local_addr = address(&raw.local_addr, v6);
        let remote_addr = address(&raw.remote_addr, v6);
        let remote = (raw.remote_port != 0).then_some((remote_addr, raw.remote_port));
        let how = How::from_u8(raw.how);
        Some(Event {
            ts,
            kind,
            proto,
            local_addr,
            local_port: raw.local_port,
            remote,
            task: Some(Task {
                pid: raw.pid,
                tid: raw.tid,
                ppid: raw.ppid,
                comm: Comm::from_kernel(&raw.comm),
                start_ns: raw.start_ns,
            }),
            uid: raw.uid,
            how: (how != How::Unknown).then_some(how),
            errno: (kind == Kind::Fail).then_some(raw.errno),
            held_ns: (kind == Kind::Free && raw.held_ns != 0).then_some(raw.held_ns),
            time_wait: raw.flags & FLAG_TIME_WAIT != 0,
            time_wait_end: raw.flags & FLAG_TIME_WAIT_END != 0,
            claimer_seen: raw.flags & FLAG_CLAIMER_UNSEEN == 0,
            state: None,
            cgroup_id: (raw.cgroup_id != 0).then_some(raw.cgroup_id),
            netns: (raw.netns != 0).then_some(raw.netns),
            holder: None,
            hint: None,
            audit: None,
            exhaustion: None,
            container: None,
        })
    }
}

fn address(bytes: &[u8; 16], v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    } else {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    }
}

/// The symbolic name of an errno, as users search for it ("Address already in use" is
/// EADDRINUSE).
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::EINTR => "EINTR",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EINVAL => "EINVAL",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ENOBUFS => "ENOBUFS",
        libc::EISCONN => "EISCONN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EALREADY => "EALREADY",
        libc::EINPROGRESS => "EINPROGRESS",
        _ => return format!("E{errno}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(kind: EventKind) -> RawEvent {
        RawEvent {
            ts_ns: 1,
            held_ns: 5_000,
            cgroup_id: 7,
            start_ns: 99,
            netns: 4026531840,
            pid: 42,
            tid: 43,
            uid: 1000,
            ppid: 1,
            errno: 98,
            local_port: 60312,
            remote_port: 0,
            family: portwatch_ebpf::FAMILY_INET,
            kind: kind as u8,
            how: How::Bind as u8,
            proto: PROTO_TCP,
            flags: FLAG_TIME_WAIT,
            _pad: [0; 6],
            local_addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            remote_addr: [0; 16],
            comm: *b"server\0\0\0\0\0\0\0\0\0\0",
        }
    }

    #[test]
    fn decodes_kind_specific_fields_only_where_they_belong() {
        let free = Event::from_raw(&raw(EventKind::Free), Timestamp::from_unix_nanos(0)).unwrap();
        assert_eq!(free.kind, Kind::Free);
        assert_eq!(free.held_ns, Some(5_000));
        assert_eq!(free.errno, None);
        assert!(free.time_wait && free.claimer_seen);
        let task = free.task.as_ref().unwrap();
        assert_eq!(
            (task.comm.as_str().as_ref(), task.pid, task.ppid),
            ("server", 42, 1)
        );
        assert_eq!(free.local_addr, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(free.remote, None);
        let fail = Event::from_raw(&raw(EventKind::Fail), Timestamp::from_unix_nanos(0)).unwrap();
        assert_eq!((fail.errno, fail.held_ns), (Some(98), None));
    }

    #[test]
    fn rejects_unknown_kinds_and_protocols() {
        let mut record = raw(EventKind::Claim);
        record.kind = 99;
        assert!(Event::from_raw(&record, Timestamp::from_unix_nanos(0)).is_none());
        let mut record = raw(EventKind::Claim);
        record.proto = 132;
        assert!(Event::from_raw(&record, Timestamp::from_unix_nanos(0)).is_none());
    }

    #[test]
    fn names_errnos() {
        assert_eq!(errno_name(libc::EADDRINUSE), "EADDRINUSE");
        assert_eq!(errno_name(4095), "E4095");
    }
}

/// Events for the unit tests of every layer that consumes them.
#[cfg(test)]
pub mod fixtures {
    use std::net::{IpAddr, Ipv4Addr};

    use portwatch_ebpf::How;

    use super::{Event, Kind};
    use crate::model::{clock::Timestamp, proto::Proto, task::Task};

    /// An event exercising every optional field, with a hostile process name.
    pub fn sample() -> Event {
        Event {
            ts: Timestamp::from_unix_nanos(1_795_669_141_123_456_789),
            kind: Kind::Free,
            proto: Proto::Tcp,
            local_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            local_port: 60312,
            remote: Some((IpAddr::V4(Ipv4Addr::LOCALHOST), 8080)),
            task: Some(Task {
                pid: 42,
                tid: 43,
                ppid: 1,
                comm: "we\"ird\n".into(),
                start_ns: 5,
            }),
            uid: 0,
            how: Some(How::Connect),
            errno: None,
            held_ns: Some(1500),
            time_wait: true,
            time_wait_end: false,
            claimer_seen: true,
            state: None,
            cgroup_id: Some(9),
            netns: Some(4026531840),
            holder: None,
            hint: None,
            audit: None,
            exhaustion: None,
            container: None,
        }
    }
}
