//! Sinks: the printers, which write decoded events to any `Write`, and the metrics. None knows
//! where events come from. Output is buffered by the caller and flushed when the stream goes idle.

mod json;
mod metrics;
mod table;

use std::io;

pub use json::JsonSink;
pub use metrics::MetricsSink;
pub use table::TableSink;

use crate::{clock::Timestamp, event::Event};

pub trait Sink {
    fn event(&mut self, event: &Event) -> io::Result<()>;
    /// `count` events were dropped because the ring buffer was full.
    fn lost(&mut self, ts: Timestamp, count: u64) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()>;
}

/// Hands every event to several sinks in turn, so the printer and the metrics see one stream.
pub struct FanOut(pub Vec<Box<dyn Sink>>);

impl Sink for FanOut {
    fn event(&mut self, event: &Event) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|sink| sink.event(event))
    }

    fn lost(&mut self, ts: Timestamp, count: u64) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|sink| sink.lost(ts, count))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|sink| sink.flush())
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use portwatch_ebpf::How;

    use crate::{
        clock::Timestamp,
        event::{Event, Kind, Proto},
    };

    /// An event exercising every optional field, with a hostile process name.
    pub fn sample() -> Event {
        Event {
            ts: Timestamp::from_unix_nanos(1_795_669_141_123_456_789),
            kind: Kind::Free,
            proto: Proto::Tcp,
            local_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            local_port: 60312,
            remote: Some((IpAddr::V4(Ipv4Addr::LOCALHOST), 8080)),
            pid: 42,
            tid: 43,
            comm: "we\"ird\n".into(),
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
        }
    }
}
