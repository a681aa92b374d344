//! Every network namespace on the host, and how to enter each. A namespace lives while a
//! process is in it or a file keeps it: `ip netns add` and the container runtimes bind-mount
//! one under a directory of theirs, so a namespace can exist with no process at all. Both are
//! listed, each namespace once, by its inode (the number events carry in `netns`).

use std::{
    collections::BTreeMap,
    fs,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

/// Where `ip netns` (`/run/netns`, `/var/run/netns` being a link to it on current systems),
/// docker (`/run/docker/netns`) and rootless podman (`/run/user/<uid>/netns`) keep the
/// namespaces they name.
const NAMED_DIRECTORIES: [&str; 3] = ["/run/netns", "/var/run/netns", "/run/docker/netns"];

/// A network namespace and a file that enters it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub inode: u32,
    /// The names it is kept under (`blue` for /run/netns/blue; the full path elsewhere), sorted.
    pub names: Vec<String>,
    /// The processes in it, in ascending order; none for a namespace only a bind mount keeps.
    pub pids: Vec<u32>,
    /// A bind mount or /proc/<pid>/ns/net.
    pub path: PathBuf,
}

/// Which namespaces to look in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace on the host.
    All,
    /// Only the namespace with this inode.
    Only(u32),
}

/// `--netns`: a namespace named by inode, path, pid or `self`, resolved to its inode.
pub fn parse_target(text: &str) -> Result<u32, String> {
    let path = match text {
        "self" => PathBuf::from("/proc/self/ns/net"),
        _ if text.starts_with('/') => PathBuf::from(text),
        // Inodes of namespaces are large (4026531840 and up); pids are not.
        _ => match text.parse::<u64>() {
            Ok(number) if number >= 1 << 32 => {
                return Err(format!("{text} is neither a pid nor a namespace inode"));
            }
            Ok(number) if number > 0x3fff_ffff => return Ok(number as u32),
            Ok(pid) => PathBuf::from(format!("/proc/{pid}/ns/net")),
            Err(_) => {
                let named = Path::new("/run/netns").join(text);
                if text.contains('/') || !named.exists() {
                    return Err(format!(
                        "{text} is not a namespace inode, a pid, `self`, a path or a name \
                         under /run/netns"
                    ));
                }
                named
            }
        },
    };
    let meta = fs::metadata(&path).map_err(|err| format!("{}: {err}", path.display()))?;
    if !is_net_namespace(&path) {
        return Err(format!("{} is not a network namespace", path.display()));
    }
    Ok(meta.ino() as u32)
}

/// `NS_GET_NSTYPE` (`_IO(0xb7, 0x3)`): the kind of namespace an nsfs file is; other files
/// refuse it.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Whether a file is a network namespace: a /proc link or a bind mount of one. Its /proc link
/// reads `net:[...]`; a bind mount is asked with `NS_GET_NSTYPE`.
fn is_net_namespace(path: &Path) -> bool {
    if let Ok(link) = fs::read_link(path)
        && let Some(link) = link.to_str()
    {
        return link.starts_with("net:[");
    }
    let Ok(file) = fs::File::open(path) else {
        return false;
    };
    // SAFETY: an ioctl without argument on a descriptor this function owns.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    kind == libc::CLONE_NEWNET
}

/// Every network namespace visible from here, sorted by inode.
pub fn list() -> Vec<Namespace> {
    let mut found: BTreeMap<u32, Namespace> = BTreeMap::new();
    let mut pids: Vec<u32> = fs::read_dir("/proc")
        .map(|dir| {
            dir.flatten()
                .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    pids.sort_unstable();
    for pid in pids {
        let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        // `net:[4026531840]`; a kernel thread or a process that exited has none.
        let Some(inode) = fs::read_link(&path).ok().and_then(|link| {
            link.to_str()?
                .strip_prefix("net:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        }) else {
            continue;
        };
        found
            .entry(inode)
            .or_insert(Namespace {
                inode,
                names: Vec::new(),
                pids: Vec::new(),
                path,
            })
            .pids
            .push(pid);
    }
    let user_directories = fs::read_dir("/run/user")
        .map(|dir| {
            dir.flatten()
                .map(|entry| entry.path().join("netns"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let directories = NAMED_DIRECTORIES
        .iter()
        .map(PathBuf::from)
        .chain(user_directories);
    let mut seen_directories = Vec::new();
    for directory in directories {
        // /var/run is usually /run: one directory, listed once.
        let Ok(real) = fs::canonicalize(&directory) else {
            continue;
        };
        if seen_directories.contains(&real) {
            continue;
        }
        seen_directories.push(real.clone());
        let Ok(entries) = fs::read_dir(&real) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            // An unmounted leftover is an empty file on the directory's own filesystem.
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            if !is_net_namespace(&path) {
                continue;
            }
            let inode = meta.ino() as u32;
            let name = if real == Path::new("/run/netns") {
                entry.file_name().to_string_lossy().into_owned()
            } else {
                path.display().to_string()
            };
            let namespace = found.entry(inode).or_insert(Namespace {
                inode,
                names: Vec::new(),
                pids: Vec::new(),
                path: path.clone(),
            });
            namespace.names.push(name);
            namespace.names.sort();
        }
    }
    found.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_its_own_namespace_with_a_process_in_it() {
        let own = parse_target("self").unwrap();
        let listed = list();
        let namespace = listed.iter().find(|ns| ns.inode == own).unwrap();
        assert!(namespace.pids.contains(&std::process::id()));
        assert_eq!(parse_target(&std::process::id().to_string()), Ok(own));
        assert_eq!(parse_target(&own.to_string()), Ok(own));
        assert_eq!(parse_target("/proc/self/ns/net"), Ok(own));
    }

    #[test]
    fn refuses_what_is_no_namespace() {
        assert!(
            parse_target("/etc/passwd")
                .unwrap_err()
                .contains("not a network namespace")
        );
        assert!(
            parse_target("/proc/self/ns/mnt")
                .unwrap_err()
                .contains("not a network")
        );
        assert!(
            parse_target("no-such-name")
                .unwrap_err()
                .contains("not a namespace inode")
        );
        assert!(parse_target("99999999999").is_err());
    }
}
