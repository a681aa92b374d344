//! The emulated benchmark's table, built on the host from the lines the guest printed (see
//! `emulated`): medians over rounds, each mode against no tracer on the same emulated kernel.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::emulated::{ERROR, FAILED, Mode, SAMPLE, modes};
use super::load::Workload;
use super::results::median;

/// One mode in one round, as the guest reported it.
struct Sample {
    workload: String,
    mode: String,
    ops_per_sec: f64,
    delivered: Option<u64>,
    caused: Option<u64>,
    lost: Option<u64>,
    /// For the tools: the kprobes registered while they were attached.
    kprobes: Option<Vec<String>>,
    /// portwatch's own accounting disagreeing with its output.
    notes: Vec<String>,
}

/// A mode that failed in a round, and why.
struct Failure {
    workload: String,
    mode: String,
    reason: String,
}

/// Everything the guest's benchmark reported.
#[derive(Default)]
pub struct Table {
    samples: Vec<Sample>,
    failures: Vec<Failure>,
    /// Why the guest's benchmark stopped early, if it did.
    pub error: Option<String>,
}

/// What the header says besides the table.
pub struct Header {
    /// e.g. `6.12.118+deb13-cloud-amd64 (linux-image-6.12.118+deb13-cloud-amd64 6.12.118-1)`.
    pub kernel: String,
    /// How the guest's clock runs, and what that means for the ratios: a sentence.
    pub clock: String,
    pub rounds: u32,
    pub seconds: f64,
    /// The host's CPU model and core count.
    pub host: String,
    /// YYYY-MM-DD.
    pub date: String,
    /// The versions of the libbpf-tools packages.
    pub tools: String,
    /// Wall time of the whole run, in minutes.
    pub wall_minutes: f64,
}

/// One row: a workload under a mode.
struct Row {
    workload: Workload,
    mode: Mode,
    ops_per_sec: Option<f64>,
    /// No-tracer ops/s divided by this mode's.
    overhead: Option<f64>,
    delivered: Option<u64>,
    caused: Option<u64>,
    lost: Option<u64>,
    note: String,
}

