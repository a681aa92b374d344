//! The peak number of ephemeral ports in use, per protocol, against the size of the range. A port
//! is in use while any socket holds it, TIME_WAIT included (until its end), so a port shared by a
//! listener and its accepted connections counts once. Ports are per network namespace, and so is
//! the range: the peak is the fullest namespace's.

use std::{collections::HashMap, ops::RangeInclusive};

use super::{timeline::Hold, window::Window};
use crate::model::event::Proto;

/// Where the ephemeral range came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RangeSource {
    /// The capture header's `ephemeral_range`.
    Header,
    /// The `range` of the capture's first `pressure` record (the tracer read it in the
    /// namespace whose range filled).
    PressureRecord,
    /// This host's `/proc/sys/net/ipv4/ip_local_port_range`, read now: the capture does not say.
    ThisHost,
    /// Neither: the header has none and this host's could not be read (the reason).
    Unknown(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peak {
    pub proto: Proto,
    pub ports: usize,
    /// When the peak was first reached; None when no ephemeral port was held.
    pub at: Option<u128>,
    /// The namespace that reached it (None: the records do not say).
    pub netns: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pressure {
    pub range: Option<RangeInclusive<u16>>,
    pub source: RangeSource,
    pub peaks: Vec<Peak>,
}

impl Pressure {
    /// Ports in `range` held at once at most, within `window`.
    pub fn measure(
        holds: &[&Hold],
        range: Option<RangeInclusive<u16>>,
        source: RangeSource,
        window: &Window,
    ) -> Self {
        let peaks = [Proto::Tcp, Proto::Udp]
            .into_iter()
            .map(|proto| match &range {
                Some(range) => peak(holds, proto, range, window),
                None => Peak {
                    proto,
                    ports: 0,
                    at: None,
                    netns: None,
                },
            })
            .collect();
        Self {
            range,
            source,
            peaks,
        }
    }

    pub fn range_size(&self) -> usize {
        self.range
            .as_ref()
            .map_or(0, |range| usize::from(*range.end() - *range.start()) + 1)
    }
}

fn peak(holds: &[&Hold], proto: Proto, range: &RangeInclusive<u16>, window: &Window) -> Peak {
    // (time, +1 or -1, namespace, port); at equal times ends go first: a port freed and taken
    // again in the same nanosecond was not held twice.
    let mut changes: Vec<(u128, i8, Option<u64>, u16)> = Vec::new();
    for hold in holds {
        if hold.proto != proto || !range.contains(&hold.port) {
            continue;
        }
        let (start, end) = window.clip(hold);
        if start < end {
            changes.push((start, 1, hold.netns, hold.port));
            changes.push((end, -1, hold.netns, hold.port));
        }
    }
    changes.sort_unstable();
    let mut sockets: HashMap<(Option<u64>, u16), u32> = HashMap::new();
    let mut in_use: HashMap<Option<u64>, usize> = HashMap::new();
    let mut best = Peak {
        proto,
        ports: 0,
        at: None,
        netns: None,
    };
    for (at, change, netns, port) in changes {
        let count = sockets.entry((netns, port)).or_default();
        let ports = in_use.entry(netns).or_default();
        if change > 0 {
            *count += 1;
            if *count == 1 {
                *ports += 1;
                if *ports > best.ports {
                    best = Peak {
                        proto,
                        ports: *ports,
                        at: Some(at),
                        netns,
                    };
                }
            }
        } else {
            *count -= 1;
            if *count == 0 {
                *ports -= 1;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        commands::report::timeline::{Timeline, tests::event},
        model::event::Kind,
    };

    #[test]
    fn ports_held_at_once_count_once_each_and_time_wait_keeps_them() {
        let mut timeline = Timeline::default();
        let mut time_wait = event(Kind::Free, 40001, 1, 20);
        time_wait.time_wait = true;
        let mut accepted = event(Kind::Claim, 40000, 1, 12);
        accepted.remote = Some("127.0.0.1:9".into());
        for event in [
            event(Kind::Claim, 40000, 1, 10),
            accepted,
            event(Kind::Claim, 40001, 1, 11),
            time_wait,
            event(Kind::Claim, 40002, 2, 30),
            event(Kind::Claim, 80, 2, 31),
        ] {
            timeline.add(&event);
        }
        let holds: Vec<&Hold> = timeline.holds.iter().collect();
        let window = Window::new(0, 100);
        let pressure = Pressure::measure(&holds, Some(40000..=40009), RangeSource::Header, &window);
        assert_eq!(pressure.range_size(), 10);
        assert_eq!(
            pressure.peaks[0],
            Peak {
                proto: Proto::Tcp,
                ports: 3,
                at: Some(30),
                netns: None,
            }
        );
        assert_eq!(pressure.peaks[1].ports, 0);
    }

    #[test]
    fn each_namespace_has_its_own_ports() {
        let mut timeline = Timeline::default();
        for (netns, port) in [(1, 40000), (2, 40000), (2, 40001)] {
            let mut claim = event(Kind::Claim, port, 1, 10);
            claim.netns = Some(netns);
            timeline.add(&claim);
        }
        let holds: Vec<&Hold> = timeline.holds.iter().collect();
        let window = Window::new(0, 100);
        let pressure = Pressure::measure(&holds, Some(40000..=40009), RangeSource::Header, &window);
        assert_eq!(
            (pressure.peaks[0].ports, pressure.peaks[0].netns),
            (2, Some(2))
        );
    }
}
