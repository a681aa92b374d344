//! `cargo xtask bench`: portwatch's cost against no tracer and against bpftrace, side by side.
//!
//! For each workload (see `load`), rounds alternate the modes, so a drift in the machine's speed
//! during the run (thermal, a neighbour's load) spreads over every mode instead of biasing one;
//! the median round is reported. `--quick` runs one short round per mode and checks that
//! portwatch delivers every event the load caused, which is what CI runs.

pub mod binary;
mod bpftrace;
mod cpu;
pub mod emulated;
mod emulated_table;
mod events;
mod latency;
mod libbpf_tools;
mod load;
pub mod machine;
mod netstat;
mod results;
mod tracefs;
mod tracer;
mod vm;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use self::load::Workload;
use self::results::{Results, Sample, Setup, TracerSample};
use self::tracer::Tracer;
use crate::vm::kernels::Series;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// One short round per mode and no bpftrace; fails unless portwatch delivers every event the
    /// load caused with none lost. Asserts nothing about speed (for CI).
    #[arg(long, conflicts_with = "vm")]
    quick: bool,
    /// Rounds per mode (the median is reported) [default: 5, or 4 with --vm]; --quick runs one.
    #[arg(long)]
    rounds: Option<u32>,
    /// Seconds of load per round [default: 2, 0.5 with --quick, or 1 with --vm].
    #[arg(long)]
    seconds: Option<f64>,
    /// Measure this portwatch binary instead of building the release one.
    #[arg(long, value_name = "PATH")]
    portwatch: Option<PathBuf>,
    /// Run the benchmark inside this Debian kernel of the kernel matrix, booted in qemu
    /// (software emulation), with every backend and Debian's libbpf-tools beside portwatch; the
    /// table of ratios goes to target/vm/bench-SERIES.md.
    #[arg(long, value_name = "SERIES")]
    vm: Option<Series>,
    /// With --vm: use only the kernel and libbpf-tools cached by an earlier run; touch no network.
    #[arg(long, requires = "vm")]
    offline: bool,
    /// Run as the benchmark inside the --vm guest (used by the guest's /init).
    #[arg(long, hide = true, conflicts_with = "vm")]
    in_guest: bool,
    /// Run as the load generator for one workload and print its result (used by the benchmark).
    #[arg(long, hide = true, value_enum)]
    load_only: Option<Workload>,
}

/// What runs alongside the load in a round.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// (a) no tracer.
    Baseline,
    /// (b) portwatch watching port 1, which no workload touches: the cost of being attached.
    OnePort,
    /// (c) portwatch watching every port, every event written as JSON.
    AllPorts,
    /// (d) bpftrace printing the same events.
    Bpftrace,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::Baseline => "(a) no tracer",
            Mode::OnePort => "(b) portwatch --port 1",
            Mode::AllPorts => "(c) portwatch, all ports",
            Mode::Bpftrace => "(d) bpftrace",
        }
    }

    /// A file-name-friendly name, for the raw output files.
    fn slug(self) -> &'static str {
        match self {
            Mode::Baseline => "baseline",
            Mode::OnePort => "portwatch-port1",
            Mode::AllPorts => "portwatch-all",
            Mode::Bpftrace => "bpftrace",
        }
    }

    pub fn is_portwatch(self) -> bool {
        matches!(self, Mode::OnePort | Mode::AllPorts)
    }
}

/// Time for a tracer to drain events still in flight after the load exits, before SIGINT.
const SETTLE: Duration = Duration::from_millis(200);

pub fn run(args: BenchArgs) -> Result<()> {
    let default_seconds = match (args.quick, args.vm) {
        (true, _) => 0.5,
        // Under emulation a tracer's start and stop take 3-4 s and a round runs 31 modes (four
        // workloads): with 1 s loads a round takes about 3 minutes.
        (_, Some(_)) => 1.0,
        _ => 2.0,
    };
    let seconds = args.seconds.unwrap_or(default_seconds);
    if !(seconds > 0.0 && seconds.is_finite()) {
        bail!("--seconds must be a positive number");
    }
    if let Some(workload) = args.load_only {
        return load::run(workload, seconds);
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench loads eBPF programs: run it as root");
    }
    if let Some(series) = args.vm {
        return vm::run(vm::Options {
            series,
            // Five took 15 minutes on 2026-11-26, beside other work on the host.
            rounds: args.rounds.unwrap_or(4).max(1),
            seconds,
            offline: args.offline,
            portwatch: args.portwatch,
        });
    }
    if args.in_guest {
        let portwatch = args
            .portwatch
            .context("--in-guest needs --portwatch (the guest's /init passes it)")?;
        return emulated::run_in_guest(&portwatch, args.rounds.unwrap_or(4).max(1), seconds);
    }
    let out_dir = crate::project::target_dir()?.join("bench");
    std::fs::create_dir_all(out_dir.join("raw"))
        .with_context(|| format!("creating {}", out_dir.display()))?;
    tracefs::ensure_mounted()?;
    let portwatch = match args.portwatch {
        Some(path) => path,
        None => binary::build_release()?,
    };

    let mut modes = vec![Mode::Baseline, Mode::OnePort, Mode::AllPorts];
    let bpftrace = if args.quick {
        "skipped (--quick)".to_owned()
    } else if let Some(version) = bpftrace::version() {
        modes.push(Mode::Bpftrace);
        version
    } else {
        eprintln!("bench: bpftrace not found; {}", bpftrace::INSTALL_HINT);
        format!("not installed; {}", bpftrace::INSTALL_HINT)
    };
    let rounds = if args.quick {
        1
    } else {
        args.rounds.unwrap_or(5).max(1)
    };

    let placement = cpu::placement()?;
    let bench = Bench {
        portwatch,
        raw_dir: out_dir.join("raw"),
        tracer_cpus: placement.tracer.clone(),
        seconds,
    };
    if modes.contains(&Mode::Bpftrace) {
        bpftrace::write_script(&bench.bpftrace_script(), &bench.bpftrace_ready())?;
    }
    let mut results = Results::default();
    let mut status_line = None;
    for workload in Workload::ALL {
        for round in 1..=rounds {
            for &mode in &modes {
                eprintln!(
                    "bench: {} round {round}/{rounds}: {}",
                    workload.describe(),
                    mode.label()
                );
                let (sample, status) = bench.round(workload, mode)?;
                status_line = status_line.or(status);
                results.push(workload, mode, sample);
            }
        }
    }

    if !args.quick {
        eprintln!("bench: single-event latency");
        results.latency_ms = latency::measure(
            &bench.portwatch,
            &bench.raw_dir.join("latency.out"),
            &bench.tracer_cpus,
        )?;
    }
    let setup = Setup {
        machine: machine::Machine::describe(),
        rounds,
        seconds,
        quick: args.quick,
        load_cpu: placement.load,
        tracer_cpus: placement.tracer,
        status_line,
        bpftrace,
    };
    print!("{}", results.text(&modes));
    if !args.quick {
        println!();
        for line in results.targets(&modes) {
            println!("{line}");
        }
    }
    let report = out_dir.join("results.md");
    std::fs::write(&report, results.markdown(&setup, &modes))
        .with_context(|| format!("writing {}", report.display()))?;
    println!("\nwritten to {}", report.display());

    let mismatches = results.delivery_mismatches(Mode::AllPorts);
    for line in &mismatches {
        eprintln!("bench: delivery mismatch: {line}");
    }
    if args.quick && !mismatches.is_empty() {
        bail!(
            "portwatch did not deliver exactly the events the load caused ({} mismatches above)",
            mismatches.len()
        );
    }
    Ok(())
}