impl Table {
    /// Reads the guest's result lines from `markers` (console lines from `PORTWATCH-VM-` on);
    /// other markers are skipped, and a malformed result line is an error note, not a panic.
    pub fn parse<'a>(markers: impl IntoIterator<Item = &'a str>) -> Table {
        let mut table = Table::default();
        for marker in markers {
            if let Some(json) = marker.strip_prefix(SAMPLE.trim_end()) {
                match serde_json::from_str(json.trim()) {
                    Ok(value) => table.samples.push(sample(&value)),
                    Err(err) => table.malformed(marker, &err),
                }
            } else if let Some(json) = marker.strip_prefix(FAILED.trim_end()) {
                match serde_json::from_str::<serde_json::Value>(json.trim()) {
                    Ok(value) => table.failures.push(Failure {
                        workload: text(&value, "workload"),
                        mode: text(&value, "mode"),
                        reason: text(&value, "reason"),
                    }),
                    Err(err) => table.malformed(marker, &err),
                }
            } else if let Some(reason) = marker.strip_prefix(ERROR.trim_end()) {
                table.error = Some(reason.trim().to_owned());
            }
        }
        table
    }

    fn malformed(&mut self, marker: &str, err: &serde_json::Error) {
        self.error
            .get_or_insert_with(|| format!("a malformed result line ({err}): {marker}"));
    }

    fn of(&self, workload: Workload, mode: Mode) -> impl Iterator<Item = &Sample> {
        let slug = mode.slug();
        self.samples
            .iter()
            .filter(move |s| s.workload == workload.arg() && s.mode == slug)
    }

    fn ops(&self, workload: Workload, mode: Mode) -> Option<f64> {
        median(self.of(workload, mode).map(|s| s.ops_per_sec).collect())
    }

    fn row(&self, workload: Workload, mode: Mode) -> Row {
        let ops_per_sec = self.ops(workload, mode);
        let baseline = self.ops(workload, Mode::Baseline);
        let samples: Vec<&Sample> = self.of(workload, mode).collect();
        let sum =
            |pick: fn(&Sample) -> Option<u64>| samples.iter().map(|s| pick(s)).sum::<Option<u64>>();
        let failure = self
            .failures
            .iter()
            .find(|f| f.workload == workload.arg() && f.mode == mode.slug());
        let mut notes: Vec<String> = Vec::new();
        match (failure, samples.is_empty()) {
            (Some(failure), true) => notes.push(failure.reason.clone()),
            (Some(failure), false) => notes.push(format!(
                "failed in a later round, not run again: {}",
                failure.reason
            )),
            (None, true) => {
                notes.push("no result: the guest's benchmark stopped before this ran".to_owned())
            }
            (None, false) => {}
        }
        if let Some(kprobes) = samples.iter().find_map(|s| s.kprobes.as_ref()) {
            notes.push(describe_kprobes(kprobes));
        }
        let own: BTreeSet<&String> = samples.iter().flat_map(|s| &s.notes).collect();
        notes.extend(own.into_iter().cloned());
        Row {
            workload,
            mode,
            ops_per_sec,
            overhead: baseline.zip(ops_per_sec).map(|(a, ops)| a / ops),
            delivered: sum(|s| s.delivered).filter(|_| !samples.is_empty()),
            caused: sum(|s| s.caused).filter(|_| !samples.is_empty()),
            lost: sum(|s| s.lost).filter(|_| !samples.is_empty()),
            note: notes.join("; "),
        }
    }

    fn rows(&self) -> Vec<Row> {
        Workload::ALL
            .iter()
            .flat_map(|&w| modes(w).into_iter().map(move |m| (w, m)))
            .map(|(w, m)| self.row(w, m))
            .collect()
    }

    /// The markdown report: the header, then the table.
    pub fn markdown(&self, header: &Header) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# portwatch benchmark, emulated kernel\n");
        let _ = writeln!(
            md,
            "- Kernel: {}, **emulated (qemu TCG, single-threaded)**, 2 vCPUs, on {}, {} (UTC). \
             Absolute ops/s are the emulator's speed: only ratios within this table mean anything.",
            header.kernel, header.host, header.date
        );
        let _ = writeln!(md, "- Clock: {}", header.clock);
        let _ = writeln!(
            md,
            "- Method: {} round(s) of {} s per mode (the host benchmark: 5 of 2 s), modes \
             alternating within each round, the guest idle before each load; medians shown. \
             The load is pinned to vCPU 1 and tracers to vCPU 0, but both vCPUs take turns on \
             one host thread, so a tracer's userspace work (the (c) rows and the tools) also \
             takes time from the load, which on the host runs on another core.",
            header.rounds, header.seconds
        );
        let _ = writeln!(
            md,
            "- libbpf-tools ({}): bindsnoop on TCP bind churn; tcpconnect and tcplife on TCP \
             connect churn; each prints every event to a file, like portwatch's (c). None of \
             them reports UDP autobind, and none traces unrelated syscalls.",
            header.tools
        );
        let _ = writeln!(
            md,
            "- Wall time of the whole run: {:.1} min.",
            header.wall_minutes
        );
        if let Some(error) = &self.error {
            let _ = writeln!(md, "- **The guest's benchmark stopped early**: {error}");
        }
        let _ = writeln!(md);
        let _ = writeln!(md, "| {} |", HEADINGS.join(" | "));
        let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---|");
        for row in self.rows() {
            let count = |n: Option<u64>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                row.workload.describe(),
                row.mode.label(),
                row.ops_per_sec
                    .map_or_else(|| "-".to_owned(), |ops| format!("{ops:.0}")),
                row.overhead
                    .map_or_else(|| "-".to_owned(), |x| format!("{x:.3}x")),
                count(row.delivered),
                count(row.caused),
                count(row.lost),
                row.note
            );
        }
        let _ = writeln!(md, "\n{LEGEND}");
        md
    }
}

const HEADINGS: [&str; 8] = [
    "workload",
    "mode / tool",
    "ops/s",
    "vs (a)",
    "delivered",
    "caused",
    "lost",
    "note",
];

const LEGEND: &str = "ops/s: median over rounds. vs (a): no-tracer ops/s divided by this row's. \
delivered: events attributed to the load generator's pid, summed over rounds (libbpf-tools: \
output lines whose PID column is the load's). caused: the events the load made that portwatch \
should report (not counted for the tools). lost: what the tracer reported lost (the tools: \
their `lost N events` lines).";

fn sample(value: &serde_json::Value) -> Sample {
    let count = |key: &str| value[key].as_u64();
    let strings = |key: &str| -> Option<Vec<String>> {
        value[key].as_array().map(|items| {
            items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect()
        })
    };
    Sample {
        workload: text(value, "workload"),
        mode: text(value, "mode"),
        ops_per_sec: value["ops_per_sec"].as_f64().unwrap_or(f64::NAN),
        delivered: count("delivered"),
        caused: count("caused"),
        lost: count("lost"),
        kprobes: strings("kprobes"),
        notes: strings("notes").unwrap_or_default(),
    }
}

fn text(value: &serde_json::Value, key: &str) -> String {
    value[key].as_str().unwrap_or_default().to_owned()
}

