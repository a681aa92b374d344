//! Port events folded into holds: who held which port from when to when, how it was claimed, and
//! how long TIME_WAIT kept it after the socket let go. Events carry no socket id, so a free is
//! matched to the open claim of the same protocol, port, family and process, preferring the same
//! peer and the claim whose time agrees with the free's `held_ns`.
//!
//! Only the sockets still holding a port are kept: a hold is handed to the [`Watcher`] when it
//! ends, so memory follows how many sockets are open at once, not how long the capture is.

use std::collections::VecDeque;

use foldhash::HashMap;

use super::record::{Blocker, PortEvent, Process};
use crate::{model::event::Kind, model::proto::Proto};

/// Linux keeps a TIME_WAIT socket this long (TCP_TIMEWAIT_LEN, fixed at build time).
pub const TIME_WAIT_NS: u128 = 60_000_000_000;

/// When the capture has shown TIME_WAIT ends, one may come this much after its 60 s (the timer
/// wheel batches timers that far out by up to 4 s): the hold waits for it that long.
const TIME_WAIT_SLACK_NS: u128 = 5_000_000_000;

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
    /// The end of its TIME_WAIT was not seen: it is taken to be 60 s after the close.
    pub time_wait_assumed: bool,
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

    /// An accepted connection: it shares its listener's port.
    pub fn accepted(&self) -> bool {
        self.how.as_deref() == Some("accept")
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
    /// `addr:port` the failed connect was toward, when the record says.
    pub remote: Option<String>,
    /// The tracer's explanation, compact JSON.
    pub exhaustion: Option<String>,
    pub netns: Option<u64>,
}

/// What the timeline tells as it goes.
pub trait Watcher {
    /// A socket holds its port from `at` on.
    fn opened(&mut self, hold: &Hold, at: u128);
    /// The socket closed into TIME_WAIT at `at`: the port stays held.
    fn time_wait(&mut self, hold: &Hold, at: u128);
    /// The hold is over at `at` (or the capture is); `counted`: `opened` was told of it (a free
    /// whose claim is not in the capture was not).
    fn finished(&mut self, hold: Hold, at: u128, counted: bool);
    fn failed(&mut self, failure: Failure);
}

/// Sockets are told apart by protocol, port, family and the claiming process.
type SocketKey = (Proto, u16, bool, Option<u32>);

fn key(event: &PortEvent) -> SocketKey {
    (
        event.proto,
        event.port,
        event.family == "ipv6",
        event.process.pid,
    )
}

/// The key of the socket a hold is of.
fn hold_key(hold: &Hold) -> SocketKey {
    (
        hold.proto,
        hold.port,
        hold.family == "ipv6",
        hold.process.pid,
    )
}

/// When a free's socket was claimed, by its `held_ns`.
fn claimed_at(event: &PortEvent) -> Option<u128> {
    event
        .held_ns
        .map(|held| event.ts.saturating_sub(u128::from(held)))
}

struct Live {
    hold: Hold,
    counted: bool,
}

#[derive(Default)]
pub struct Timeline {
    live: HashMap<u64, Live>,
    next_id: u64,
    /// Ids of sockets not yet closed, per socket key.
    open: HashMap<SocketKey, Vec<u64>>,
    /// Ids in TIME_WAIT whose end has not been seen.
    time_waits: HashMap<SocketKey, Vec<u64>>,
    /// Ids per protocol and port, for who held a port when a claim failed.
    by_port: HashMap<(Proto, u16), Vec<u64>>,
    /// TIME_WAIT sockets by when their end is overdue, in that order (closes come in order).
    deadlines: VecDeque<(u128, u64)>,
    sees_time_wait_ends: bool,
    last: u128,
}

