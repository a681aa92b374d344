//! Port events folded into holds: who held which port from when to when, how it was claimed, and
//! how long TIME_WAIT kept it after the socket let go. Events carry no socket id, so a free is
//! matched to the open claim of the same protocol, port, family and process, preferring the same
//! peer and the claim whose time agrees with the free's `held_ns`.

use std::collections::HashMap;

use super::record::{Blocker, PortEvent, Process};
use crate::model::event::{Kind, Proto};

/// How a hold ended, as far as the capture shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// Still held when the capture ended.
    Open,
    /// The socket let go and the port was free at once.
    Closed(u128),
    /// The socket let go into TIME_WAIT (`closed`; None: it was in TIME_WAIT at start-up), which
    /// held the port until `ended` (None: not seen before the capture ended).
    TimeWait {
        closed: Option<u128>,
        ended: Option<u128>,
    },
}

/// One socket's hold on a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    pub proto: Proto,
    pub port: u16,
    pub family: String,
    pub local_addr: String,
    pub remote: Option<String>,
    pub netns: Option<u64>,
    pub process: Process,
    pub how: Option<String>,
    /// The claim's time; None when the port was held before the capture and its claim time is
    /// unknown.
    pub from: Option<u128>,
    /// Whether the claim itself is in the capture (not a `held` record or a free without claim).
    pub claim_seen: bool,
    pub listening: bool,
    pub end: End,
}

impl Hold {
    /// When the port stopped being held by this socket (TIME_WAIT included); None: still held.
    pub fn occupied_until(&self) -> Option<u128> {
        match self.end {
            End::Open => None,
            End::Closed(at) => Some(at),
            End::TimeWait { ended, .. } => ended,
        }
    }
}

/// A claim that failed, with the socket that blocked it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub ts: u128,
    pub proto: Proto,
    pub port: u16,
    pub family: String,
    pub local_addr: String,
    pub process: Process,
    pub how: Option<String>,
    pub errno: String,
    /// The holder the tracer named in the record (None: it named none).
    pub blocker: Option<Blocker>,
    /// When the record names no holder: the processes this capture shows holding the port then.
    pub held_by_in_capture: Vec<Process>,
}

/// Sockets are told apart by protocol, port, family and the claiming process.
type SocketKey = (Proto, u16, String, Option<u32>);

fn key(event: &PortEvent) -> SocketKey {
    (
        event.proto,
        event.port,
        event.family.clone(),
        event.process.pid,
    )
}

/// When a free's socket was claimed, by its `held_ns`.
fn claimed_at(event: &PortEvent) -> Option<u128> {
    event
        .held_ns
        .map(|held| event.ts.saturating_sub(u128::from(held)))
}

#[derive(Debug, Default)]
pub struct Timeline {
    pub holds: Vec<Hold>,
    pub failures: Vec<Failure>,
    /// Indices into `holds` of sockets not yet closed, per socket key.
    open: HashMap<SocketKey, Vec<usize>>,
    /// Indices into `holds` in TIME_WAIT whose end has not been seen.
    time_waits: HashMap<SocketKey, Vec<usize>>,
    /// Indices into `holds` per protocol and port, for who held a port when a claim failed.
    by_port: HashMap<(Proto, u16), Vec<usize>>,
}

impl Timeline {
    /// Adds one event; events must come in capture order.
    pub fn add(&mut self, event: &PortEvent) {
        match event.kind {
            Kind::Claim => self.open(event, Some(event.ts), true),
            Kind::Held => self.held(event),
            Kind::Listen => self.listen(event),
            Kind::Free if event.time_wait_end => self.time_wait_end(event),
            Kind::Free => self.free(event),
            Kind::Fail => self.fail(event),
        }
    }

    fn push(&mut self, hold: Hold) -> usize {
        let index = self.holds.len();
        self.by_port
            .entry((hold.proto, hold.port))
            .or_default()
            .push(index);
        self.holds.push(hold);
        index
    }

    /// A hold of `event`'s socket.
    fn hold(event: &PortEvent, from: Option<u128>, claim_seen: bool, end: End) -> Hold {
        Hold {
            proto: event.proto,
            port: event.port,
            family: event.family.clone(),
            local_addr: event.local_addr.clone(),
            remote: event.remote.clone(),
            netns: event.netns,
            process: event.process.clone(),
            how: event.how.clone(),
            from,
            claim_seen,
            listening: false,
            end,
        }
    }

