//! Debian's libbpf-tools, what a user would run instead of portwatch: `bindsnoop`, `tcpconnect`
//! and `tcplife`, for the benchmark's comparison in the guest.
//!
//! The guest has no package manager, so the packages are unpacked on the host (`dpkg-deb -x`)
//! with the two libraries the tools need beyond glibc, and the initramfs takes the tools and
//! those libraries from there. They are cached under `vm/libbpf-tools` like the kernels are:
//! bookworm is a stable release, so what was fetched once stays what it carries.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::vm::apt::Apt;
use crate::vm::arch::Arch;
use crate::vm::kernels::remove_if_present;

/// The suite the packages come from: Debian 12's libbpf-tools, which links libbpf statically.
pub const SUITE: &str = "bookworm";

/// The tools and their libraries (glibc comes with portwatch's own payload).
const PACKAGES: [&str; 3] = ["libbpf-tools", "libelf1", "zlib1g"];

/// The unpacked packages.
pub struct LibbpfTools {
    /// The root they were unpacked into; the tools are in `usr/sbin`.
    pub root: PathBuf,
    /// `package version` of each, comma-separated, for the results header.
    pub versions: String,
}

impl LibbpfTools {
    pub fn binary(&self, name: &str) -> PathBuf {
        self.root.join("usr/sbin").join(name)
    }
}

/// The cached packages, fetched and unpacked first unless cached (or `offline`, which only
/// takes the cache).
pub fn resolve(vm_dir: &Path, offline: bool) -> Result<LibbpfTools> {
    let dir = vm_dir.join("libbpf-tools");
    if let Ok(tools) = cached(&dir) {
        return Ok(tools);
    }
    if offline {
        bail!(
            "libbpf-tools are not cached in {}; run once without --offline",
            dir.display()
        );
    }
    println!("downloading {} from {SUITE} ...", PACKAGES.join(", "));
    let apt = Apt::new(vm_dir, Arch::Amd64)?;
    apt.update()?;
    let download = dir.join("download");
    // Leftovers of an interrupted run would be mistaken for this download.
    remove_if_present(&download)?;
    // Assemble next to the final place and rename, so the cache is whole or absent.
    let partial = dir.join("root.partial");
    remove_if_present(&partial)?;
    let mut versions = Vec::new();
    for package in PACKAGES {
        let deb = apt.download_from(package, SUITE, &download)?;
        dpkg_deb(&["-x".as_ref(), deb.as_os_str(), partial.as_os_str()])?;
        let version = dpkg_deb(&["-f".as_ref(), deb.as_os_str(), "Version".as_ref()])?;
        versions.push(format!("{package} {}", version.trim()));
    }
    fs::write(partial.join("versions"), versions.join(", ") + "\n")?;
    let root = dir.join("root");
    remove_if_present(&root)?;
    fs::rename(&partial, &root)
        .with_context(|| format!("moving {} into place", partial.display()))?;
    remove_if_present(&download)?;
    cached(&dir)
}

fn cached(dir: &Path) -> Result<LibbpfTools> {
    let root = dir.join("root");
    let versions = fs::read_to_string(root.join("versions"))
        .with_context(|| format!("reading {}", root.join("versions").display()))?;
    Ok(LibbpfTools {
        // ldd prints absolute paths, and the initramfs matches libraries against this root.
        root: root
            .canonicalize()
            .with_context(|| format!("resolving {}", root.display()))?,
        versions: versions.trim().to_owned(),
    })
}

/// Runs `dpkg-deb` and returns what it printed.
fn dpkg_deb(args: &[&OsStr]) -> Result<String> {
    let output = Command::new("dpkg-deb")
        .args(args)
        .output()
        .context("running dpkg-deb")?;
    if !output.status.success() {
        bail!(
            "dpkg-deb {} failed ({}): {}",
            args.join(OsStr::new(" ")).to_string_lossy(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
