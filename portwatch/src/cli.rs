//! Command-line arguments, parsed by clap into a validated [`Command`]. Raw arguments never leak
//! past this module.
//!
//! Tracing is the default command: `portwatch --port 60312` and `portwatch trace --port 60312`
//! are the same. The one-shot and offline commands are subcommands.

use std::{
    collections::HashSet,
    net::SocketAddr,
    ops::RangeInclusive,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Args, CommandFactory as _, Parser, Subcommand, ValueEnum};

use crate::{
    commands::{
        config::{TraceConfig, WhoConfig},
        report,
    },
    host::snapshot::{Scope, namespaces},
    kernel::backend::Choice,
    model::container,
    model::event::Kind,
    model::ports::{self, PortSet},
    model::proto::Proto,
    output::{Format, sink::FileOptions},
};

#[derive(Parser, Debug)]
#[command(
    name = "portwatch",
    version,
    about = "Trace, live, every moment a local TCP/UDP port is claimed or freed, by which process, \
             and every claim that failed and why.",
    after_help = "Examples:\n  sudo portwatch --port 60312\n  sudo portwatch --ephemeral --events fail\n  \
                  sudo portwatch --port 8000-8100,9000 --json > ports.jsonl",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<CommandArgs>,
    /// Tracing options when no subcommand is named.
    #[command(flatten)]
    trace: TraceArgs,
}

