//! Which scenarios a row of the matrix runs.
//!
//! Every row of the build machine's architecture runs the whole suite. The arm64 rows run the
//! topics that exercise what differs between architectures, the kernel programs' registers and
//! syscall numbers on each hook (binds, connects, UDP, failed claims and connects), two
//! scenarios at a time:
//! under emulation on an x86-64 host one tracer takes 30-40 s to load there (2026-12-03), so the
//! whole suite would take more than the `--timeout-secs` of one backend, and a third tracer
//! loading at once pushes the others past the suite's 90 s attach wait. The other topics test
//! code that is the same on every architecture, and run on every x86-64 row. `--all` runs
//! everything everywhere.

use super::arch::Arch;
use super::kernels::Spec;

/// The topics the arm64 rows skip: every one but `bind::`, `connect::`, `connect_fail::`,
/// `udp::` and `failures::`. A new topic runs there until it is listed.
const ARCH_INDEPENDENT: [&str; 16] = [
    "attribution::",
    "capture::",
    "cli::",
    "coexistence::",
    "faults::",
    "fleet::",
    "flood::",
    "holders::",
    "lifetimes::",
    "parity::",
    "pid_reuse::",
    "pressure::",
    "privileges::",
    "report::",
    "sharing::",
    "who::",
];

/// Scenarios that run at once in a subset row.
const THREADS: usize = 2;

/// The suite's arguments that leave out what `spec`'s row skips; None when it runs everything.
pub fn skips(spec: Spec) -> Option<String> {
    if spec.arch == Arch::HOST {
        return None;
    }
    let mut arguments = vec![format!("--test-threads {THREADS}")];
    arguments.extend(
        ARCH_INDEPENDENT
            .iter()
            .map(|topic| format!("--skip {topic}")),
    );
    Some(arguments.join(" "))
}

/// What the matrix says beside a row that ran a subset.
pub fn label() -> &'static str {
    "subset: bind:: connect:: connect_fail:: udp:: failures:: (--all runs every scenario)"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::kernels::Series;

    #[test]
    fn only_arm64_rows_skip() {
        let spec = |arch, series| Spec { arch, series };
        assert_eq!(skips(spec(Arch::Amd64, Series::V5_10)), None);
        let arm64 = skips(spec(Arch::Arm64, Series::V6_1)).expect("a subset");
        assert!(
            arm64.starts_with("--test-threads 2 --skip attribution:: --skip capture::"),
            "{arm64}"
        );
        assert!(!arm64.contains("bind::"), "{arm64}");
    }
}
