//! tracefs, which the syscall tracepoints need: aya finds a tracepoint's id under
//! `/sys/kernel/tracing` (or the older `/sys/kernel/debug/tracing`). Hosts that never mounted
//! it get it mounted in a mount namespace of portwatch's own (the loader child already has one),
//! so the host's mounts stay as they were.

use std::{io, path::Path};

use super::BackendError;
use crate::kernel::mounts;

const TRACEFS: &str = "/sys/kernel/tracing";

/// Makes tracefs visible at its usual place to this process, mounting it privately if needed.
pub fn ensure_mounted() -> Result<(), BackendError> {
    if [TRACEFS, "/sys/kernel/debug/tracing"]
        .iter()
        .any(|path| has_entries(Path::new(path)))
    {
        return Ok(());
    }
    mount_privately().map_err(|err| {
        BackendError::Unsupported(format!(
            "tracefs is not mounted at {TRACEFS} and mounting it in a private mount namespace \
             failed: {err}"
        ))
    })
}

fn has_entries(path: &Path) -> bool {
    path.read_dir()
        .is_ok_and(|mut entries| entries.next().is_some())
}

fn mount_privately() -> io::Result<()> {
    // A second unshare costs the kernel a grace period (200 ms here): only when still sharing.
    if !in_own_mount_namespace() {
        mounts::unshare(libc::MS_SLAVE)?;
    }
    mounts::mount(c"tracefs", c"/sys/kernel/tracing")
}

/// Whether this process's mount namespace is not its parent's (the loader child unshared one).
fn in_own_mount_namespace() -> bool {
    // SAFETY: getppid has no preconditions and cannot fail.
    let parent = unsafe { libc::getppid() };
    match (
        std::fs::read_link("/proc/self/ns/mnt"),
        std::fs::read_link(format!("/proc/{parent}/ns/mnt")),
    ) {
        (Ok(ours), Ok(init)) => ours != init,
        _ => false,
    }
}
