//! An aligned table with a header; colour only when writing to a terminal.

use std::io::{self, Write};

use super::Sink;
use crate::{
    live::pressure::Pressure,
    model::clock::Timestamp,
    model::event::{Event, Holder, Kind, errno_name, how_name},
    model::text::{endpoint, human_duration, printable},
};

pub struct TableSink<W: Write> {
    out: W,
    colour: bool,
    header_written: bool,
    /// Width of the LOCAL and REMOTE columns: room for an IPv4 endpoint with a peer, widened
    /// (and the header printed again) when a longer IPv6 endpoint comes.
    endpoint_width: usize,
}

const ENDPOINT_WIDTH: usize = 28;

impl<W: Write> TableSink<W> {
    pub fn new(out: W, colour: bool) -> Self {
        Self {
            out,
            colour,
            header_written: false,
            endpoint_width: ENDPOINT_WIDTH,
        }
    }

    #[cfg(test)]
    pub fn into_inner(self) -> W {
        self.out
    }

    fn header(&mut self) -> io::Result<()> {
        if !self.header_written {
            self.header_written = true;
            let width = self.endpoint_width;
            writeln!(
                self.out,
                "TIME(UTC)        EVENT   PROTO  {:<width$} {:<width$} PID      COMM             DETAIL",
                "LOCAL", "REMOTE"
            )?;
        }
        Ok(())
    }

    /// Widens the endpoint columns to fit, starting a new header when they grow.
    fn fit(&mut self, endpoints: &[&str]) {
        let needed = endpoints
            .iter()
            .map(|text| text.len() + 1)
            .max()
            .unwrap_or(0);
        if needed > self.endpoint_width {
            self.endpoint_width = needed;
            self.header_written = false;
        }
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
    if let Some(exhaustion) = &event.exhaustion {
        parts.push(exhaustion.summary());
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
    if let Some(container) = &event.container {
        parts.push(format!("container {}", printable(&container.label())));
    }
    parts.join(", ")
}

/// `held by nginx[1234] since 10:02:03 (listen)`.
fn held_by(holder: &Holder) -> String {
    let who = match &holder.task {
        Some(task) => format!("{}[{}]", printable(&task.comm.as_str()), task.pid),
        None => "a socket with no process".into(),
    };
    let time_of_day = holder.since.time_of_day();
    let time = time_of_day.split('.').next().unwrap_or_default();
    format!("held by {who} since {time} ({})", holder.state)
}

impl<W: Write> Sink for TableSink<W> {
    fn event(&mut self, event: &Event) -> io::Result<()> {
        let local = endpoint(&event.local_addr, event.local_port);
        let remote = event
            .remote
            .map_or("-".to_string(), |(addr, port)| endpoint(&addr, port));
        self.fit(&[&local, &remote]);
        self.header()?;
        let proto = format!(
            "{}{}",
            event.proto.name(),
            if event.local_addr.is_ipv4() { "4" } else { "6" }
        );
        let kind = self.paint(event.kind.name());
        let width = self.endpoint_width;
        let line = format!(
            "{}  {} {:<6} {:<width$} {:<width$} {:<8} {:<16} {}",
            event.ts.time_of_day(),
            kind,
            proto,
            local,
            remote,
            event
                .task
                .as_ref()
                .map_or("-".into(), |task| task.pid.to_string()),
            event
                .task
                .as_ref()
                .map_or("-".into(), |task| printable(&task.comm.as_str())),
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

    fn pressure(&mut self, pressure: &Pressure) -> io::Result<()> {
        self.header()?;
        let kind = self.paint("pressure");
        let top: Vec<String> = pressure
            .top
            .iter()
            .map(|(task, ports)| match task {
                Some(task) => format!("{}[{}] {ports}", printable(&task.comm.as_str()), task.pid),
                None => format!("no process {ports}"),
            })
            .collect();
        let range = format!("{}-{}", pressure.range.start(), pressure.range.end());
        let counted = match &pressure.toward {
            None => format!("ports bound in ephemeral range {range}"),
            Some(toward) => format!(
                "ports toward {} from {} (range {range}, usable)",
                endpoint(&toward.addr, toward.port),
                toward.source
            ),
        };
        writeln!(
            self.out,
            "{}  {} {:<6} {}: {counted}: {} of {} ({:.0}%){}{}",
            pressure.ts.time_of_day(),
            kind,
            pressure.proto.name(),
            if pressure.high { "high" } else { "eased" },
            pressure.in_use,
            pressure.capacity(),
            pressure.share_pct(),
            pressure
                .netns
                .map_or(String::new(), |netns| format!(" in netns {netns}")),
            if top.is_empty() {
                String::new()
            } else {
                format!("; top: {}", top.join(", "))
            }
        )
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::event::fixtures::sample;

    const HEADER: &str = "TIME(UTC)        EVENT   PROTO  LOCAL                        REMOTE                       PID      COMM             DETAIL";

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
    fn long_ipv6_endpoints_widen_the_columns_under_a_new_header() {
        let mut sink = TableSink::new(Vec::new(), false);
        sink.event(&sample()).unwrap();
        let mut long = sample();
        let address: std::net::IpAddr = "fe80:1234:5678:9abc:def0:1234:5678:9abc".parse().unwrap();
        long.local_addr = address;
        long.remote = Some((address, 65535));
        sink.event(&long).unwrap();
        let text = String::from_utf8(sink.into_inner()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        let (header, line) = (lines[2], lines[3]);
        assert!(header.starts_with("TIME(UTC)"));
        assert_eq!(line.find("[fe80:"), header.find("LOCAL"));
        assert_eq!(line.rfind("[fe80:"), header.find("REMOTE"));
        assert_eq!(line.find("42 "), header.find("PID"));
    }

    #[test]
    fn colours_only_when_asked() {
        let mut sink = TableSink::new(Vec::new(), true);
        sink.lost(Timestamp::from_unix_nanos(0), 2).unwrap();
        let text = String::from_utf8(sink.into_inner()).unwrap();
        assert!(text.contains("\x1b[31mlost   \x1b[0m 2 events dropped"));
    }
}
