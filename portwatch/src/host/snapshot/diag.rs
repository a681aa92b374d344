//! One sock_diag dump (NETLINK_SOCK_DIAG, `inet_diag_req_v2`): the sockets of one protocol and
//! address family in this network namespace, as `ss` asks for them, with an optional bytecode
//! filter the kernel runs on each socket before replying.

use std::{io, net::SocketAddr};

use netlink_packet_core::{
    DefaultNla, Emitable, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP, SOCK_DIAG_BY_FAMILY},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};

use crate::model::proto::Proto;

/// `INET_DIAG_REQ_BYTECODE`, the request attribute carrying a filter program.
const INET_DIAG_REQ_BYTECODE: u16 = 1;

/// The kernel sends dump replies in messages of at most 32 KiB; twice that never truncates.
const RECEIVE_BUFFER: usize = 64 * 1024;

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
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&NetlinkAddr::new(0, 0))?;
    socket.send(&request(proto, family, states, bytecode), 0)?;
    let mut sockets = Vec::new();
    let mut buffer = Vec::with_capacity(RECEIVE_BUFFER);
    loop {
        buffer.clear();
        let received = socket.recv(&mut buffer, 0)?;
        let mut offset = 0;
        while offset < received {
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(&buffer[offset..])
                .map_err(|err| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("sock_diag reply: {err}"),
                    )
                })?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                    sockets.extend(diagnosed(proto, &response.header));
                }
                NetlinkPayload::Done(done) if done.code < 0 => {
                    return Err(io::Error::from_raw_os_error(-done.code));
                }
                NetlinkPayload::Done(_) => return Ok(sockets),
                NetlinkPayload::Error(error) => {
                    return Err(io::Error::from_raw_os_error(-error.raw_code()));
                }
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
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
    // The crate's request type carries no attributes, so the filter is emitted after it.
    let filter = bytecode.map(|program| DefaultNla::new(INET_DIAG_REQ_BYTECODE, program.to_vec()));
    let body_len = request.buffer_len() + filter.as_ref().map_or(0, Emitable::buffer_len);
    let mut header = NetlinkHeader::default();
    header.message_type = SOCK_DIAG_BY_FAMILY;
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = 1;
    header.length = (header.buffer_len() + body_len) as u32;
    let mut message = vec![0; header.length as usize];
    header.emit(&mut message);
    let mut at = header.buffer_len();
    request.emit(&mut message[at..at + request.buffer_len()]);
    at += request.buffer_len();
    if let Some(filter) = filter {
        filter.emit(&mut message[at..]);
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
}
