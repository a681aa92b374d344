//! An aligned table with a header; colour only when writing to a terminal.

use std::io::{self, Write};

use super::Sink;
use crate::{
    clock::Timestamp,
    event::{Event, Holder, Kind, errno_name, how_name},
};

pub struct TableSink<W: Write> {
    out: W,
    colour: bool,
    header_written: bool,
}

const HEADER: &str = "TIME(UTC)        EVENT   PROTO  LOCAL                        REMOTE                       PID      COMM             DETAIL";

impl<W: Write> TableSink<W> {
    pub fn new(out: W, colour: bool) -> Self {
        Self {
            out,
            colour,
            header_written: false,
        }
    }

    #[cfg(test)]
    pub fn into_inner(self) -> W {
        self.out
    }

    fn header(&mut self) -> io::Result<()> {
        if !self.header_written {
            self.header_written = true;
            writeln!(self.out, "{HEADER}")?;
        }
        Ok(())
    }

    fn paint(&self, kind: &str) -> String {
        let code = match kind {
            "claim" | "held" => "32",
            "listen" => "36",
            "free" => "33",
            _ => "31",
        };
        if self.colour {
            format!("\x1b[{code}m{kind:<7}\x1b[0m")
        } else {
            format!("{kind:<7}")
        }
    }
}

fn endpoint(addr: &std::net::IpAddr, port: u16) -> String {
    match addr {
        std::net::IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        std::net::IpAddr::V4(v4) => format!("{v4}:{port}"),
    }
}

/// The kind-specific column: how, errno, how long the port was held, TIME_WAIT.
fn detail(event: &Event) -> String {
    let mut parts = Vec::new();
    if let Some(how) = event.how {
        parts.push(how_name(how).to_string());
    }
    if let Some(errno) = event.errno {
        parts.push(errno_name(errno));
    }
    match &event.holder {
        Some(Some(holder)) => parts.push(held_by(holder)),
        Some(None) => parts.push("no holder in view".into()),
        None => {}
    }
    if let Some(held) = event.held_ns {
        parts.push(format!("held {}", human_duration(held)));
    }
    if event.time_wait {
        parts.push("time_wait (port still held)".into());
    }
    if event.time_wait_end {
        parts.push("time_wait ended".into());
    }
    if let Some(state) = event.state {
        parts.push(state.to_string());
    }
    if !event.claimer_seen && event.kind == Kind::Free {
        parts.push("claim not seen".into());
    }
    parts.join(", ")
}

/// `held by nginx[1234] since 10:02:03 (listen)`.
fn held_by(holder: &Holder) -> String {
    let who = match &holder.task {
        Some(task) => format!("{}[{}]", printable(&task.comm), task.pid),
        None => "a socket with no process".into(),
    };
    let time_of_day = holder.since.time_of_day();
    let time = time_of_day.split('.').next().unwrap_or_default();
    format!("held by {who} since {time} ({})", holder.state)
}

/// Process names can hold control characters; one event must stay one line.
pub(crate) fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

pub(crate) fn human_duration(nanos: u64) -> String {
    match nanos {
        n if n < 1_000_000 => format!("{:.1}us", n as f64 / 1e3),
        n if n < 1_000_000_000 => format!("{:.1}ms", n as f64 / 1e6),
        n => format!("{:.3}s", n as f64 / 1e9),
    }
}

impl<W: Write> Sink for TableSink<W> {
    fn event(&mut self, event: &Event) -> io::Result<()> {
        self.header()?;
        let proto = format!(
            "{}{}",
            event.proto.name(),
            if event.local_addr.is_ipv4() { "4" } else { "6" }
        );
        let remote = event
            .remote
            .map_or("-".to_string(), |(addr, port)| endpoint(&addr, port));
        let kind = self.paint(event.kind.name());
        let line = format!(
            "{}  {} {:<6} {:<28} {:<28} {:<8} {:<16} {}",
            event.ts.time_of_day(),
            kind,
            proto,
            endpoint(&event.local_addr, event.local_port),
            remote,
            event
                .task
                .as_ref()
                .map_or("-".into(), |task| task.pid.to_string()),
            event
                .task
                .as_ref()
                .map_or("-".into(), |task| printable(&task.comm)),
            detail(event)
        );
        writeln!(self.out, "{}", line.trim_end())
    }

    fn lost(&mut self, ts: Timestamp, count: u64) -> io::Result<()> {
        self.header()?;
        let kind = self.paint("lost");
        writeln!(
            self.out,
            "{}  {} {count} events dropped: the ring buffer was full",
            ts.time_of_day(),
            kind
        )
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::tests::sample;

    #[test]
    fn aligns_columns_under_the_header() {
        let mut sink = TableSink::new(Vec::new(), false);
        sink.event(&sample()).unwrap();
        let text = String::from_utf8(sink.into_inner()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], HEADER);
        assert_eq!(
            lines[1],
            "04:59:01.123456  free    tcp4   127.0.0.1:60312              127.0.0.1:8080               \
             42       we\"ird?          connect, held 1.5us, time_wait (port still held)"
        );
        assert_eq!(lines[1].find("free"), HEADER.find("EVENT"));
        assert_eq!(lines[1].find("127.0.0.1:60312"), HEADER.find("LOCAL"));
    }

    #[test]
    fn colours_only_when_asked() {
        let mut sink = TableSink::new(Vec::new(), true);
        sink.lost(Timestamp::from_unix_nanos(0), 2).unwrap();
        let text = String::from_utf8(sink.into_inner()).unwrap();
        assert!(text.contains("\x1b[31mlost   \x1b[0m 2 events dropped"));
    }
}