    fn open(&mut self, event: &PortEvent, from: Option<u128>, claim_seen: bool) {
        let index = self.push(Self::hold(event, from, claim_seen, End::Open));
        self.open.entry(key(event)).or_default().push(index);
    }

    fn held(&mut self, event: &PortEvent) {
        match event.state.as_deref() {
            Some("time_wait") => {
                let end = End::TimeWait {
                    closed: None,
                    ended: None,
                };
                let index = self.push(Self::hold(event, None, false, end));
                self.time_waits.entry(key(event)).or_default().push(index);
            }
            state => {
                self.open(event, None, false);
                if state == Some("listen") {
                    let last = self.holds.len() - 1;
                    self.holds[last].listening = true;
                }
            }
        }
    }

    fn listen(&mut self, event: &PortEvent) {
        let found = self.open.get(&key(event)).and_then(|indices| {
            indices
                .iter()
                .rev()
                .copied()
                .find(|&index| !self.holds[index].listening)
        });
        match found {
            Some(index) => self.holds[index].listening = true,
            None => {
                self.open(event, None, false);
                let last = self.holds.len() - 1;
                self.holds[last].listening = true;
            }
        }
    }

    /// Takes the best match for `event` out of `pool[key]`: same peer first, then the claim time
    /// closest to `ts - held_ns`, then the oldest.
    fn take_match(
        holds: &[Hold],
        pool: &mut HashMap<SocketKey, Vec<usize>>,
        event: &PortEvent,
    ) -> Option<usize> {
        let indices = pool.get_mut(&key(event))?;
        let claimed_at = claimed_at(event);
        let position = indices
            .iter()
            .enumerate()
            .min_by_key(|&(order, &index)| {
                let hold = &holds[index];
                let other_peer =
                    event.remote.is_some() && hold.remote.is_some() && hold.remote != event.remote;
                let distance = match (claimed_at, hold.from) {
                    (Some(at), Some(from)) => at.abs_diff(from),
                    _ => u128::MAX,
                };
                (other_peer, distance, order)
            })
            .map(|(position, _)| position)?;
        let index = indices.remove(position);
        if indices.is_empty() {
            pool.remove(&key(event));
        }
        Some(index)
    }

    fn free(&mut self, event: &PortEvent) {
        let index = match Self::take_match(&self.holds, &mut self.open, event) {
            Some(index) => index,
            // Claimed before the capture: `held_ns` (when known) dates the claim.
            None => self.push(Self::hold(event, claimed_at(event), false, End::Open)),
        };
        let hold = &mut self.holds[index];
        if hold.remote.is_none() {
            hold.remote = event.remote.clone();
        }
        if event.time_wait {
            hold.end = End::TimeWait {
                closed: Some(event.ts),
                ended: None,
            };
            self.time_waits.entry(key(event)).or_default().push(index);
        } else {
            hold.end = End::Closed(event.ts);
        }
    }

    fn time_wait_end(&mut self, event: &PortEvent) {
        match Self::take_match(&self.holds, &mut self.time_waits, event) {
            Some(index) => {
                if let End::TimeWait { ended, .. } = &mut self.holds[index].end {
                    *ended = Some(event.ts);
                }
            }
            None => {
                let end = End::TimeWait {
                    closed: None,
                    ended: Some(event.ts),
                };
                self.push(Self::hold(event, claimed_at(event), false, end));
            }
        }
    }

