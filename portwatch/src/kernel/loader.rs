//! Loads and attaches the backend in a short-lived child process, which hands the tracer the file
//! descriptors that keep the hooks attached, then exits.
//!
//! Loading needs the kernel's BTF parsed (aya's loader parses all of it, about 30 MB of heap),
//! but tracing does not. Done in-process, that peak would stay the tracer's high-water mark for
//! a capture that may run for days; in a child, the memory goes away with it. Hooks live as long
//! as any descriptor of their links, perf events and maps is open, so passing those descriptors
//! over a Unix socket (SCM_RIGHTS) moves the whole attachment to the tracer. Only those: the
//! child inherited whatever the tracer had open (a shell's extra descriptors among them), and the
//! tracer must not end up holding copies of them.

mod report;

use std::{
    collections::HashSet,
    io,
    os::fd::{AsFd as _, AsRawFd, BorrowedFd, OwnedFd, RawFd},
};

use anyhow::Context as _;
use aya::maps::{Map, MapData, RingBuf};
use rustix::net::{AddressFamily, SocketFlags, SocketType};

use crate::{
    kernel::backend::{self, Kernel, LoadSpec},
    kernel::kernel_log::{self, KernelLog},
    kernel::lost::LostCounter,
    kernel::mounts,
};

use report::Attached;

/// An attached backend, as the tracer holds it.
pub struct Loaded {
    pub backend: String,
    /// Why `auto` passed over better backends, one line each.
    pub passed_over: Vec<String>,
    /// What the chosen backend cannot see on this kernel beyond its documented limits.
    pub notes: Vec<String>,
    pub events: RingBuf<MapData>,
    pub lost: LostCounter,
    /// With `--debug-kernel`: the kernel programs' log records.
    pub kernel_log: Option<KernelLog>,
    /// Every other descriptor of the attachment (programs, links, perf events, maps): closing
    /// them detaches the hooks, so they live as long as the trace.
    pub attachment: Vec<OwnedFd>,
}

/// Attaches the configured backend in a child process and takes over its descriptors. Must run
/// before any other thread exists (fork copies only the calling thread).
pub fn load(spec: &LoadSpec) -> anyhow::Result<Loaded> {
    let (parent_end, child_end) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .context("socketpair")?;
    // SAFETY: the process is single-threaded here (called before the async runtime starts), so
    // the child may run arbitrary code; it leaves through _exit without running destructors.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()).context("fork"),
        0 => {
            drop(parent_end);
            // A panic must not unwind out of here: the child would carry on as the tracer.
            let outcome =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| child(spec, &child_end)));
            let code = match outcome {
                Ok(Ok(())) => 0,
                _ => 1,
            };
            // SAFETY: _exit ends the child without unwinding or running the parent's destructors
            // (which would detach nothing but must not flush shared stdio buffers twice).
            unsafe { libc::_exit(code) }
        }
        pid => {
            drop(child_end);
            let received = report::receive(parent_end.as_fd());
            let mut status = 0;
            // SAFETY: pid is our child; status is a valid out-pointer.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            parent(received?)
        }
    }
}

/// The child: attach, then send the report and the attachment's descriptors.
fn child(spec: &LoadSpec, socket: &OwnedFd) -> io::Result<()> {
    let inherited: HashSet<RawFd> = open_descriptors()?.into_iter().collect();
    let outcome = Kernel::read()
        .map_err(|err| format!("reading the kernel's type information: {err}"))
        .and_then(|kernel| {
            // Best effort: without it aya parses the whole file, which is only slower.
            let _ = show_aya_the_skeleton(&kernel.skeleton);
            let (attached, passed_over) = backend::attach_best(&kernel, spec);
            let reasons: Vec<String> = passed_over
                .iter()
                .map(|(backend, err)| format!("{}: {err}", backend.name()))
                .collect();
            match attached {
                Some(attached) => Ok((attached, reasons)),
                None => Err(format!(
                    "no backend could attach on this kernel ({})",
                    reasons.join("; ")
                )),
            }
        });
    let socket = socket.as_fd();
    let (mut attached, passed_over) = match outcome {
        Ok(outcome) => outcome,
        Err(reason) => return report::send(socket, &report::encode_failure(&reason), &[]),
    };
    let ring = map_fd(&mut attached.ebpf, "EVENTS");
    let lost = map_fd(&mut attached.ebpf, "LOST");
    let (Some(ring), Some(lost)) = (ring, lost) else {
        let reason = "the eBPF object lacks its EVENTS or LOST map";
        return report::send(socket, &report::encode_failure(reason), &[]);
    };
    let mut fds = vec![ring, lost];
    fds.extend(
        open_descriptors()?
            .into_iter()
            .filter(|fd| !inherited.contains(fd) && *fd != ring && *fd != lost)
            .filter(|&fd| is_attachment(fd)),
    );
    // SAFETY: every descriptor listed was open a moment ago and is owned by `attached` (its maps,
    // programs and links), which lives until after the send; nothing in between closes any.
    let borrowed: Vec<BorrowedFd<'_>> = fds
        .iter()
        .map(|&fd| unsafe { BorrowedFd::borrow_raw(fd) })
        .collect();
    let log_program = spec
        .debug_kernel
        .then(|| log_program(&attached.ebpf))
        .flatten();
    let text = Attached {
        backend: attached.backend.name().to_string(),
        notes: attached.notes.clone(),
        passed_over,
        log_program,
    }
    .encode();
    let sent = report::send(socket, &text, &borrowed);
    drop(attached);
    sent
}

