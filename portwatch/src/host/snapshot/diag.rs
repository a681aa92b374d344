//! One sock_diag dump (NETLINK_SOCK_DIAG): the sockets of one protocol in this network
//! namespace, as `ss` asks for them, with an optional bytecode filter the kernel runs on each
//! socket before replying. A dump asks for one address family (`inet_diag_req_v2`), or, for
//! TCP, for both at once through the older `TCPDIAG_GETSOCK` request.

use std::{io, net::SocketAddr};

use netlink_packet_core::{
    DefaultNla, Emitable, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NetlinkBuffer,
    NetlinkHeader, Parseable,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, AF_UNSPEC, IPPROTO_TCP, IPPROTO_UDP, SOCK_DIAG_BY_FAMILY},
    inet::{ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};

use crate::model::proto::Proto;

/// `INET_DIAG_REQ_BYTECODE`, the request attribute carrying a filter program.
const INET_DIAG_REQ_BYTECODE: u16 = 1;

/// `TCPDIAG_GETSOCK`: the request sock_diag kept from before `SOCK_DIAG_BY_FAMILY`. The kernel
/// answers it with `sdiag_family = AF_UNSPEC` (`inet_diag_dump_compat` in
/// net/ipv4/inet_diag.c), so one walk of the TCP hash tables returns IPv4 and IPv6 sockets
/// alike. A walk costs about the same however few sockets a namespace has: the established
/// table is shared by every namespace unless `tcp_child_ehash_entries` gives it one of its own.
const TCPDIAG_GETSOCK: u16 = 18;

/// `struct inet_diag_req`, the body of a `TCPDIAG_GETSOCK` request: family, two address
/// lengths and the extensions (4 bytes), `struct inet_diag_sockid` (48), states and tables (8).
const INET_DIAG_REQ_LEN: usize = 60;

/// The kernel sends dump replies in messages of at most 32 KiB; twice that never truncates.
const RECEIVE_BUFFER: usize = 64 * 1024;

/// `NLMSG_MIN_TYPE`: message types below it are netlink's own.
const NLMSG_MIN_TYPE: u16 = 0x10;

/// A socket as sock_diag reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnosed {
    pub proto: Proto,
    /// The kernel's state number (`TCP_LISTEN` = 10...; UDP uses 7 unconnected, 1 connected).
    pub state: u8,
    pub local: SocketAddr,
    /// None when the remote port is 0 (no peer).
    pub remote: Option<SocketAddr>,
    pub uid: u32,
    /// 0 for sockets no file refers to (TIME_WAIT, request and orphaned sockets).
    pub inode: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        }
    }
}

/// Dumps the sockets of `proto` and `family` in any of `states` (a bitmask of `1 << state`)
/// that pass `bytecode` (None: every socket).
pub fn dump(
    proto: Proto,
    family: Family,
    states: u32,
    bytecode: Option<&[u8]>,
) -> io::Result<Vec<Diagnosed>> {
    exchange(proto, &request(proto, family, states, bytecode))
}

/// Dumps the TCP sockets of both families in one walk (see [`TCPDIAG_GETSOCK`]). An error
/// means the caller should ask per family, whose errors say what is missing: kernels without
/// the inet_diag module answer this request `EOPNOTSUPP`.
pub fn dump_tcp_every_family(states: u32, bytecode: Option<&[u8]>) -> io::Result<Vec<Diagnosed>> {
    exchange(Proto::Tcp, &tcp_every_family_request(states, bytecode))
}

/// Sends one dump request and reads its replies to the end.
fn exchange(proto: Proto, request: &[u8]) -> io::Result<Vec<Diagnosed>> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&NetlinkAddr::new(0, 0))?;
    socket.send(request, 0)?;
    let mut sockets = Vec::new();
    let mut buffer = Vec::with_capacity(RECEIVE_BUFFER);
    loop {
        buffer.clear();
        let received = socket.recv(&mut buffer, 0)?;
        let mut rest = &buffer[..received];
        while !rest.is_empty() {
            let message = NetlinkBuffer::new_checked(rest).map_err(invalid)?;
            let length = (message.length() as usize).min(rest.len());
            let payload = message.payload();
            let code = || {
                payload
                    .get(..4)
                    .and_then(|code| code.try_into().ok())
                    .map_or(0, i32::from_ne_bytes)
            };
            match message.message_type() {
                // A dump's last message carries its result.
                NLMSG_DONE if code() < 0 => {
                    return Err(io::Error::from_raw_os_error(-code()));
                }
                NLMSG_DONE => return Ok(sockets),
                NLMSG_ERROR if code() != 0 => {
                    return Err(io::Error::from_raw_os_error(-code()));
                }
                // The reply's own messages; below that, netlink's (no-op, acknowledgement).
                kind if kind >= NLMSG_MIN_TYPE => sockets.extend(diagnosed(
                    proto,
                    &InetResponseHeader::parse(payload).map_err(invalid)?,
                )),
                _ => {}
            }
            if length == 0 {
                break;
            }
            // Messages are 4-byte aligned.
            rest = &rest[length.next_multiple_of(4).min(rest.len())..];
        }
    }
}

