//! The container a cgroup path names. Every runtime puts a container's processes in a cgroup
//! whose last component carries the container's id, in one of a family of layouts that
//! depends on the runtime and on its cgroup manager (systemd or plain cgroupfs):
//!
//! - podman: `/machine.slice/libpod-<id>.scope`, `/libpod_parent/libpod-<id>`
//! - docker: `/system.slice/docker-<id>.scope`, `/docker/<id>`
//! - containerd (Kubernetes): `/kubepods.slice/kubepods-burstable.slice/
//!   kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope`, or systemd's
//!   `kubepods-...-pod<uid>.slice:cri-containerd:<id>` form
//! - CRI-O: `.../crio-<id>.scope`
//! - kubelet with cgroupfs: `/kubepods/burstable/pod<uid>/<id>` (the runtime is not named)
//!
//! A runtime's helper processes (`libpod-conmon-<id>.scope`, `crio-conmon-<id>.scope`) are not
//! the container.

use std::{fs, os::unix::fs::MetadataExt as _, path::PathBuf};

use crate::model::container::Runtime;

/// What a cgroup path says about the container, before any runtime is asked.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    /// None when the layout names no runtime (kubelet's cgroupfs layout).
    pub runtime: Option<Runtime>,
    /// The runtime's container id (64 hex digits for all of them).
    pub id: String,
    /// The Kubernetes pod's UID, when the path runs through a pod's cgroup.
    pub pod_uid: Option<String>,
}

/// The container of the first line of a /proc/<pid>/cgroup text that names one: the unified
/// (`0::`) line first, then the v1 hierarchies, where a host with both (hybrid, like this
/// project's test host) may keep the container's cgroup while the unified line says `/`.
pub fn of_proc_cgroup(text: &str) -> Option<Identity> {
    read_proc_cgroup(text).1
}

/// The container the unified line names, and the one any line names (the unified first).
pub fn read_proc_cgroup(text: &str) -> (Option<Identity>, Option<Identity>) {
    let unified = text
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .and_then(identify);
    let any = unified.clone().or_else(|| {
        text.lines()
            .filter_map(|line| line.splitn(3, ':').nth(2))
            .find_map(identify)
    });
    (unified, any)
}

/// Where the unified (cgroup2) hierarchy is mounted: `/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on a hybrid host.
fn cgroup2_root() -> Option<String> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split(' ').nth(4).map(str::to_string))?
    })
}

/// The path (from the hierarchy's root) of the unified cgroup whose id is `id`: a cgroup's
/// id is its directory's inode number on the cgroup2 filesystem. Found by walking the
/// hierarchy, which holds a few hundred directories on a busy host.
pub fn path_of_id(id: u64) -> Option<String> {
    let root = cgroup2_root()?;
    let root = root.as_str();
    let mut directories = vec![(PathBuf::from(root), 0)];
    while let Some((directory, depth)) = directories.pop() {
        for entry in fs::read_dir(&directory).ok()?.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if !meta.is_dir() {
                continue;
            }
            if meta.ino() == id {
                let path = entry.path();
                let relative = path.strip_prefix(root).ok()?;
                return Some(format!("/{}", relative.display()));
            }
            // Container cgroups sit a few levels down; nothing deeper is looked at.
            if depth < 8 {
                directories.push((entry.path(), depth + 1));
            }
        }
    }
    None
}

/// The container a cgroup path names, if any.
pub fn identify(path: &str) -> Option<Identity> {
    let leaf = path.rsplit('/').find(|part| !part.is_empty())?;
    let pod_uid = pod_uid(path);
    // `<slice>:<runtime>:<id>`: containerd's and CRI-O's systemd form inside a pod slice.
    if let [_, runtime, id] = leaf.split(':').collect::<Vec<_>>()[..] {
        return Some(Identity {
            runtime: runtime_of_prefix(runtime),
            id: is_id(id).then(|| id.to_string())?,
            pod_uid,
        });
    }
    let stem = leaf.strip_suffix(".scope").unwrap_or(leaf);
    for (prefix, runtime) in [
        ("libpod-", Runtime::Podman),
        ("docker-", Runtime::Docker),
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
    ] {
        if let Some(id) = stem.strip_prefix(prefix).filter(|id| is_id(id)) {
            return Some(Identity {
                runtime: Some(runtime),
                id: id.to_string(),
                pod_uid,
            });
        }
    }
    if !is_id(leaf) {
        return None;
    }
    let parent = path.trim_end_matches('/').trim_end_matches(leaf);
    let runtime = if parent.ends_with("/docker/") {
        Some(Runtime::Docker)
    } else {
        None
    };
    // Any other bare id is a container only inside a runtime's or kubelet's tree.
    (runtime.is_some() || pod_uid.is_some()).then(|| Identity {
        runtime,
        id: leaf.to_string(),
        pod_uid,
    })
}

