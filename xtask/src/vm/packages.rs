//! The Debian packages the tests need on the host. The kernel matrix needs qemu to boot the
//! kernels, a static busybox for the guest's `/init`, and Debian's archive key for the private
//! apt that fetches the kernels; the host's own checks need Chromium (the HTML report rendered
//! headless) and Prometheus (`promtool check metrics` and a real scrape of `--metrics`).
//!
//! A fresh machine lacks them, and the README promises that `cargo xtask test` works there, so
//! they are installed through apt the way the eBPF toolchain is installed through rustup and
//! cargo: only when missing, and before any other work. Without root or without apt the command
//! stops at once and prints the exact command to run.

use std::env;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// How to tell that a package is installed.
/// The keys Debian signs its archive with; the private apt checks what it downloads against them.
pub const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

pub enum Probe {
    /// A program the package puts on PATH.
    Program(&'static str),
    /// A file the package installs.
    File(&'static str),
}

pub struct Needed {
    pub package: &'static str,
    pub probe: Probe,
}

/// What `cargo xtask vm-test` needs.
pub const KERNEL_MATRIX: &[Needed] = &[
    Needed {
        package: "qemu-system-x86",
        probe: Probe::Program("qemu-system-x86_64"),
    },
    Needed {
        package: "busybox-static",
        probe: Probe::Program("busybox"),
    },
    Needed {
        package: "debian-archive-keyring",
        probe: Probe::File(KEYRING),
    },
];

/// What the arm64 rows of the matrix need beyond `KERNEL_MATRIX` (the guests' busybox comes
/// from the archive through the private apt: the host's busybox is for the host's architecture).
pub const ARM64_MATRIX: &[Needed] = &[Needed {
    package: "qemu-system-arm",
    probe: Probe::Program("qemu-system-aarch64"),
}];

/// What the checks on the host itself need beyond the build.
pub const HOST_CHECKS: &[Needed] = &[
    Needed {
        package: "chromium",
        probe: Probe::Program("chromium"),
    },
    Needed {
        package: "prometheus",
        probe: Probe::Program("promtool"),
    },
    // A real container runtime for the namespaces scenarios: podman with runc (crun refuses
    // hybrid cgroup hosts), and a static busybox as the image's only file.
    Needed {
        package: "podman",
        probe: Probe::Program("podman"),
    },
    Needed {
        package: "runc",
        probe: Probe::File("/usr/sbin/runc"),
    },
    Needed {
        package: "busybox-static",
        probe: Probe::Program("busybox"),
    },
];

/// Installs the missing packages, or fails naming the command that would.
pub fn ensure(needed: &[Needed]) -> Result<()> {
    let missing = missing(needed);
    if missing.is_empty() {
        return Ok(());
    }
    let command = install_command(&missing);
    if !crate::project::is_root() {
        bail!(
            "the tests need {}; run `sudo {command}`",
            missing.join(", ")
        );
    }
    if !on_path("apt-get") {
        bail!(
            "the tests need {} and this machine has no apt-get; install them with its \
             package manager (Debian: `{command}`)",
            missing.join(", ")
        );
    }
    eprintln!("xtask: installing {} through apt", missing.join(", "));
    apt_get(&["update", "-qq"])?;
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(&missing);
    apt_get(&install)?;
    let still = self::missing(needed);
    if !still.is_empty() {
        bail!("`{command}` ran but {} still missing", still.join(", "));
    }
    Ok(())
}

fn missing(needed: &[Needed]) -> Vec<&'static str> {
    needed
        .iter()
        .filter(|needed| !present(&needed.probe))
        .map(|needed| needed.package)
        .collect()
}

fn present(probe: &Probe) -> bool {
    match probe {
        Probe::Program(name) => on_path(name),
        Probe::File(path) => Path::new(path).is_file(),
    }
}

fn on_path(program: &str) -> bool {
    env::split_paths(&env::var_os("PATH").unwrap_or_default())
        .any(|dir| dir.join(program).is_file())
}

fn install_command(packages: &[&str]) -> String {
    format!(
        "apt-get install -y --no-install-recommends {}",
        packages.join(" ")
    )
}

fn apt_get(args: &[&str]) -> Result<()> {
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("`apt-get {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_command_names_every_missing_package() {
        assert_eq!(
            install_command(&["qemu-system-x86", "busybox-static"]),
            "apt-get install -y --no-install-recommends qemu-system-x86 busybox-static"
        );
    }

    #[test]
    fn a_program_is_found_only_on_path() {
        assert!(present(&Probe::Program("sh")));
        assert!(!present(&Probe::Program("no-such-program-portwatch")));
        assert!(!present(&Probe::File("/no/such/file/portwatch")));
    }
}