impl Timeline {
    /// Adds one event; events must come in capture order.
    pub fn add(&mut self, event: &PortEvent, watcher: &mut impl Watcher) {
        self.expire(event.ts, watcher);
        self.last = self.last.max(event.ts);
        match event.kind {
            Kind::Claim => {
                self.end_time_waits_taken_over(event, watcher);
                self.open(event, Some(event.ts), true, false, watcher);
            }
            Kind::Held => self.held(event, watcher),
            Kind::Listen => self.listen(event, watcher),
            Kind::Free if event.time_wait_end => self.time_wait_end(event, watcher),
            Kind::Free => self.free(event, watcher),
            Kind::Fail => self.fail(event, watcher),
        }
    }

    /// The capture is over: every socket still holding a port is handed over as it stands.
    pub fn finish(mut self, watcher: &mut impl Watcher) {
        let mut ids: Vec<u64> = self.live.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            if let Some(live) = self.live.remove(&id) {
                watcher.finished(live.hold, self.last, live.counted);
            }
        }
    }

    /// Sockets in TIME_WAIT past their 60 s (and the slack) end there.
    fn expire(&mut self, now: u128, watcher: &mut impl Watcher) {
        while let Some(&(deadline, id)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            let waiting = self
                .live
                .get(&id)
                .is_some_and(|live| matches!(live.hold.end, End::TimeWait { ended: None, .. }));
            if !waiting {
                continue;
            }
            let Some(mut live) = self.remove(id) else {
                continue;
            };
            remove_id(&mut self.time_waits, &hold_key(&live.hold), id);
            let ended = match live.hold.end {
                End::TimeWait { closed, .. } => closed.unwrap_or(deadline) + TIME_WAIT_NS,
                _ => deadline,
            }
            .min(deadline);
            if let End::TimeWait { ended: end, .. } = &mut live.hold.end {
                *end = Some(ended);
            }
            live.hold.time_wait_assumed = true;
            watcher.finished(live.hold, ended, live.counted);
        }
    }

    fn insert(&mut self, hold: Hold, counted: bool) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.by_port
            .entry((hold.proto, hold.port))
            .or_default()
            .push(id);
        self.live.insert(id, Live { hold, counted });
        id
    }

    fn remove(&mut self, id: u64) -> Option<Live> {
        let live = self.live.remove(&id)?;
        remove_id(&mut self.by_port, &(live.hold.proto, live.hold.port), id);
        Some(live)
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
            time_wait_assumed: false,
        }
    }

    fn open(
        &mut self,
        event: &PortEvent,
        from: Option<u128>,
        claim_seen: bool,
        listening: bool,
        watcher: &mut impl Watcher,
    ) {
        let mut hold = Self::hold(event, from, claim_seen, End::Open);
        hold.listening = listening;
        watcher.opened(&hold, event.ts);
        let id = self.insert(hold, true);
        self.open.entry(key(event)).or_default().push(id);
    }

    /// A connect that got the 4-tuple of a socket still in TIME_WAIT took it over, and the
    /// kernel killed that socket on the way (`tcp_tw_reuse`; `__inet_check_established` in
    /// net/ipv4/inet_hashtables.c): its TIME_WAIT ends here, whether or not the capture has an
    /// end for it (the tracepoint backend records none for such a socket).
    fn end_time_waits_taken_over(&mut self, event: &PortEvent, watcher: &mut impl Watcher) {
        if event.remote.is_none() || !matches!(event.how.as_deref(), Some("connect" | "autobind")) {
            return;
        }
        let taken_over: Vec<u64> = self
            .by_port
            .get(&(event.proto, event.port))
            .into_iter()
            .flatten()
            .copied()
            .filter(|id| {
                self.live.get(id).is_some_and(|live| {
                    let hold = &live.hold;
                    matches!(hold.end, End::TimeWait { ended: None, .. })
                        && hold.remote == event.remote
                        && hold.local_addr == event.local_addr
                        && hold.netns == event.netns
                })
            })
            .collect();
        for id in taken_over {
            let Some(mut live) = self.remove(id) else {
                continue;
            };
            remove_id(&mut self.time_waits, &hold_key(&live.hold), id);
            if let End::TimeWait { ended, .. } = &mut live.hold.end {
                *ended = Some(event.ts);
            }
            watcher.finished(live.hold, event.ts, live.counted);
        }
    }

    fn wait_for_end(&mut self, id: u64, from: u128, event: &PortEvent) {
        let slack = if self.sees_time_wait_ends {
            TIME_WAIT_SLACK_NS
        } else {
            0
        };
        self.deadlines.push_back((from + TIME_WAIT_NS + slack, id));
        self.time_waits.entry(key(event)).or_default().push(id);
    }

    fn held(&mut self, event: &PortEvent, watcher: &mut impl Watcher) {
        match event.state.as_deref() {
            Some("time_wait") => {
                let end = End::TimeWait {
                    closed: None,
                    ended: None,
                };
                let hold = Self::hold(event, None, false, end);
                watcher.opened(&hold, event.ts);
                let id = self.insert(hold, true);
                self.wait_for_end(id, event.ts, event);
            }
            state => self.open(event, None, false, state == Some("listen"), watcher),
        }
    }

    fn listen(&mut self, event: &PortEvent, watcher: &mut impl Watcher) {
        let found = self.open.get(&key(event)).and_then(|ids| {
            ids.iter()
                .rev()
                .copied()
                .find(|id| self.live.get(id).is_some_and(|live| !live.hold.listening))
        });
        match found.and_then(|id| self.live.get_mut(&id)) {
            Some(live) => live.hold.listening = true,
            None => self.open(event, None, false, true, watcher),
        }
    }

    /// Takes the best match for `event` out of `pool[key]`: same peer first, then the claim time
    /// closest to `ts - held_ns`, then the oldest.
    fn take_match(
        live: &HashMap<u64, Live>,
        pool: &mut HashMap<SocketKey, Vec<u64>>,
        event: &PortEvent,
    ) -> Option<u64> {
        let ids = pool.get_mut(&key(event))?;
        let claimed_at = claimed_at(event);
        let position = ids
            .iter()
            .enumerate()
            .filter_map(|(order, id)| Some((order, &live.get(id)?.hold)))
            .min_by_key(|&(order, hold)| {
                let other_peer =
                    event.remote.is_some() && hold.remote.is_some() && hold.remote != event.remote;
                let distance = match (claimed_at, hold.from) {
                    (Some(at), Some(from)) => at.abs_diff(from),
                    _ => u128::MAX,
                };
                (other_peer, distance, order)
            })
            .map(|(position, _)| position)?;
        let id = ids.remove(position);
        if ids.is_empty() {
            pool.remove(&key(event));
        }
        Some(id)
    }

    fn free(&mut self, event: &PortEvent, watcher: &mut impl Watcher) {
        let id = match Self::take_match(&self.live, &mut self.open, event) {
            Some(id) => id,
            // Claimed before the capture: `held_ns` (when known) dates the claim.
            None => self.insert(
                Self::hold(event, claimed_at(event), false, End::Open),
                false,
            ),
        };
        let Some(live) = self.live.get_mut(&id) else {
            return;
        };
        if live.hold.remote.is_none() {
            live.hold.remote = event.remote.clone();
        }
        if event.time_wait {
            live.hold.end = End::TimeWait {
                closed: Some(event.ts),
                ended: None,
            };
            if live.counted {
                watcher.time_wait(&live.hold, event.ts);
            }
            self.wait_for_end(id, event.ts, event);
        } else {
            live.hold.end = End::Closed(event.ts);
            if let Some(live) = self.remove(id) {
                watcher.finished(live.hold, event.ts, live.counted);
            }
        }
    }

    fn time_wait_end(&mut self, event: &PortEvent, watcher: &mut impl Watcher) {
        self.sees_time_wait_ends = true;
        match Self::take_match(&self.live, &mut self.time_waits, event) {
            Some(id) => {
                if let Some(mut live) = self.remove(id) {
                    if let End::TimeWait { ended, .. } = &mut live.hold.end {
                        *ended = Some(event.ts);
                    }
                    watcher.finished(live.hold, event.ts, live.counted);
                }
            }
            // Its start was not seen (or it came later than 65 s and was taken as over).
            None => {
                let end = End::TimeWait {
                    closed: None,
                    ended: Some(event.ts),
                };
                let hold = Self::hold(event, claimed_at(event), false, end);
                watcher.finished(hold, event.ts, false);
            }
        }
    }

    fn fail(&mut self, event: &PortEvent, watcher: &mut impl Watcher) {
        let blocker = event.blocker.clone().flatten();
        let held_by_in_capture = if blocker.is_some() || event.port == 0 {
            Vec::new()
        } else {
            let on_port = self.by_port.get(&(event.proto, event.port));
            let mut holders: Vec<Process> = on_port
                .into_iter()
                .flatten()
                .filter_map(|id| self.live.get(id))
                .map(|live| live.hold.process.clone())
                .collect();
            holders.sort();
            holders.dedup();
            holders
        };
        watcher.failed(Failure {
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
            remote: event.remote.clone(),
            exhaustion: event.exhaustion.clone(),
            netns: event.netns,
        });
    }
}

