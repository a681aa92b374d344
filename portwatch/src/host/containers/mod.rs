//! Which container a process runs in: its runtime, id and name, and for Kubernetes its pod.
//! The cgroup path gives the runtime, the id and the pod's UID at once; the name and the pod's
//! namespace and name come from the runtime (see `runtimes`), which can be slow or absent, so
//! the tracer asks it from a thread of its own and never waits: an event seen before the
//! answer says `"resolving": true`, and one after a failed lookup says why in `unresolved`.

mod cgroup;
mod runtimes;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, mpsc},
};

pub use cgroup::Identity;
use runtimes::Details;

use crate::model::{
    container::{Container, Pod},
    task::Task,
};

/// The container as far as the cgroup path and the runtime's answer (if any yet) tell.
fn container(identity: &Identity, answer: Option<&Result<Details, String>>) -> Container {
    let pod_uid = || {
        identity.pod_uid.clone().map(|uid| Pod {
            uid: Some(uid),
            ..Pod::default()
        })
    };
    match answer {
        None => Container {
            runtime: identity.runtime,
            id: identity.id.clone(),
            name: None,
            pod: pod_uid(),
            resolving: true,
            unresolved: None,
        },
        Some(Ok(details)) => Container {
            runtime: Some(details.runtime),
            id: identity.id.clone(),
            name: details.name.clone(),
            pod: details
                .pod
                .clone()
                .map(|pod| Pod {
                    uid: identity.pod_uid.clone(),
                    ..pod
                })
                .or_else(pod_uid),
            resolving: false,
            unresolved: None,
        },
        Some(Err(reason)) => Container {
            runtime: identity.runtime,
            id: identity.id.clone(),
            name: None,
            pod: pod_uid(),
            resolving: false,
            unresolved: Some(reason.clone()),
        },
    }
}

