//! Command-line arguments, parsed by clap into a validated [`Config`]. Raw arguments never leak
//! past this module.

use std::{collections::HashSet, ops::RangeInclusive, time::Duration};

use clap::{Parser, ValueEnum};

use crate::{
    event::{Kind, Proto},
    ports::{self, PortSet},
};

#[derive(Parser, Debug)]
#[command(
    name = "portwatch",
    version,
    about = "Trace, live, every moment a local TCP/UDP port is claimed or freed, by which process, \
             and every claim that failed and why.",
    after_help = "Examples:\n  sudo portwatch --port 60312\n  sudo portwatch --ephemeral --events fail\n  \
                  sudo portwatch --port 8000-8100,9000 --json > ports.jsonl"
)]
struct Args {
    /// Ports to watch: a port, a range A-B or a comma list; may repeat. Default: every port.
    #[arg(short, long = "port", value_name = "PORTS", value_parser = ports::parse_spec)]
    ports: Vec<Vec<RangeInclusive<u16>>>,
    /// Watch IANA's dynamic range, 49152-65535.
    #[arg(long)]
    dynamic: bool,
    /// Watch this host's ephemeral range (net.ipv4.ip_local_port_range).
    #[arg(long)]
    ephemeral: bool,
    /// Only events of these processes (the claimer's pid on frees); may repeat.
    #[arg(long = "pid", value_name = "PID", value_delimiter = ',')]
    pids: Vec<u32>,
    /// Only events of processes with this command name; may repeat.
    #[arg(long = "comm", value_name = "NAME", value_delimiter = ',')]
    comms: Vec<String>,
    /// Only this protocol.
    #[arg(long, value_enum)]
    proto: Option<ProtoArg>,
    /// Only IPv4.
    #[arg(short = '4', conflicts_with = "ipv6_only")]
    ipv4_only: bool,
    /// Only IPv6.
    #[arg(short = '6')]
    ipv6_only: bool,
    /// Event kinds to show.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "KINDS")]
    events: Vec<KindArg>,
    /// Stop after this long, e.g. 30s, 500ms, 5m, 1h.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Stop after this many events.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Which kernel hooks to use; auto takes the best that attaches.
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendArg,
    /// Try the backends, report which attach on this kernel and what auto would pick, and exit.
    #[arg(long)]
    check: bool,
    /// Ring buffer size in KiB (a power of two, at least 4).
    #[arg(long, default_value_t = 1024, value_parser = parse_ring_kib)]
    ring_kib: u32,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ProtoArg {
    Tcp,
    Udp,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum KindArg {
    Claim,
    Free,
    Fail,
    Listen,
    Held,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    Auto,
    Fentry,
    Kprobe,
    Tracepoint,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

/// Everything the tracer needs to know, validated.
#[derive(Clone, Debug)]
pub struct Config {
    /// None: every port.
    pub ports: Option<PortSet>,
    /// Deliver failures that have no port (the kernel found none to choose): only useful when
    /// watching every port or a range the kernel chooses from.
    pub portless_failures: bool,
    pub pids: HashSet<u32>,
    pub comms: HashSet<String>,
    pub protos: HashSet<Proto>,
    pub ipv4: bool,
    pub ipv6: bool,
    pub kinds: HashSet<Kind>,
    pub duration: Option<Duration>,
    pub count: Option<u64>,
    pub format: Format,
    pub backend: BackendArg,
    pub check: bool,
    pub ring_bytes: u32,
}

impl Config {
    /// Parses the process arguments; clap prints its own error and exits 2 on bad input.
    pub fn from_args() -> anyhow::Result<Self> {
        Self::from_parsed(Args::parse())
    }

    #[cfg(test)]
    fn try_from_iter<I: IntoIterator<Item = &'static str>>(args: I) -> anyhow::Result<Self> {
        Self::from_parsed(Args::try_parse_from(args)?)
    }

    fn from_parsed(args: Args) -> anyhow::Result<Self> {
        let mut ranges: Vec<RangeInclusive<u16>> = args.ports.into_iter().flatten().collect();
        if args.dynamic {
            ranges.push(ports::DYNAMIC);
        }
        let ephemeral = ports::ephemeral();
        if args.ephemeral {
            ranges.push(
                ephemeral
                    .as_ref()
                    .map_err(|err| anyhow::anyhow!("--ephemeral: {err}"))?
                    .clone(),
            );
        }
        let ports = (!ranges.is_empty()).then(|| PortSet::new(ranges));
        let portless_failures = match (&ports, &ephemeral) {
            (None, _) => true,
            (Some(set), Ok(range)) => set.intersects(range),
            (Some(_), Err(_)) => false,
        };
        let protos = match args.proto {
            Some(ProtoArg::Tcp) => HashSet::from([Proto::Tcp]),
            Some(ProtoArg::Udp) => HashSet::from([Proto::Udp]),
            None => HashSet::from([Proto::Tcp, Proto::Udp]),
        };
        let kinds = if args.events.is_empty() {
            Kind::ALL.into_iter().collect()
        } else {
            args.events
                .iter()
                .map(|kind| match kind {
                    KindArg::Claim => Kind::Claim,
                    KindArg::Free => Kind::Free,
                    KindArg::Fail => Kind::Fail,
                    KindArg::Listen => Kind::Listen,
                    KindArg::Held => Kind::Held,
                })
                .collect()
        };
        Ok(Config {
            ports,
            portless_failures,
            pids: args.pids.into_iter().collect(),
            comms: args.comms.into_iter().collect(),
            protos,
            ipv4: !args.ipv6_only,
            ipv6: !args.ipv4_only,
            kinds,
            duration: args.duration,
            count: args.count,
            format: if args.json {
                Format::Json
            } else {
                Format::Table
            },
            backend: args.backend,
            check: args.check,
            ring_bytes: args.ring_kib * 1024,
        })
    }

    /// What is watched, in words, for the status line.
    pub fn describe(&self) -> String {
        let ports = match &self.ports {
            Some(set) => format!("ports {}", set.describe()),
            None => "every port".to_string(),
        };
        let mut protos: Vec<&str> = self.protos.iter().map(|proto| proto.name()).collect();
        protos.sort();
        let families = match (self.ipv4, self.ipv6) {
            (true, true) => "ipv4+ipv6",
            (true, false) => "ipv4",
            _ => "ipv6",
        };
        format!("{ports} ({}, {families})", protos.join("+"))
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s"))?;
    let duration = match unit {
        "ms" => Duration::from_millis(value),
        "s" | "" => Duration::from_secs(value),
        "m" | "h" => {
            let unit_secs = if unit == "m" { 60 } else { 3600 };
            // Unchecked, a huge count wrapped around to some other duration, silently.
            let secs = value
                .checked_mul(unit_secs)
                .ok_or_else(|| format!("{text:?} is too long a duration"))?;
            Duration::from_secs(secs)
        }
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?}; use ms, s, m or h"
            ));
        }
    };
    if duration.is_zero() {
        return Err("the duration must be longer than zero".into());
    }
    Ok(duration)
}

