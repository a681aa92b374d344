//! One JSON object per line, keys in a fixed order so that lines diff and grep well.

use std::io::{self, Write};

use super::Sink;
use crate::{
    live::pressure::Pressure,
    model::clock::Timestamp,
    model::event::{Audit, Event, Holder, Kind, errno_name, how_name},
    model::json::{address, number, quote},
    model::task::Task,
};

pub struct JsonSink<W: Write> {
    out: W,
    /// One event's line, built here and handed to `out` whole: the many short pieces of a line
    /// are cheaper to append to a `Vec` than to pass one by one through a buffered writer.
    line: Vec<u8>,
}

impl<W: Write> JsonSink<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            line: Vec::with_capacity(512),
        }
    }

    #[cfg(test)]
    pub fn into_inner(self) -> W {
        self.out
    }
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
            out.write_all(b"\"pid\":")?;
            number(out, task.pid)?;
            out.write_all(b",\"tid\":")?;
            number(out, task.tid)?;
            out.write_all(b",\"ppid\":")?;
            number(out, task.ppid)?;
            out.write_all(b",\"comm\":")?;
            quote(out, &task.comm.as_str())
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
            optional_string(out, "unit", info.unit.as_deref())
        }
    }
}

/// An event's keys and values without the enclosing braces, in a fixed order, so that the
/// stdout printer and capture files (which add `seq` and a seal around them) agree.
pub fn event_fields(out: &mut impl Write, event: &Event) -> io::Result<()> {
    out.write_all(b"\"ts\":\"")?;
    event.ts.write_rfc3339(out)?;
    out.write_all(b"\",\"event\":\"")?;
    out.write_all(event.kind.name().as_bytes())?;
    out.write_all(b"\",\"proto\":\"")?;
    out.write_all(event.proto.name().as_bytes())?;
    out.write_all(b"\",\"family\":\"")?;
    out.write_all(event.family_name().as_bytes())?;
    out.write_all(b"\",\"local_addr\":\"")?;
    address(out, event.local_addr)?;
    out.write_all(b"\",\"local_port\":")?;
    number(out, event.local_port)?;
    out.write_all(b",")?;
    task_fields(out, event.task.as_ref())?;
    out.write_all(b",\"uid\":")?;
    number(out, event.uid)?;
    if let Some(how) = event.how {
        out.write_all(b",\"how\":\"")?;
        out.write_all(how_name(how).as_bytes())?;
        out.write_all(b"\"")?;
    }
    if let Some(errno) = event.errno {
        out.write_all(b",\"errno\":\"")?;
        out.write_all(errno_name(errno).as_bytes())?;
        out.write_all(b"\"")?;
    }
    if let Some(holder) = &event.holder {
        holder_fields(out, holder.as_ref())?;
    }
    if let Some(hint) = &event.hint {
        optional_string(out, "hint", Some(hint))?;
    }
    if let Some(exhaustion) = &event.exhaustion {
        out.write_all(b",\"exhaustion\":")?;
        serde_json::to_writer(&mut *out, &exhaustion.to_json())?;
    }
    if let Some(held_ns) = event.held_ns {
        out.write_all(b",\"held_ns\":")?;
        number(out, held_ns)?;
    }
    if event.kind == Kind::Free || event.time_wait {
        out.write_all(match event.time_wait {
            true => b",\"time_wait\":true",
            false => b",\"time_wait\":false",
        })?;
    }
    if event.time_wait_end {
        out.write_all(b",\"time_wait_end\":true")?;
    }
    if !event.claimer_seen {
        out.write_all(b",\"claimer_seen\":false")?;
    }
    if let Some(state) = event.state {
        out.write_all(b",\"state\":\"")?;
        out.write_all(state.as_bytes())?;
        out.write_all(b"\"")?;
    }
    if let Some((addr, port)) = event.remote {
        out.write_all(b",\"remote_addr\":\"")?;
        address(out, addr)?;
        out.write_all(b"\",\"remote_port\":")?;
        number(out, port)?;
    }
    if let Some(cgroup_id) = event.cgroup_id {
        out.write_all(b",\"cgroup_id\":")?;
        number(out, cgroup_id)?;
    }
    if let Some(netns) = event.netns {
        out.write_all(b",\"netns\":")?;
        number(out, netns)?;
    }
    if let Some(container) = &event.container {
        out.write_all(b",\"container\":")?;
        serde_json::to_writer(&mut *out, &container.to_json())?;
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
    match &pressure.toward {
        None => out.write_all(b",\"scope\":\"namespace\"")?,
        Some(toward) => write!(
            out,
            ",\"scope\":\"destination\",\"source_addr\":\"{}\",\"remote_addr\":\"{}\",\"remote_port\":{},\"usable\":{}",
            toward.source, toward.addr, toward.port, toward.usable
        )?,
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
        self.line.clear();
        self.line.push(b'{');
        event_fields(&mut self.line, event)?;
        self.line.extend_from_slice(b"}\n");
        self.out.write_all(&self.line)
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
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use portwatch_ebpf::How;

    use super::*;
    use crate::{
        live::pressure::Destination,
        model::event::{ProcessInfo, fixtures::sample},
        model::proto::Proto,
        model::record::Line,
    };

    /// Every key of `text` is in the record schema with the type it gives: the line read into
    /// a [`Line`] and written back is the same JSON.
    fn holds_to_the_schema(text: &str) {
        let written: serde_json::Value = serde_json::from_str(text).unwrap();
        let line = Line::parse(text).unwrap();
        assert_eq!(serde_json::to_value(&line).unwrap(), written, "{text}");
    }

    fn line_of(event: &Event) -> String {
        let mut sink = JsonSink::new(Vec::new());
        sink.event(event).unwrap();
        String::from_utf8(sink.into_inner()).unwrap()
    }

    /// Events of every kind and shape: with and without a process, a holder, an audit.
    fn events() -> Vec<Event> {
        let since = Timestamp::from_unix_nanos(1_795_669_140_000_000_001);
        let holder = Holder {
            task: sample().task,
            local_addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
            remote: Some((IpAddr::V6(Ipv6Addr::LOCALHOST), 443)),
            how: Some(How::Bind),
            since,
            state: "listen",
        };
        let fail = Event {
            kind: Kind::Fail,
            how: Some(How::Bind),
            errno: Some(libc::EADDRINUSE),
            held_ns: None,
            time_wait: false,
            holder: Some(Some(holder)),
            hint: Some("reserve it".into()),
            ..sample()
        };
        let unheld_fail = Event {
            holder: Some(None),
            audit: Some(Audit::Exited),
            ..fail.clone()
        };
        let held = Event {
            kind: Kind::Held,
            task: None,
            how: None,
            held_ns: None,
            time_wait: false,
            claimer_seen: false,
            state: Some("time_wait"),
            local_addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            audit: Some(Audit::Found(Box::new(ProcessInfo {
                exe: Some("/usr/bin/nc".into()),
                cmdline: None,
                user: Some("root".into()),
                ..ProcessInfo::default()
            }))),
            ..sample()
        };
        let time_wait_end = Event {
            time_wait: false,
            time_wait_end: true,
            remote: None,
            cgroup_id: None,
            netns: None,
            ..sample()
        };
        vec![sample(), fail, unheld_fail, held, time_wait_end]
    }

    #[test]
    fn a_key_outside_the_schema_or_of_another_type_is_caught() {
        let extra = r#"{"ts":"1970-01-01T00:00:00.000000007Z","event":"lost","count":3,"bogus":1}"#;
        let line = Line::parse(extra).unwrap();
        let written: serde_json::Value = serde_json::from_str(extra).unwrap();
        assert_ne!(serde_json::to_value(&line).unwrap(), written);
        assert!(Line::parse(r#"{"event":"lost","count":"3"}"#).is_err());
    }

    #[test]
    fn every_event_line_holds_to_the_schema() {
        for event in events() {
            holds_to_the_schema(line_of(&event).trim_end());
        }
    }

    #[test]
    fn lost_and_pressure_lines_hold_to_the_schema() {
        let mut sink = JsonSink::new(Vec::new());
        sink.lost(Timestamp::from_unix_nanos(7), 3).unwrap();
        let pressure = Pressure {
            ts: Timestamp::from_unix_nanos(8),
            proto: Proto::Tcp,
            netns: Some(4026531840),
            high: true,
            in_use: 90,
            range: 40000..=40099,
            threshold_pct: 80,
            top: vec![(sample().task, 88), (None, 2)],
            toward: None,
        };
        sink.pressure(&pressure).unwrap();
        sink.pressure(&Pressure {
            toward: Some(Destination {
                source: IpAddr::V4(Ipv4Addr::LOCALHOST),
                addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                port: 5432,
                usable: 100,
            }),
            ..pressure
        })
        .unwrap();
        let text = String::from_utf8(sink.into_inner()).unwrap();
        assert_eq!(text.lines().count(), 3);
        text.lines().for_each(holds_to_the_schema);
    }

    #[test]
    fn writes_one_object_per_line_with_kind_specific_keys() {
        let mut sink = JsonSink::new(Vec::new());
        sink.event(&sample()).unwrap();
        sink.lost(crate::model::clock::Timestamp::from_unix_nanos(0), 3)
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
