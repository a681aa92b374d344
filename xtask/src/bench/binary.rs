//! The portwatch binary under test: the release build, built on demand.

use std::path::PathBuf;

use anyhow::Result;

use crate::{project, toolchain};

/// Builds `portwatch` in release mode and returns the executable cargo reports.
///
/// Asking cargo for the artifact path (rather than assuming `target/release/portwatch`) keeps this
/// right under `CARGO_TARGET_DIR` and any build configuration the user has.
pub fn build_release() -> Result<PathBuf> {
    toolchain::ensure()?;
    eprintln!("bench: building portwatch (release)");
    project::built_executable(
        &["build", "--release", "--package", "portwatch"],
        "portwatch",
    )
}