fn parse_ring_kib(text: &str) -> Result<u32, String> {
    let kib: u32 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a size in KiB"))?;
    if kib < 4 || !kib.is_power_of_two() || kib > 1 << 20 {
        return Err(format!(
            "{kib} KiB: the ring buffer must be a power of two from 4 to 1048576 KiB"
        ));
    }
    Ok(kib)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&'static str]) -> Config {
        Config::try_from_iter(std::iter::once("portwatch").chain(args.iter().copied())).unwrap()
    }

    fn error(args: &[&'static str]) -> String {
        Config::try_from_iter(std::iter::once("portwatch").chain(args.iter().copied()))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn repeated_and_listed_ports_combine() {
        let config = config(&["--port", "60312", "-p", "80,443", "--port", "1000-1001"]);
        assert_eq!(config.ports.unwrap().describe(), "80,443,1000-1001,60312");
    }

    #[test]
    fn no_port_option_watches_everything_including_portless_failures() {
        let config = config(&[]);
        assert!(config.ports.is_none());
        assert!(config.portless_failures);
        assert_eq!(config.describe(), "every port (tcp+udp, ipv4+ipv6)");
    }

    #[test]
    fn a_single_low_port_does_not_want_portless_failures() {
        assert!(!config(&["--port", "80"]).portless_failures);
        assert!(config(&["--ephemeral"]).portless_failures);
    }

    #[test]
    fn dynamic_is_ianas_range() {
        assert_eq!(
            config(&["--dynamic"]).ports.unwrap().describe(),
            "49152-65535"
        );
    }

    #[test]
    fn filters_parse() {
        let config = config(&[
            "--pid",
            "1,2",
            "--comm",
            "nginx",
            "--proto",
            "udp",
            "-6",
            "--events",
            "claim,fail",
            "--duration",
            "500ms",
            "--count",
            "3",
            "--json",
            "--backend",
            "tracepoint",
        ]);
        assert_eq!(config.pids, HashSet::from([1, 2]));
        assert_eq!(config.comms, HashSet::from(["nginx".to_string()]));
        assert_eq!(config.protos, HashSet::from([Proto::Udp]));
        assert!(!config.ipv4 && config.ipv6);
        assert_eq!(config.kinds, HashSet::from([Kind::Claim, Kind::Fail]));
        assert_eq!(config.duration, Some(Duration::from_millis(500)));
        assert_eq!(config.count, Some(3));
        assert_eq!(config.format, Format::Json);
        assert_eq!(config.backend, BackendArg::Tracepoint);
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        assert!(error(&["--port", "0"]).contains("port 0 is not a port"));
        assert!(error(&["--port", "65536"]).contains("out of range"));
        assert!(error(&["--port", "abc"]).contains("not a port number"));
        assert!(error(&["--port", "9-3"]).contains("reversed"));
        assert!(error(&["--duration", "5y"]).contains("unknown unit"));
        assert!(error(&["--duration", "9999999999999999999h"]).contains("too long a duration"));
        assert!(error(&["--count", "0"]).contains("0 is not in 1.."));
        assert!(error(&["-4", "-6"]).contains("cannot be used with"));
        assert!(error(&["--ring-kib", "1000"]).contains("power of two"));
        assert!(error(&["--events", "bogus"]).contains("possible values: claim"));
    }
}
