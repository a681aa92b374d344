//! `who`'s two printers: a table for people, one JSON object per port for scripts.

use std::io::{self, Write};

use serde_json::{Value, json};

use super::{Holder, PortReport, Report, process::human};
use crate::model::ports::EphemeralPolicy;

/// The columns a table adds when some socket needs them: its namespace, when any is outside
/// portwatch's own, and its container, when any is in one.
struct Extra {
    netns: bool,
    container: bool,
}

impl Extra {
    fn of(report: &Report) -> Self {
        let holders = || report.ports.iter().flat_map(|port| &port.holders);
        Extra {
            netns: holders().any(|holder| Some(holder.socket.netns) != report.own_netns),
            container: holders().any(|holder| holder.container.is_some()),
        }
    }

    fn header(&self) -> String {
        let mut text = String::new();
        if self.netns {
            text.push_str(&format!(" {:<24}", "NETNS"));
        }
        if self.container {
            text.push_str(" CONTAINER");
        }
        text
    }

    /// `4026532310 (blue)`, `4026531840 (host)`, and the container's name.
    fn row(&self, holder: &Holder, report: &Report) -> String {
        let mut text = String::new();
        if self.netns {
            let inode = holder.socket.netns;
            let name = if Some(inode) == report.own_netns {
                Some("own".to_string())
            } else {
                report
                    .namespaces
                    .get(&inode)
                    .and_then(|label| label.short())
            };
            let netns = match name {
                Some(name) => format!("{inode} ({})", printable(&name)),
                None => inode.to_string(),
            };
            text.push_str(&format!(" {netns:<24}"));
        }
        if self.container {
            let label = holder.container.as_ref().map(|container| container.label());
            text.push(' ');
            text.push_str(&label.map_or("-".to_string(), |label| printable(&label)));
        }
        text
    }
}

pub fn table(report: &Report, out: &mut impl Write) -> io::Result<()> {
    let extra = Extra::of(report);
    for (index, port) in report.ports.iter().enumerate() {
        if index > 0 {
            writeln!(out)?;
        }
        writeln!(
            out,
            "port {}: {}",
            port.port,
            describe(port, report.policy.as_ref())
        )?;
        if port.holders.is_empty() {
            writeln!(out, "free: no TCP or UDP socket holds it")?;
        } else {
            let line = format!(
                "{:<6} {:<15} {:<28} {:<28} {:<8} {:<16} {:<10} {:<6}{}",
                "PROTO",
                "STATE",
                "LOCAL",
                "REMOTE",
                "PID",
                "COMM",
                "USER",
                "AGE",
                extra.header()
            );
            writeln!(out, "{}", line.trim_end())?;
            for holder in &port.holders {
                row(holder, &extra.row(holder, report), out)?;
            }
        }
        if let Some(hint) = report
            .policy
            .as_ref()
            .and_then(|policy| policy.reserve_hint(port.port))
        {
            writeln!(out, "hint: {hint}")?;
        }
    }
    Ok(())
}

/// `dynamic (IANA 49152-65535); in this host's ephemeral range 32768-60999, not reserved;
/// /etc/services: none`.
fn describe(port: &PortReport, policy: Option<&EphemeralPolicy>) -> String {
    let range = port.class.range();
    let class = format!(
        "{} (IANA {}-{})",
        port.class.name(),
        range.start(),
        range.end()
    );
    let ephemeral = match policy {
        None => "ephemeral range unknown".to_string(),
        Some(policy) => {
            let (low, high) = (policy.range.start(), policy.range.end());
            match (
                policy.range.contains(&port.port),
                policy.is_reserved(port.port),
            ) {
                (true, false) => {
                    format!("inside this host's ephemeral range {low}-{high}, not reserved")
                }
                (true, true) => {
                    format!("inside this host's ephemeral range {low}-{high}, reserved")
                }
                (false, reserved) => format!(
                    "outside this host's ephemeral range {low}-{high}{}",
                    if reserved { ", reserved" } else { "" }
                ),
            }
        }
    };
    let services = match &port.services {
        None => "no /etc/services on this host".to_string(),
        Some(services) if services.is_empty() => "/etc/services: none".to_string(),
        Some(services) => {
            let names: Vec<String> = services
                .iter()
                .map(|service| format!("{}/{}", service.name, service.proto))
                .collect();
            format!("/etc/services: {}", names.join(" "))
        }
    };
    format!("{class}; {ephemeral}; {services}")
}

