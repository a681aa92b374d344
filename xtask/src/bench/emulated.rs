//! The benchmark inside an emulated kernel (`cargo xtask bench --vm SERIES`), guest side.
//!
//! fentry and kprobe cannot run on every host, so the same workloads run in a Debian kernel booted
//! in qemu (see `vm::bench`), where every backend attaches, with Debian's libbpf-tools beside
//! them. This xtask binary is the guest's benchmark: `/init` runs it with `--in-guest`, it runs
//! every round and prints one line per mode and round on the console, and the host builds the
//! table from those lines (see `emulated_table`). Under emulation only ratios mean anything.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;

use super::events;
use super::load::{self, Workload};
use super::netstat;
use super::tracer::Tracer;
use super::{SETTLE, cpu, summary_notes};
use crate::vm::Backend;
use crate::vm::initramfs::PAYLOAD_DIR;

/// A round's result: `<SAMPLE> {"workload":..,"mode":..,"ops_per_sec":..,...}`.
pub const SAMPLE: &str = "PORTWATCH-VM-BENCH-SAMPLE ";
/// A mode that failed in a round: `<FAILED> {"workload":..,"mode":..,"reason":..}`. It is not
/// run again for that workload.
pub const FAILED: &str = "PORTWATCH-VM-BENCH-FAILED ";
/// The benchmark itself stopped: the rest of the line says why.
pub const ERROR: &str = "PORTWATCH-VM-BENCH-ERROR ";

/// The backends compared, in the table's order.
const BACKENDS: [Backend; 3] = [Backend::Fentry, Backend::Kprobe, Backend::Tracepoint];

/// What portwatch watches: as in the host benchmark's modes (b) and (c).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// `--port 1`, which no workload touches: the cost of being attached.
    OnePort,
    /// Every port, every event written as JSON.
    AllPorts,
}

/// One of Debian's libbpf-tools, printing every event it sees like portwatch's mode (c).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// Binds (kprobes on `inet_bind` and `inet6_bind` in bookworm's 0.26).
    Bindsnoop,
    /// Active connects (kprobes on `tcp_v4_connect` and `tcp_v6_connect`).
    Tcpconnect,
    /// TCP sessions from birth to close (tracepoint `sock:inet_sock_set_state`).
    Tcplife,
}

impl Tool {
    pub const ALL: [Tool; 3] = [Tool::Bindsnoop, Tool::Tcpconnect, Tool::Tcplife];

    pub fn name(self) -> &'static str {
        match self {
            Tool::Bindsnoop => "bindsnoop",
            Tool::Tcpconnect => "tcpconnect",
            Tool::Tcplife => "tcplife",
        }
    }

    /// The workloads whose events the tool reports. No tool of theirs reports UDP autobind,
    /// and unrelated syscalls are what no tool traces.
    pub fn workloads(self) -> &'static [Workload] {
        match self {
            Tool::Bindsnoop => &[Workload::Bind],
            Tool::Tcpconnect | Tool::Tcplife => &[Workload::Connect],
        }
    }
}

/// What runs alongside the load in a round.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// (a) no tracer.
    Baseline,
    Portwatch(Backend, Watch),
    Tool(Tool),
}

impl Mode {
    pub fn label(self) -> String {
        match self {
            Mode::Baseline => "(a) no tracer".to_owned(),
            Mode::Portwatch(backend, Watch::OnePort) => {
                format!("(b) portwatch {} --port 1", backend.name())
            }
            Mode::Portwatch(backend, Watch::AllPorts) => {
                format!("(c) portwatch {}, all ports", backend.name())
            }
            Mode::Tool(tool) => format!("libbpf-tools {}", tool.name()),
        }
    }

    /// The name in result lines and raw output files.
    pub fn slug(self) -> String {
        match self {
            Mode::Baseline => "baseline".to_owned(),
            Mode::Portwatch(backend, Watch::OnePort) => format!("{}-port1", backend.name()),
            Mode::Portwatch(backend, Watch::AllPorts) => format!("{}-all", backend.name()),
            Mode::Tool(tool) => tool.name().to_owned(),
        }
    }
}

