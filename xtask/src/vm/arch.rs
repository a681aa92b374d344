//! The CPU architectures portwatch is built, tested and packaged for, and what each needs on an
//! x86-64 build machine: the Rust target, the cross linker and C library, how qemu emulates it.

use std::process::Command;

use anyhow::{Context as _, Result};
use clap::ValueEnum;

use super::packages::{self, Needed, Probe};

/// An architecture, named as Debian names it (the `.deb`'s Architecture, kernel flavours).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub enum Arch {
    Amd64,
    Arm64,
}

/// What building for arm64 on another machine needs: the GNU cross linker (which also brings
/// `aarch64-linux-gnu-readelf`) and the arm64 C library to link against, which the guests get too.
const ARM64_CROSS: &[Needed] = &[
    Needed {
        package: "gcc-aarch64-linux-gnu",
        probe: Probe::Program("aarch64-linux-gnu-gcc"),
    },
    Needed {
        package: "libc6-dev-arm64-cross",
        probe: Probe::File("/usr/aarch64-linux-gnu/lib/libc.so"),
    },
];

impl Arch {
    /// The machine xtask runs on.
    pub const HOST: Arch = if cfg!(target_arch = "aarch64") {
        Arch::Arm64
    } else {
        Arch::Amd64
    };

    pub fn name(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The Rust target portwatch is built for.
    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-unknown-linux-gnu",
            Arch::Arm64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// Debian's multiarch tuple: the library directory name, and the cross tools' prefix.
    pub fn multiarch(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-linux-gnu",
            Arch::Arm64 => "aarch64-linux-gnu",
        }
    }

    /// Where Debian's cross C library for this architecture lives on another machine.
    pub fn cross_libraries(self) -> String {
        format!("/usr/{}/lib", self.multiarch())
    }

    /// `cargo --target` for this architecture: none for the host's own, so host builds keep
    /// using `target/release` as before.
    pub fn cargo_target(self) -> Option<&'static str> {
        (self != Arch::HOST).then(|| self.rust_target())
    }

    /// Installs the rustup target and the Debian cross packages a build for this architecture
    /// needs on this machine; nothing for the host's own.
    pub fn ensure_build_tools(self) -> Result<()> {
        if self == Arch::HOST {
            return Ok(());
        }
        match self {
            Arch::Arm64 => packages::ensure(ARM64_CROSS)?,
            Arch::Amd64 => anyhow::bail!("building for amd64 on an arm64 machine is not set up"),
        }
        ensure_rust_target(self.rust_target())
    }
}

/// Adds the standard library for the Rust `target` to the toolchain that builds the userspace
/// (the one rustup picks in the workspace) unless it is there.
fn ensure_rust_target(target: &str) -> anyhow::Result<()> {
    let root = crate::project::workspace_root();
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(&root)
        .output()
        .context("running rustup (https://rustup.rs)")?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|line| line.trim() == target)
    {
        return Ok(());
    }
    eprintln!("xtask: installing the Rust target {target}");
    let mut add = Command::new("rustup");
    add.args(["target", "add", target]).current_dir(root);
    crate::project::succeed(add)
}
