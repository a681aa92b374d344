//! Each network namespace's ephemeral range (`net.ipv4.ip_local_port_range` is per namespace),
//! read once per namespace and kept: pressure, the exhaustion explanation and the rule for
//! port-less failures all go by the range of the event's own namespace, not the host's.

use std::ops::RangeInclusive;

use foldhash::{HashMap, HashSet};

use crate::{
    host::netns::{RangeReader, Reading},
    host::snapshot,
    model::event::Event,
};

pub struct NamespaceRanges {
    /// None as a value: unknown for good (the reader may not enter the namespace). A namespace
    /// whose process had gone is not kept: the next event from inside it tries again, and its
    /// inode, which the kernel reuses for the next namespace once this one is gone, does not
    /// carry the failure over to a namespace that could be entered.
    ranges: HashMap<Option<u32>, Option<RangeInclusive<u16>>>,
    /// Namespaces whose range could not be read, said once each.
    noted: HashSet<u32>,
    /// Reads other namespaces' ranges; None where it could not be started.
    reader: Option<RangeReader>,
}

impl NamespaceRanges {
    /// `own_range`: portwatch's own namespace's range, already read.
    pub fn new(reader: Option<RangeReader>, own_range: Option<RangeInclusive<u16>>) -> Self {
        Self {
            ranges: [
                (snapshot::own_netns(), own_range.clone()),
                (None, own_range),
            ]
            .into_iter()
            .collect(),
            noted: HashSet::default(),
            reader,
        }
    }

    /// The range of the event's namespace, entered through the event's thread (a namespace is
    /// per thread: a process's other threads may be elsewhere).
    pub fn range_of(&mut self, event: &Event) -> Option<RangeInclusive<u16>> {
        if let Some(known) = self.ranges.get(&event.netns) {
            return known.clone();
        }
        let pid = event.task.as_ref().map(|task| task.tid)?;
        let netns = event.netns?;
        let reading = match &mut self.reader {
            Some(reader) => reader.range_of(pid, netns),
            None => Reading::Refused,
        };
        let range = match reading {
            Reading::Found(range) => Some(range),
            Reading::Refused => None,
            Reading::Gone => {
                self.note(
                    netns,
                    "its thread had left it before portwatch could enter it; the namespace's \
                     next event tries again",
                );
                return None;
            }
        };
        if range.is_none() {
            self.note(
                netns,
                "entering it needs CAP_SYS_ADMIN; no pressure events or exhaustion \
                 explanations for it",
            );
        }
        self.ranges.insert(event.netns, range.clone());
        range
    }

    fn note(&mut self, netns: u32, why: &str) {
        if self.noted.insert(netns) {
            eprintln!(
                "portwatch: note: the ephemeral range of network namespace {netns} is unknown: \
                 {why}"
            );
        }
    }

    /// A range known for a namespace, for tests.
    #[cfg(test)]
    pub fn insert(&mut self, netns: Option<u32>, range: RangeInclusive<u16>) {
        self.ranges.insert(netns, Some(range));
    }
}
