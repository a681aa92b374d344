//! Which processes hold which socket inodes, from the links in /proc/<pid>/fd, as `ss -p` and
//! `lsof` find them. Only the inodes asked for are kept, and nothing is read when none is asked.

use std::{
    collections::{HashMap, HashSet},
    fs, io,
};

/// A process holding a socket through one of its file descriptors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub comm: String,
}

/// The holders of the wanted inodes, and how many processes' descriptors could not be read.
#[derive(Debug, Default)]
pub struct Owners {
    /// Every process holding each inode, in ascending pid order.
    pub by_inode: HashMap<u32, Vec<Owner>>,
    /// Processes whose /proc/<pid>/fd this caller may not read (other users' without root).
    pub unreadable: usize,
}

/// Scans every /proc/<pid>/fd for links to the `wanted` socket inodes.
pub fn find(wanted: &HashSet<u32>) -> Owners {
    let mut owners = Owners::default();
    if wanted.is_empty() {
        return owners;
    }
    let Ok(processes) = fs::read_dir("/proc") else {
        return owners;
    };
    let mut pids: Vec<u32> = processes
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        let fds = match fs::read_dir(format!("/proc/{pid}/fd")) {
            Ok(fds) => fds,
            Err(err) if err.kind() == io::ErrorKind::PermissionDenied => {
                owners.unreadable += 1;
                continue;
            }
            // The process exited meanwhile.
            Err(_) => continue,
        };
        let mut comm = None;
        let mut held = HashSet::new();
        for fd in fds.flatten() {
            let Some(inode) = fs::read_link(fd.path())
                .ok()
                .and_then(|target| socket_inode(target.to_str()?))
                .filter(|inode| wanted.contains(inode))
            else {
                continue;
            };
            // One entry per process, however many of its descriptors share the socket.
            if !held.insert(inode) {
                continue;
            }
            let comm = comm.get_or_insert_with(|| {
                fs::read_to_string(format!("/proc/{pid}/comm"))
                    .map(|text| text.trim_end().to_string())
                    .unwrap_or_default()
            });
            owners.by_inode.entry(inode).or_default().push(Owner {
                pid,
                comm: comm.clone(),
            });
        }
    }
    owners
}

/// `socket:[12345]` → 12345.
fn socket_inode(link: &str) -> Option<u32> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_socket_links_only() {
        assert_eq!(socket_inode("socket:[12345]"), Some(12345));
        assert_eq!(socket_inode("pipe:[12345]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }

    #[test]
    fn finds_this_process_holding_its_socket() {
        use std::os::unix::fs::MetadataExt;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd_link = format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&listener)
        );
        let inode = fs::metadata(fd_link).unwrap().ino() as u32;
        let owners = find(&HashSet::from([inode]));
        let found = &owners.by_inode[&inode];
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].pid, std::process::id());
    }
}