    fn fail(&mut self, event: &PortEvent) {
        let blocker = event.blocker.clone().flatten();
        let held_by_in_capture = if blocker.is_some() || event.port == 0 {
            Vec::new()
        } else {
            let on_port = self.by_port.get(&(event.proto, event.port));
            let mut holders: Vec<Process> = on_port
                .into_iter()
                .flatten()
                .map(|&index| &self.holds[index])
                .filter(|hold| {
                    hold.from.is_none_or(|from| from <= event.ts)
                        && hold.occupied_until().is_none_or(|end| end >= event.ts)
                })
                .map(|hold| hold.process.clone())
                .collect();
            holders.sort();
            holders.dedup();
            holders
        };
        self.failures.push(Failure {
            ts: event.ts,
            proto: event.proto,
            port: event.port,
            family: event.family.clone(),
            local_addr: event.local_addr.clone(),
            process: event.process.clone(),
            how: event.how.clone(),
            errno: event.errno.clone().unwrap_or_else(|| "unknown".into()),
            blocker,
            held_by_in_capture,
        });
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// An event of `kind` on tcp/ipv4 `port` by `pid` at `ts` nanoseconds.
    pub fn event(kind: Kind, port: u16, pid: u32, ts: u128) -> PortEvent {
        PortEvent {
            ts,
            kind,
            proto: Proto::Tcp,
            family: "ipv4".into(),
            local_addr: "127.0.0.1".into(),
            port,
            process: Process {
                pid: Some(pid),
                comm: Some(format!("p{pid}")),
            },
            how: Some("bind".into()),
            errno: None,
            blocker: None,
            held_ns: None,
            time_wait: false,
            time_wait_end: false,
            claimer_seen: true,
            state: None,
            remote: None,
            netns: None,
        }
    }

    fn timeline(events: &[PortEvent]) -> Timeline {
        let mut timeline = Timeline::default();
        for event in events {
            timeline.add(event);
        }
        timeline
    }

    #[test]
    fn a_claim_listen_and_free_make_one_hold() {
        let mut free = event(Kind::Free, 80, 1, 30);
        free.held_ns = Some(20);
        let timeline = timeline(&[
            event(Kind::Claim, 80, 1, 10),
            event(Kind::Listen, 80, 1, 11),
            free,
        ]);
        assert_eq!(timeline.holds.len(), 1);
        let hold = &timeline.holds[0];
        assert_eq!((hold.from, hold.end.clone()), (Some(10), End::Closed(30)));
        assert!(hold.listening && hold.claim_seen);
    }

    #[test]
    fn a_free_goes_to_the_claim_its_held_ns_dates() {
        let mut free = event(Kind::Free, 80, 1, 100);
        free.held_ns = Some(50);
        let timeline = timeline(&[
            event(Kind::Claim, 80, 1, 10),
            event(Kind::Claim, 80, 1, 50),
            free,
        ]);
        assert_eq!(timeline.holds[0].end, End::Open);
        assert_eq!(timeline.holds[1].end, End::Closed(100));
    }

    #[test]
    fn accepted_sockets_are_told_apart_by_peer() {
        let accepted = |ts, peer: &str| {
            let mut claim = event(Kind::Claim, 80, 1, ts);
            claim.remote = Some(peer.into());
            claim
        };
        let mut free = accepted(40, "127.0.0.1:2");
        free.kind = Kind::Free;
        let timeline = timeline(&[
            accepted(10, "127.0.0.1:1"),
            accepted(20, "127.0.0.1:2"),
            free,
        ]);
        assert_eq!(timeline.holds[0].end, End::Open);
        assert_eq!(timeline.holds[1].end, End::Closed(40));
    }

    #[test]
    fn time_wait_holds_the_port_until_its_end() {
        let mut close = event(Kind::Free, 80, 1, 20);
        close.time_wait = true;
        let mut end = event(Kind::Free, 80, 1, 60_000);
        end.time_wait_end = true;
        let timeline = timeline(&[event(Kind::Claim, 80, 1, 10), close, end]);
        assert_eq!(
            timeline.holds[0].end,
            End::TimeWait {
                closed: Some(20),
                ended: Some(60_000)
            }
        );
        assert_eq!(timeline.holds[0].occupied_until(), Some(60_000));
    }

    #[test]
    fn a_free_without_its_claim_was_held_before_the_capture() {
        let mut free = event(Kind::Free, 80, 1, 100);
        free.held_ns = Some(70);
        let timeline = timeline(&[free]);
        let hold = &timeline.holds[0];
        assert_eq!((hold.from, hold.claim_seen), (Some(30), false));
        assert_eq!(hold.end, End::Closed(100));
    }

    #[test]
    fn a_failure_without_a_named_holder_lists_who_held_the_port() {
        let mut fail = event(Kind::Fail, 80, 2, 20);
        fail.errno = Some("EADDRINUSE".into());
        fail.blocker = Some(None);
        let timeline = timeline(&[event(Kind::Claim, 80, 1, 10), fail]);
        let failure = &timeline.failures[0];
        assert_eq!(failure.errno, "EADDRINUSE");
        assert_eq!(failure.blocker, None);
        assert_eq!(failure.held_by_in_capture[0].pid, Some(1));
    }

    #[test]
    fn a_holder_at_start_up_is_open_from_before_the_capture() {
        let mut held = event(Kind::Held, 80, 1, 5);
        held.state = Some("listen".into());
        let timeline = timeline(&[held, event(Kind::Free, 80, 1, 9)]);
        let hold = &timeline.holds[0];
        assert_eq!((hold.from, hold.listening), (None, true));
        assert_eq!(hold.end, End::Closed(9));
    }
}
