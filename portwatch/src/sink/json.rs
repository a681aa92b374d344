//! One JSON object per line, keys in a fixed order so that lines diff and grep well.

use std::io::{self, Write};

use super::Sink;
use crate::{
    clock::Timestamp,
    event::{Audit, Event, Holder, Kind, Task, errno_name, how_name},
    pressure::Pressure,
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

/// Writes `text` as a JSON string literal. Process names and command lines can hold any byte.
pub fn quote(out: &mut impl Write, text: &str) -> io::Result<()> {
    out.write_all(b"\"")?;
    for c in text.chars() {
        match c {
            '"' => out.write_all(b"\\\"")?,
            '\\' => out.write_all(b"\\\\")?,
            '\n' => out.write_all(b"\\n")?,
            '\t' => out.write_all(b"\\t")?,
            c if (c as u32) < 0x20 || c == '\u{7f}' => write!(out, "\\u{:04x}", c as u32)?,
            c => write!(out, "{c}")?,
        }
    }
    out.write_all(b"\"")
}

fn optional_string(out: &mut impl Write, key: &str, value: Option<&str>) -> io::Result<()> {
    write!(out, ",\"{key}\":")?;
    match value {
        Some(value) => quote(out, value),
        None => out.write_all(b"null"),
    }
}

/// The identity keys: `"pid":null` (not 0) when no process holds the socket.
fn task_fields(out: &mut impl Write, task: Option<&Task>) -> io::Result<()> {
    match task {
        Some(task) => {
            write!(
                out,
                "\"pid\":{},\"tid\":{},\"ppid\":{},\"comm\":",
                task.pid, task.tid, task.ppid
            )?;
            quote(out, &task.comm)
        }
        None => out.write_all(b"\"pid\":null,\"tid\":null,\"ppid\":null,\"comm\":null"),
    }
}

fn holder_fields(out: &mut impl Write, holder: Option<&Holder>) -> io::Result<()> {
    let Some(holder) = holder else {
        return out.write_all(b",\"holder\":null");
    };
    out.write_all(b",\"holder\":{")?;
    task_fields(out, holder.task.as_ref())?;
    write!(
        out,
        ",\"state\":\"{}\",\"since\":\"{}\",\"local_addr\":\"{}\"",
        holder.state,
        holder.since.rfc3339(),
        holder.local_addr
    )?;
    if let Some(how) = holder.how {
        write!(out, ",\"how\":\"{}\"", how_name(how))?;
    }
    if let Some((addr, port)) = holder.remote {
        write!(out, ",\"remote_addr\":\"{addr}\",\"remote_port\":{port}")?;
    }
    out.write_all(b"}")
}

fn audit_fields(out: &mut impl Write, audit: &Audit) -> io::Result<()> {
    match audit {
        Audit::Exited => out.write_all(b",\"exited\":true"),
        Audit::Found(info) => {
            optional_string(out, "exe", info.exe.as_deref())?;
            optional_string(out, "cmdline", info.cmdline.as_deref())?;
            optional_string(out, "user", info.user.as_deref())?;
            optional_string(out, "parent_comm", info.parent_comm.as_deref())?;
            optional_string(out, "cgroup", info.cgroup.as_deref())?;
            optional_string(out, "container", info.container.as_deref())
        }
    }
}

/// An event's keys and values without the enclosing braces, in a fixed order, so that the
/// stdout printer and capture files (which add `seq` and a seal around them) agree.
pub fn event_fields(out: &mut impl Write, event: &Event) -> io::Result<()> {
    write!(
        out,
        "\"ts\":\"{}\",\"event\":\"{}\",\"proto\":\"{}\",\"family\":\"{}\",\"local_addr\":\"{}\",\"local_port\":{},",
        event.ts.rfc3339(),
        event.kind.name(),
        event.proto.name(),
        event.family_name(),
        event.local_addr,
        event.local_port,
    )?;
    task_fields(out, event.task.as_ref())?;
    write!(out, ",\"uid\":{}", event.uid)?;
    if let Some(how) = event.how {
        write!(out, ",\"how\":\"{}\"", how_name(how))?;
    }
    if let Some(errno) = event.errno {
        write!(out, ",\"errno\":\"{}\"", errno_name(errno))?;
    }
    if let Some(holder) = &event.holder {
        holder_fields(out, holder.as_ref())?;
    }
    if let Some(hint) = &event.hint {
        optional_string(out, "hint", Some(hint))?;
    }
    if let Some(held_ns) = event.held_ns {
        write!(out, ",\"held_ns\":{held_ns}")?;
    }
    if event.kind == Kind::Free || event.time_wait {
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
    if let Some(audit) = &event.audit {
        audit_fields(out, audit)?;
    }
    Ok(())
}

/// The keys of a `lost` record, without braces.
pub fn lost_fields(out: &mut impl Write, ts: Timestamp, count: u64) -> io::Result<()> {
    write!(
        out,
        "\"ts\":\"{}\",\"event\":\"lost\",\"count\":{count}",
        ts.rfc3339()
    )
}

/// The keys of a `pressure` record, without braces.
pub fn pressure_fields(out: &mut impl Write, pressure: &Pressure) -> io::Result<()> {
    write!(
        out,
        "\"ts\":\"{}\",\"event\":\"pressure\",\"proto\":\"{}\",\"state\":\"{}\",\"in_use\":{},\"range\":\"{}-{}\",\"range_size\":{},\"share_pct\":{:.1},\"threshold_pct\":{}",
        pressure.ts.rfc3339(),
        pressure.proto.name(),
        if pressure.high { "high" } else { "normal" },
        pressure.in_use,
        pressure.range.start(),
        pressure.range.end(),
        pressure.range_size(),
        pressure.share_pct(),
        pressure.threshold_pct,
    )?;
    if let Some(netns) = pressure.netns {
        write!(out, ",\"netns\":{netns}")?;
    }
    out.write_all(b",\"top\":[")?;
    for (index, (task, ports)) in pressure.top.iter().enumerate() {
        if index > 0 {
            out.write_all(b",")?;
        }
        out.write_all(b"{")?;
        task_fields(out, task.as_ref())?;
        write!(out, ",\"ports\":{ports}}}")?;
    }
    out.write_all(b"]")
}

impl<W: Write> Sink for JsonSink<W> {
    fn event(&mut self, event: &Event) -> io::Result<()> {
        self.out.write_all(b"{")?;
        event_fields(&mut self.out, event)?;
        self.out.write_all(b"}\n")
    }

    fn lost(&mut self, ts: Timestamp, count: u64) -> io::Result<()> {
        self.out.write_all(b"{")?;
        lost_fields(&mut self.out, ts, count)?;
        self.out.write_all(b"}\n")
    }

    fn pressure(&mut self, pressure: &Pressure) -> io::Result<()> {
        self.out.write_all(b"{")?;
        pressure_fields(&mut self.out, pressure)?;
        self.out.write_all(b"}\n")
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
             \"tid\":43,\"ppid\":1,\"comm\":\"we\\\"ird\\n\",\"uid\":0,\"how\":\"connect\",\"held_ns\":1500,\
             \"time_wait\":true,\"remote_addr\":\"127.0.0.1\",\"remote_port\":8080,\
             \"cgroup_id\":9,\"netns\":4026531840}"
        );
        assert_eq!(
            lines[1],
            "{\"ts\":\"1970-01-01T00:00:00.000000000Z\",\"event\":\"lost\",\"count\":3}"
        );
    }
}
