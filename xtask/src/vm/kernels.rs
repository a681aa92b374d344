//! Debian's stock cloud kernels: which is the newest of each series, and a local cache of them.
//!
//! The newest is resolved at run time because the archive replaces kernels with every point
//! release. Each one is cached as `kernels/<release>/` (vmlinuz, its config, the package it came
//! from), and `kernels/latest-<series>` (`latest-arm64-<series>` for arm64) names the one
//! resolved last, so a run without network boots exactly what the last online run booted.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::ValueEnum;

use super::apt::Apt;
use super::arch::Arch;

/// `linux-image-cloud-<arch>` depends on the newest image of its suite; one version of it per
/// suite, so its version list holds every series' newest kernel.
fn metapackage(arch: Arch) -> String {
    format!("linux-image-cloud-{}", arch.name())
}

/// A kernel series, named as on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Series {
    #[value(name = "5.10")]
    V5_10,
    #[value(name = "6.1")]
    V6_1,
    #[value(name = "6.12")]
    V6_12,
    /// The newest series of Debian's unstable suite (sid) when this was written.
    #[value(name = "7.2")]
    V7_2,
    /// The newest series of trixie-backports, and of Debian, when this was written.
    #[value(name = "7.3")]
    V7_3,
}

impl Series {
    pub fn name(self) -> &'static str {
        match self {
            Series::V5_10 => "5.10",
            Series::V6_1 => "6.1",
            Series::V6_12 => "6.12",
            Series::V7_2 => "7.2",
            Series::V7_3 => "7.3",
        }
    }
}

/// One kernel of the matrix: a series built for an architecture. On the command line the
/// host's architecture goes without saying (`6.1`); another one is named first (`arm64/6.1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Spec {
    pub arch: Arch,
    pub series: Series,
}

impl Spec {
    pub fn name(self) -> String {
        if self.arch == Arch::HOST {
            self.series.name().to_owned()
        } else {
            format!("{}/{}", self.arch.name(), self.series.name())
        }
    }

    /// `[ARCH/]SERIES`, as clap's value parser.
    pub fn parse(text: &str) -> Result<Spec, String> {
        let (arch, series) = match text.split_once('/') {
            Some((arch, series)) => (Arch::from_str(arch, false)?, series),
            None => (Arch::HOST, text),
        };
        Ok(Spec {
            arch,
            series: Series::from_str(series, false)?,
        })
    }
}

/// A kernel ready to boot.
pub struct Kernel {
    pub arch: Arch,
    pub series: Series,
    /// As `uname -r` prints it, e.g. `6.1.0-56-cloud-amd64`.
    pub release: String,
    pub package: String,
    pub version: String,
    pub vmlinuz: PathBuf,
    /// `CONFIG_DEBUG_INFO_BTF=y` in the kernel's config: without BTF, fentry cannot attach.
    pub btf: bool,
}

impl Kernel {
    pub fn spec(&self) -> Spec {
        Spec {
            arch: self.arch,
            series: self.series,
        }
    }

    /// The row's name, as on the command line.
    pub fn name(&self) -> String {
        self.spec().name()
    }
}

/// The newest kernel of each of `wanted`, downloaded into `vm_dir/kernels` unless cached there.
/// Offline, or when the archive cannot be used, the kernels resolved last are used.
pub fn resolve(vm_dir: &Path, wanted: &[Spec], offline: bool) -> Result<Vec<Kernel>> {
    let cache = vm_dir.join("kernels");
    let from_cache =
        || -> Result<Vec<Kernel>> { wanted.iter().map(|spec| cached(&cache, *spec)).collect() };
    if offline {
        return from_cache();
    }
    println!("resolving Debian cloud kernels ...");
    let online = || -> Result<Vec<Kernel>> {
        let mut arches: Vec<Arch> = wanted.iter().map(|spec| spec.arch).collect();
        arches.dedup();
        let mut kernels = Vec::new();
        for arch in arches {
            let apt = Apt::new(vm_dir, arch)?;
            apt.update()?;
            let versions = apt.show(&metapackage(arch))?;
            for spec in wanted.iter().filter(|spec| spec.arch == arch) {
                let (package, version) = newest(&versions, *spec)?;
                kernels.push(fetch(&apt, &cache, *spec, &package, &version)?);
            }
        }
        Ok(kernels)
    };
    online().or_else(|err| match from_cache() {
        Ok(kernels) => {
            eprintln!("warning: {err:#}\nwarning: using the kernels cached by an earlier run");
            Ok(kernels)
        }
        Err(_) => Err(err),
    })
}

