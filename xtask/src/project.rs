//! The workspace: where it is, where cargo builds into, and running commands in it.

use std::{
    io::BufReader,
    path::PathBuf,
    process::{Command, Stdio},
    sync::OnceLock,
};

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

/// Runs `cargo ARGS` and returns the executable of the target named `target`, as cargo reports it
/// in its JSON messages: a test binary's file name carries a hash, and the target directory may
/// be moved by `CARGO_TARGET_DIR`, so neither path can be guessed.
pub fn built_executable(args: &[&str], target: &str) -> anyhow::Result<PathBuf> {
    let mut child = cargo(None)
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut found = None;
    for message in cargo_metadata::Message::parse_stream(BufReader::new(stdout)) {
        if let cargo_metadata::Message::CompilerArtifact(artifact) =
            message.context("reading cargo's messages")?
            && artifact.target.name == target
            && let Some(executable) = artifact.executable
        {
            found = Some(executable.into_std_path_buf());
        }
    }
    let status = child.wait().context("waiting for cargo")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    found.with_context(|| format!("cargo {} reported no executable {target}", args.join(" ")))
}
