//! One JSON object per line, keys in a fixed order so that lines diff and grep well.

use std::io::{self, Write};

use super::Sink;
use crate::{
    clock::Timestamp,
    event::{Event, errno_name, how_name},
};

pub struct JsonSink<W: Write> {
    out: W,
}

impl<W: Write> JsonSink<W> {
    pub fn new(out: W) -> Self {
        Self { out }
    }

    #[cfg(test)]
    pub fn into_inner(self) -> W {
        self.out
    }
}

/// Writes `text` as a JSON string literal. Process names can hold any byte.
fn quote(out: &mut impl Write, text: &str) -> io::Result<()> {
    out.write_all(b"\"")?;
    for c in text.chars() {
        match c {
            '"' => out.write_all(b"\\\"")?,
            '\\' => out.write_all(b"\\\\")?,
            '\n' => out.write_all(b"\\n")?,
            '\t' => out.write_all(b"\\t")?,
            c if (c as u32) < 0x20 => write!(out, "\\u{:04x}", c as u32)?,
            c => write!(out, "{c}")?,
        }
    }
    out.write_all(b"\"")
}

impl<W: Write> Sink for JsonSink<W> {
    fn event(&mut self, event: &Event) -> io::Result<()> {
        let out = &mut self.out;
        write!(
            out,
            "{{\"ts\":\"{}\",\"event\":\"{}\",\"proto\":\"{}\",\"family\":\"{}\",\"local_addr\":\"{}\",\"local_port\":{},\"pid\":{},\"tid\":{},\"comm\":",
            event.ts.rfc3339(),
            event.kind.name(),
            event.proto.name(),
            event.family_name(),
            event.local_addr,
            event.local_port,
            event.pid,
            event.tid,
        )?;
        quote(out, &event.comm)?;
        write!(out, ",\"uid\":{}", event.uid)?;
        if let Some(how) = event.how {
            write!(out, ",\"how\":\"{}\"", how_name(how))?;
        }
        if let Some(errno) = event.errno {
            write!(out, ",\"errno\":\"{}\"", errno_name(errno))?;
        }
        if let Some(held_ns) = event.held_ns {
            write!(out, ",\"held_ns\":{held_ns}")?;
        }
        if event.kind == crate::event::Kind::Free || event.time_wait {
            write!(out, ",\"time_wait\":{}", event.time_wait)?;
        }
        if event.time_wait_end {
            out.write_all(b",\"time_wait_end\":true")?;
        }
        if !event.claimer_seen {
            out.write_all(b",\"claimer_seen\":false")?;
        }
        if let Some(state) = event.state {
            write!(out, ",\"state\":\"{state}\"")?;
        }
        if let Some((addr, port)) = event.remote {
            write!(out, ",\"remote_addr\":\"{addr}\",\"remote_port\":{port}")?;
        }
        if let Some(cgroup_id) = event.cgroup_id {
            write!(out, ",\"cgroup_id\":{cgroup_id}")?;
        }
        if let Some(netns) = event.netns {
            write!(out, ",\"netns\":{netns}")?;
        }
        out.write_all(b"}\n")
    }

    fn lost(&mut self, ts: Timestamp, count: u64) -> io::Result<()> {
        writeln!(
            self.out,
            "{{\"ts\":\"{}\",\"event\":\"lost\",\"count\":{count}}}",
            ts.rfc3339()
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
    fn writes_one_object_per_line_with_kind_specific_keys() {
        let mut sink = JsonSink::new(Vec::new());
        sink.event(&sample()).unwrap();
        sink.lost(crate::clock::Timestamp::from_unix_nanos(0), 3)
            .unwrap();
        let text = String::from_utf8(sink.into_inner()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "{\"ts\":\"2026-11-26T04:59:01.123456789Z\",\"event\":\"free\",\"proto\":\"tcp\",\
             \"family\":\"ipv4\",\"local_addr\":\"127.0.0.1\",\"local_port\":60312,\"pid\":42,\
             \"tid\":43,\"comm\":\"we\\\"ird\\n\",\"uid\":0,\"how\":\"connect\",\"held_ns\":1500,\
             \"time_wait\":true,\"remote_addr\":\"127.0.0.1\",\"remote_port\":8080,\
             \"cgroup_id\":9,\"netns\":4026531840}"
        );
        assert_eq!(
            lines[1],
            "{\"ts\":\"1970-01-01T00:00:00.000000000Z\",\"event\":\"lost\",\"count\":3}"
        );
    }
}
