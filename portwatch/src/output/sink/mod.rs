//! Sinks: the printers, which write decoded events to any `Write`, and the metrics. None knows
//! where events come from. Output is buffered by the caller and flushed when the stream goes idle.

mod file;
pub mod json;
mod metrics;
pub mod table;

use std::io;

pub use file::{FileOptions, FileSink, open_output};
pub use json::JsonSink;
pub use metrics::MetricsSink;
pub use table::TableSink;

use crate::{
    live::holders::{PortChange, Toward},
    live::pressure::Pressure,
    model::clock::Timestamp,
    model::event::Event,
    output::capture::Summary,
};

pub trait Sink {
    fn event(&mut self, event: &Event) -> io::Result<()>;
    /// `count` events were dropped because the ring buffer was full.
    fn lost(&mut self, ts: Timestamp, count: u64) -> io::Result<()>;
    /// The ephemeral range of a namespace filled past the threshold, or fell back.
    fn pressure(&mut self, pressure: &Pressure) -> io::Result<()>;
    /// A port was taken or given back, as the holder table saw it: every event the kernel
    /// reported, before the user's filters.
    fn occupancy(&mut self, _change: &PortChange) -> io::Result<()> {
        Ok(())
    }
    /// The destinations with most ports in use toward them now, busiest first (twice a second).
    fn destinations(&mut self, _top: &[(Toward, u32)]) -> io::Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()>;
    /// SIGHUP: reopen whatever file the sink writes (logrotate moved it away).
    fn reopen(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// The trace is over; `summary` says how it ended.
    fn finish(&mut self, _summary: &Summary) -> io::Result<()> {
        self.flush()
    }
}

/// Several sinks fed the same events in order (the terminal and a capture file, say). Every
/// sink gets every call; the first error is returned after all were tried.
pub struct Sinks(pub Vec<Box<dyn Sink>>);

impl Sinks {
    fn each(&mut self, mut call: impl FnMut(&mut dyn Sink) -> io::Result<()>) -> io::Result<()> {
        let mut first_error = None;
        for sink in &mut self.0 {
            if let Err(err) = call(sink.as_mut()) {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Sink for Sinks {
    fn event(&mut self, event: &Event) -> io::Result<()> {
        self.each(|sink| sink.event(event))
    }

    fn lost(&mut self, ts: Timestamp, count: u64) -> io::Result<()> {
        self.each(|sink| sink.lost(ts, count))
    }

    fn pressure(&mut self, pressure: &Pressure) -> io::Result<()> {
        self.each(|sink| sink.pressure(pressure))
    }

    fn occupancy(&mut self, change: &PortChange) -> io::Result<()> {
        self.each(|sink| sink.occupancy(change))
    }

    fn destinations(&mut self, top: &[(Toward, u32)]) -> io::Result<()> {
        self.each(|sink| sink.destinations(top))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.each(|sink| sink.flush())
    }

    fn reopen(&mut self) -> io::Result<()> {
        self.each(|sink| sink.reopen())
    }

    fn finish(&mut self, summary: &Summary) -> io::Result<()> {
        self.each(|sink| sink.finish(summary))
    }
}
