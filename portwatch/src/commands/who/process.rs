//! How long a holder's process has existed, for `who`.

use std::{fs, time::Duration};

use crate::host::proc_stat;

/// How long process `pid` has existed, from its start time in /proc/<pid>/stat and the uptime.
pub fn age(pid: u32) -> Option<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let uptime = fs::read_to_string("/proc/uptime").ok()?;
    age_from(&stat, &uptime, proc_stat::ticks_per_second())
}

fn age_from(stat: &str, uptime: &str, ticks_per_second: u64) -> Option<Duration> {
    let (_, start_ticks) = proc_stat::parse_stat(stat)?;
    let uptime: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    let started = start_ticks as f64 / ticks_per_second.max(1) as f64;
    Some(Duration::from_secs_f64((uptime - started).max(0.0)))
}

/// `3d04h`, `5m03s`, `12s`: the two largest units.
pub fn human(age: Duration) -> String {
    let seconds = age.as_secs();
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        3600..86400 => format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{}d{:02}h", seconds / 86400, seconds % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_start_time_after_an_awkward_comm() {
        let stat = "4242 (my (odd) cmd) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    5000 123456 789 18446744073709551615";
        assert_eq!(
            age_from(stat, "150.50 300.00\n", 100),
            Some(Duration::from_millis(100_500))
        );
        assert_eq!(age_from("garbage", "1.0 1.0", 100), None);
    }

    #[test]
    fn this_process_is_young_and_root_is_root() {
        assert!(age(std::process::id()).is_some_and(|age| age < Duration::from_secs(3600)));
    }

    #[test]
    fn ages_read_in_two_units() {
        assert_eq!(human(Duration::from_secs(12)), "12s");
        assert_eq!(human(Duration::from_secs(303)), "5m03s");
        assert_eq!(human(Duration::from_secs(7260)), "2h01m");
        assert_eq!(human(Duration::from_secs(3 * 86400 + 4 * 3600)), "3d04h");
    }
}
