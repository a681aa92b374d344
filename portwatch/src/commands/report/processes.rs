//! The busiest processes: who claimed most, failed most, and held ports longest in the window.

use std::collections::{BTreeSet, HashMap};

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

type Tally = (Activity, BTreeSet<(u8, u16)>);

fn fresh(process: &Process) -> Tally {
    let activity = Activity {
        process: process.clone(),
        claims: 0,
        failures: 0,
        ports: 0,
        held_ns: 0,
    };
    (activity, BTreeSet::new())
}

/// The `limit` busiest processes: most claims and failures first, then longest held.
pub fn busiest(
    holds: &[&Hold],
    failures: &[&Failure],
    window: &Window,
    limit: usize,
) -> Vec<Activity> {
    let mut by_process: HashMap<&Process, Tally> = HashMap::new();
    for hold in holds {
        let (activity, ports) = by_process
            .entry(&hold.process)
            .or_insert_with(|| fresh(&hold.process));
        if hold.claim_seen && hold.from.is_some_and(|from| window.contains(from)) {
            activity.claims += 1;
        }
        let (start, end) = window.clip(hold);
        activity.held_ns += end.saturating_sub(start);
        ports.insert((hold.proto as u8, hold.port));
    }
    for failure in failures {
        let (activity, ports) = by_process
            .entry(&failure.process)
            .or_insert_with(|| fresh(&failure.process));
        activity.failures += 1;
        if failure.port != 0 {
            ports.insert((failure.proto as u8, failure.port));
        }
    }
    let mut activities: Vec<Activity> = by_process
        .into_values()
        .map(|(mut activity, ports)| {
            activity.ports = ports.len();
            activity
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
    activities
}
