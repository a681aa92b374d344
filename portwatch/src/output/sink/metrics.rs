//! Prometheus metrics from the event stream: counters of claims, frees and failures, and a gauge
//! of the ports in use per range. Labels stay low-cardinality (protocol, how, errno, range): a
//! pid or a port as a label would make one time series per process or port.
//!
//! "In use" is the holder table's: a port is in use from its claim (or its `held` report at
//! start-up) until its last holder gives it back. A `free` with `time_wait` hands the port to a
//! TIME_WAIT socket, which still holds it; only the `time_wait_end` free gives it back. The
//! gauge follows every event the kernel reported (before `--pid`, `--comm` and `--events`); the
//! counters count the events printed (after them), and their help text says so.

use std::{io, ops::RangeInclusive};

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use super::Sink;
use crate::{
    live::holders::{PortChange, Toward},
    live::pressure::Pressure,
    model::clock::Timestamp,
    model::event::{Event, Kind, errno_name, how_name},
    model::ports,
    model::proto::Proto,
};

/// What the counters' help texts add: which events they count.
const AFTER_FILTERS: &str = " Counts the events shown, after --pid, --comm and --events.";

/// A named port range for the in-use gauge. Ranges overlap (the ephemeral range lies inside the
/// registered and dynamic ones), so a port counts in every range that contains it.
struct NamedRange {
    name: &'static str,
    ports: RangeInclusive<u16>,
}

pub struct MetricsSink {
    claims: IntCounterVec,
    frees: IntCounterVec,
    time_waits: IntCounterVec,
    fails: IntCounterVec,
    ports_in_use: IntGaugeVec,
    destination_ports: IntGaugeVec,
    /// The label values of the destination series set now.
    destinations: Vec<[String; 4]>,
    lost: IntCounter,
    ranges: Vec<NamedRange>,
}

impl MetricsSink {
    /// The sink and the registry the HTTP endpoint encodes. `ephemeral` is this host's ephemeral
    /// range, when it could be read.
    pub fn new(
        backend: &str,
        ephemeral: Option<RangeInclusive<u16>>,
    ) -> prometheus::Result<(Self, Registry)> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let help = format!("{help}{AFTER_FILTERS}");
            let counter = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(counter.clone()))?;
            Ok::<_, prometheus::Error>(counter)
        };
        let claims = counter(
            "portwatch_claims_total",
            "Ports claimed by sockets, by how they were claimed.",
            &["proto", "how"],
        )?;
        let frees = counter(
            "portwatch_frees_total",
            "Ports given back by sockets (TIME_WAIT starts are not counted here, their ends are).",
            &["proto", "how"],
        )?;
        let time_waits = counter(
            "portwatch_time_wait_starts_total",
            "TCP closes that left a TIME_WAIT socket, which still holds the port.",
            &["proto"],
        )?;
        let fails = counter(
            "portwatch_fails_total",
            "Failed attempts to claim a port, by how and the errno.",
            &["proto", "how", "errno"],
        )?;
        let ports_in_use = IntGaugeVec::new(
            Opts::new(
                "portwatch_ports_in_use",
                "Watched ports held by at least one socket now, per range (ranges overlap); \
                 every event the kernel reported counts, whatever --pid, --comm and --events \
                 show.",
            ),
            &["proto", "range"],
        )?;
        registry.register(Box::new(ports_in_use.clone()))?;
        let destination_ports = IntGaugeVec::new(
            Opts::new(
                "portwatch_destination_ports",
                "Local ports in use toward a destination from one source address (connections \
                 portwatch saw made, TIME_WAIT included), for the 20 busiest destinations only, \
                 so the series stay few; a connect to it fails once this reaches the usable \
                 ports of the namespace's range.",
            ),
            &["netns", "proto", "source", "destination"],
        )?;
        registry.register(Box::new(destination_ports.clone()))?;
        let lost = IntCounter::new(
            "portwatch_lost_events_total",
            "Events dropped because the ring buffer was full.",
        )?;
        registry.register(Box::new(lost.clone()))?;
        let info = |name: &str, help: &str, label: &str, value: &str| {
            let gauge = IntGauge::with_opts(Opts::new(name, help).const_label(label, value))?;
            gauge.set(1);
            registry.register(Box::new(gauge))
        };
        info(
            "portwatch_build_info",
            "The portwatch version serving these metrics.",
            "version",
            env!("CARGO_PKG_VERSION"),
        )?;
        info(
            "portwatch_backend_info",
            "The kernel hooks portwatch attached with.",
            "backend",
            backend,
        )?;

        let mut ranges = vec![
            NamedRange {
                name: "well_known",
                ports: 0..=1023,
            },
            NamedRange {
                name: "registered",
                ports: 1024..=49151,
            },
            NamedRange {
                name: "dynamic",
                ports: ports::DYNAMIC,
            },
        ];
        ranges.extend(ephemeral.map(|ports| NamedRange {
            name: "ephemeral",
            ports,
        }));
        // Every series exists from the first scrape, so "no ports in use" reads 0, not absent.
        for proto in [Proto::Tcp, Proto::Udp] {
            for range in &ranges {
                ports_in_use.with_label_values(&[proto.name(), range.name]);
            }
        }
        let sink = Self {
            claims,
            frees,
            time_waits,
            fails,
            ports_in_use,
            destination_ports,
            destinations: Vec::new(),
            lost,
            ranges,
        };
        Ok((sink, registry))
    }
}

