//! The busiest processes: who claimed most, failed most, and held ports longest in the window,
//! tallied as holds end and failures come.

use foldhash::{HashMap, HashSet};

use super::{
    record::Process,
    timeline::{Failure, Hold},
    window::Window,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Activity {
    pub process: Process,
    /// Claims made inside the window.
    pub claims: usize,
    pub failures: usize,
    /// Distinct ports (per protocol) it held or failed to claim.
    pub ports: usize,
    /// Time its sockets held ports inside the window, summed over sockets.
    pub held_ns: u128,
}

#[derive(Default)]
struct Tally {
    claims: usize,
    failures: usize,
    /// `proto << 16 | port`.
    ports: HashSet<u32>,
    held_ns: u128,
}

#[derive(Default)]
pub struct Processes {
    by_process: HashMap<Process, Tally>,
}

fn port_key(proto: crate::model::proto::Proto, port: u16) -> u32 {
    (u32::from(proto == crate::model::proto::Proto::Udp) << 16) | u32::from(port)
}

impl Processes {
    /// A hold that overlaps the window, clipped to `(start, end)`.
    pub fn hold(&mut self, hold: &Hold, window: &Window, (start, end): (u128, u128)) {
        let tally = self.by_process.entry(hold.process.clone()).or_default();
        if hold.claim_seen && hold.from.is_some_and(|from| window.contains(from)) {
            tally.claims += 1;
        }
        tally.held_ns += end.saturating_sub(start);
        tally.ports.insert(port_key(hold.proto, hold.port));
    }

    pub fn failure(&mut self, failure: &Failure) {
        let tally = self.by_process.entry(failure.process.clone()).or_default();
        tally.failures += 1;
        if failure.port != 0 {
            tally.ports.insert(port_key(failure.proto, failure.port));
        }
    }

    /// The `limit` busiest: most claims and failures first, then longest held.
    pub fn busiest(self, limit: usize) -> (Vec<Activity>, usize) {
        let total = self.by_process.len();
        let mut activities: Vec<Activity> = self
            .by_process
            .into_iter()
            .map(|(process, tally)| Activity {
                process,
                claims: tally.claims,
                failures: tally.failures,
                ports: tally.ports.len(),
                held_ns: tally.held_ns,
            })
            .collect();
        activities.sort_by(|a, b| {
            (b.claims + b.failures, b.held_ns, &a.process).cmp(&(
                a.claims + a.failures,
                a.held_ns,
                &b.process,
            ))
        });
        activities.truncate(limit);
        (activities, total)
    }
}
