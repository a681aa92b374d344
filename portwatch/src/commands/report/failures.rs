//! Failed claims grouped: one line per port, errno and holder however many times it happened,
//! with the count, the first and last time, who failed and toward where. A busy capture can fail
//! thousands of times the same way; the group is what a reader needs first.

use foldhash::HashMap;

use super::{record::Process, timeline::Failure};
use crate::model::proto::Proto;

/// Entries a group keeps of who failed and toward where; the rest are counted together.
const KEPT: usize = 5;

/// The most frequent values and how many others there were.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tally<K> {
    pub top: Vec<(K, u64)>,
    /// Occurrences of values beyond the first [`KEPT`] distinct ones.
    pub others: u64,
}

impl<K> Default for Tally<K> {
    fn default() -> Self {
        Self {
            top: Vec::new(),
            others: 0,
        }
    }
}

impl<K: PartialEq> Tally<K> {
    pub fn add(&mut self, key: K) {
        if let Some(entry) = self.top.iter_mut().find(|(kept, _)| *kept == key) {
            entry.1 += 1;
        } else if self.top.len() < KEPT {
            self.top.push((key, 1));
        } else {
            self.others += 1;
        }
    }

    /// Most frequent first.
    pub fn sorted(&self) -> Vec<&(K, u64)> {
        let mut top: Vec<&(K, u64)> = self.top.iter().collect();
        top.sort_by_key(|entry| std::cmp::Reverse(entry.1));
        top
    }
}

/// What makes failures the same: the port, the errno, how it was claimed, and the holder the
/// record names (process and state).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GroupKey {
    pub proto: Proto,
    pub port: u16,
    pub errno: String,
    pub how: Option<String>,
    pub holder: Option<(Process, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub key: GroupKey,
    pub count: u64,
    pub first: u128,
    pub last: u128,
    /// The first of them, whole: its holder's details and the tracer's explanation.
    pub sample: Failure,
    pub claimers: Tally<Process>,
    /// Where failed connects were going, when the records say.
    pub destinations: Tally<String>,
}

#[derive(Debug, Default)]
pub struct Groups {
    groups: HashMap<GroupKey, Group>,
    pub total: u64,
}

impl Groups {
    pub fn add(&mut self, failure: &Failure) {
        self.total += 1;
        let key = GroupKey {
            proto: failure.proto,
            port: failure.port,
            errno: failure.errno.clone(),
            how: failure.how.clone(),
            holder: failure
                .blocker
                .as_ref()
                .map(|blocker| (blocker.process.clone(), blocker.state.clone())),
        };
        let group = self.groups.entry(key.clone()).or_insert_with(|| Group {
            key,
            count: 0,
            first: failure.ts,
            last: failure.ts,
            sample: failure.clone(),
            claimers: Tally::default(),
            destinations: Tally::default(),
        });
        group.count += 1;
        group.first = group.first.min(failure.ts);
        group.last = group.last.max(failure.ts);
        group.claimers.add(failure.process.clone());
        if let Some(remote) = &failure.remote {
            group.destinations.add(remote.clone());
        }
    }

    /// Most frequent first, then by first time.
    pub fn into_sorted(self) -> Vec<Group> {
        let mut groups: Vec<Group> = self.groups.into_values().collect();
        groups.sort_by(|a, b| b.count.cmp(&a.count).then(a.first.cmp(&b.first)));
        groups
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::report::record::Blocker;

    fn failure(ts: u128, port: u16, pid: u32, holder: Option<u32>) -> Failure {
        let process = |pid| Process {
            pid: Some(pid),
            comm: Some(format!("p{pid}")),
        };
        Failure {
            ts,
            proto: Proto::Tcp,
            port,
            family: "ipv4".into(),
            local_addr: "0.0.0.0".into(),
            process: process(pid),
            how: Some("bind".into()),
            errno: "EADDRINUSE".into(),
            blocker: holder.map(|pid| Blocker {
                process: process(pid),
                state: "listen".into(),
                since: None,
                how: Some("bind".into()),
                local_addr: "0.0.0.0".into(),
            }),
            held_by_in_capture: Vec::new(),
            remote: None,
            exhaustion: None,
            netns: None,
        }
    }

    #[test]
    fn same_port_errno_and_holder_make_one_group() {
        let mut groups = Groups::default();
        for (ts, pid) in [(30, 7), (10, 7), (20, 8)] {
            groups.add(&failure(ts, 6379, pid, Some(1)));
        }
        groups.add(&failure(15, 6379, 7, Some(2)));
        groups.add(&failure(16, 6380, 7, Some(1)));
        let sorted = groups.into_sorted();
        assert_eq!(sorted.len(), 3);
        let first = &sorted[0];
        assert_eq!((first.count, first.first, first.last), (3, 10, 30));
        assert_eq!(first.key.port, 6379);
        assert_eq!(first.claimers.sorted()[0].0.pid, Some(7));
        assert_eq!(first.claimers.sorted()[0].1, 2);
        assert_eq!(first.sample.ts, 30);
    }

    #[test]
    fn a_tally_counts_what_it_cannot_keep() {
        let mut tally = Tally::default();
        for key in [1, 2, 3, 4, 5, 6, 7, 1] {
            tally.add(key);
        }
        assert_eq!(
            (tally.top.len(), tally.others, tally.sorted()[0]),
            (5, 2, &(1, 2))
        );
    }
}
