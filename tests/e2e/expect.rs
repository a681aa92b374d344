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

/// Every wanted event must appear, in the given order (other events may come between).
pub fn in_order(events: &[&Value], wants: &[Want<'_>]) -> Outcome {
    let mut position = 0;
    for want in wants {
        match events[position..]
            .iter()
            .position(|event| want.matches(event))
        {
            Some(found) => position += found + 1,
            None => {
                let seen: Vec<String> = events.iter().map(|e| e.to_string()).collect();
                return Err(format!(
                    "missing (in order): {}\n  events seen:\n    {}",
                    want.describe(),
                    seen.join("\n    ")
                )
                .into());
            }
        }
    }
    Ok(())
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
