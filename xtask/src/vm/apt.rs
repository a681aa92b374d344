//! A private apt instance that knows the Debian suites holding the kernels we boot.
//!
//! The host's package state must not change, and its sources need not name the suites the
//! kernels come from, so apt runs with its own sources, lists and cache under the target
//! directory. It still reads the host's
//! apt.conf.d, which is where proxies and similar site settings live; only the hooks that would
//! act on the host after an update are cleared.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, bail};

use super::arch::Arch;
use super::packages::KEYRING;

/// Bullseye carries 5.10, bookworm 6.1, trixie and bookworm-backports 6.12 (the newer of the two
/// wins; so far trixie's), trixie-backports and sid the newest series (7.3 and 7.2 in December
/// 2026); the security suites carry the newest point releases.
pub const ARCHIVE_SUITES: &str = "bullseye bookworm bookworm-backports trixie trixie-backports sid";
const SECURITY_SUITES: &str = "bullseye-security bookworm-security trixie-security";
const DEFAULT_ARCHIVE: &str = "http://deb.debian.org/debian";
const DEFAULT_SECURITY: &str = "http://deb.debian.org/debian-security";

pub struct Apt {
    config: PathBuf,
}

impl Apt {
    /// Lays out the private apt tree for the packages of `arch` under `vm_dir`, with the mirrors
    /// the host itself uses: it resolves and downloads as apt on an `arch` machine would.
    pub fn new(vm_dir: &Path, arch: Arch) -> Result<Apt> {
        let dir = vm_dir.join(format!("apt-{}", arch.name()));
        if !Path::new(KEYRING).is_file() {
            bail!("{KEYRING} is missing; install the debian-archive-keyring package");
        }
        let state = dir.join("state");
        let cache = dir.join("cache");
        let parts = dir.join("sources.list.d");
        for needed in [
            state.join("lists/partial"),
            cache.join("archives/partial"),
            parts.clone(),
        ] {
            fs::create_dir_all(&needed)
                .with_context(|| format!("creating {}", needed.display()))?;
        }
        // apt wants a dpkg status file; an empty one says nothing is installed.
        let status = state.join("status");
        if !status.exists() {
            fs::write(&status, "").with_context(|| format!("creating {}", status.display()))?;
        }

        let (archive, security) = host_mirrors();
        let sources = dir.join("debian.sources");
        let stanza = |uri: &str, suites: &str| {
            format!(
                "Types: deb\nURIs: {uri}\nSuites: {suites}\nComponents: main\n\
                 Architectures: {}\nTargets: Packages\nSigned-By: {KEYRING}\n",
                arch.name()
            )
        };
        let text = format!(
            "{}\n{}",
            stanza(&archive, ARCHIVE_SUITES),
            stanza(&security, SECURITY_SUITES)
        );
        fs::write(&sources, text).with_context(|| format!("writing {}", sources.display()))?;

        // Read after the host's configuration (`-c`), so these settings win. The sandbox user is
        // root because apt's own `_apt` user cannot write into the target directory.
        let config = dir.join("apt.conf");
        let text = format!(
            "Dir::Etc::SourceList \"{}\";\n\
             Dir::Etc::SourceParts \"{}\";\n\
             Dir::State \"{}\";\n\
             Dir::State::status \"{}\";\n\
             Dir::Cache \"{}\";\n\
             APT::Architecture \"{}\";\n\
             #clear APT::Architectures;\n\
             APT::Architectures {{ \"{}\"; }};\n\
             APT::Sandbox::User \"root\";\n\
             #clear APT::Update::Pre-Invoke;\n\
             #clear APT::Update::Post-Invoke;\n\
             #clear APT::Update::Post-Invoke-Success;\n",
            sources.display(),
            parts.display(),
            state.display(),
            status.display(),
            cache.display(),
            arch.name(),
            arch.name(),
        );
        fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        Ok(Apt { config })
    }

    pub fn update(&self) -> Result<()> {
        self.run("apt-get", &["-q", "update"], None).map(drop)
    }

    /// `apt-cache show`: every known version of `package`, newest first.
    pub fn show(&self, package: &str) -> Result<String> {
        let output = self.run("apt-cache", &["show", package], None)?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Downloads `package` at `version` into `dir` and returns the .deb's path.
    pub fn download(&self, package: &str, version: &str, dir: &Path) -> Result<PathBuf> {
        self.fetch(package, &format!("{package}={version}"), dir)
    }

    /// Downloads the version of `package` that `suite` (a codename, e.g. `bookworm`) carries
    /// into `dir` and returns the .deb's path.
    pub fn download_from(&self, package: &str, suite: &str, dir: &Path) -> Result<PathBuf> {
        self.fetch(package, &format!("{package}/{suite}"), dir)
    }

    /// `apt-get download` of `selector` (the package with a version or a suite).
    fn fetch(&self, package: &str, selector: &str, dir: &Path) -> Result<PathBuf> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        self.run("apt-get", &["-q", "download", selector], Some(dir))?;
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.starts_with(&format!("{package}_")) && name.ends_with(".deb") {
                return Ok(path);
            }
        }
        bail!(
            "apt-get download {selector} left no .deb in {}",
            dir.display()
        )
    }

    fn run(&self, program: &str, args: &[&str], dir: Option<&Path>) -> Result<Output> {
        let mut command = Command::new(program);
        command.arg("-c").arg(&self.config).args(args);
        if let Some(dir) = dir {
            command.current_dir(dir);
        }
        let output = command
            .output()
            .with_context(|| format!("running {program}"))?;
        if !output.status.success() {
            bail!(
                "{program} {} failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        // apt succeeds with stale lists when a suite cannot be fetched; say so, since the kernel
        // it then picks may not be the newest.
        for line in String::from_utf8_lossy(&output.stderr).lines() {
            if line.starts_with("W: ") || line.starts_with("E: ") {
                eprintln!("warning: {program}: {line}");
            }
        }
        Ok(output)
    }
}

/// The Debian archive and security mirrors named in the host's sources, falling back to
/// deb.debian.org: a machine's own mirror is the one known to be reachable from it.
fn host_mirrors() -> (String, String) {
    let mut archive = None;
    let mut security = None;
    for text in host_sources() {
        for line in text
            .lines()
            .filter(|line| !line.trim_start().starts_with('#'))
        {
            for word in line.split_whitespace() {
                if !(word.starts_with("http://") || word.starts_with("https://")) {
                    continue;
                }
                let uri = word.trim_end_matches('/');
                if uri.ends_with("/debian-security") {
                    security.get_or_insert_with(|| uri.to_owned());
                } else if uri.ends_with("/debian") {
                    archive.get_or_insert_with(|| uri.to_owned());
                }
            }
        }
    }
    (
        archive.unwrap_or_else(|| DEFAULT_ARCHIVE.to_owned()),
        security.unwrap_or_else(|| DEFAULT_SECURITY.to_owned()),
    )
}

/// The text of the host's active source files, in both formats (one-line `.list`, deb822 `.sources`).
fn host_sources() -> Vec<String> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut parts: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| {
                path.extension()
                    .is_some_and(|ext| ext == "list" || ext == "sources")
            })
            .collect();
        parts.sort();
        files.extend(parts);
    }
    files
        .iter()
        .filter_map(|path| fs::read_to_string(path).ok())
        .collect()
}