/// A loaded program that writes to the kernel log ring, by which the tracer finds that ring (not
/// every program logs, and the map is found through a program's map ids).
fn log_program(ebpf: &aya::Ebpf) -> Option<u32> {
    let Some(Map::RingBuf(logs)) = ebpf.map("AYA_LOGS") else {
        return None;
    };
    let logs = logs.info().ok()?.id();
    ebpf.programs()
        .filter_map(|(_, program)| program.info().ok())
        .find(|info| {
            info.map_ids()
                .ok()
                .flatten()
                .is_some_and(|ids| ids.contains(&logs))
        })
        .map(|info| info.id())
}

/// aya's loader parses `/sys/kernel/btf/vmlinux` whole when it is created (tens of megabytes
/// and milliseconds), though portwatch needs nothing from it: offsets are passed as globals and
/// attach points are looked up in the skeleton. In a private mount namespace, which dies with
/// this child, a tmpfs over `/sys/kernel/btf` holds the skeleton under that name instead.
fn show_aya_the_skeleton(skeleton: &[u8]) -> io::Result<()> {
    // Private: the tmpfs below must not propagate to the host's mount namespace.
    mounts::unshare(libc::MS_PRIVATE)?;
    mounts::mount(c"tmpfs", c"/sys/kernel/btf")?;
    std::fs::write(crate::kernel::btf::VMLINUX, skeleton)
}

fn map_fd(ebpf: &mut aya::Ebpf, name: &str) -> Option<RawFd> {
    match ebpf.map(name)? {
        Map::RingBuf(data) | Map::Array(data) => Some(data.fd().as_fd().as_raw_fd()),
        _ => None,
    }
}

/// The descriptors open now. The listing itself used one, closed by the time we look again, so
/// each is checked to be still open.
fn open_descriptors() -> io::Result<Vec<RawFd>> {
    let listed: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    // SAFETY: F_GETFD only queries the descriptor's flags; it fails with EBADF if it is closed.
    Ok(listed
        .into_iter()
        .filter(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0)
        .collect())
}

/// Whether `fd` is a BPF program, map or link, or a perf event (how kprobes attach on kernels
/// without kprobe links): the kinds of object an attachment consists of.
fn is_attachment(fd: RawFd) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .is_ok_and(|target| is_attachment_kind(&target.to_string_lossy()))
}

fn is_attachment_kind(link_target: &str) -> bool {
    matches!(
        link_target,
        "anon_inode:bpf-prog"
            | "anon_inode:bpf-map"
            | "anon_inode:bpf_link"
            | "anon_inode:[perf_event]"
    )
}

/// The tracer's side: rebuild the two maps it reads and keep the rest open.
fn parent((text, mut fds): (String, Vec<OwnedFd>)) -> anyhow::Result<Loaded> {
    let Attached {
        backend,
        notes,
        passed_over,
        log_program,
    } = report::decode(&text)?;
    let kernel_log = log_program.map(kernel_log::open).transpose()?;
    if fds.len() < 2 {
        anyhow::bail!("the loader sent no map descriptors");
    }
    let rest = fds.split_off(2);
    let mut maps = fds.into_iter();
    let events = map_from(maps.next().expect("two fds"))?;
    let lost = maps.next().expect("two fds");
    Ok(Loaded {
        backend,
        notes,
        passed_over,
        events: RingBuf::try_from(events).context("EVENTS is not a ring buffer")?,
        lost: LostCounter::map(&lost).context("mapping the lost-event counter")?,
        kernel_log,
        attachment: rest,
    })
}

fn map_from(fd: OwnedFd) -> anyhow::Result<Map> {
    let data = MapData::from_fd(fd).context("adopting a map from the loader")?;
    Map::from_map_data(data).context("adopting a map from the loader")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bpf_objects_and_perf_events_are_the_attachment() {
        for kind in ["bpf-prog", "bpf-map", "bpf_link", "[perf_event]"] {
            assert!(is_attachment_kind(&format!("anon_inode:{kind}")), "{kind}");
        }
        for other in [
            "/dev/null",
            "pipe:[1234]",
            "socket:[99]",
            "anon_inode:btf",
            "anon_inode:[eventpoll]",
        ] {
            assert!(!is_attachment_kind(other), "{other}");
        }
    }

    /// A descriptor the process did not open as a BPF object is never taken for one.
    #[test]
    fn an_ordinary_descriptor_is_not_part_of_the_attachment() {
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(!is_attachment(file.as_raw_fd()));
    }
}
