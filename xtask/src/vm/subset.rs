//! Which scenarios a row of the matrix runs.
//!
//! Every row of the build machine's architecture, and the newest kernel of every other one, runs
//! the whole suite. The other arm64 rows skip the topics whose code under test is the same on
//! every architecture and every kernel (the command line, captures and reports, metrics, `who`,
//! capabilities, the flood's loss accounting): emulating arm64 costs more than the x86-64 rows,
//! and what those rows prove there, the kernel programs' registers, syscalls and hooks on that
//! kernel, is in the topics they keep. `--all` runs everything everywhere.

use super::arch::Arch;
use super::kernels::{Series, Spec};

/// The topics an arm64 row but the newest skips.
const ARCH_INDEPENDENT: [&str; 7] = [
    "capture::",
    "cli::",
    "fleet::",
    "flood::",
    "privileges::",
    "report::",
    "who::",
];

/// The suite's arguments that leave out what `spec`'s row skips; None when it runs everything.
pub fn skips(spec: Spec) -> Option<String> {
    if spec.arch == Arch::HOST || spec.series == Series::NEWEST {
        return None;
    }
    let skips: Vec<String> = ARCH_INDEPENDENT
        .iter()
        .map(|topic| format!("--skip {topic}"))
        .collect();
    Some(skips.join(" "))
}

/// What the matrix says beside a row that ran a subset.
pub fn label() -> String {
    format!(
        "subset: {} skipped (--all runs them)",
        ARCH_INDEPENDENT.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_older_arm64_rows_skip() {
        let spec = |arch, series| Spec { arch, series };
        assert_eq!(skips(spec(Arch::Amd64, Series::V5_10)), None);
        assert_eq!(skips(spec(Arch::Arm64, Series::NEWEST)), None);
        let older = skips(spec(Arch::Arm64, Series::V6_1)).expect("a subset");
        assert!(
            older.starts_with("--skip capture:: --skip cli::"),
            "{older}"
        );
    }
}
