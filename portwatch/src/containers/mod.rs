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

use serde_json::{Value, json};

pub use cgroup::Identity;
use runtimes::Details;

use crate::event::Task;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Runtime {
    Docker,
    Podman,
    Containerd,
    CriO,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Podman => "podman",
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
        }
    }

    /// The runtime a cgroup component's prefix names (`cri-containerd`, `crio`, `docker`).
    fn from_prefix(prefix: &str) -> Option<Self> {
        match prefix {
            "cri-containerd" => Some(Runtime::Containerd),
            "crio" => Some(Runtime::CriO),
            "docker" => Some(Runtime::Docker),
            "libpod" => Some(Runtime::Podman),
            _ => None,
        }
    }
}

/// A Kubernetes pod, as far as it is known.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pod {
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// The container's name in the pod spec.
    pub container: Option<String>,
    pub uid: Option<String>,
}

/// A process's container, as printed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// None while the cgroup names no runtime and none has answered.
    pub runtime: Option<Runtime>,
    pub id: String,
    pub name: Option<String>,
    pub pod: Option<Pod>,
    /// The runtime has been asked and has not answered yet.
    pub resolving: bool,
    /// Why no runtime gave the name, when none did.
    pub unresolved: Option<String>,
}

impl Container {
    fn new(identity: &Identity, answer: Option<&Result<Details, String>>) -> Self {
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

    /// `{"runtime":"podman","id":"…","name":"web","resolving":false}`, with `pod` under
    /// Kubernetes and `unresolved` when no runtime answered.
    pub fn to_json(&self) -> Value {
        let mut value = json!({
            "runtime": self.runtime.map(Runtime::name),
            "id": self.id,
            "name": self.name,
            "resolving": self.resolving,
        });
        if let Some(pod) = &self.pod {
            value["pod"] = json!({
                "namespace": pod.namespace,
                "name": pod.name,
                "container": pod.container,
                "uid": pod.uid,
            });
        }
        if let Some(reason) = &self.unresolved {
            value["unresolved"] = json!(reason);
        }
        value
    }

    /// For a table: `web`, `shop/web-7d9f:nginx` in a pod, or the id's first 12 digits (with
    /// `…` while the name is being asked for).
    pub fn label(&self) -> String {
        if let Some(Pod {
            namespace: Some(namespace),
            name: Some(name),
            container,
            ..
        }) = &self.pod
        {
            return match container {
                Some(container) => format!("{namespace}/{name}:{container}"),
                None => format!("{namespace}/{name}"),
            };
        }
        match &self.name {
            Some(name) => name.clone(),
            None => format!(
                "{}:{}{}",
                self.runtime.map_or("container", Runtime::name),
                &self.id[..12.min(self.id.len())],
                if self.resolving { "…" } else { "" }
            ),
        }
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
    /// Per process (pid, start time): its container, if any.
    processes: HashMap<(u32, u64), Option<Identity>>,
    answers: Answers,
    asked: HashSet<String>,
    requests: mpsc::Sender<Identity>,
    /// Taken by `start`; until then lookups are made in line.
    pending: Option<mpsc::Receiver<Identity>>,
}

impl Resolver {
    pub fn new() -> Self {
        let (requests, pending) = mpsc::channel();
        Self {
            processes: HashMap::new(),
            answers: Answers::default(),
            asked: HashSet::new(),
            requests,
            pending: Some(pending),
        }
    }

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

    /// The container of the event's process, as known now; None outside containers.
    pub fn of_task(&mut self, task: &Task) -> Option<Arc<Container>> {
        let key = (task.pid, task.start_ns);
        if self.processes.len() >= PROCESSES_REMEMBERED && !self.processes.contains_key(&key) {
            self.processes.clear();
        }
        let identity = self
            .processes
            .entry(key)
            .or_insert_with(|| same_process(task).then(|| identity_of(task.pid)).flatten())
            .clone()?;
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
        Some(Arc::new(Container::new(
            &identity,
            answers.get(&identity.id),
        )))
    }
}

/// Whether `task.pid` is still the process the kernel saw (same start time, to the tick).
fn same_process(task: &Task) -> bool {
    let tick_ns = 1_000_000_000 / crate::enrich::ticks_per_second();
    crate::enrich::parent_and_start(task.pid).is_some_and(|(_, start_ns)| {
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
        Some(Container::new(&identity, Some(answer)))
    }
}

/// `--pod NAMESPACE/NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
}

pub fn parse_pod(text: &str) -> Result<PodName, String> {
    match text.split_once('/') {
        Some((namespace, name))
            if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
        {
            Ok(PodName {
                namespace: namespace.to_string(),
                name: name.to_string(),
            })
        }
        _ => Err(format!(
            "{text} is not NAMESPACE/NAME (a pod, e.g. shop/web-7d9f)"
        )),
    }
}

/// `--container` and `--pod`: which processes to keep.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Names, ids or id prefixes.
    containers: Vec<String>,
    pods: Vec<PodName>,
}

impl Filter {
    pub fn new(containers: Vec<String>, pods: Vec<PodName>) -> Self {
        Self { containers, pods }
    }

