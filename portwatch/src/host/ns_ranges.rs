//! Each network namespace's ephemeral range (`net.ipv4.ip_local_port_range` is per namespace),
//! read once per namespace and kept: pressure, the exhaustion explanation and the rule for
//! port-less failures all go by the range of the event's own namespace, not the host's.

use std::ops::RangeInclusive;

use foldhash::HashMap;

use crate::{host::netns::RangeReader, host::snapshot, model::event::Event};

pub struct NamespaceRanges {
    /// None as a value: unknown (the namespace could not be entered).
    ranges: HashMap<Option<u32>, Option<RangeInclusive<u16>>>,
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
            reader,
        }
    }

    /// The range of the event's namespace, entered through the event's thread the first time
    /// (a namespace is per thread: a process's other threads may be elsewhere).
    pub fn range_of(&mut self, event: &Event) -> Option<RangeInclusive<u16>> {
        if let Some(known) = self.ranges.get(&event.netns) {
            return known.clone();
        }
        let range = {
            let pid = event.task.as_ref().map(|task| task.tid)?;
            let netns = event.netns?;
            let range = self
                .reader
                .as_mut()
                .and_then(|reader| reader.range_of(pid, netns));
            if range.is_none() {
                eprintln!(
                    "portwatch: note: the ephemeral range of network namespace {netns} is \
                     unknown (its thread {pid} had left it before portwatch could enter it, \
                     or entering needs CAP_SYS_ADMIN); no pressure events or exhaustion \
                     explanations for it"
                );
            }
            range
        };
        self.ranges.insert(event.netns, range.clone());
        range
    }

    /// A range known for a namespace, for tests.
    #[cfg(test)]
    pub fn insert(&mut self, netns: Option<u32>, range: RangeInclusive<u16>) {
        self.ranges.insert(netns, Some(range));
    }
}
