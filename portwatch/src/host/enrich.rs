//! `--audit`: the process behind an event, looked up in /proc: executable, command line, user,
//! parent, cgroup and systemd unit. Cached per process, keyed by pid and start time so a reused pid
//! never inherits another process's details; a process that is gone before it could be looked
//! up is reported as exited, never as blanks that look like data.

use std::{
    collections::{HashMap, VecDeque},
    fs,
    io::Read as _,
};

use crate::{
    host::proc_stat::{start_ticks, ticks_per_second},
    host::{containers, users},
    model::event::{Audit, ProcessInfo},
    model::task::Task,
};

/// Command lines are cut at this many bytes.
const CMDLINE_MAX: usize = 4096;
/// Processes remembered; the oldest lookup is forgotten first.
const CACHE_SIZE: usize = 4096;

pub struct AuditCache {
    entries: HashMap<(u32, u64), Audit>,
    order: VecDeque<(u32, u64)>,
    users: HashMap<u32, String>,
    /// Clock ticks per second, the unit of start times in /proc/<pid>/stat.
    ticks_per_second: u64,
}

impl AuditCache {
    pub fn load() -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            users: users::from_passwd_file(),
            ticks_per_second: ticks_per_second(),
        }
    }

    pub fn lookup(&mut self, task: &Task, uid: u32) -> Audit {
        let key = (task.pid, task.start_ns);
        if let Some(found) = self.entries.get(&key) {
            return found.clone();
        }
        let audit = match self.read(task, uid) {
            Some(info) => Audit::Found(Box::new(info)),
            None => Audit::Exited,
        };
        if self.order.len() >= CACHE_SIZE
            && let Some(oldest) = self.order.pop_front()
        {
            self.entries.remove(&oldest);
        }
        self.order.push_back(key);
        self.entries.insert(key, audit.clone());
        audit
    }

    /// Reads the process's details, or None when pid `task.pid` is gone or is now another
    /// process (its start time differs from the one the kernel recorded).
    fn read(&self, task: &Task, uid: u32) -> Option<ProcessInfo> {
        if !self.is_same_process(task) {
            return None;
        }
        let proc = format!("/proc/{}", task.pid);
        let cgroups = fs::read_to_string(format!("{proc}/cgroup")).ok();
        let cgroup = cgroups.as_deref().and_then(unified_cgroup);
        let info = ProcessInfo {
            exe: fs::read_link(format!("{proc}/exe"))
                .ok()
                .map(|path| path.to_string_lossy().into_owned()),
            cmdline: read_cmdline(&format!("{proc}/cmdline")),
            user: self.users.get(&uid).cloned(),
            parent_comm: (task.ppid != 0)
                .then(|| fs::read_to_string(format!("/proc/{}/comm", task.ppid)).ok())
                .flatten()
                .map(|comm| comm.trim_end_matches('\n').to_string()),
            unit: cgroups.as_deref().and_then(unit_of),
            cgroup,
        };
        // Read everything, then check again: the pid may have been reused meanwhile.
        self.is_same_process(task).then_some(info)
    }

    fn is_same_process(&self, task: &Task) -> bool {
        let Some(started_ticks) = start_ticks(task.pid) else {
            return false;
        };
        task.start_ns == 0
            || started_ticks == task.start_ns / (1_000_000_000 / self.ticks_per_second)
    }
}

fn read_cmdline(path: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(256);
    fs::File::open(path)
        .ok()?
        .take(CMDLINE_MAX as u64 + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    let cut = bytes.len() > CMDLINE_MAX;
    bytes.truncate(CMDLINE_MAX);
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    // Kernel threads and zombies have an empty command line.
    if bytes.is_empty() {
        return None;
    }
    let mut text = String::from_utf8_lossy(&bytes).replace('\0', " ");
    if cut {
        text.push_str("...");
    }
    Some(text)
}

/// The cgroup v2 path (`0::/system.slice/nginx.service`).
fn unified_cgroup(text: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_string)
}

/// The systemd unit (`nginx.service`) a /proc/<pid>/cgroup text names, unless the process is
/// in a container (which the event's `container` names, read the same way).
pub fn unit_of(cgroups: &str) -> Option<String> {
    if containers::of_proc_cgroup(cgroups).is_some() {
        return None;
    }
    let unified = unified_cgroup(cgroups)?;
    let leaf = unified.rsplit('/').find(|part| !part.is_empty())?;
    (leaf.ends_with(".service") || leaf.ends_with(".scope")).then(|| leaf.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::task::Comm;

    #[test]
    fn names_units_outside_containers() {
        let id = "a".repeat(64);
        let docker = format!("0::/system.slice/docker-{id}.scope\n");
        assert_eq!(unit_of(&docker), None);
        let hybrid = format!("4:memory:/libpod_parent/libpod-{id}\n0::/system.slice/x.service\n");
        assert_eq!(unit_of(&hybrid), None);
        assert_eq!(
            unit_of("0::/system.slice/nginx.service\n").as_deref(),
            Some("nginx.service")
        );
        assert_eq!(unit_of("0::/\n"), None);
        assert_eq!(unit_of("0::/user.slice\n"), None);
    }

    #[test]
    fn looks_up_this_process_and_refuses_a_wrong_start_time() {
        let mut cache = AuditCache::load();
        let pid = std::process::id();
        let ticks = start_ticks(pid).unwrap();
        let task = Task {
            pid,
            tid: pid,
            ppid: 0,
            comm: Comm::default(),
            start_ns: ticks * (1_000_000_000 / cache.ticks_per_second),
        };
        let Audit::Found(info) = cache.lookup(&task, 0) else {
            panic!("this process exists");
        };
        assert_eq!(
            info.exe.as_deref(),
            std::env::current_exe()
                .ok()
                .as_deref()
                .and_then(|p| p.to_str())
        );
        assert!(info.cmdline.is_some());
        let reused = Task {
            start_ns: task.start_ns + 1_000_000_000,
            ..task
        };
        assert_eq!(cache.lookup(&reused, 0), Audit::Exited);
    }
}