/// The modes of `workload`, in the order they alternate within a round.
pub fn modes(workload: Workload) -> Vec<Mode> {
    let mut modes = vec![Mode::Baseline];
    for backend in BACKENDS {
        modes.push(Mode::Portwatch(backend, Watch::OnePort));
        modes.push(Mode::Portwatch(backend, Watch::AllPorts));
    }
    modes.extend(
        Tool::ALL
            .into_iter()
            .filter(|tool| tool.workloads().contains(&workload))
            .map(Mode::Tool),
    );
    modes
}

/// The guest's path of a tool (the initramfs puts it beside portwatch).
pub fn tool_path(tool: Tool) -> PathBuf {
    Path::new("/").join(PAYLOAD_DIR).join(tool.name())
}

/// Runs every workload for `rounds` rounds of every mode, printing a result line per mode and
/// round; a failure of the whole run is printed as an error line too.
pub fn run_in_guest(portwatch: &Path, rounds: u32, seconds: f64) -> Result<()> {
    let result = run_rounds(portwatch, rounds, seconds);
    if let Err(err) = &result {
        println!("{ERROR}{}", one_line(&format!("{err:#}")));
    }
    result
}

fn run_rounds(portwatch: &Path, rounds: u32, seconds: f64) -> Result<()> {
    let raw_dir = std::env::temp_dir().join("bench");
    fs::create_dir_all(&raw_dir).with_context(|| format!("creating {}", raw_dir.display()))?;
    super::tracefs::ensure_mounted()?;
    let guest = Guest {
        portwatch: portwatch.to_path_buf(),
        raw_dir,
        tracer_cpus: cpu::placement()?.tracer,
        seconds,
    };
    for workload in Workload::ALL {
        let mut failed = Vec::new();
        for round in 1..=rounds {
            for mode in modes(workload) {
                if failed.contains(&mode) {
                    continue;
                }
                eprintln!(
                    "bench: {} round {round}/{rounds}: {}",
                    workload.describe(),
                    mode.label()
                );
                let mut line = json!({"workload": workload.arg(), "mode": mode.slug()});
                match guest.round(workload, mode) {
                    Ok(sample) => {
                        merge(&mut line, sample);
                        println!("{SAMPLE}{line}");
                    }
                    Err(err) => {
                        let err = format!("{err:#}");
                        eprintln!("bench: {} failed: {err}", mode.label());
                        merge(&mut line, json!({"reason": short_reason(&err)}));
                        println!("{FAILED}{line}");
                        failed.push(mode);
                    }
                }
            }
        }
    }
    Ok(())
}

/// Everything a round needs besides its workload and mode.
struct Guest {
    portwatch: PathBuf,
    /// Tracer output, deleted once counted: the guest's files live in its memory.
    raw_dir: PathBuf,
    tracer_cpus: Vec<usize>,
    seconds: f64,
}