/// The container of process `pid` now, from /proc/<pid>/cgroup; None outside containers.
pub fn identity_of(pid: u32) -> Option<Identity> {
    of_proc_cgroup(&std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
}

/// The container a /proc/<pid>/cgroup text names.
pub fn of_proc_cgroup(text: &str) -> Option<Identity> {
    cgroup::of_proc_cgroup(text)
}

/// Answers per container id, shared with the thread that asks the runtimes.
type Answers = Arc<Mutex<HashMap<String, Result<Details, String>>>>;

/// Processes remembered; the table is cleared when it grows past this.
const PROCESSES_REMEMBERED: usize = 8192;

/// The tracer's container lookups: the cgroup part at once, the runtime's part in the
/// background.
pub struct Resolver {
    /// Per cgroup id (the unified hierarchy's, which events carry): its container, if any.
    /// Found once from any process in the cgroup, or from the cgroup's own directory when
    /// the process is gone already (a `bind` that failed and exited at once).
    cgroups: HashMap<u64, Option<Identity>>,
    /// Per process (pid, start time), for events without a cgroup id and for processes a
    /// runtime put in a container's cgroup only in the v1 hierarchies.
    processes: HashMap<(u32, u64), Option<Identity>>,
    answers: Answers,
    asked: HashSet<String>,
    requests: mpsc::Sender<Identity>,
    /// Taken by `start`; until then lookups are made in line.
    pending: Option<mpsc::Receiver<Identity>>,
}

impl Default for Resolver {
    fn default() -> Self {
        let (requests, pending) = mpsc::channel();
        Self {
            cgroups: HashMap::new(),
            processes: HashMap::new(),
            answers: Answers::default(),
            asked: HashSet::new(),
            requests,
            pending: Some(pending),
        }
    }
}

impl Resolver {
    /// Starts the thread that asks the runtimes. Called once the tracer holds no more
    /// capabilities than it keeps, so the thread has no more either.
    pub fn start(&mut self) -> std::io::Result<()> {
        let Some(pending) = self.pending.take() else {
            return Ok(());
        };
        let answers = Arc::clone(&self.answers);
        std::thread::Builder::new()
            .name("portwatch-containers".into())
            .spawn(move || {
                for identity in pending {
                    let answer = runtimes::lookup(&identity);
                    if let Ok(mut answers) = answers.lock() {
                        answers.insert(identity.id, answer);
                    }
                }
            })
            .map(drop)
    }

    /// The container of the event's process (in cgroup `cgroup_id`, when the kernel said), as
    /// known now; None outside containers.
    pub fn of_task(&mut self, task: &Task, cgroup_id: Option<u64>) -> Option<Arc<Container>> {
        let identity = self.identity(task, cgroup_id)?;
        let mut answers = self.answers.lock().ok()?;
        if !answers.contains_key(&identity.id) && self.asked.insert(identity.id.clone()) {
            if self.pending.is_some() {
                // Before tracing starts (the holders found at start-up) nothing is waiting
                // on the answer yet: ask in line.
                answers.insert(identity.id.clone(), runtimes::lookup(&identity));
            } else {
                // The receiver lives as long as the resolver's thread, which never ends first.
                let _ = self.requests.send(identity.clone());
            }
        }
        Some(Arc::new(container(&identity, answers.get(&identity.id))))
    }
}

impl Resolver {
    fn identity(&mut self, task: &Task, cgroup_id: Option<u64>) -> Option<Identity> {
        if let Some(known) = cgroup_id.and_then(|id| self.cgroups.get(&id)) {
            return known.clone();
        }
        let key = (task.pid, task.start_ns);
        if let Some(known) = self.processes.get(&key) {
            return known.clone();
        }
        for table_len in [self.processes.len(), self.cgroups.len()] {
            if table_len >= PROCESSES_REMEMBERED {
                self.processes.clear();
                self.cgroups.clear();
            }
        }
        let text = same_process(task)
            .then(|| std::fs::read_to_string(format!("/proc/{}/cgroup", task.pid)).ok())
            .flatten();
        match (text, cgroup_id) {
            (Some(text), cgroup_id) => {
                let (unified, any) = cgroup::read_proc_cgroup(&text);
                match cgroup_id {
                    // The cgroup id names the unified cgroup: it answers for every process
                    // in it, unless only a v1 hierarchy holds the container.
                    Some(id) if unified.is_some() || any.is_none() => {
                        self.cgroups.insert(id, unified.clone());
                    }
                    _ => {
                        self.processes.insert(key, any.clone());
                    }
                }
                any
            }
            (None, Some(id)) => {
                let found = cgroup::path_of_id(id).and_then(|path| cgroup::identify(&path));
                self.cgroups.insert(id, found.clone());
                found
            }
            (None, None) => None,
        }
    }
}

/// Whether `task.pid` is still the process the kernel saw (same start time, to the tick).
fn same_process(task: &Task) -> bool {
    let tick_ns = 1_000_000_000 / crate::host::proc_stat::ticks_per_second();
    crate::host::proc_stat::parent_and_start(task.pid).is_some_and(|(_, start_ns)| {
        task.start_ns == 0 || task.start_ns / tick_ns == start_ns / tick_ns
    })
}

/// `who`'s lookups: one shot, so each container's runtime is asked once, in line.
#[derive(Default)]
pub struct Lookups {
    answers: HashMap<String, Result<Details, String>>,
}

impl Lookups {
    pub fn of_pid(&mut self, pid: u32) -> Option<Container> {
        let identity = identity_of(pid)?;
        let answer = self
            .answers
            .entry(identity.id.clone())
            .or_insert_with(|| runtimes::lookup(&identity));
        Some(container(&identity, Some(answer)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::container::Runtime;

    fn identity() -> Identity {
        Identity {
            runtime: Some(Runtime::Podman),
            id: "ab".repeat(32),
            pod_uid: None,
        }
    }

    #[test]
    fn says_when_the_name_is_not_known_yet() {
        use serde_json::Value;
        let asking = container(&identity(), None);
        let value = asking.to_json();
        assert_eq!(value["name"], Value::Null);
        assert_eq!(value["resolving"], true);
        assert_eq!(asking.label(), "podman:abababababab…");
        let answer = Ok(Details {
            runtime: Runtime::Podman,
            name: Some("web".into()),
            pod: None,
        });
        let known = container(&identity(), Some(&answer));
        assert_eq!(known.to_json()["name"], "web");
        assert_eq!(known.to_json()["resolving"], false);
        assert_eq!(known.label(), "web");
        let failed = container(&identity(), Some(&Err("podman: gone".into())));
        assert_eq!(failed.to_json()["unresolved"], "podman: gone");
    }
}
