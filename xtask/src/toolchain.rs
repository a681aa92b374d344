//! Installs the parts of the eBPF toolchain a fresh machine lacks: the nightly's `rust-src` (the
//! kernel programs are built with `-Z build-std=core`) and `bpf-linker`, built against the LLVM
//! library that ships inside the nightly toolchain, because prebuilt linkers and LLVM archives
//! come from hosts CI cannot reach and distribution LLVMs are too old.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// The bpf-linker release line whose `llvm-<major>` features match current nightlies.
const BPF_LINKER_VERSION: &str = "^0.13";

pub fn ensure() -> anyhow::Result<()> {
    let nightly = run_output("rustup", &["toolchain", "list"])
        .context("rustup is required (https://rustup.rs)")?;
    if !nightly.lines().any(|line| line.starts_with("nightly")) {
        bail!("the nightly toolchain is not installed; run `rustup toolchain install nightly`");
    }
    let components = run_output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )?;
    if !components.lines().any(|line| line.starts_with("rust-src")) {
        eprintln!("xtask: installing rust-src for nightly");
        run(
            "rustup",
            &["component", "add", "rust-src", "--toolchain", "nightly"],
        )?;
    }
    if bpf_linker_works() {
        return Ok(());
    }
    // An installed linker that cannot start usually lost its LLVM link (a nightly update renames
    // the library): relink, and rebuild only if that is not enough.
    let llvm = NightlyLlvm::find()?;
    llvm.link_into_prefix()?;
    if bpf_linker_works() {
        return Ok(());
    }
    install_bpf_linker(&llvm)
}

/// `~/.cargo/bin` (or `$CARGO_HOME/bin`), where `cargo install` puts bpf-linker. Child cargo
/// processes need it on PATH for aya-build to find the linker.
pub fn cargo_bin_dir() -> PathBuf {
    cargo_home().join("bin")
}

/// PATH with the cargo bin directory in front.
pub fn path_with_cargo_bin() -> std::ffi::OsString {
    let mut paths = vec![cargo_bin_dir()];
    if let Some(path) = env::var_os("PATH") {
        paths.extend(env::split_paths(&path));
    }
    env::join_paths(paths).expect("PATH entries contain no separator")
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// Whether bpf-linker starts, on its own (as aya-build runs it, PATH lookup, no help from
/// rustup's library path).
fn bpf_linker_works() -> bool {
    Command::new(cargo_bin_dir().join("bpf-linker"))
        .arg("--version")
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .is_ok_and(|output| output.status.success())
}

/// The LLVM shared library inside the nightly toolchain, which bpf-linker must link against:
/// its major version has to match the one rustc emits bitcode for.
struct NightlyLlvm {
    major: String,
    library: PathBuf,
}

impl NightlyLlvm {
    fn find() -> anyhow::Result<Self> {
        let version = run_output("rustc", &["+nightly", "-vV"])?;
        let major = version
            .lines()
            .find_map(|line| line.strip_prefix("LLVM version: "))
            .and_then(|llvm| llvm.split('.').next())
            .context("`rustc +nightly -vV` does not name its LLVM version")?
            .to_string();
        let sysroot =
            PathBuf::from(run_output("rustc", &["+nightly", "--print", "sysroot"])?.trim());
        let library = std::fs::read_dir(sysroot.join("lib"))
            .context("reading the nightly sysroot")?
            .flatten()
            .map(|entry| entry.path())
            .find(|path| {
                path.file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.starts_with(&format!("libLLVM.so.{major}")))
            })
            .with_context(|| format!("the nightly toolchain ships no libLLVM.so.{major}"))?;
        Ok(Self { major, library })
    }

    /// The prefix bpf-linker is built against and keeps an rpath to, so it lives in the cargo
    /// home, not in /tmp.
    fn prefix() -> PathBuf {
        cargo_home().join("portwatch-llvm")
    }

    /// Links the library into the prefix under the name the build looks for (`libLLVM.so`) and
    /// under its soname, which the built binary asks the dynamic loader for.
    fn link_into_prefix(&self) -> anyhow::Result<()> {
        let lib_dir = Self::prefix().join("lib");
        std::fs::create_dir_all(&lib_dir)?;
        let soname = self
            .library
            .file_name()
            .context("library without a file name")?;
        for name in [std::ffi::OsStr::new("libLLVM.so"), soname] {
            let link = lib_dir.join(name);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&self.library, &link)
                .with_context(|| format!("linking {}", link.display()))?;
        }
        Ok(())
    }
}

fn install_bpf_linker(llvm: &NightlyLlvm) -> anyhow::Result<()> {
    eprintln!(
        "xtask: building bpf-linker against {} (about a minute)",
        llvm.library.display()
    );
    let status = Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--force",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{}", llvm.major),
        ])
        .env("LLVM_PREFIX", NightlyLlvm::prefix())
        .status()
        .context("running cargo install bpf-linker")?;
    if !status.success() || !bpf_linker_works() {
        bail!("installing bpf-linker failed");
    }
    Ok(())
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed", args.join(" "));
    }
    Ok(())
}

fn run_output(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
