//! The kernel's own view of BPF objects, as `bpftool prog/map/link list` and `bpftool cgroup
//! tree` get it: the bpf syscall's id listings and the root cgroup's program query. Used to
//! prove that a tracer's objects exist while it runs and are gone once it is killed.

use std::{collections::BTreeSet, io, os::fd::AsRawFd};

const BPF_PROG_QUERY: i64 = 16;
const BPF_PROG_GET_NEXT_ID: i64 = 11;
const BPF_MAP_GET_NEXT_ID: i64 = 12;
const BPF_LINK_GET_NEXT_ID: i64 = 31;

/// What one process holds, read from its `/proc/<pid>/fdinfo`.
#[derive(Debug, Default)]
pub struct Held {
    pub programs: BTreeSet<u32>,
    pub maps: BTreeSet<u32>,
    pub links: BTreeSet<u32>,
    /// Programs attached to a cgroup through a link, with the attach type.
    pub cgroup_programs: BTreeSet<(u32, u32)>,
    /// Perf events: how kprobes attach on kernels without perf-event links (before 5.15).
    /// They have no global listing; they die with their last descriptor, and the programs
    /// attached through them with it.
    pub perf_events: usize,
}

impl Held {
    pub fn of_process(pid: u32) -> io::Result<Held> {
        let mut held = Held::default();
        for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
            let entry = entry?;
            let link = std::fs::read_link(format!(
                "/proc/{pid}/fd/{}",
                entry.file_name().to_string_lossy()
            ));
            if link.is_ok_and(|target| target.as_os_str() == "anon_inode:[perf_event]") {
                held.perf_events += 1;
            }
            // A descriptor closed meanwhile has no fdinfo any more; skip it.
            let Ok(info) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            let field = |key: &str| {
                info.lines()
                    .find_map(|line| line.strip_prefix(key)?.trim().parse::<u32>().ok())
            };
            let link_type = info
                .lines()
                .find_map(|line| line.strip_prefix("link_type:"))
                .map(str::trim);
            match (field("link_id:"), field("prog_id:"), field("map_id:")) {
                (Some(link), program, _) => {
                    held.links.insert(link);
                    held.programs.extend(program);
                    if let (Some("cgroup"), Some(program), Some(attach_type)) =
                        (link_type, program, field("attach_type:"))
                    {
                        held.cgroup_programs.insert((program, attach_type));
                    }
                }
                (None, Some(program), _) => {
                    held.programs.insert(program);
                }
                (None, None, Some(map)) => {
                    held.maps.insert(map);
                }
                _ => {}
            }
        }
        Ok(held)
    }

    /// The objects of this set that the kernel still lists, described; empty when none is.
    pub fn still_listed(&self) -> io::Result<Vec<String>> {
        let mut left = Vec::new();
        for (kind, ours, command) in [
            ("program", &self.programs, BPF_PROG_GET_NEXT_ID),
            ("map", &self.maps, BPF_MAP_GET_NEXT_ID),
            ("link", &self.links, BPF_LINK_GET_NEXT_ID),
        ] {
            let listed = list_ids(command)?;
            left.extend(ours.intersection(&listed).map(|id| format!("{kind} {id}")));
        }
        for &(program, attach_type) in &self.cgroup_programs {
            if root_cgroup_programs(attach_type)?.contains(&program) {
                left.push(format!(
                    "program {program} on the root cgroup (attach type {attach_type})"
                ));
            }
        }
        Ok(left)
    }
}

#[repr(C)]
#[derive(Default)]
struct NextIdAttr {
    start_id: u32,
    next_id: u32,
    open_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
}

fn bpf<T>(command: i64, attr: &mut T) -> io::Result<()> {
    // SAFETY: attr is a live, writable bpf_attr prefix of the size passed; the kernel reads and
    // writes only within that size.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr as *mut T,
            std::mem::size_of::<T>() as u32,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Every id of one kind of BPF object, walked as `bpftool ... list` walks them.
fn list_ids(command: i64) -> io::Result<BTreeSet<u32>> {
    let mut ids = BTreeSet::new();
    let mut attr = NextIdAttr::default();
    loop {
        match bpf(command, &mut attr) {
            Ok(()) => {
                ids.insert(attr.next_id);
                attr.start_id = attr.next_id;
            }
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => return Ok(ids),
            Err(err) => return Err(err),
        }
    }
}

/// The programs attached to the root cgroup v2 for one attach type (`bpftool cgroup tree`).
pub fn root_cgroup_programs(attach_type: u32) -> io::Result<BTreeSet<u32>> {
    let cgroup = std::fs::File::open(cgroup2_mount()?)?;
    let mut ids = vec![0u32; 256];
    let mut attr = QueryAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..QueryAttr::default()
    };
    bpf(BPF_PROG_QUERY, &mut attr)?;
    ids.truncate(attr.prog_cnt as usize);
    Ok(ids.into_iter().collect())
}

/// Where cgroup v2 is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on hybrid hosts).
fn cgroup2_mount() -> io::Result<String> {
    std::fs::read_to_string("/proc/self/mounts")?
        .lines()
        .find_map(|line| {
            let mut fields = line.split(' ');
            let (_, path, kind) = (fields.next()?, fields.next()?, fields.next()?);
            (kind == "cgroup2").then(|| path.to_owned())
        })
        .ok_or_else(|| io::Error::other("no cgroup2 file system is mounted"))
}
