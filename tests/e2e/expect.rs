//! Matching the events a scenario must produce.

use serde_json::Value;

use crate::Outcome;

/// The fields every expected event is checked on, plus optional extras.
pub struct Want<'a> {
    pub event: &'a str,
    pub port: u16,
    pub pid: u32,
    pub proto: &'a str,
    pub family: &'a str,
    /// Further `key == value` conditions (how, errno, time_wait...).
    pub extra: Vec<(&'a str, Value)>,
}

impl Want<'_> {
    fn matches(&self, event: &Value) -> bool {
        event["event"] == self.event
            && event["local_port"] == self.port
            && event["pid"] == self.pid
            && event["proto"] == self.proto
            && event["family"] == self.family
            && self.extra.iter().all(|(key, value)| &event[*key] == value)
    }

    fn describe(&self) -> String {
        let extra: Vec<String> = self.extra.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!(
            "{} port={} pid={} {}/{} {}",
            self.event,
            self.port,
            self.pid,
            self.proto,
            self.family,
            extra.join(" ")
        )
    }
}

pub fn want<'a>(event: &'a str, port: u16, pid: u32, proto: &'a str, family: &'a str) -> Want<'a> {
    Want {
        event,
        port,
        pid,
        proto,
        family,
        extra: Vec::new(),
    }
}

impl<'a> Want<'a> {
    pub fn with(mut self, key: &'a str, value: impl Into<Value>) -> Self {
        self.extra.push((key, value.into()));
        self
    }
}

/// The events a scenario owns (those on its ports, from its processes) are exactly `wants`, in
/// this order: each wanted event once, and nothing else. A duplicate claim or free (two hooks
/// firing for one socket) fails, as does any event nobody asked for.
pub fn only(events: &[&Value], wants: &[Want<'_>]) -> Outcome {
    only_allowing(events, wants, &[])
}

/// As [`only`], but events matching one of `allowed` may also come, anywhere and any number of
/// times: for what the kernel may add on its own. Every caller says why in a comment.
pub fn only_allowing(events: &[&Value], wants: &[Want<'_>], allowed: &[Want<'_>]) -> Outcome {
    let mut next = 0;
    let mut unexpected = Vec::new();
    for event in events {
        if wants.get(next).is_some_and(|want| want.matches(event)) {
            next += 1;
        } else if !allowed.iter().any(|allowed| allowed.matches(event)) {
            unexpected.push(event.to_string());
        }
    }
    if next == wants.len() && unexpected.is_empty() {
        return Ok(());
    }
    let wanted: Vec<String> = wants
        .iter()
        .enumerate()
        .map(|(index, want)| {
            let mark = if index < next { "seen   " } else { "MISSING" };
            format!("{mark} {}", want.describe())
        })
        .collect();
    let seen: Vec<String> = events.iter().map(|event| event.to_string()).collect();
    Err(format!(
        "the events are not exactly the wanted ones, in order\n  wanted:\n    {}\n  \
         unexpected:\n    {}\n  events seen:\n    {}",
        wanted.join("\n    "),
        unexpected.join("\n    "),
        seen.join("\n    ")
    )
    .into())
}

/// Exactly `count` events match.
pub fn exactly(events: &[&Value], want: &Want<'_>, count: usize) -> Outcome {
    let found = events.iter().filter(|event| want.matches(event)).count();
    if found != count {
        return Err(format!("expected {count} x {}, found {found}", want.describe()).into());
    }
    Ok(())
}

pub fn check(condition: bool, message: impl FnOnce() -> String) -> Outcome {
    if condition {
        Ok(())
    } else {
        Err(message().into())
    }
}