impl Guest {
    /// Runs one round as the host benchmark does (start the tracer, run the load, let the
    /// tracer drain, stop it, count) and returns the sample as JSON fields.
    fn round(&self, workload: Workload, mode: Mode) -> Result<serde_json::Value> {
        let output = self
            .raw_dir
            .join(format!("{}-{}.out", workload.arg(), mode.slug()));
        // `watch`: None for a libbpf tool.
        let (tracer, watch) = match mode {
            Mode::Baseline => {
                wait_for_idle()?;
                let load = load::spawn(workload, self.seconds)?;
                return Ok(json!({"ops_per_sec": load.ops_per_sec()}));
            }
            Mode::Portwatch(backend, watch) => {
                let mut args = vec!["--backend", backend.name(), "--json"];
                if watch == Watch::OnePort {
                    args.extend(["--port", "1"]);
                }
                let tracer = Tracer::portwatch(&self.portwatch, &args, &output, &self.tracer_cpus)?;
                (tracer, Some(watch))
            }
            Mode::Tool(tool) => {
                let tracer =
                    Tracer::libbpf_tool(&tool_path(tool), &[], &output, &self.tracer_cpus)?;
                (tracer, None)
            }
        };
        // Read while attached: whether the tool's probes are kprobes on this kernel.
        let kprobes = if watch.is_none() { kprobes() } else { None };
        wait_for_idle()?;
        let overflows_before = netstat::time_wait_overflows()?;
        let load = load::spawn(workload, self.seconds)?;
        let overflows = netstat::time_wait_overflows()?.saturating_sub(overflows_before);
        std::thread::sleep(SETTLE);
        let stopped = tracer.stop()?;
        let mut sample = match watch {
            None => {
                let delivered = lines_of_pid(&output, load.pid)?;
                let lost: u64 = stopped.stderr.iter().filter_map(|l| lost_count(l)).sum();
                json!({"delivered": delivered, "lost": lost, "kprobes": kprobes})
            }
            Some(watch) => {
                let delivered = events::read_portwatch(&output, load.pid)?;
                // Port 1 is never touched, so (b) should deliver nothing of the load's.
                let caused = match watch {
                    Watch::AllPorts => events::caused(workload, load.ops, overflows),
                    Watch::OnePort => events::Counts::new(),
                };
                json!({
                    "delivered": delivered.by_load.values().sum::<u64>(),
                    "caused": caused.values().sum::<u64>(),
                    "lost": delivered.lost,
                    "notes": summary_notes(&stopped.stderr, &delivered),
                })
            }
        };
        fs::remove_file(&output).with_context(|| format!("removing {}", output.display()))?;
        merge(&mut sample, json!({"ops_per_sec": load.ops_per_sec()}));
        Ok(sample)
    }
}

/// How idle both vCPUs must be, over one `IDLE_WINDOW`, before a load starts.
const IDLE_SHARE: f64 = 0.95;
const IDLE_WINDOW: Duration = Duration::from_millis(200);
/// Past this, the load starts anyway (and the console says so).
const IDLE_GIVE_UP: Duration = Duration::from_secs(10);

/// Waits until the guest is idle: the tracer's start-up work after its ready line (the loader
/// child exiting, say) and the kernel's deferred work after the previous round (freeing
/// programs and trampolines) take a noticeable time under emulation. Both vCPUs take turns on
/// one host thread, so whatever still runs there would slow the load as much as the tracer's
/// hooks do.
fn wait_for_idle() -> Result<()> {
    let started = Instant::now();
    let mut before = cpu_jiffies()?;
    loop {
        std::thread::sleep(IDLE_WINDOW);
        let now = cpu_jiffies()?;
        let (total, idle) = (now.0 - before.0, now.1 - before.1);
        if total > 0 && idle as f64 >= IDLE_SHARE * total as f64 {
            return Ok(());
        }
        if started.elapsed() > IDLE_GIVE_UP {
            eprintln!("bench: the guest is still busy after {IDLE_GIVE_UP:?}; starting the load");
            return Ok(());
        }
        before = now;
    }
}

/// All CPUs' (total, idle + iowait) time in jiffies, from the `cpu` line of `/proc/stat`.
fn cpu_jiffies() -> Result<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("cpu "))
        .context("no `cpu` line in /proc/stat")?
        .split_whitespace()
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("parsing the `cpu` line of /proc/stat")?;
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Ok((fields.iter().sum(), idle))
}

/// Adds the fields of `extra` (an object) to `object`.
fn merge(object: &mut serde_json::Value, extra: serde_json::Value) {
    if let (Some(object), serde_json::Value::Object(extra)) = (object.as_object_mut(), extra) {
        object.extend(extra);
    }
}

/// The kprobes registered now, as `k <function>` or `r <function>` (a kretprobe), from debugfs's
/// `kprobes/list` (libbpf registers them through perf events, which list there too); None when
/// that file cannot be read.
fn kprobes() -> Option<Vec<String>> {
    let list = fs::read_to_string("/sys/kernel/debug/kprobes/list").ok()?;
    let mut probes: Vec<String> = list
        .lines()
        .filter_map(|line| {
            // `ffffffff81b3c2d0  k  inet_bind+0x0    [FTRACE]`
            let mut words = line.split_whitespace().skip(1);
            let kind = words.next()?;
            let function = words.next()?.split('+').next()?;
            Some(format!("{kind} {function}"))
        })
        .collect();
    probes.sort();
    probes.dedup();
    Some(probes)
}

