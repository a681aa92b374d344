//! A socket's state, defined once: the holder table, pressure, the exhaustion explanation and
//! the metrics use this type, and its name is the one word every output prints for it.
//!
//! The start-up snapshot (and `who`) still carry states as words; they become this type where
//! they enter the holder table ([`SocketState::from_name`]).

use crate::model::proto::Proto;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SocketState {
    Listen,
    SynSent,
    SynRecv,
    Established,
    FinWait1,
    FinWait2,
    CloseWait,
    Closing,
    LastAck,
    TimeWait,
    /// TCP, bound and neither listening nor connected (the kernel's `TCP_BOUND_INACTIVE`).
    BoundInactive,
    /// UDP with a peer.
    Connected,
    /// UDP without a peer.
    Unconnected,
    Unknown,
}

impl SocketState {
    const ALL: [SocketState; 14] = [
        SocketState::Listen,
        SocketState::SynSent,
        SocketState::SynRecv,
        SocketState::Established,
        SocketState::FinWait1,
        SocketState::FinWait2,
        SocketState::CloseWait,
        SocketState::Closing,
        SocketState::LastAck,
        SocketState::TimeWait,
        SocketState::BoundInactive,
        SocketState::Connected,
        SocketState::Unconnected,
        SocketState::Unknown,
    ];

    /// The word printed for the state: `ss`'s, lowercased, with `_` for spaces.
    pub fn name(self) -> &'static str {
        match self {
            SocketState::Listen => "listen",
            SocketState::SynSent => "syn_sent",
            SocketState::SynRecv => "syn_recv",
            SocketState::Established => "established",
            SocketState::FinWait1 => "fin_wait1",
            SocketState::FinWait2 => "fin_wait2",
            SocketState::CloseWait => "close_wait",
            SocketState::Closing => "closing",
            SocketState::LastAck => "last_ack",
            SocketState::TimeWait => "time_wait",
            SocketState::BoundInactive => "bound_inactive",
            SocketState::Connected => "connected",
            SocketState::Unconnected => "unconnected",
            SocketState::Unknown => "unknown",
        }
    }

    /// The state a word names (the snapshot's words are these names); `Unknown` otherwise.
    pub fn from_name(name: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|state| state.name() == name)
            .unwrap_or(SocketState::Unknown)
    }

    /// The state of a socket that just got its port: connected (or accepted) TCP sockets are
    /// established, other TCP sockets bound; UDP is connected when it has a peer.
    pub fn claimed(proto: Proto, connected: bool) -> Self {
        match (proto, connected) {
            (Proto::Tcp, true) => SocketState::Established,
            (Proto::Tcp, false) => SocketState::BoundInactive,
            (Proto::Udp, true) => SocketState::Connected,
            (Proto::Udp, false) => SocketState::Unconnected,
        }
    }

    /// Which holder a failed bind most likely ran into: a listener, then any other full
    /// socket, then a TIME_WAIT one (SO_REUSEADDR lets a bind pass those).
    pub fn blocking_rank(self) -> u8 {
        match self {
            SocketState::Listen => 0,
            SocketState::TimeWait => 2,
            _ => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_reads_back_as_its_state() {
        for state in SocketState::ALL {
            assert_eq!(SocketState::from_name(state.name()), state);
        }
        assert_eq!(SocketState::from_name("nonsense"), SocketState::Unknown);
    }
}
