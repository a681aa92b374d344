//! The workspace: where it is, where cargo builds into, and running commands in it.

use std::{path::PathBuf, process::Command, sync::OnceLock};

use anyhow::{Context as _, bail};

use crate::toolchain;

/// The workspace root: xtask lives one level below it.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// A cargo command in the workspace root, with bpf-linker reachable.
pub fn cargo(toolchain_arg: Option<&str>) -> Command {
    let mut command = Command::new("cargo");
    if let Some(toolchain_arg) = toolchain_arg {
        command.arg(toolchain_arg);
    }
    command
        .current_dir(workspace_root())
        .env("PATH", toolchain::path_with_cargo_bin());
    command
}

pub fn succeed(mut command: Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Cargo's target directory, which honours `CARGO_TARGET_DIR` and `build.target-dir`: every
/// task keeps what it makes under it, so that `cargo clean` removes it too. Asked of cargo once.
pub fn target_dir() -> anyhow::Result<PathBuf> {
    static TARGET_DIR: OnceLock<PathBuf> = OnceLock::new();
    if let Some(dir) = TARGET_DIR.get() {
        return Ok(dir.clone());
    }
    let metadata = cargo_metadata::MetadataCommand::new()
        .current_dir(workspace_root())
        .no_deps()
        .exec()
        .context("running cargo metadata")?;
    Ok(TARGET_DIR
        .get_or_init(|| metadata.target_directory.into_std_path_buf())
        .clone())
}