#[derive(Subcommand, Debug)]
enum CommandArgs {
    /// Trace port claims, frees and failures (the default command).
    Trace(TraceArgs),
    /// Check that capture files are whole: no missing records or parts, every seal matching.
    /// Exit 0 when whole, 1 when not, 2 when the files cannot be read.
    Verify {
        /// The capture's files, in any order (FILE FILE.1.gz ...).
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Print a shell completion script for portwatch (for packaging).
    #[command(hide = true)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write portwatch's man pages, one per command, into DIR (for packaging).
    #[command(hide = true)]
    Man {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// The ephemeral ports of this network namespace and those under /run/netns now (one
    /// shot, no eBPF): range, ports in use, the busiest destinations, ports blocked for every
    /// destination, and advice that what was measured supports.
    Ephemeral,
    /// What these ports are and who holds them now (one shot, no eBPF). Exit 0: something
    /// holds a port; 1: all are free; 2: error.
    Who(WhoArgs),
    /// What happened in a capture: per port the holders over time and how they claimed it,
    /// failed claims and who blocked them, the busiest processes, the ephemeral peak, and what
    /// was lost. Exit 0; 1 when --strict meets an unreadable line; 2 when a file cannot be opened.
    Report(ReportArgs),
}

#[derive(Args, Debug)]
struct WhoArgs {
    /// Ports to look up.
    #[arg(value_name = "PORT", required = true, value_parser = ports::parse_port)]
    ports: Vec<u16>,
    /// One JSON object per port instead of a table.
    #[arg(long)]
    json: bool,
    /// Only this network namespace (default: every one on the host): its inode, a path, a
    /// pid in it, an `ip netns` name or `self`.
    #[arg(long, value_name = "NETNS", value_parser = namespaces::parse_target)]
    netns: Option<u32>,
}

#[derive(Args, Debug)]
struct ReportArgs {
    /// The capture's files, in any order (FILE FILE.1.gz ...); `-` reads standard input.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Only these ports: a port, a range A-B or a comma list; may repeat.
    #[arg(short, long = "port", value_name = "PORTS", value_parser = ports::parse_spec)]
    ports: Vec<Vec<RangeInclusive<u16>>>,
    /// Only from this time: RFC 3339 (2026-11-26T09:50:00Z) or +DURATION after the start (+30s).
    #[arg(long, value_name = "TIME", value_parser = parse_bound)]
    since: Option<report::Bound>,
    /// Only until this time: RFC 3339 or +DURATION after the start of the capture.
    #[arg(long, value_name = "TIME", value_parser = parse_bound)]
    until: Option<report::Bound>,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Also write one self-contained HTML page (charts included, nothing fetched) to OUT.
    #[arg(long, value_name = "OUT")]
    html: Option<PathBuf>,
    /// Stop at the first unreadable line or missing record (exit 1) instead of skipping it.
    #[arg(long)]
    strict: bool,
    /// Every socket of every port after the summary (`--port` does this for its ports).
    #[arg(long)]
    detail: bool,
}

#[derive(Args, Debug)]
struct TraceArgs {
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
    /// Only events of processes with this command name (taken whole, commas included); may
    /// repeat.
    #[arg(long = "comm", value_name = "NAME")]
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
    /// Also write every event as JSON lines to FILE (a capture: header, seq, summary).
    #[arg(long, value_name = "FILE", help_heading = "Capture files")]
    output: Option<PathBuf>,
    /// Start a new part when FILE reaches SIZE (e.g. 100M, 1G): FILE.1, FILE.2, ...
    #[arg(long, value_name = "SIZE", value_parser = parse_size, requires = "output", help_heading = "Capture files")]
    rotate_size: Option<u64>,
    /// Rotated parts to keep; older ones are deleted.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000), requires = "rotate_size", help_heading = "Capture files")]
    rotate_keep: u32,
    /// Gzip rotated parts (FILE.1.gz, ...).
    #[arg(long, requires = "rotate_size", help_heading = "Capture files")]
    compress: bool,
    /// Chain every record of FILE to the one before with BLAKE3 (check with `portwatch verify`).
    #[arg(long, requires = "output", help_heading = "Capture files")]
    seal: bool,
    /// Print nothing on stdout (with --output: the capture file is the only output).
    #[arg(short, long, requires = "output", help_heading = "Capture files")]
    quiet: bool,
    /// Add the process's executable, command line, user, parent, cgroup and container.
    #[arg(long)]
    audit: bool,
    /// Report when this share of a namespace's ephemeral range is in use (0: never).
    #[arg(long, value_name = "PCT", default_value_t = 80, value_parser = clap::value_parser!(u8).range(0..=100))]
    pressure: u8,
    /// Report rare states the kernel programs did not expect (a socket of an unknown family, a
    /// claim map that refused an insert, an unpaired syscall) on stderr, for bug reports.
    #[arg(long)]
    debug_kernel: bool,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics, e.g. 127.0.0.1:9834.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<SocketAddr>,
    /// Only this network namespace (default: every one): its inode, a path, a pid in it, an
    /// `ip netns` name or `self`.
    #[arg(long, value_name = "NETNS", value_parser = namespaces::parse_target)]
    netns: Option<u32>,
    /// Only events of processes in this container: its name, or its id or the start of it; may
    /// repeat.
    #[arg(long = "container", value_name = "NAME|ID")]
    containers: Vec<String>,
    /// Only events of processes in this Kubernetes pod; may repeat.
    #[arg(long = "pod", value_name = "NAMESPACE/NAME", value_parser = container::parse_pod)]
    pods: Vec<container::PodName>,
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

impl BackendArg {
    fn choice(self) -> Choice {
        match self {
            BackendArg::Auto => Choice::Auto,
            BackendArg::Fentry => Choice::Fentry,
            BackendArg::Kprobe => Choice::Kprobe,
            BackendArg::Tracepoint => Choice::Tracepoint,
        }
    }
}

/// What the user asked portwatch to do, validated.
#[derive(Debug)]
pub enum Command {
    Trace(Box<TraceConfig>),
    Verify(Vec<PathBuf>),
    /// Generated from these definitions, so packaged docs never drift from the binary.
    Completions(clap_complete::Shell),
    /// The directory to write the man pages into.
    Man(PathBuf),
    Who(WhoConfig),
    Report(report::Options),
    Ephemeral,
}

impl Command {
    /// Parses the process arguments; clap prints its own error and exits 2 on bad input.
    pub fn from_args() -> anyhow::Result<Self> {
        Self::from_parsed(Cli::parse())
    }

    #[cfg(test)]
    fn try_from_iter<I: IntoIterator<Item = &'static str>>(args: I) -> anyhow::Result<Self> {
        Self::from_parsed(Cli::try_parse_from(args)?)
    }

    fn from_parsed(cli: Cli) -> anyhow::Result<Self> {
        match cli.command {
            None => Ok(Command::Trace(Box::new(trace_config(cli.trace)?))),
            Some(CommandArgs::Trace(args)) => Ok(Command::Trace(Box::new(trace_config(args)?))),
            Some(CommandArgs::Verify { files }) => Ok(Command::Verify(files)),
            Some(CommandArgs::Completions { shell }) => Ok(Command::Completions(shell)),
            Some(CommandArgs::Man { dir }) => Ok(Command::Man(dir)),
            Some(CommandArgs::Who(args)) => Ok(Command::Who(who_config(args))),
            Some(CommandArgs::Ephemeral) => Ok(Command::Ephemeral),
            Some(CommandArgs::Report(args)) => {
                let ranges: Vec<RangeInclusive<u16>> = args.ports.into_iter().flatten().collect();
                Ok(Command::Report(report::Options {
                    files: args.files,
                    narrowing: report::Narrowing {
                        ports: (!ranges.is_empty()).then(|| PortSet::new(ranges)),
                        since: args.since,
                        until: args.until,
                    },
                    json: args.json,
                    html: args.html,
                    strict: args.strict,
                    detail: args.detail,
                }))
            }
        }
    }
}

fn who_config(args: WhoArgs) -> WhoConfig {
    let mut ports = Vec::new();
    for port in args.ports {
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    WhoConfig {
        ports,
        format: if args.json {
            Format::Json
        } else {
            Format::Table
        },
        netns: args.netns.map_or(Scope::All, Scope::Only),
    }
}

/// The completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> Vec<u8> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "portwatch", &mut script);
    script
}

/// Writes `portwatch.1` and one page per visible subcommand (`portwatch-trace.1`...) into `dir`.
pub fn man_pages(dir: &Path) -> std::io::Result<()> {
    clap_mangen::generate_to(Cli::command(), dir)
}

fn trace_config(args: TraceArgs) -> anyhow::Result<TraceConfig> {
    let mut ranges: Vec<RangeInclusive<u16>> = args.ports.into_iter().flatten().collect();
    if args.dynamic {
        ranges.push(ports::DYNAMIC);
    }
    let ports = (!ranges.is_empty()).then(|| PortSet::new(ranges));
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
    Ok(TraceConfig {
        ports,
        watch_ephemeral: args.ephemeral,
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
        backend: args.backend.choice(),
        check: args.check,
        ring_bytes: args.ring_kib * 1024,
        output: args.output.map(|path| FileOptions {
            path,
            rotate_size: args.rotate_size,
            keep: args.rotate_keep,
            compress: args.compress,
            seal: args.seal,
        }),
        quiet: args.quiet,
        audit: args.audit,
        debug_kernel: args.debug_kernel,
        pressure_pct: args.pressure,
        metrics: args.metrics,
        netns: args.netns,
        containers: container::Filter::new(args.containers, args.pods),
    })
}

/// `30s` → (30, "s"); `example` names the kind of value for the error.
fn number_and_unit<'a>(text: &'a str, example: &str) -> Result<(u64, &'a str), String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value = number
        .parse()
        .map_err(|_| format!("{text:?} is not {example}"))?;
    Ok((value, unit))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (value, unit) = number_and_unit(text, "a duration like 30s")?;
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

/// `--since`/`--until`: `2026-11-26T09:50:00Z` or `+30s` after the start of the capture.
fn parse_bound(text: &str) -> Result<report::Bound, String> {
    match text.strip_prefix('+') {
        Some(offset) => parse_duration(offset).map(report::Bound::AfterStart),
        None => report::parse_rfc3339(text)
            .map(report::Bound::At)
            .ok_or_else(|| {
                format!("{text:?} is not a time like 2026-11-26T09:50:00Z or an offset like +30s")
            }),
    }
}

/// `100M`, `20m`, `1G`, `512K` or plain bytes; binary units.
fn parse_size(text: &str) -> Result<u64, String> {
    let (value, unit) = number_and_unit(text, "a size like 100M")?;
    let scale: u64 = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => return Err(format!("unknown unit {unit:?} in {text:?}; use K, M or G")),
    };
    let bytes = value
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large"))?;
    if bytes < 4096 {
        return Err(format!(
            "{text:?}: a part must hold at least 4K, or a header and a record would not fit"
        ));
    }
    Ok(bytes)
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

    fn command(args: &[&'static str]) -> anyhow::Result<Command> {
        Command::try_from_iter(std::iter::once("portwatch").chain(args.iter().copied()))
    }

    /// The configuration as parsed, before the command reads the host.
    fn trace(args: &[&'static str]) -> TraceConfig {
        match command(args).unwrap() {
            Command::Trace(config) => *config,
            other => panic!("expected a trace command, got {other:?}"),
        }
    }

    /// The configuration on a host whose ephemeral range is Linux's default.
    fn config(args: &[&'static str]) -> TraceConfig {
        trace(args).with_ephemeral_range(Ok(32768..=60999)).unwrap()
    }

    fn error(args: &[&'static str]) -> String {
        command(args).unwrap_err().to_string()
    }

    #[test]
    fn trace_is_the_default_command() {
        let explicit = config(&["trace", "--port", "60312"]);
        let implicit = config(&["--port", "60312"]);
        assert_eq!(explicit.ports.unwrap().describe(), "60312");
        assert_eq!(implicit.ports.unwrap().describe(), "60312");
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
        assert_eq!(config.describe(), "every port (tcp+udp, ipv4+ipv6)");
    }

    #[test]
    fn portless_failures_go_by_the_namespace_range() {
        let low = config(&["--port", "80"]);
        assert!(!low.wants_portless_failure(Some(&(32768..=60999)), None));
        let high = config(&["--port", "62000-62003"]);
        assert!(!high.wants_portless_failure(None, Some(&(32768..=60999))));
        assert!(high.wants_portless_failure(Some(&(62000..=62001)), Some(&(32768..=60999))));
        assert!(config(&[]).wants_portless_failure(None, None));
    }

    #[test]
    fn ephemeral_adds_the_hosts_range_when_the_command_starts() {
        let parsed = trace(&["--port", "80", "--ephemeral"]);
        assert!(parsed.ports.as_ref().unwrap().contains(80));
        assert!(!parsed.ports.as_ref().unwrap().contains(40000));
        let config = config(&["--port", "80", "--ephemeral"]);
        assert_eq!(config.ports.unwrap().describe(), "80,32768-60999");
        let unreadable = std::io::Error::other("no such file");
        let err = trace(&["--ephemeral"])
            .with_ephemeral_range(Err(unreadable))
            .unwrap_err();
        assert_eq!(err.to_string(), "--ephemeral: no such file");
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
        assert_eq!(config.backend, Choice::Tracepoint);
    }

    #[test]
    fn who_takes_ports_once_each_in_order() {
        match command(&["who", "60312", "80", "60312", "--json"]).unwrap() {
            Command::Who(config) => {
                assert_eq!(config.ports, [60312, 80]);
                assert_eq!(config.format, Format::Json);
            }
            other => panic!("expected who, got {other:?}"),
        }
        assert!(error(&["who"]).contains("PORT"));
        assert!(error(&["who", "0"]).contains("port 0"));
        assert!(error(&["who", "80-90"]).contains("not a port number"));
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
        assert!(error(&["--rotate-size", "10M"]).contains("--output"));
        assert!(error(&["--output", "f", "--rotate-size", "10X"]).contains("unknown unit"));
        assert!(error(&["--output", "f", "--rotate-size", "100"]).contains("at least 4K"));
        assert!(error(&["--seal"]).contains("--output"));
        assert!(error(&["--metrics", "9834"]).contains("invalid socket address"));
    }

    #[test]
    fn a_process_name_is_taken_whole() {
        let config = config(&["--comm", "a,b", "--comm", "nginx"]);
        assert_eq!(
            config.comms,
            HashSet::from(["a,b".to_string(), "nginx".to_string()])
        );
    }

    #[test]
    fn report_options_parse() {
        let Command::Report(options) = command(&[
            "report",
            "--port",
            "80,443",
            "--since",
            "+30s",
            "--until",
            "2026-11-26T05:01:17Z",
            "--html",
            "r.html",
            "--strict",
            "ports.jsonl",
            "ports.jsonl.1.gz",
        ])
        .unwrap() else {
            panic!("expected a report command")
        };
        assert_eq!(options.files.len(), 2);
        assert_eq!(options.narrowing.ports.unwrap().describe(), "80,443");
        assert_eq!(
            options.narrowing.since,
            Some(report::Bound::AfterStart(Duration::from_secs(30)))
        );
        assert_eq!(
            options.narrowing.until,
            Some(report::Bound::At(1_795_669_277_000_000_000))
        );
        assert!(options.strict && !options.json && options.html.is_some());
        assert!(error(&["report", "--since", "yesterday", "f"]).contains("not a time"));
        assert!(error(&["report"]).contains("FILE"));
    }

    #[test]
    fn capture_options_parse() {
        let config = config(&[
            "--output",
            "/var/log/ports.jsonl",
            "--rotate-size",
            "20M",
            "--rotate-keep",
            "3",
            "--compress",
            "--seal",
            "--pid",
            "7",
            "--events",
            "fail",
        ]);
        assert_eq!(
            config.output,
            Some(FileOptions {
                path: "/var/log/ports.jsonl".into(),
                rotate_size: Some(20 << 20),
                keep: 3,
                compress: true,
                seal: true,
            })
        );
        assert_eq!(config.filters(), ["pid=7", "events=fail"]);
        assert_eq!(parse_size("1g"), Ok(1 << 30));
    }

    #[test]
    fn metrics_takes_an_address_and_port() {
        let with = config(&["--metrics", "127.0.0.1:9834"]);
        assert_eq!(with.metrics, Some("127.0.0.1:9834".parse().unwrap()));
        assert_eq!(config(&[]).metrics, None);
    }

    #[test]
    fn packaging_output_is_generated_from_these_definitions() {
        let bash = String::from_utf8(completions(clap_complete::Shell::Bash)).unwrap();
        assert!(bash.contains("--metrics"));
        let dir = std::env::temp_dir().join(format!("portwatch-man-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        man_pages(&dir).unwrap();
        let page = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
        assert!(page("portwatch.1").contains(".TH portwatch 1"));
        assert!(page("portwatch-trace.1").contains("metrics"));
        assert!(!dir.join("portwatch-completions.1").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
