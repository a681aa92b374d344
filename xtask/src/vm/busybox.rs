//! The guest's busybox, which runs its `/init`: the host's own for guests of the host's
//! architecture, Debian's `busybox-static` of the guest's architecture otherwise, fetched
//! through the private apt and cached under `vm/busybox-<arch>/` (bookworm is a stable release,
//! so what was fetched once stays what it carries).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::apt::Apt;
use super::arch::Arch;
use super::kernels::{remove_if_present, unpack};

const SUITE: &str = "bookworm";

/// A static busybox for `arch`.
pub fn find(vm_dir: &Path, arch: Arch, offline: bool) -> Result<PathBuf> {
    if arch == Arch::HOST {
        // A static one (package busybox-static) is the usual; a dynamic one works too, since its
        // libraries are copied like the payload's.
        return env::split_paths(&env::var_os("PATH").unwrap_or_default())
            .map(|dir| dir.join("busybox"))
            .find(|path| path.is_file())
            .context("busybox not found on PATH; install the busybox-static package");
    }
    let dir = vm_dir.join(format!("busybox-{}", arch.name()));
    let binary = dir.join("busybox");
    if binary.is_file() {
        return Ok(binary);
    }
    if offline {
        bail!(
            "no {} busybox cached in {}; run once without --offline",
            arch.name(),
            dir.display()
        );
    }
    println!("downloading busybox-static for {} ...", arch.name());
    let apt = Apt::new(vm_dir, arch)?;
    apt.update()?;
    let download = dir.join("download");
    // Leftovers of an interrupted run would be mistaken for this download.
    remove_if_present(&download)?;
    let deb = apt.download_from("busybox-static", SUITE, &download)?;
    let unpacked = download.join("unpacked");
    unpack(&deb, &unpacked)?;
    // Renamed into place, so the cache holds a whole binary or none.
    let partial = dir.join("busybox.partial");
    fs::copy(unpacked.join("bin/busybox"), &partial)
        .with_context(|| format!("{} has no bin/busybox", deb.display()))?;
    fs::rename(&partial, &binary)?;
    remove_if_present(&download)?;
    Ok(binary)
}
