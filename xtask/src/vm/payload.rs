//! The binaries the guest runs: portwatch itself and the end-to-end test binary.
//!
//! Both are built on the host, in release mode, and copied into the initramfs together with the
//! shared libraries they link against; the guest has nothing else.

use std::path::PathBuf;

use anyhow::Result;

use super::arch::Arch;

pub struct Payload {
    pub portwatch: PathBuf,
    /// The `e2e` test (libtest-mimic, not cargo's harness); it reads `PORTWATCH_BIN` and
    /// `PORTWATCH_BACKEND`.
    pub e2e: PathBuf,
}

/// Builds both for `arch`, setting up the eBPF toolchain (the portwatch build compiles and
/// embeds the kernel programs, for `arch`'s registers and syscalls) and any cross tools first.
pub fn build(arch: Arch) -> Result<Payload> {
    crate::toolchain::ensure()?;
    arch.ensure_build_tools()?;
    println!(
        "building portwatch and the e2e suite (release, {}) ...",
        arch.name()
    );
    let target: &[&str] = match arch.cargo_target() {
        Some(triple) => &["--target", triple],
        None => &[],
    };
    let portwatch = crate::project::built_executable(
        &[&["build", "--release", "-p", "portwatch"], target].concat(),
        "portwatch",
    )?;
    let e2e = crate::project::built_executable(
        &[
            &[
                "test",
                "--release",
                "-p",
                "portwatch",
                "--test",
                "e2e",
                "--no-run",
            ],
            target,
        ]
        .concat(),
        "e2e",
    )?;
    Ok(Payload { portwatch, e2e })
}
