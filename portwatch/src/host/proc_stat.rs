//! A process's parent and start time, from /proc/<pid>/stat: what tells one life of a pid from
//! the next, for the audit cache, the container cache and the start-up holders.

use std::fs;

/// Fields 4 (ppid) and 22 (start time in clock ticks since boot) of /proc/<pid>/stat. The
/// command name (field 2) may hold spaces and parentheses, so fields count from the last ')'.
fn stat_fields(pid: u32) -> Option<(u32, u64)> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The ppid and start ticks of one /proc/<pid>/stat text.
pub fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let ppid = fields.nth(1)?.parse().ok()?;
    let start = fields.nth(17)?.parse().ok()?;
    Some((ppid, start))
}

pub fn start_ticks(pid: u32) -> Option<u64> {
    stat_fields(pid).map(|(_, start)| start)
}

/// Clock ticks per second, the unit of start times in /proc/<pid>/stat.
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).unwrap_or(100).max(1)
}

/// A process's parent and start time (CLOCK_BOOTTIME ns, to the clock tick), for sockets found
/// at start-up, whose claim the kernel programs never saw.
pub fn parent_and_start(pid: u32) -> Option<(u32, u64)> {
    let (ppid, ticks) = stat_fields(pid)?;
    Some((ppid, ticks * (1_000_000_000 / ticks_per_second())))
}
