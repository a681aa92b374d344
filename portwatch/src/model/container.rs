//! A process's container as events print it: runtime, id, name and, under Kubernetes, the
//! pod. `host::containers` finds it; this is the shape every output shares, and the filters
//! `--container` and `--pod` that select by it.

use serde_json::{Value, json};

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

    #[test]
    fn filters_by_name_id_prefix_and_pod() {
        let container = Container {
            runtime: Some(Runtime::Containerd),
            id: "ab".repeat(32),
            name: Some("nginx".into()),
            pod: Some(Pod {
                namespace: Some("shop".into()),
                name: Some("web-7d9f".into()),
                container: Some("nginx".into()),
                uid: None,
            }),
            resolving: false,
            unresolved: None,
        };
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