    pub fn is_empty(&self) -> bool {
        self.containers.is_empty() && self.pods.is_empty()
    }

    /// Whether an event in `container` passes; anything passes an empty filter.
    pub fn passes(&self, container: Option<&Container>) -> bool {
        if self.is_empty() {
            return true;
        }
        let Some(container) = container else {
            return false;
        };
        let named = self.containers.iter().any(|wanted| {
            container.name.as_deref() == Some(wanted.as_str())
                || (wanted.len() >= 4 && container.id.starts_with(wanted.as_str()))
        });
        let in_pod = container.pod.as_ref().is_some_and(|pod| {
            self.pods.iter().any(|wanted| {
                pod.namespace.as_deref() == Some(wanted.namespace.as_str())
                    && pod.name.as_deref() == Some(wanted.name.as_str())
            })
        });
        named || in_pod
    }

    /// As a capture header lists filters: `container=web`, `pod=shop/web-7d9f`.
    pub fn describe(&self) -> impl Iterator<Item = String> + '_ {
        self.containers
            .iter()
            .map(|name| format!("container={name}"))
            .chain(
                self.pods
                    .iter()
                    .map(|pod| format!("pod={}/{}", pod.namespace, pod.name)),
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            runtime: Some(Runtime::Podman),
            id: "ab".repeat(32),
            pod_uid: None,
        }
    }

    #[test]
    fn says_when_the_name_is_not_known_yet() {
        let asking = Container::new(&identity(), None);
        let value = asking.to_json();
        assert_eq!(value["name"], Value::Null);
        assert_eq!(value["resolving"], true);
        assert_eq!(asking.label(), "podman:abababababab…");
        let answer = Ok(Details {
            runtime: Runtime::Podman,
            name: Some("web".into()),
            pod: None,
        });
        let known = Container::new(&identity(), Some(&answer));
        assert_eq!(known.to_json()["name"], "web");
        assert_eq!(known.to_json()["resolving"], false);
        assert_eq!(known.label(), "web");
        let failed = Container::new(&identity(), Some(&Err("podman: gone".into())));
        assert_eq!(failed.to_json()["unresolved"], "podman: gone");
    }

    #[test]
    fn filters_by_name_id_prefix_and_pod() {
        let answer = Ok(Details {
            runtime: Runtime::Containerd,
            name: Some("nginx".into()),
            pod: Some(Pod {
                namespace: Some("shop".into()),
                name: Some("web-7d9f".into()),
                container: Some("nginx".into()),
                uid: None,
            }),
        });
        let container = Container::new(&identity(), Some(&answer));
        let by = |names: &[&str], pods: &[&str]| {
            Filter::new(
                names.iter().map(|name| name.to_string()).collect(),
                pods.iter().map(|pod| parse_pod(pod).unwrap()).collect(),
            )
            .passes(Some(&container))
        };
        assert!(by(&["nginx"], &[]));
        assert!(by(&["abab"], &[]));
        assert!(!by(&["ab"], &[]), "too short a prefix to mean an id");
        assert!(by(&[], &["shop/web-7d9f"]));
        assert!(!by(&[], &["shop/other"]));
        assert!(!Filter::new(vec!["web".into()], vec![]).passes(None));
        assert!(Filter::default().passes(None));
        assert_eq!(container.label(), "shop/web-7d9f:nginx");
        assert!(parse_pod("shop").is_err());
        assert!(parse_pod("a/b/c").is_err());
    }
}
