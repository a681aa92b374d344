//! Why the kernel found no local port, as a failed claim's event carries it: the shape of the
//! explanation, its JSON object and its one line of DETAIL. The rules that compute it from the
//! holder table are in [`crate::live::exhaustion`].

use std::{fmt::Write as _, net::IpAddr, ops::RangeInclusive};

use serde_json::{Value, json};

use crate::model::{
    clock::Timestamp,
    proto::Proto,
    socket_state::SocketState,
    task::Task,
    text::{endpoint, printable},
};

/// One process's (or socketless) share of ports.
#[derive(Clone, Debug, PartialEq)]
pub struct Share {
    pub task: Option<Task>,
    pub state: SocketState,
    pub ports: usize,
}

/// Ports used toward one destination.
#[derive(Clone, Debug, PartialEq)]
pub struct Destination {
    pub addr: IpAddr,
    pub port: u16,
    pub ports: usize,
    pub time_wait: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Exhaustion {
    /// When the holder table was read for it (an earlier failure's, within a second).
    pub as_of: Timestamp,
    pub proto: Proto,
    pub range: RangeInclusive<u16>,
    /// Ports of the range one connect tries: one fewer than the range when it is odd-sized.
    pub tried: usize,
    /// Reserved ports in the range; None when unknown.
    pub reserved: Option<usize>,
    /// Ports held by a socket whose bucket a bind() made (listeners among them): unusable for
    /// every destination.
    pub bound: usize,
    pub listening: usize,
    /// The failed connect's destination, when the event carries it.
    pub destination: Option<(IpAddr, u16)>,
    /// Ports whose 4-tuple toward the destination is taken (not blocked already), by holder.
    pub toward: Vec<Share>,
    /// Ports that no socket holds: usable toward any destination.
    pub free: usize,
    /// Ports still usable toward the destination by the kernel's rules (None without one).
    pub usable: Option<usize>,
    /// `tcp_tw_reuse` as read, None when unknown (TIME_WAIT sockets then count as taken).
    pub time_wait_reuse: Option<u8>,
    pub busiest: Vec<Destination>,
    /// The processes holding most of the range.
    pub top: Vec<(Option<Task>, usize)>,
    /// False when the holder table does not follow every port of the range (not watched).
    pub complete: bool,
}

fn task_json(task: Option<&Task>) -> (Value, Value) {
    match task {
        Some(task) => (json!(task.pid), json!(task.comm.as_str())),
        None => (Value::Null, Value::Null),
    }
}

impl Exhaustion {
    pub fn size(&self) -> usize {
        usize::from(self.range.end() - self.range.start()) + 1
    }

    fn toward_ports(&self) -> usize {
        self.toward.iter().map(|share| share.ports).sum()
    }

    /// The object printed under `exhaustion` in JSON (documented in
    /// docs/ephemeral-exhaustion.md).
    pub fn to_json(&self) -> Value {
        let mut by_state: serde_json::Map<String, Value> = serde_json::Map::new();
        for share in &self.toward {
            let count = by_state
                .entry(share.state.name())
                .or_insert(json!(0))
                .as_u64()
                .unwrap_or(0);
            by_state.insert(share.state.name().into(), json!(count + share.ports as u64));
        }
        json!({
            "as_of": self.as_of.rfc3339(),
            "range": format!("{}-{}", self.range.start(), self.range.end()),
            "ports": self.size(),
            "tried_per_connect": self.tried,
            "reserved": self.reserved,
            "blocked_for_all": {
                "ports": self.bound + self.reserved.unwrap_or(0),
                "bound": self.bound - self.listening,
                "listening": self.listening,
                "reserved": self.reserved,
            },
            "destination": self.destination.map(|(addr, port)| json!({
                "addr": addr.to_string(),
                "port": port,
            })),
            "toward_destination": self.destination.map(|_| json!({
                "ports": self.toward_ports(),
                "by_state": by_state,
                "holders": self.toward.iter().map(|share| {
                    let (pid, comm) = task_json(share.task.as_ref());
                    json!({"pid": pid, "comm": comm, "state": share.state.name(),
                           "ports": share.ports})
                }).collect::<Vec<_>>(),
            })),
            "free": self.free,
            "usable": self.usable,
            "tcp_tw_reuse": self.time_wait_reuse,
            "busiest_destinations": self.busiest.iter().map(|used| json!({
                "addr": used.addr.to_string(),
                "port": used.port,
                "ports": used.ports,
                "time_wait": used.time_wait,
            })).collect::<Vec<_>>(),
            "top_holders": self.top.iter().map(|(task, ports)| {
                let (pid, comm) = task_json(task.as_ref());
                json!({"pid": pid, "comm": comm, "ports": ports})
            }).collect::<Vec<_>>(),
            "complete": self.complete,
        })
    }

    /// One line for the table's DETAIL column.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "range {}-{} ({} ports",
            self.range.start(),
            self.range.end(),
            self.size()
        );
        if self.tried != self.size() {
            let _ = write!(line, ", {} tried per connect", self.tried);
        }
        line.push(')');
        let blocked = self.bound + self.reserved.unwrap_or(0);
        let _ = write!(line, ": {blocked} blocked for every destination");
        if self.bound > 0 || self.reserved.is_some_and(|reserved| reserved > 0) {
            let _ = write!(
                line,
                " ({} bound, {} listening, {} reserved)",
                self.bound - self.listening,
                self.listening,
                self.reserved
                    .map_or_else(|| "? ".into(), |reserved| reserved.to_string())
            );
        }
        if let Some((addr, port)) = self.destination {
            let _ = write!(
                line,
                ", {} connected to {}",
                self.toward_ports(),
                endpoint(&addr, port)
            );
            let holders: Vec<String> = self
                .toward
                .iter()
                .map(|share| {
                    let who = share.task.as_ref().map_or_else(
                        || "no process".into(),
                        |task| format!("{}[{}]", printable(&task.comm.as_str()), task.pid),
                    );
                    format!("{who} {} {}", share.ports, share.state.name())
                })
                .collect();
            if !holders.is_empty() {
                let _ = write!(line, " ({})", holders.join(", "));
            }
            let _ = write!(line, ", {} usable", self.usable.unwrap_or(0));
        } else {
            let _ = write!(line, ", {} free", self.free);
            if let Some(used) = self.busiest.first() {
                let _ = write!(
                    line,
                    ", busiest destination {} with {} ports",
                    endpoint(&used.addr, used.port),
                    used.ports
                );
            }
        }
        if !self.complete {
            line.push_str(" (range not fully watched)");
        }
        line
    }
}
