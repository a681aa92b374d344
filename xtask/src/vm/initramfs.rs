//! The guest's whole file system: busybox for the init script, the init script, and the payload
//! binaries with their shared libraries at the paths their loader expects.
//!
//! The host's `ldd` finds the libraries of binaries for the host's architecture. For another
//! one (arm64 guests of an x86-64 host) the binaries cannot run here, so their ELF headers are
//! read instead (`readelf`): the interpreter and `NEEDED` libraries, taken from Debian's cross C
//! library and put where that architecture's loader looks for them.
//!
//! The archive is not compressed: the emulated CPU takes longer to decompress it than qemu takes
//! to load the bigger file (on 6.1, 5.2-6.5 s to the first result line uncompressed, 5.8-6.8 s
//! with `gzip -1`), and no compressor is needed on the host.

use std::collections::BTreeMap;
use std::env;
use std::fs::{self, File};
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::arch::Arch;
use super::cpio::{Member, Writer};
use super::payload::Payload;

/// Where the payload lives in the guest; the init script runs it from here.
pub const PAYLOAD_DIR: &str = "opt/portwatch";

/// Small files glibc reads when the suite resolves names or users; without them `localhost`
/// would go to a DNS server that the guest does not have.
const ETC_FILES: [(&str, &str); 4] = [
    ("etc/hosts", "127.0.0.1 localhost\n::1 localhost\n"),
    (
        "etc/nsswitch.conf",
        "passwd: files\ngroup: files\nhosts: files\n",
    ),
    (
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    ),
    ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
];

/// Mount points the init script needs before anything is mounted (the ones under /sys appear
/// once sysfs is mounted), scratch space, and root's home.
const DIRECTORIES: [&str; 5] = ["proc", "sys", "dev", "tmp", "root"];

/// A binary for the guest.
pub struct Executable<'a> {
    /// Where it is on the host.
    pub host: &'a Path,
    /// Its name in the guest, under `PAYLOAD_DIR`.
    pub name: &'a str,
    /// A directory Debian packages were unpacked into (`dpkg-deb -x`) that holds libraries the
    /// binary needs and the host may lack: they are looked up there first and put in the guest
    /// at their path inside it. None: the host's own libraries.
    pub unpacked: Option<&'a Path>,
}

/// What the guest runs on: its architecture and the busybox built for it.
pub struct Guest<'a> {
    pub arch: Arch,
    pub busybox: &'a Path,
}

/// Writes the initramfs for the e2e suite to `out`.
pub fn build(out: &Path, guest: &Guest, payload: &Payload, init: &str) -> Result<()> {
    let executables = [
        Executable {
            host: &payload.portwatch,
            name: "portwatch",
            unpacked: None,
        },
        Executable {
            host: &payload.e2e,
            name: "e2e",
            unpacked: None,
        },
    ];
    build_with(out, guest, &executables, init)
}

/// Writes an initramfs holding `executables` and `init` to `out`.
pub fn build_with(out: &Path, guest: &Guest, executables: &[Executable], init: &str) -> Result<()> {
    let mut image = Image {
        arch: guest.arch,
        members: BTreeMap::new(),
    };
    for dir in DIRECTORIES {
        image.add_directory(dir);
    }
    image.add_file("init", init.as_bytes().to_vec(), true);
    for (path, text) in ETC_FILES {
        image.add_file(path, text.as_bytes().to_vec(), false);
    }
    image.add_executable(guest.busybox, "bin/busybox", None)?;
    for executable in executables {
        image.add_executable(
            executable.host,
            &format!("{PAYLOAD_DIR}/{}", executable.name),
            executable.unpacked,
        )?;
    }
    if let Some(parent) = out.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    image
        .write(out)
        .with_context(|| format!("writing {}", out.display()))
}

/// Members by path; the sorted map puts every directory before its contents.
struct Image {
    arch: Arch,
    members: BTreeMap<String, Content>,
}

enum Content {
    Directory,
    File { executable: bool, data: Vec<u8> },
}

impl Image {
    fn add_directory(&mut self, path: &str) {
        let mut prefix = String::new();
        for component in path.split('/') {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(component);
            self.members
                .entry(prefix.clone())
                .or_insert(Content::Directory);
        }
    }

    fn add_file(&mut self, path: &str, data: Vec<u8>, executable: bool) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.add_directory(parent);
        }
        self.members
            .insert(path.to_owned(), Content::File { executable, data });
    }

    /// Adds the host binary `host` at `guest`, and every shared library it loads (the dynamic
    /// loader included) at the same absolute path as on the host, which is where the loader and
    /// the binary's interpreter field look for them. Libraries found in `unpacked` go to their
    /// path inside it.
    fn add_executable(&mut self, host: &Path, guest: &str, unpacked: Option<&Path>) -> Result<()> {
        let data = fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        self.add_file(guest, data, true);
        if self.arch != Arch::HOST {
            for (library, inside) in foreign_libraries(self.arch, host)? {
                let data =
                    fs::read(&library).with_context(|| format!("reading {}", library.display()))?;
                self.add_file(inside.trim_start_matches('/'), data, true);
            }
            return Ok(());
        }
        for library in shared_libraries(host, unpacked)? {
            let data =
                fs::read(&library).with_context(|| format!("reading {}", library.display()))?;
            let inside = unpacked.and_then(|root| library.strip_prefix(root).ok());
            let path = inside
                .unwrap_or(&library)
                .to_str()
                .with_context(|| format!("library path {} is not UTF-8", library.display()))?;
            self.add_file(path.trim_start_matches('/'), data, true);
        }
        Ok(())
    }

    fn write(&self, out: &Path) -> Result<()> {
        let mut writer = Writer::new(BufWriter::new(File::create(out)?));
        for (path, content) in &self.members {
            let member = match content {
                Content::Directory => Member::Directory,
                Content::File { executable, data } => Member::File {
                    executable: *executable,
                    data,
                },
            };
            writer.append(path, member)?;
        }
        writer.finish()?.into_inner()?.sync_all()?;
        Ok(())
    }
}