/// `k inet_bind`, `r inet_bind`, ... as `kprobes: inet_bind; kretprobes: inet_bind`.
fn describe_kprobes(kprobes: &[String]) -> String {
    let of = |kind: &str| -> Vec<&str> {
        kprobes
            .iter()
            .filter_map(|probe| probe.strip_prefix(kind)?.strip_prefix(' '))
            .collect()
    };
    let (entries, returns) = (of("k"), of("r"));
    match (entries.is_empty(), returns.is_empty()) {
        (true, true) => "no kprobes while attached".to_owned(),
        _ => format!(
            "kprobes: {}; kretprobes: {}",
            list_or_none(&entries),
            list_or_none(&returns)
        ),
    }
}

fn list_or_none(items: &[&str]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            kernel: "6.12.1-cloud-amd64 (linux-image-6.12.1-cloud-amd64 6.12.1-1)".to_owned(),
            clock: "the host's.".to_owned(),
            rounds: 3,
            seconds: 1.0,
            host: "Some CPU".to_owned(),
            date: "2026-11-26".to_owned(),
            tools: "libbpf-tools 0.26.0+ds-1".to_owned(),
            wall_minutes: 12.5,
        }
    }

    #[test]
    fn medians_ratios_failures_and_missing_rows() {
        let lines = [
            r#"PORTWATCH-VM-BENCH-SAMPLE {"workload":"bind","mode":"baseline","ops_per_sec":1000.0}"#,
            r#"PORTWATCH-VM-BENCH-SAMPLE {"workload":"bind","mode":"baseline","ops_per_sec":3000.0}"#,
            r#"PORTWATCH-VM-BENCH-SAMPLE {"workload":"bind","mode":"baseline","ops_per_sec":2000.0}"#,
            r#"PORTWATCH-VM-BENCH-SAMPLE {"workload":"bind","mode":"fentry-all","ops_per_sec":1000.0,"delivered":10,"caused":12,"lost":2,"notes":[]}"#,
            r#"PORTWATCH-VM-BENCH-FAILED {"workload":"bind","mode":"kprobe-port1","reason":"portwatch exited with exit status: 1 before attaching: no kprobes"}"#,
            r#"PORTWATCH-VM-BENCH-SAMPLE {"workload":"bind","mode":"bindsnoop","ops_per_sec":500.0,"delivered":7,"lost":0,"kprobes":["k inet_bind","r inet_bind"]}"#,
            "PORTWATCH-VM-KERNEL release=6.12 btf=yes filter_functions=1",
            "PORTWATCH-VM-BENCH-ERROR load generator (udp) failed",
        ];
        let table = Table::parse(lines);
        assert_eq!(table.error.as_deref(), Some("load generator (udp) failed"));
        let md = table.markdown(&header());
        assert!(
            md.contains("**emulated (qemu TCG, single-threaded)**"),
            "{md}"
        );
        assert!(md.contains("3 round(s) of 1 s per mode"), "{md}");
        assert!(md.contains("- Clock: the host's.\n"), "{md}");
        assert!(md.contains("| TCP bind+close | (a) no tracer | 2000 | 1.000x | - | - | - |  |"));
        assert!(md.contains(
            "| TCP bind+close | (c) portwatch fentry, all ports | 1000 | 2.000x | 10 | 12 | 2 |  |"
        ));
        assert!(md.contains(
            "| TCP bind+close | (b) portwatch kprobe --port 1 | - | - | - | - | - | \
             portwatch exited with exit status: 1 before attaching: no kprobes |"
        ));
        assert!(md.contains(
            "| TCP bind+close | libbpf-tools bindsnoop | 500 | 4.000x | 7 | - | 0 | \
             kprobes: inet_bind; kretprobes: inet_bind |"
        ));
        assert!(md.contains(
            "| UDP sendto+close | (a) no tracer | - | - | - | - | - | \
             no result: the guest's benchmark stopped before this ran |"
        ));
        assert!(md.contains("stopped early**: load generator (udp) failed"));
    }

    #[test]
    fn a_malformed_line_is_reported_not_fatal() {
        let table = Table::parse(["PORTWATCH-VM-BENCH-SAMPLE {not json"]);
        assert!(table.error.unwrap().starts_with("a malformed result line"));
    }

    #[test]
    fn kprobes_are_summarised() {
        assert_eq!(describe_kprobes(&[]), "no kprobes while attached");
        assert_eq!(
            describe_kprobes(&["k tcp_v4_connect".to_owned(), "k tcp_v6_connect".to_owned()]),
            "kprobes: tcp_v4_connect, tcp_v6_connect; kretprobes: none"
        );
    }
}
