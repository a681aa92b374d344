//! Facts about the host that a benchmark result is meaningless without.

use std::time::SystemTime;

/// The host as the results header describes it.
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub kernel: String,
    /// Today's date, UTC, as YYYY-MM-DD.
    pub date: String,
}

impl Machine {
    /// Reads `/proc`; a missing fact reads "unknown" rather than failing the benchmark.
    pub fn describe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name")?.split_once(':'))
            .map_or_else(
                || "unknown".to_owned(),
                |(_, model)| model.trim().to_owned(),
            );
        let cores = std::thread::available_parallelism().map_or(0, usize::from);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(
            |_| "unknown".to_owned(),
            |release| release.trim().to_owned(),
        );
        // RFC 3339 starts with the date: 2026-12-03T...
        let mut date = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        date.truncate("YYYY-MM-DD".len());
        Self {
            cpu_model,
            cores,
            kernel,
            date,
        }
    }
}