/// Everything a round needs besides its workload and mode.
struct Bench {
    portwatch: PathBuf,
    /// Where tracer output goes; each workload x mode overwrites its file, so the last round's
    /// raw events stay around for inspection.
    raw_dir: PathBuf,
    tracer_cpus: Vec<usize>,
    seconds: f64,
}

impl Bench {
    fn bpftrace_script(&self) -> PathBuf {
        self.raw_dir.join("portwatch-equivalent.bt")
    }

    fn bpftrace_ready(&self) -> PathBuf {
        self.raw_dir.join("bpftrace.ready")
    }

    /// Runs one round: start the tracer and wait until it is attached, run the load, let the
    /// tracer drain, stop it, then count what it delivered. Also returns portwatch's status line.
    fn round(&self, workload: Workload, mode: Mode) -> Result<(Sample, Option<String>)> {
        let output = self
            .raw_dir
            .join(format!("{}-{}.out", workload.arg(), mode.slug()));
        let tracer = match mode {
            Mode::Baseline => None,
            Mode::OnePort => Some(Tracer::portwatch(
                &self.portwatch,
                &["--port", "1", "--json"],
                &output,
                &self.tracer_cpus,
            )?),
            Mode::AllPorts => Some(Tracer::portwatch(
                &self.portwatch,
                &["--json"],
                &output,
                &self.tracer_cpus,
            )?),
            Mode::Bpftrace => Some(Tracer::bpftrace(
                &self.bpftrace_script(),
                &self.bpftrace_ready(),
                &output,
                &self.tracer_cpus,
            )?),
        };
        let overflows_before = netstat::time_wait_overflows()?;
        let load = load::spawn(workload, self.seconds)?;
        let overflows = netstat::time_wait_overflows()?.saturating_sub(overflows_before);
        let Some(tracer) = tracer else {
            let sample = Sample {
                ops_per_sec: load.ops_per_sec(),
                tracer: None,
            };
            return Ok((sample, None));
        };
        std::thread::sleep(SETTLE);
        let stopped = tracer.stop()?;

        let caused = events::caused(workload, load.ops, overflows);
        let mut notes = Vec::new();
        let (delivered, caused) = match mode {
            Mode::Bpftrace => (
                events::read_bpftrace(&output, load.pid)?,
                events::kinds(&caused),
            ),
            _ => {
                let delivered = events::read_portwatch(&output, load.pid)?;
                notes.extend(summary_notes(&stopped.stderr, &delivered));
                // Port 1 is never touched, so (b) should deliver nothing of the load's.
                let caused = if mode == Mode::AllPorts {
                    caused
                } else {
                    events::Counts::new()
                };
                (delivered, caused)
            }
        };
        let sample = Sample {
            ops_per_sec: load.ops_per_sec(),
            tracer: Some(TracerSample {
                ready: stopped.ready,
                cpu: stopped.cpu,
                peak_rss_kib: stopped.peak_rss_kib,
                delivered: delivered.by_load,
                caused,
                lost: delivered.lost,
                events_total: delivered.total,
                notes,
            }),
        };
        Ok((sample, stopped.status_line))
    }
}

/// Compares portwatch's exit summary with the events it wrote: they must agree kind by kind.
fn summary_notes(stderr: &[String], delivered: &events::Delivered) -> Vec<String> {
    let Some(summary) = stderr.iter().find_map(|line| events::parse_summary(line)) else {
        return vec!["no `portwatch: summary` line on stderr".to_owned()];
    };
    summary
        .iter()
        .filter_map(|(kind, &said)| {
            let wrote = match kind.as_str() {
                "lost" => delivered.lost,
                _ => delivered.by_kind.get(kind).copied().unwrap_or(0),
            };
            (said != wrote).then(|| format!("summary says {kind}={said}, output has {wrote}"))
        })
        .collect()
}