/// The absolute paths `ldd` resolves for `binary`; none for a static binary. With `unpacked`,
/// its multiarch library directories (where Debian's packages put libraries) come first.
fn shared_libraries(binary: &Path, unpacked: Option<&Path>) -> Result<Vec<PathBuf>> {
    let mut ldd = Command::new("ldd");
    if let Some(root) = unpacked {
        let dirs = ["usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu"].map(|dir| root.join(dir));
        ldd.env("LD_LIBRARY_PATH", env::join_paths(dirs)?);
    }
    let output = ldd
        .arg(binary)
        .output()
        .context("running ldd (package libc-bin)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stdout.contains("not a dynamic executable")
            || stderr.contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed: {}", binary.display(), stderr.trim());
    }
    let mut libraries = Vec::new();
    // Lines look like `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, or for the loader
    // `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has no path and lives in the kernel.
    for line in stdout.lines() {
        if line.contains("not found") {
            bail!("{}: {}", binary.display(), line.trim());
        }
        let resolved = line.rsplit_once("=>").map_or(line, |(_, right)| right);
        if let Some(path) = resolved.split_whitespace().next()
            && path.starts_with('/')
        {
            libraries.push(PathBuf::from(path));
        }
    }
    Ok(libraries)
}

/// The shared libraries a binary of the foreign `arch` loads, each with its path in the guest:
/// the interpreter at the path the binary names, the others (found in Debian's cross C library
/// for `arch`) in the multiarch directory, which that architecture's loader searches. Libraries
/// the libraries need are followed too. None for a static binary.
fn foreign_libraries(arch: Arch, binary: &Path) -> Result<Vec<(PathBuf, String)>> {
    let search = PathBuf::from(arch.cross_libraries());
    let lib_dir = format!("/lib/{}", arch.multiarch());
    let mut found: Vec<(PathBuf, String)> = Vec::new();
    let mut pending = vec![binary.to_path_buf()];
    while let Some(file) = pending.pop() {
        let (interpreter, needed) = dynamic_section(arch, &file)?;
        let interpreter = interpreter.map(|path| {
            let name = path.rsplit('/').next().unwrap_or_default().to_owned();
            (name, path)
        });
        // The interpreter first: it is often a NEEDED entry too (of libc, and of Rust binaries),
        // and must be at the path the binary names; the loader matches the entry by name.
        let wanted = interpreter
            .into_iter()
            .chain(needed.into_iter().map(|name| {
                let inside = format!("{lib_dir}/{name}");
                (name, inside)
            }));
        for (name, inside) in wanted {
            if found
                .iter()
                .any(|(host, _)| host.file_name() == Some(name.as_ref()))
            {
                continue;
            }
            let host = search.join(&name);
            if !host.is_file() {
                bail!(
                    "{} needs {}, which is not in {} (package libc6-dev-{}-cross)",
                    file.display(),
                    name,
                    search.display(),
                    arch.name()
                );
            }
            pending.push(host.clone());
            found.push((host, inside));
        }
    }
    Ok(found)
}

/// The interpreter and the `NEEDED` entries of an ELF file for `arch`, from `readelf`.
fn dynamic_section(arch: Arch, file: &Path) -> Result<(Option<String>, Vec<String>)> {
    let readelf = format!("{}-readelf", arch.multiarch());
    let output = Command::new(&readelf)
        .args(["--wide", "--program-headers", "--dynamic"])
        .arg(file)
        .output()
        .with_context(|| format!("running {readelf} (package binutils-{})", arch.multiarch()))?;
    if !output.status.success() {
        bail!(
            "{readelf} {} failed: {}",
            file.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(parse_dynamic(&String::from_utf8_lossy(&output.stdout)))
}

/// The interpreter and the `NEEDED` entries in `readelf --program-headers --dynamic` output.
fn parse_dynamic(text: &str) -> (Option<String>, Vec<String>) {
    // What follows `marker` on the line, inside its brackets.
    let value = |line: &str, marker: &str| {
        let (_, rest) = line.split_once(marker)?;
        let rest = rest.trim_start().trim_start_matches('[');
        Some(rest.split(']').next()?.trim().to_owned())
    };
    let interpreter = text
        .lines()
        .find_map(|line| value(line, "Requesting program interpreter:"));
    let needed = text
        .lines()
        .filter(|line| line.contains("(NEEDED)"))
        .filter_map(|line| value(line, "Shared library:"))
        .collect();
    (interpreter, needed)
}

#[cfg(test)]
mod tests {
    use super::parse_dynamic;

    #[test]
    fn readelf_output_names_the_interpreter_and_the_needed_libraries() {
        // Lines of `aarch64-linux-gnu-readelf --wide --program-headers --dynamic` on portwatch.
        let text = "  INTERP         0x000270 0x0000000000000270 0x0000000000000270 0x00001b 0x00001b R   0x1
      [Requesting program interpreter: /lib/ld-linux-aarch64.so.1]
 0x0000000000000001 (NEEDED)             Shared library: [libgcc_s.so.1]
 0x0000000000000001 (NEEDED)             Shared library: [libc.so.6]
 0x000000000000000c (INIT)               0x5a000
";
        let (interpreter, needed) = parse_dynamic(text);
        assert_eq!(interpreter.as_deref(), Some("/lib/ld-linux-aarch64.so.1"));
        assert_eq!(needed, ["libgcc_s.so.1", "libc.so.6"]);
    }
}