fn row(holder: &Holder, extra: &str, out: &mut impl Write) -> io::Result<()> {
    let socket = &holder.socket;
    let family = if socket.local.is_ipv4() { 4 } else { 6 };
    let proto = format!("{}{family}", socket.proto.name());
    let remote = match socket.remote {
        Some(remote) => remote.to_string(),
        None => "-".to_string(),
    };
    let (pid, comm, up) = match holder.processes.split_first() {
        Some((first, rest)) => (
            first.pid.to_string(),
            if rest.is_empty() {
                printable(&first.comm)
            } else {
                format!("{} (+{})", printable(&first.comm), rest.len())
            },
            first.age.map_or("-".to_string(), human),
        ),
        None => (
            "-".to_string(),
            holder
                .missing
                .map_or("-", |missing| match missing {
                    super::Missing::Kernel => "(kernel)",
                    super::Missing::Hidden => "(not permitted)",
                    super::Missing::NotFound => "(not found)",
                })
                .to_string(),
            "-".to_string(),
        ),
    };
    let user = holder
        .user
        .clone()
        .or_else(|| socket.uid.map(|uid| uid.to_string()))
        .unwrap_or_else(|| "-".to_string());
    let line = format!(
        "{proto:<6} {:<15} {:<28} {remote:<28} {pid:<8} {comm:<16} {user:<10} {up:<6}{extra}",
        socket.state,
        socket.local.to_string(),
    );
    writeln!(out, "{}", line.trim_end())
}

/// Process names can hold control characters; a table shows them escaped.
fn printable(text: &str) -> String {
    text.escape_debug().to_string()
}

pub fn json(report: &Report, out: &mut impl Write) -> io::Result<()> {
    for port in &report.ports {
        let value = json!({
            "port": port.port,
            "held": !port.holders.is_empty(),
            "iana_class": port.class.name(),
            "ephemeral": report.policy.as_ref().map(|policy| json!({
                "range": [policy.range.start(), policy.range.end()],
                "inside": policy.range.contains(&port.port),
                "reserved": policy.is_reserved(port.port),
            })),
            "services": port.services.as_ref().map(|services| services.iter().map(|service| json!({
                "name": service.name,
                "proto": service.proto,
                "aliases": service.aliases,
            })).collect::<Vec<Value>>()),
            "sockets": port.holders.iter().map(|holder| holder_json(holder, report)).collect::<Vec<Value>>(),
            "hint": report.policy.as_ref().and_then(|policy| policy.reserve_hint(port.port)),
        });
        serde_json::to_writer(&mut *out, &value)?;
        writeln!(out)?;
    }
    Ok(())
}

