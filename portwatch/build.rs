//! Compiles the kernel programs (portwatch-ebpf) for the BPF target and embeds the object in the
//! binary, so portwatch needs no clang, kernel headers or BPF files at run time.

use std::path::PathBuf;

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR unset")?;
    let ebpf_dir = PathBuf::from(manifest_dir).join("../portwatch-ebpf");
    let ebpf_dir = ebpf_dir
        .canonicalize()
        .with_context(|| format!("{} not found", ebpf_dir.display()))?;
    if !on_path("bpf-linker") {
        return Err(anyhow!(
            "bpf-linker is not on PATH; run `cargo xtask setup` (every cargo xtask command does it)"
        ));
    }
    aya_build::build_ebpf(
        [Package {
            name: "portwatch-ebpf",
            root_dir: ebpf_dir.to_str().context("non-UTF-8 path")?,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}