/// Takes `id` out of `map[key]`, and the entry when it empties.
fn remove_id<K: std::hash::Hash + Eq + Clone>(map: &mut HashMap<K, Vec<u64>>, key: &K, id: u64) {
    if let Some(ids) = map.get_mut(key) {
        if let Some(position) = ids.iter().position(|&other| other == id) {
            ids.swap_remove(position);
        }
        if ids.is_empty() {
            map.remove(key);
        }
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
            exhaustion: None,
        }
    }

    /// Everything the timeline told, in order.
    #[derive(Default)]
    pub struct Told {
        pub finished: Vec<(Hold, u128, bool)>,
        pub failures: Vec<Failure>,
        pub opened: usize,
        pub time_waits: usize,
    }

    impl Watcher for Told {
        fn opened(&mut self, _: &Hold, _: u128) {
            self.opened += 1;
        }
        fn time_wait(&mut self, _: &Hold, _: u128) {
            self.time_waits += 1;
        }
        fn finished(&mut self, hold: Hold, at: u128, counted: bool) {
            self.finished.push((hold, at, counted));
        }
        fn failed(&mut self, failure: Failure) {
            self.failures.push(failure);
        }
    }

    /// The holds, in the order they ended (those left open last, in claim order).
    fn holds(events: &[PortEvent]) -> Vec<Hold> {
        told(events)
            .finished
            .into_iter()
            .map(|(hold, _, _)| hold)
            .collect()
    }

    fn told(events: &[PortEvent]) -> Told {
        let mut timeline = Timeline::default();
        let mut told = Told::default();
        for event in events {
            timeline.add(event, &mut told);
        }
        timeline.finish(&mut told);
        told
    }

    #[test]
    fn a_claim_listen_and_free_make_one_hold() {
        let mut free = event(Kind::Free, 80, 1, 30);
        free.held_ns = Some(20);
        let holds = holds(&[
            event(Kind::Claim, 80, 1, 10),
            event(Kind::Listen, 80, 1, 11),
            free,
        ]);
        assert_eq!(holds.len(), 1);
        let hold = &holds[0];
        assert_eq!((hold.from, hold.end.clone()), (Some(10), End::Closed(30)));
        assert!(hold.listening && hold.claim_seen);
    }

    #[test]
    fn a_connect_taking_over_a_time_wait_ends_it() {
        let connect = |ts| {
            let mut claim = event(Kind::Claim, 40000, 1, ts);
            claim.how = Some("connect".into());
            claim.remote = Some("127.0.0.1:5432".into());
            claim
        };
        let mut time_wait = connect(20);
        time_wait.kind = Kind::Free;
        time_wait.time_wait = true;
        let mut other_peer = connect(1_000);
        other_peer.remote = Some("127.0.0.1:6379".into());
        let holds = holds(&[connect(10), time_wait, other_peer, connect(2_000)]);
        // The TIME_WAIT ends when its 4-tuple is taken again, not when another peer's is.
        assert_eq!(holds.len(), 3, "{holds:?}");
        assert_eq!(
            (holds[0].from, &holds[0].end),
            (
                Some(10),
                &End::TimeWait {
                    closed: Some(20),
                    ended: Some(2_000)
                }
            )
        );
        assert!(!holds[0].time_wait_assumed);
        assert!(holds[1..].iter().all(|hold| hold.end == End::Open));
    }

    #[test]
    fn a_free_goes_to_the_claim_its_held_ns_dates() {
        let mut free = event(Kind::Free, 80, 1, 100);
        free.held_ns = Some(50);
        let holds = holds(&[
            event(Kind::Claim, 80, 1, 10),
            event(Kind::Claim, 80, 1, 50),
            free,
        ]);
        assert_eq!(
            (holds[0].from, &holds[0].end),
            (Some(50), &End::Closed(100))
        );
        assert_eq!((holds[1].from, &holds[1].end), (Some(10), &End::Open));
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
        let holds = holds(&[
            accepted(10, "127.0.0.1:1"),
            accepted(20, "127.0.0.1:2"),
            free,
        ]);
        assert_eq!(
            (holds[0].from, &holds[0].end, holds[1].from),
            (Some(20), &End::Closed(40), Some(10))
        );
    }

    #[test]
    fn time_wait_holds_the_port_until_its_end() {
        let mut close = event(Kind::Free, 80, 1, 20);
        close.time_wait = true;
        let mut end = event(Kind::Free, 80, 1, 60_000);
        end.time_wait_end = true;
        let told = told(&[event(Kind::Claim, 80, 1, 10), close, end]);
        let (hold, at, counted) = &told.finished[0];
        assert_eq!(
            hold.end,
            End::TimeWait {
                closed: Some(20),
                ended: Some(60_000)
            }
        );
        assert_eq!((*at, *counted, told.time_waits), (60_000, true, 1));
        assert!(!hold.time_wait_assumed);
    }

    #[test]
    fn an_unseen_time_wait_end_is_taken_at_sixty_seconds() {
        let mut close = event(Kind::Free, 80, 1, 20);
        close.time_wait = true;
        let later = event(Kind::Claim, 81, 1, 20 + TIME_WAIT_NS + 1);
        let told = told(&[event(Kind::Claim, 80, 1, 10), close, later]);
        let (hold, at, _) = &told.finished[0];
        assert_eq!((hold.port, *at), (80, 20 + TIME_WAIT_NS));
        assert!(hold.time_wait_assumed);
    }

    #[test]
    fn a_free_without_its_claim_was_held_before_the_capture() {
        let mut free = event(Kind::Free, 80, 1, 100);
        free.held_ns = Some(70);
        let told = told(&[free]);
        let (hold, _, counted) = &told.finished[0];
        assert_eq!(
            (hold.from, hold.claim_seen, *counted),
            (Some(30), false, false)
        );
        assert_eq!(hold.end, End::Closed(100));
    }

    #[test]
    fn a_failure_without_a_named_holder_lists_who_held_the_port() {
        let mut fail = event(Kind::Fail, 80, 2, 20);
        fail.errno = Some("EADDRINUSE".into());
        fail.blocker = Some(None);
        let told = told(&[event(Kind::Claim, 80, 1, 10), fail]);
        let failure = &told.failures[0];
        assert_eq!(failure.errno, "EADDRINUSE");
        assert_eq!(failure.blocker, None);
        assert_eq!(failure.held_by_in_capture[0].pid, Some(1));
    }

    #[test]
    fn a_holder_at_start_up_is_open_from_before_the_capture() {
        let mut held = event(Kind::Held, 80, 1, 5);
        held.state = Some("listen".into());
        let holds = holds(&[held, event(Kind::Free, 80, 1, 9)]);
        let hold = &holds[0];
        assert_eq!((hold.from, hold.listening), (None, true));
        assert_eq!(hold.end, End::Closed(9));
    }
}