fn holder_json(holder: &Holder, report: &Report) -> Value {
    let socket = &holder.socket;
    let first = holder.processes.first();
    json!({
        "proto": socket.proto.name(),
        "family": if socket.local.is_ipv4() { "ipv4" } else { "ipv6" },
        "state": socket.state,
        "local_addr": socket.local.ip().to_string(),
        "local_port": socket.local.port(),
        "remote_addr": socket.remote.map(|remote| remote.ip().to_string()),
        "remote_port": socket.remote.map(|remote| remote.port()),
        "uid": socket.uid,
        "user": holder.user,
        "inode": socket.inode,
        "pid": first.map(|process| process.pid),
        "comm": first.map(|process| process.comm.clone()),
        "process_age_s": first.and_then(|process| process.age).map(|age| age.as_secs_f64()),
        "other_pids": holder.processes.iter().skip(1).map(|process| process.pid).collect::<Vec<u32>>(),
        "no_process": holder.missing.map(|missing| missing.name()),
        "netns": socket.netns,
        "netns_own": Some(socket.netns) == report.own_netns,
        "netns_names": report.namespaces.get(&socket.netns).map_or(&[][..], |label| &label.names),
        "container": holder.container.as_ref().map(|container| container.to_json()),
    })
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, time::Duration};

    use super::*;
    use crate::{
        commands::who::{Missing, Process, services::Service},
        host::snapshot::Socket,
        model::ports::IanaClass,
        model::proto::Proto,
    };

    fn report() -> Report {
        let listener = Holder {
            socket: Socket {
                proto: Proto::Tcp,
                state: "listen",
                local: "127.0.0.1:60312".parse().unwrap(),
                remote: None,
                uid: Some(0),
                inode: 42,
                owners: Vec::new(),
                netns: 4026531840,
            },
            user: Some("root".into()),
            processes: vec![Process {
                pid: 4242,
                comm: "python3".into(),
                age: Some(Duration::from_secs(303)),
            }],
            missing: None,
            container: None,
        };
        let time_wait = Holder {
            socket: Socket {
                proto: Proto::Tcp,
                state: "time_wait",
                local: "[::1]:60312".parse().unwrap(),
                remote: Some("[::1]:41000".parse().unwrap()),
                uid: None,
                inode: 0,
                owners: Vec::new(),
                netns: 4026531840,
            },
            user: None,
            processes: Vec::new(),
            missing: Some(Missing::Kernel),
            container: None,
        };
        Report {
            ports: vec![
                PortReport {
                    port: 60312,
                    class: IanaClass::Dynamic,
                    services: Some(Vec::new()),
                    holders: vec![listener, time_wait],
                },
                PortReport {
                    port: 80,
                    class: IanaClass::WellKnown,
                    services: Some(vec![Service {
                        name: "http".into(),
                        proto: "tcp".into(),
                        aliases: vec!["www".into()],
                    }]),
                    holders: Vec::new(),
                },
            ],
            policy: Some(EphemeralPolicy {
                range: 32768..=60999,
                reserved: vec![8080..=8080],
            }),
            notes: Vec::new(),
            namespaces: HashMap::new(),
            own_netns: Some(4026531840),
        }
    }

    #[test]
    fn the_table_shows_class_range_services_holders_and_the_hint() {
        let mut out = Vec::new();
        table(&report(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "port 60312: dynamic (IANA 49152-65535); inside this host's ephemeral range \
             32768-60999, not reserved; /etc/services: none"
        );
        assert!(lines[1].starts_with("PROTO  STATE"), "{text}");
        assert_eq!(
            lines[2],
            "tcp4   listen          127.0.0.1:60312              -                            \
             4242     python3          root       5m03s"
        );
        assert!(
            lines[3].starts_with("tcp6   time_wait       [::1]:60312"),
            "{text}"
        );
        assert!(lines[3].contains("(kernel)"), "{text}");
        assert!(
            lines[4].contains("ip_local_reserved_ports=8080,60312"),
            "{text}"
        );
        assert_eq!(lines[5], "");
        assert_eq!(
            lines[6],
            "port 80: well-known (IANA 0-1023); outside this host's ephemeral range \
             32768-60999; /etc/services: http/tcp"
        );
        assert_eq!(lines[7], "free: no TCP or UDP socket holds it");
        assert_eq!(lines.len(), 8);
    }

    #[test]
    fn json_is_one_object_per_port() {
        let mut out = Vec::new();
        json(&report(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let ports: Vec<Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[0]["held"], true);
        assert_eq!(ports[0]["ephemeral"]["inside"], true);
        assert_eq!(ports[0]["sockets"][0]["pid"], 4242);
        assert_eq!(ports[0]["sockets"][0]["state"], "listen");
        assert_eq!(ports[0]["sockets"][0]["remote_addr"], Value::Null);
        assert_eq!(ports[0]["sockets"][1]["pid"], Value::Null);
        assert_eq!(ports[0]["sockets"][1]["no_process"], "kernel");
        assert_eq!(ports[0]["sockets"][1]["uid"], Value::Null);
        assert_eq!(ports[0]["sockets"][1]["remote_port"], 41000);
        assert_eq!(ports[1]["held"], false);
        assert_eq!(ports[1]["hint"], Value::Null);
        assert_eq!(ports[1]["services"][0]["aliases"][0], "www");
    }
}