/// `kubepods-burstable-pod1b2c_3d4e.slice` → `1b2c-3d4e`; `pod1b2c-3d4e` → `1b2c-3d4e`.
fn pod_uid(path: &str) -> Option<String> {
    path.split(['/', ':']).find_map(|part| {
        let stem = part.strip_suffix(".slice").unwrap_or(part);
        let uid = match stem.strip_prefix("pod") {
            // cgroupfs: the whole component is `pod<uid>`, with the UID's own dashes.
            Some(uid) => uid.to_string(),
            // systemd: `kubepods-<class>-pod<uid>`, the UID's dashes written as underscores.
            None if stem.starts_with("kubepods") => stem
                .rsplit('-')
                .next()?
                .strip_prefix("pod")?
                .replace('_', "-"),
            None => return None,
        };
        (uid.len() >= 32 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')).then_some(uid)
    })
}

/// The runtime a cgroup component's prefix names (`cri-containerd`, `crio`, `docker`).
fn runtime_of_prefix(prefix: &str) -> Option<Runtime> {
    match prefix {
        "cri-containerd" => Some(Runtime::Containerd),
        "crio" => Some(Runtime::CriO),
        "docker" => Some(Runtime::Docker),
        "libpod" => Some(Runtime::Podman),
        _ => None,
    }
}

fn is_id(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a1b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a";
    const UID: &str = "1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901";

    fn id(path: &str) -> Option<(Option<Runtime>, String, Option<String>)> {
        identify(path).map(|found| (found.runtime, found.id, found.pod_uid))
    }

    #[test]
    fn names_each_layout() {
        let podman = Some((Some(Runtime::Podman), ID.to_string(), None));
        assert_eq!(id(&format!("/libpod_parent/libpod-{ID}")), podman);
        assert_eq!(id(&format!("/machine.slice/libpod-{ID}.scope")), podman);
        let docker = Some((Some(Runtime::Docker), ID.to_string(), None));
        assert_eq!(id(&format!("/system.slice/docker-{ID}.scope")), docker);
        assert_eq!(id(&format!("/docker/{ID}")), docker);
        let underscored = UID.replace('-', "_");
        let pod = Some(UID.to_string());
        assert_eq!(
            id(&format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{underscored}.slice/cri-containerd-{ID}.scope"
            )),
            Some((Some(Runtime::Containerd), ID.to_string(), pod.clone()))
        );
        assert_eq!(
            id(&format!(
                "/kubepods.slice/kubepods-pod{underscored}.slice/crio-{ID}.scope"
            )),
            Some((Some(Runtime::CriO), ID.to_string(), pod.clone()))
        );
        assert_eq!(
            id(&format!(
                "/system.slice/containerd.service/kubepods-besteffort-pod{underscored}.slice:cri-containerd:{ID}"
            )),
            Some((Some(Runtime::Containerd), ID.to_string(), pod.clone()))
        );
        assert_eq!(
            id(&format!("/kubepods/besteffort/pod{UID}/{ID}")),
            Some((None, ID.to_string(), pod))
        );
    }

    #[test]
    fn helpers_units_and_roots_are_no_container() {
        assert_eq!(
            id(&format!("/machine.slice/libpod-conmon-{ID}.scope")),
            None
        );
        assert_eq!(id("/system.slice/nginx.service"), None);
        assert_eq!(id(&format!("/user.slice/{ID}")), None);
        assert_eq!(id("/"), None);
        assert_eq!(id("/docker-short.scope"), None);
    }

    #[test]
    fn finds_a_cgroup_by_its_id() {
        let own = fs::read_to_string("/proc/self/cgroup").unwrap();
        let unified = own
            .lines()
            .find_map(|line| line.strip_prefix("0::"))
            .unwrap();
        let root = cgroup2_root().expect("a cgroup2 hierarchy");
        let dir = format!("{root}{unified}");
        let id = fs::metadata(&dir).unwrap().ino();
        // The root cgroup is the walk's start, not an entry in it.
        if unified != "/" {
            assert_eq!(path_of_id(id).as_deref(), Some(unified));
        }
        assert_eq!(path_of_id(u64::MAX), None);
    }

    #[test]
    fn a_hybrid_host_names_it_in_a_v1_line() {
        let text = format!("9:name=systemd:/\n4:memory:/libpod_parent/libpod-{ID}\n0::/\n");
        assert_eq!(
            of_proc_cgroup(&text).unwrap().runtime,
            Some(Runtime::Podman)
        );
        assert_eq!(of_proc_cgroup("0::/user.slice\n1:cpu:/\n"), None);
        let (unified, any) = read_proc_cgroup(&text);
        assert_eq!((unified, any.is_some()), (None, true));
    }
}