/// Lines of a libbpf tool's output whose first column (PID in all three) is `pid`.
fn lines_of_pid(path: &Path, pid: u32) -> Result<u64> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let pid = pid.to_string();
    Ok(text
        .lines()
        .filter(|line| line.split_whitespace().next() == Some(pid.as_str()))
        .count() as u64)
}

/// The count in a libbpf tool's `lost N events on CPU #M` (or `Lost ...!`) line.
fn lost_count(line: &str) -> Option<u64> {
    let rest = line.strip_prefix("lost ").or(line.strip_prefix("Lost "))?;
    let (count, rest) = rest.split_once(' ')?;
    rest.starts_with("events").then(|| count.parse().ok())?
}

/// A failure for the table, in one line (the whole of it is on the console): its first line
/// (what failed), the verifier's verdict if it carries a program load log, and its last line
/// (the tool's or portwatch's own message).
fn short_reason(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let mut picked: Vec<&str> = lines.first().into_iter().copied().collect();
    if let Some(end) = lines
        .iter()
        .position(|l| l.contains("-- END PROG LOAD LOG --"))
    {
        // The verifier ends its log with its statistics; the line before them is its verdict.
        picked.extend(
            lines[..end]
                .iter()
                .rev()
                .find(|l| !l.starts_with("processed ") && !l.starts_with("verification time")),
        );
    }
    picked.extend(lines.last());
    picked.dedup();
    one_line(&picked.join(" ... "))
}

/// Text as one line: newlines and runs of spaces become single spaces.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_has_its_own_slug_and_tools_run_where_they_apply() {
        let bind = modes(Workload::Bind);
        assert_eq!(bind.len(), 8);
        assert!(bind.last() == Some(&Mode::Tool(Tool::Bindsnoop)));
        let connect: Vec<String> = modes(Workload::Connect).iter().map(|m| m.slug()).collect();
        assert_eq!(
            connect,
            [
                "baseline",
                "fentry-port1",
                "fentry-all",
                "kprobe-port1",
                "kprobe-all",
                "tracepoint-port1",
                "tracepoint-all",
                "tcpconnect",
                "tcplife"
            ]
        );
        assert_eq!(modes(Workload::Udp).len(), 7);
        assert_eq!(modes(Workload::Syscalls).len(), 7);
    }

    #[test]
    fn lost_lines_of_the_tools_are_counted() {
        assert_eq!(lost_count("lost 12 events on CPU #1"), Some(12));
        assert_eq!(lost_count("Lost 3 events on CPU #0!"), Some(3));
        assert_eq!(lost_count("lost track of time"), None);
        assert_eq!(lost_count("1234 bindsnoop 0 TCP"), None);
    }

    #[test]
    fn a_verifier_failure_is_cut_to_its_verdict() {
        let err = "bindsnoop exited with exit status: 1 before attaching:\n\
                   libbpf: prog 'ipv4_bind_exit': -- BEGIN PROG LOAD LOG --\n\
                   0: R1=ctx() R10=fp0\n\
                   77: <invalid CO-RE relocation>\n\
                   failed to resolve CO-RE relocation <byte_off> [77] struct inet_sock.freebind\n\
                   processed 65 insns (limit 1000000)\n\
                   -- END PROG LOAD LOG --\n\
                   failed to load BPF object: -22\n";
        assert_eq!(
            short_reason(err),
            "bindsnoop exited with exit status: 1 before attaching: ... failed to resolve CO-RE \
             relocation <byte_off> [77] struct inet_sock.freebind ... failed to load BPF object: -22"
        );
        assert_eq!(short_reason("one line"), "one line");
    }

    #[test]
    fn errors_become_one_line() {
        assert_eq!(
            one_line("portwatch exited with 1 before attaching:\n  EPERM\n"),
            "portwatch exited with 1 before attaching: EPERM"
        );
    }
}