/// The image package (and its version) the newest metapackage of `series` depends on.
/// `apt-cache show` lists versions newest first, so the first stanza of the series is the one.
fn newest(versions: &str, spec: Spec) -> Result<(String, String)> {
    let metapackage = metapackage(spec.arch);
    let prefix = format!("{}.", spec.series.name());
    for stanza in versions.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
        };
        if !field("Version").is_some_and(|version| version.starts_with(&prefix)) {
            continue;
        }
        // `Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)`
        let depends = field("Depends").unwrap_or_default();
        let image = depends
            .split(',')
            .map(str::trim)
            .find(|dependency| dependency.starts_with("linux-image-"))
            .with_context(|| format!("{metapackage} depends on no image: {depends}"))?;
        let (package, version) = image
            .split_once(" (= ")
            .and_then(|(package, rest)| Some((package, rest.strip_suffix(')')?)))
            .with_context(|| format!("unexpected dependency {image}"))?;
        return Ok((package.to_owned(), version.to_owned()));
    }
    bail!(
        "no {metapackage} {prefix}* in {} (or their security suites)",
        super::apt::ARCHIVE_SUITES
    )
}

/// The cached kernel for `package` at `version`, downloading and unpacking it if missing.
fn fetch(apt: &Apt, cache: &Path, spec: Spec, package: &str, version: &str) -> Result<Kernel> {
    let release = package
        .strip_prefix("linux-image-")
        .with_context(|| format!("{package} is not a linux-image package"))?;
    let dir = cache.join(release);
    let origin = format!("{package} {version}\n");
    if fs::read_to_string(dir.join("package")).ok().as_deref() != Some(origin.as_str()) {
        println!("downloading {package} {version} ...");
        let download = cache.join("download");
        // Leftovers of an interrupted run would be mistaken for this download.
        remove_if_present(&download)?;
        let unpacked = download.join("unpacked");
        unpack(&apt.download(package, version, &download)?, &unpacked)?;
        // Since 7.x the image package is empty and depends on these two, at its own version.
        if !unpacked.join(format!("boot/vmlinuz-{release}")).exists() {
            for split in ["linux-binary", "linux-base"] {
                let split = format!("{split}-{release}");
                unpack(&apt.download(&split, version, &download)?, &unpacked)?;
            }
        }
        // Assemble next to the final place and rename, so a cache entry is whole or absent.
        let partial = cache.join(format!("{release}.partial"));
        remove_if_present(&partial)?;
        fs::create_dir_all(&partial)?;
        for name in ["vmlinuz", "config"] {
            let source = [
                format!("boot/{name}-{release}"),
                format!("usr/lib/modules/{release}/{name}"),
            ]
            .map(|path| unpacked.join(path))
            .into_iter()
            .find(|path| path.is_file())
            .with_context(|| format!("{package} {version} unpacked to no {name}"))?;
            fs::copy(&source, partial.join(name))
                .with_context(|| format!("copying {}", source.display()))?;
        }
        fs::write(partial.join("package"), &origin)?;
        remove_if_present(&dir)?;
        fs::rename(&partial, &dir)
            .with_context(|| format!("moving {} into place", partial.display()))?;
        remove_if_present(&download)?;
    }
    fs::write(cache.join(latest(spec)), format!("{release}\n"))?;
    cached(cache, spec)
}

/// `dpkg-deb -x deb into`; several packages may go into one directory.
pub fn unpack(deb: &Path, into: &Path) -> Result<()> {
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(into)
        .status()
        .context("running dpkg-deb")?;
    if !status.success() {
        bail!("dpkg-deb -x {} failed ({status})", deb.display());
    }
    Ok(())
}

/// The kernel of `spec` that the last online run resolved.
fn cached(cache: &Path, spec: Spec) -> Result<Kernel> {
    let pointer = cache.join(latest(spec));
    let release = fs::read_to_string(&pointer)
        .with_context(|| {
            format!(
                "no cached {} kernel ({} is missing); run once without --offline",
                spec.name(),
                pointer.display()
            )
        })?
        .trim()
        .to_owned();
    let dir = cache.join(&release);
    let origin = fs::read_to_string(dir.join("package"))
        .with_context(|| format!("reading {}", dir.join("package").display()))?;
    let (package, version) = origin
        .trim()
        .split_once(' ')
        .with_context(|| format!("malformed {}", dir.join("package").display()))?;
    let config = fs::read_to_string(dir.join("config"))
        .with_context(|| format!("reading {}", dir.join("config").display()))?;
    let vmlinuz = dir.join("vmlinuz");
    if !vmlinuz.is_file() {
        bail!("{} is missing", vmlinuz.display());
    }
    Ok(Kernel {
        arch: spec.arch,
        series: spec.series,
        package: package.to_owned(),
        version: version.to_owned(),
        vmlinuz,
        btf: config.lines().any(|line| line == "CONFIG_DEBUG_INFO_BTF=y"),
        release,
    })
}

fn latest(spec: Spec) -> String {
    format!("latest-{}", spec.name().replace('/', "-"))
}

pub fn remove_if_present(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(err).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}