fn invalid(err: netlink_packet_core::DecodeError) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("sock_diag reply: {err}"),
    )
}

fn request(proto: Proto, family: Family, states: u32, bytecode: Option<&[u8]>) -> Vec<u8> {
    let request = InetRequest {
        family: match family {
            Family::Ipv4 => AF_INET,
            Family::Ipv6 => AF_INET6,
        },
        protocol: match proto {
            Proto::Tcp => IPPROTO_TCP,
            Proto::Udp => IPPROTO_UDP,
        },
        extensions: ExtensionFlags::empty(),
        // The crate names states up to TCP_CLOSING; newer ones (NEW_SYN_RECV, BOUND_INACTIVE)
        // are bits the kernel reads all the same.
        states: StateFlags::from_bits_retain(states),
        socket_id: match family {
            Family::Ipv4 => SocketId::new_v4(),
            Family::Ipv6 => SocketId::new_v6(),
        },
    };
    let mut body = vec![0; request.buffer_len()];
    request.emit(&mut body);
    // The crate's request type carries no attributes, so the filter is emitted after it.
    message(SOCK_DIAG_BY_FAMILY, &body, bytecode)
}

fn tcp_every_family_request(states: u32, bytecode: Option<&[u8]>) -> Vec<u8> {
    let mut body = [0; INET_DIAG_REQ_LEN];
    // The family is ignored (the kernel asks for AF_UNSPEC); the socket id stays zero, which
    // matches every socket in a dump.
    body[0] = AF_UNSPEC;
    body[52..56].copy_from_slice(&states.to_ne_bytes());
    message(TCPDIAG_GETSOCK, &body, bytecode)
}

/// A dump request: the netlink header, the fixed request, then the filter as an attribute.
fn message(kind: u16, body: &[u8], bytecode: Option<&[u8]>) -> Vec<u8> {
    let filter = bytecode.map(|program| DefaultNla::new(INET_DIAG_REQ_BYTECODE, program.to_vec()));
    let mut header = NetlinkHeader::default();
    header.message_type = kind;
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = 1;
    header.length =
        (header.buffer_len() + body.len() + filter.as_ref().map_or(0, Emitable::buffer_len)) as u32;
    let mut message = vec![0; header.length as usize];
    header.emit(&mut message);
    let at = header.buffer_len();
    message[at..at + body.len()].copy_from_slice(body);
    if let Some(filter) = filter {
        filter.emit(&mut message[at + body.len()..]);
    }
    message
}

fn diagnosed(
    proto: Proto,
    header: &netlink_packet_sock_diag::inet::InetResponseHeader,
) -> Option<Diagnosed> {
    let id = &header.socket_id;
    let local = SocketAddr::new(id.source_address, id.source_port);
    Some(Diagnosed {
        proto,
        state: header.state,
        local,
        remote: (id.destination_port != 0)
            .then(|| SocketAddr::new(id.destination_address, id.destination_port)),
        uid: header.uid,
        inode: header.inode,
    })
    .filter(|socket| socket.local.port() != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_carries_the_filter_after_the_fixed_part() {
        let message = request(Proto::Tcp, Family::Ipv6, 1 << 10, Some(&[1, 4, 8, 0]));
        // nlmsghdr (16) + inet_diag_req_v2 (56) + attribute header (4) + program (4).
        assert_eq!(message.len(), 80);
        assert_eq!(u32::from_ne_bytes(message[0..4].try_into().unwrap()), 80);
        assert_eq!(u16::from_ne_bytes(message[4..6].try_into().unwrap()), 20);
        assert_eq!((message[16], message[17]), (AF_INET6, IPPROTO_TCP));
        assert_eq!(
            u32::from_ne_bytes(message[20..24].try_into().unwrap()),
            1 << 10
        );
        assert_eq!(u16::from_ne_bytes(message[72..74].try_into().unwrap()), 8);
        assert_eq!(u16::from_ne_bytes(message[74..76].try_into().unwrap()), 1);
        assert_eq!(&message[76..], &[1, 4, 8, 0]);
    }

    #[test]
    fn the_request_for_every_family_is_the_older_fixed_part() {
        let message = tcp_every_family_request(1 << 10, Some(&[1, 4, 8, 0]));
        // nlmsghdr (16) + inet_diag_req (60) + attribute header (4) + program (4).
        assert_eq!(message.len(), 84);
        assert_eq!(u16::from_ne_bytes(message[4..6].try_into().unwrap()), 18);
        assert_eq!(message[16], AF_UNSPEC);
        assert_eq!(
            u32::from_ne_bytes(message[68..72].try_into().unwrap()),
            1 << 10
        );
        assert_eq!(u16::from_ne_bytes(message[78..80].try_into().unwrap()), 1);
        assert_eq!(&message[80..], &[1, 4, 8, 0]);
    }
}
