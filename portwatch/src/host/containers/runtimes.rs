//! Asking a container's runtime for its name and, under Kubernetes, its pod. Each runtime
//! keeps this where it is cheapest to read without a client library:
//!
//! - podman: its storage's `containers.json` (names of every container, rootful storage);
//! - docker: its HTTP API on `/run/docker.sock` (`GET /containers/<id>/json`: the name and the
//!   labels, where the kubelet's dockershim put the pod's);
//! - containerd and CRI-O: the OCI bundle's `config.json`, whose annotations the CRI plugin
//!   fills with the pod's namespace and name and the container's name.

use std::{
    fs,
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    time::Duration,
};

use serde_json::Value;

use super::Identity;
use crate::model::container::{Pod, Runtime};

const PODMAN_CONTAINERS: &str = "/var/lib/containers/storage/overlay-containers/containers.json";
const DOCKER_SOCKETS: [&str; 2] = ["/run/docker.sock", "/var/run/docker.sock"];
const CONTAINERD_TASKS: &str = "/run/containerd/io.containerd.runtime.v2.task";
const CRIO_CONTAINERS: &str = "/run/containers/storage/overlay-containers";
/// A runtime that does not answer within this long is reported as not answering.
const DOCKER_TIMEOUT: Duration = Duration::from_millis(500);

/// What a runtime said about one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Details {
    pub runtime: Runtime,
    pub name: Option<String>,
    pub pod: Option<Pod>,
}

/// The container's details, or one sentence on why no runtime gave them.
pub fn lookup(identity: &Identity) -> Result<Details, String> {
    let runtimes: &[Runtime] = match identity.runtime {
        Some(ref runtime) => std::slice::from_ref(runtime),
        // kubelet's cgroupfs layout names no runtime: the CRI ones are the likely ones.
        None => &[Runtime::Containerd, Runtime::CriO, Runtime::Docker],
    };
    let mut reasons = Vec::new();
    for &runtime in runtimes {
        let found = match runtime {
            Runtime::Podman => podman(&identity.id),
            Runtime::Docker => docker(&identity.id),
            Runtime::Containerd => containerd(&identity.id),
            Runtime::CriO => crio(&identity.id),
        };
        match found {
            Ok(details) => return Ok(details),
            Err(reason) => reasons.push(reason),
        }
    }
    Err(reasons.join("; "))
}

/// podman rewrites `containers.json` whenever a container is created or removed; a read that
/// meets one of those (or a container not written yet) is tried again a few times.
fn podman(id: &str) -> Result<Details, String> {
    let mut outcome = podman_once(id);
    for _ in 0..3 {
        if outcome.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(30));
        outcome = podman_once(id);
    }
    outcome
}

fn podman_once(id: &str) -> Result<Details, String> {
    let text = fs::read_to_string(PODMAN_CONTAINERS)
        .map_err(|err| format!("podman's {PODMAN_CONTAINERS}: {err}"))?;
    let containers: Value = serde_json::from_str(&text)
        .map_err(|err| format!("podman's {PODMAN_CONTAINERS}: {err}"))?;
    let container = containers
        .as_array()
        .into_iter()
        .flatten()
        .find(|container| container["id"].as_str() == Some(id))
        .ok_or_else(|| format!("podman's {PODMAN_CONTAINERS} does not list it"))?;
    Ok(Details {
        runtime: Runtime::Podman,
        name: container["names"][0].as_str().map(str::to_string),
        pod: None,
    })
}

fn docker(id: &str) -> Result<Details, String> {
    let mut last = String::from("no docker socket");
    for path in DOCKER_SOCKETS {
        match http_get(path, &format!("/containers/{id}/json")) {
            Ok(body) => {
                let name = body["Name"]
                    .as_str()
                    .map(|name| name.trim_start_matches('/').to_string());
                return Ok(Details {
                    runtime: Runtime::Docker,
                    name,
                    pod: pod_from(&body["Config"]["Labels"], LABELS),
                });
            }
            Err(reason) => last = format!("docker API at {path}: {reason}"),
        }
    }
    Err(last)
}