fn how_label(event: &Event) -> &'static str {
    event.how.map_or("unknown", how_name)
}

impl Sink for MetricsSink {
    fn event(&mut self, event: &Event) -> io::Result<()> {
        let proto = event.proto.name();
        match event.kind {
            Kind::Claim => {
                self.claims
                    .with_label_values(&[proto, how_label(event)])
                    .inc();
            }
            Kind::Free if event.time_wait && !event.time_wait_end => {
                self.time_waits.with_label_values(&[proto]).inc();
            }
            Kind::Free => {
                self.frees
                    .with_label_values(&[proto, how_label(event)])
                    .inc();
            }
            Kind::Fail => {
                let errno = event.errno.map_or_else(|| "unknown".into(), errno_name);
                self.fails
                    .with_label_values(&[proto, how_label(event), &errno])
                    .inc();
            }
            Kind::Listen | Kind::Held => {}
        }
        Ok(())
    }

    fn lost(&mut self, _ts: Timestamp, count: u64) -> io::Result<()> {
        self.lost.inc_by(count);
        Ok(())
    }

    fn occupancy(&mut self, change: &PortChange) -> io::Result<()> {
        let delta = if change.taken { 1 } else { -1 };
        for range in self
            .ranges
            .iter()
            .filter(|range| range.ports.contains(&change.port))
        {
            self.ports_in_use
                .with_label_values(&[change.proto.name(), range.name])
                .add(delta);
        }
        Ok(())
    }

    /// Sets the busiest destinations' series and removes those that left the top.
    fn destinations(&mut self, top: &[(Toward, u32)]) -> io::Result<()> {
        let labelled: Vec<([String; 4], u32)> = top
            .iter()
            .map(|((netns, proto, source, (addr, port)), ports)| {
                let netns = netns.map_or_else(String::new, |netns| netns.to_string());
                let labels = [
                    netns,
                    proto.name().to_string(),
                    source.to_string(),
                    crate::model::text::endpoint(addr, *port),
                ];
                (labels, *ports)
            })
            .collect();
        for gone in &self.destinations {
            if !labelled.iter().any(|(labels, _)| labels == gone) {
                let gone: Vec<&str> = gone.iter().map(String::as_str).collect();
                let _ = self.destination_ports.remove_label_values(&gone);
            }
        }
        for (labels, ports) in &labelled {
            let values: Vec<&str> = labels.iter().map(String::as_str).collect();
            self.destination_ports
                .with_label_values(&values)
                .set(i64::from(*ports));
        }
        self.destinations = labelled.into_iter().map(|(labels, _)| labels).collect();
        Ok(())
    }