/// The keys that name a pod: the kubelet's labels, and the CRI plugin's annotations.
type PodKeys = [&'static str; 3];
const LABELS: PodKeys = [
    "io.kubernetes.pod.namespace",
    "io.kubernetes.pod.name",
    "io.kubernetes.container.name",
];
const CRI_ANNOTATIONS: PodKeys = [
    "io.kubernetes.cri.sandbox-namespace",
    "io.kubernetes.cri.sandbox-name",
    "io.kubernetes.cri.container-name",
];

fn pod_from(map: &Value, [namespace, name, container]: PodKeys) -> Option<Pod> {
    let get = |key: &str| map[key].as_str().map(str::to_string);
    Some(Pod {
        namespace: get(namespace),
        name: get(name),
        container: get(container),
        uid: None,
    })
    .filter(|pod| pod.namespace.is_some() || pod.name.is_some())
}

fn containerd(id: &str) -> Result<Details, String> {
    let namespaces = fs::read_dir(CONTAINERD_TASKS)
        .map_err(|err| format!("containerd's {CONTAINERD_TASKS}: {err}"))?;
    for namespace in namespaces.flatten() {
        let config = namespace.path().join(id).join("config.json");
        let Ok(text) = fs::read_to_string(&config) else {
            continue;
        };
        let spec: Value = serde_json::from_str(&text)
            .map_err(|err| format!("containerd's {}: {err}", config.display()))?;
        let pod = pod_from(&spec["annotations"], CRI_ANNOTATIONS)
            .or_else(|| pod_from(&spec["annotations"], LABELS));
        return Ok(Details {
            runtime: Runtime::Containerd,
            name: pod.as_ref().and_then(|pod| pod.container.clone()),
            pod,
        });
    }
    Err(format!(
        "containerd has no task {id} under {CONTAINERD_TASKS}"
    ))
}

fn crio(id: &str) -> Result<Details, String> {
    let config = format!("{CRIO_CONTAINERS}/{id}/userdata/config.json");
    let text = fs::read_to_string(&config).map_err(|err| format!("CRI-O's {config}: {err}"))?;
    let spec: Value =
        serde_json::from_str(&text).map_err(|err| format!("CRI-O's {config}: {err}"))?;
    let annotations = &spec["annotations"];
    Ok(Details {
        runtime: Runtime::CriO,
        name: annotations["io.kubernetes.cri-o.Name"]
            .as_str()
            .map(str::to_string),
        pod: pod_from(annotations, LABELS),
    })
}

/// A plain HTTP/1.0 GET over a unix socket (the server closes the connection after the
/// response, so the body is what follows the headers), its JSON body parsed.
fn http_get(socket: &str, path: &str) -> Result<Value, String> {
    let mut stream = UnixStream::connect(socket).map_err(|err| err.to_string())?;
    stream
        .set_read_timeout(Some(DOCKER_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(DOCKER_TIMEOUT)))
        .map_err(|err| err.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .map_err(|err| err.to_string())?;
    let mut response = Vec::new();
    stream
        .take(4 << 20)
        .read_to_end(&mut response)
        .map_err(|err| err.to_string())?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("a response without headers")?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("answered `{status}`"));
    }
    serde_json::from_str(body).map_err(|err| format!("its answer: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_pod_from_labels_or_annotations() {
        let labels = serde_json::json!({
            "io.kubernetes.pod.namespace": "shop",
            "io.kubernetes.pod.name": "web-7d9f",
            "io.kubernetes.container.name": "nginx",
        });
        let pod = pod_from(&labels, LABELS).unwrap();
        assert_eq!(pod.namespace.as_deref(), Some("shop"));
        assert_eq!(pod.name.as_deref(), Some("web-7d9f"));
        assert_eq!(pod.container.as_deref(), Some("nginx"));
        assert_eq!(pod_from(&labels, CRI_ANNOTATIONS), None);
        assert_eq!(pod_from(&Value::Null, LABELS), None);
    }

    #[test]
    fn a_socket_nobody_serves_is_one_sentence() {
        let err = http_get("/nonexistent/docker.sock", "/containers/x/json").unwrap_err();
        assert!(err.contains("No such file"), "{err}");
    }
}