    /// Pressure is the gauge of ports in use, already exported per range.
    fn pressure(&mut self, _pressure: &Pressure) -> io::Result<()> {
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use portwatch_ebpf::How;

    use super::*;
    use crate::{live::holders::Holders, model::event::fixtures::sample};

    /// An event through the holder table (which tells the sink of ports taken and given
    /// back), then to the sink, as the tracer does.
    fn feed(sink: &mut MetricsSink, holders: &mut Holders, event: &Event) {
        if let Some(change) = holders.observe(event) {
            sink.occupancy(&change).unwrap();
        }
        sink.event(event).unwrap();
    }

    fn event(kind: Kind, port: u16, how: How) -> Event {
        Event {
            kind,
            local_port: port,
            how: Some(how),
            time_wait: false,
            errno: (kind == Kind::Fail).then_some(libc::EADDRINUSE),
            ..sample()
        }
    }

    fn value(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        registry
            .gather()
            .iter()
            .filter(|family| family.name() == name)
            .flat_map(|family| family.get_metric())
            .find(|metric| {
                labels.iter().all(|(label, want)| {
                    metric
                        .get_label()
                        .iter()
                        .any(|pair| pair.name() == *label && pair.value() == *want)
                })
            })
            .map(|metric| {
                if name.ends_with("_total") {
                    metric.get_counter().get_value()
                } else {
                    metric.get_gauge().get_value()
                }
            })
    }

    fn in_use(registry: &Registry, proto: &str, range: &str) -> f64 {
        value(
            registry,
            "portwatch_ports_in_use",
            &[("proto", proto), ("range", range)],
        )
        .unwrap()
    }

    #[test]
    fn a_port_stays_in_use_through_time_wait_until_its_end() {
        let (mut sink, registry) = MetricsSink::new("tracepoint", Some(32768..=60999)).unwrap();
        let mut holders = Holders::default();
        feed(
            &mut sink,
            &mut holders,
            &event(Kind::Claim, 50000, How::Connect),
        );
        assert_eq!(in_use(&registry, "tcp", "dynamic"), 1.0);
        assert_eq!(in_use(&registry, "tcp", "ephemeral"), 1.0);
        assert_eq!(in_use(&registry, "tcp", "registered"), 0.0);
        let time_wait = Event {
            time_wait: true,
            ..event(Kind::Free, 50000, How::Connect)
        };
        feed(&mut sink, &mut holders, &time_wait);
        assert_eq!(in_use(&registry, "tcp", "dynamic"), 1.0);
        let end = Event {
            time_wait_end: true,
            ..event(Kind::Free, 50000, How::Connect)
        };
        feed(&mut sink, &mut holders, &end);
        assert_eq!(in_use(&registry, "tcp", "dynamic"), 0.0);
        assert_eq!(in_use(&registry, "tcp", "ephemeral"), 0.0);
        let labels = [("proto", "tcp"), ("how", "connect")];
        assert_eq!(
            value(&registry, "portwatch_claims_total", &labels),
            Some(1.0)
        );
        assert_eq!(
            value(&registry, "portwatch_frees_total", &labels),
            Some(1.0)
        );
        assert_eq!(
            value(
                &registry,
                "portwatch_time_wait_starts_total",
                &[("proto", "tcp")]
            ),
            Some(1.0)
        );
    }

    #[test]
    fn a_port_shared_by_a_listener_and_its_connections_counts_once() {
        let (mut sink, registry) = MetricsSink::new("fentry", None).unwrap();
        let mut holders = Holders::default();
        feed(&mut sink, &mut holders, &event(Kind::Held, 8080, How::Bind));
        feed(
            &mut sink,
            &mut holders,
            &event(Kind::Claim, 8080, How::Accept),
        );
        assert_eq!(in_use(&registry, "tcp", "registered"), 1.0);
        feed(&mut sink, &mut holders, &event(Kind::Free, 8080, How::Bind));
        assert_eq!(in_use(&registry, "tcp", "registered"), 1.0);
        feed(
            &mut sink,
            &mut holders,
            &event(Kind::Free, 8080, How::Accept),
        );
        assert_eq!(in_use(&registry, "tcp", "registered"), 0.0);
        // A free of a claim never seen leaves the gauge alone.
        feed(&mut sink, &mut holders, &event(Kind::Free, 8080, How::Bind));
        assert_eq!(in_use(&registry, "tcp", "registered"), 0.0);
        assert!(
            value(
                &registry,
                "portwatch_ports_in_use",
                &[("range", "ephemeral")]
            )
            .is_none()
        );
    }

    #[test]
    fn failures_are_counted_by_errno_and_losses_by_count() {
        let (mut sink, registry) = MetricsSink::new("kprobe", None).unwrap();
        let mut holders = Holders::default();
        feed(&mut sink, &mut holders, &event(Kind::Fail, 80, How::Bind));
        sink.lost(Timestamp::from_unix_nanos(0), 7).unwrap();
        assert_eq!(
            value(
                &registry,
                "portwatch_fails_total",
                &[("how", "bind"), ("errno", "EADDRINUSE")]
            ),
            Some(1.0)
        );
        assert_eq!(
            value(&registry, "portwatch_lost_events_total", &[]),
            Some(7.0)
        );
        assert_eq!(in_use(&registry, "tcp", "well_known"), 0.0);
        assert_eq!(
            value(
                &registry,
                "portwatch_backend_info",
                &[("backend", "kprobe")]
            ),
            Some(1.0)
        );
    }

    #[test]
    fn the_destination_gauge_keeps_only_the_current_top() {
        let (mut sink, registry) = MetricsSink::new("tracepoint", None).unwrap();
        let lo = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
        let toward = |port| (Some(7), Proto::Tcp, lo, (lo, port));
        sink.destinations(&[(toward(5432), 4), (toward(6379), 1)])
            .unwrap();
        let series = |destination: &str| {
            value(
                &registry,
                "portwatch_destination_ports",
                &[("destination", destination)],
            )
        };
        assert_eq!(series("127.0.0.1:5432"), Some(4.0));
        sink.destinations(&[(toward(6379), 2)]).unwrap();
        assert_eq!(series("127.0.0.1:5432"), None);
        assert_eq!(series("127.0.0.1:6379"), Some(2.0));
    }
}
