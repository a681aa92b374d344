//! Loads and attaches the backend in a short-lived child process, which hands the tracer the file
//! descriptors that keep the hooks attached, then exits.
//!
//! Loading needs the kernel's BTF parsed (aya's loader parses all of it, about 30 MB of heap),
//! but tracing does not. Done in-process, that peak would stay the tracer's high-water mark for
//! a capture that may run for days; in a child, the memory goes away with it. Hooks live as long
//! as any descriptor of their links, perf events and maps is open, so passing every descriptor
//! over a Unix socket (SCM_RIGHTS) moves the whole attachment to the tracer.

use std::{
    io,
    mem::{size_of, zeroed},
    os::fd::{AsFd as _, AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use anyhow::{Context as _, bail};
use aya::maps::{Map, MapData, PerCpuArray, RingBuf};

use crate::{
    backend::{self, Kernel},
    cli::Config,
};

/// The most descriptors one message carries (the kernel's SCM_MAX_FD).
const MAX_FDS: usize = 253;
/// Room for the report text.
const MAX_REPORT: usize = 64 * 1024;

/// An attached backend, as the tracer holds it.
pub struct Loaded {
    pub backend: String,
    /// Why `auto` passed over better backends, one line each.
    pub passed_over: Vec<String>,
    /// What the chosen backend cannot see on this kernel beyond its documented limits.
    pub notes: Vec<String>,
    pub events: RingBuf<MapData>,
    pub lost: PerCpuArray<MapData, u64>,
    /// Every other descriptor of the attachment (programs, links, perf events, maps): closing
    /// them detaches the hooks, so they live as long as the trace.
    pub attachment: Vec<OwnedFd>,
}

/// Attaches the configured backend in a child process and takes over its descriptors. Must run
/// before any other thread exists (fork copies only the calling thread).
pub fn load(config: &Config) -> anyhow::Result<Loaded> {
    let (parent_end, child_end) = socket_pair()?;
    // SAFETY: the process is single-threaded here (called before the async runtime starts), so
    // the child may run arbitrary code; it leaves through _exit without running destructors.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()).context("fork"),
        0 => {
            drop(parent_end);
            // A panic must not unwind out of here: the child would carry on as the tracer.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                child(config, &child_end)
            }));
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
            let received = receive(&parent_end);
            let mut status = 0;
            // SAFETY: pid is our child; status is a valid out-pointer.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            parent(received?)
        }
    }
}

/// The child: attach, then send the report and every open descriptor.
fn child(config: &Config, socket: &OwnedFd) -> io::Result<()> {
    let outcome = Kernel::read()
        .map_err(|err| format!("reading the kernel's type information: {err}"))
        .and_then(|kernel| {
            // Best effort: without it aya parses the whole file, which is only slower.
            let _ = show_aya_the_skeleton(&kernel.skeleton);
            let (attached, passed_over) = backend::attach_best(&kernel, config);
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
    match outcome {
        Err(reason) => send(socket, &format!("err\n{reason}"), &[]),
        Ok((mut attached, reasons)) => {
            let ring = map_fd(&mut attached.ebpf, "EVENTS");
            let lost = map_fd(&mut attached.ebpf, "LOST");
            let (Some(ring), Some(lost)) = (ring, lost) else {
                return send(
                    socket,
                    "err\nthe eBPF object lacks its EVENTS or LOST map",
                    &[],
                );
            };
            let mut fds = vec![ring, lost];
            fds.extend(
                open_descriptors()?
                    .into_iter()
                    .filter(|&fd| fd > 2 && fd != ring && fd != lost && fd != socket.as_raw_fd()),
            );
            if fds.len() > MAX_FDS {
                return send(
                    socket,
                    "err\nthe attachment needs too many descriptors",
                    &[],
                );
            }
            let mut report = format!("ok\n{}", attached.backend.name());
            for note in &attached.notes {
                report.push_str("\nnote ");
                report.push_str(note);
            }
            for reason in reasons {
                report.push_str("\npassed ");
                report.push_str(&reason);
            }
            send(socket, &report, &fds)
        }
    }
}

/// aya's loader parses `/sys/kernel/btf/vmlinux` whole when it is created (tens of megabytes
/// and milliseconds), though portwatch needs nothing from it: offsets are passed as globals and
/// attach points are looked up in the skeleton. In a private mount namespace, which dies with
/// this child, a tmpfs over `/sys/kernel/btf` holds the skeleton under that name instead.
fn show_aya_the_skeleton(skeleton: &[u8]) -> io::Result<()> {
    fn check(ret: i32) -> io::Result<()> {
        if ret == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
    // SAFETY: unshare takes a flag; this child is single-threaded apart from finished helpers.
    check(unsafe { libc::unshare(libc::CLONE_NEWNS) })?;
    // SAFETY: remounting / as private with null source/type/data is the documented form; it
    // keeps the bind below from propagating to the host's mount namespace.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    })?;
    // SAFETY: all strings are valid and NUL-terminated; tmpfs needs no data.
    check(unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            c"/sys/kernel/btf".as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    })?;
    std::fs::write(crate::btf::VMLINUX, skeleton)
}

fn map_fd(ebpf: &mut aya::Ebpf, name: &str) -> Option<RawFd> {
    match ebpf.map(name)? {
        Map::RingBuf(data) | Map::PerCpuArray(data) => Some(data.fd().as_fd().as_raw_fd()),
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

/// The tracer's side: rebuild the two maps it reads and keep the rest open.
fn parent((report, mut fds): (String, Vec<OwnedFd>)) -> anyhow::Result<Loaded> {
    let mut lines = report.lines();
    match lines.next() {
        Some("ok") => {}
        Some("err") => bail!("{}", lines.collect::<Vec<_>>().join("\n")),
        _ => bail!("the loader process died before reporting (see its messages above)"),
    }
    let backend = lines
        .next()
        .context("loader report names no backend")?
        .to_string();
    let (mut notes, mut passed_over) = (Vec::new(), Vec::new());
    for line in lines {
        if let Some(note) = line.strip_prefix("note ") {
            notes.push(note.to_string());
        } else if let Some(reason) = line.strip_prefix("passed ") {
            passed_over.push(reason.to_string());
        }
    }
    if fds.len() < 2 {
        bail!("the loader sent no map descriptors");
    }
    let rest = fds.split_off(2);
    let mut maps = fds.into_iter();
    let events = map_from(maps.next().expect("two fds"))?;
    let lost = map_from(maps.next().expect("two fds"))?;
    Ok(Loaded {
        backend,
        notes,
        passed_over,
        events: RingBuf::try_from(events).context("EVENTS is not a ring buffer")?,
        lost: PerCpuArray::try_from(lost).context("LOST is not a per-CPU array")?,
        attachment: rest,
    })
}

fn map_from(fd: OwnedFd) -> anyhow::Result<Map> {
    let data = MapData::from_fd(fd).context("adopting a map from the loader")?;
    Map::from_map_data(data).context("adopting a map from the loader")
}

fn socket_pair() -> anyhow::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints for socketpair to fill.
    let ret = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error()).context("socketpair");
    }
    // SAFETY: socketpair succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Room for a control message carrying `count` descriptors.
fn control_len(count: usize) -> usize {
    // SAFETY: CMSG_SPACE is a pure size computation.
    unsafe { libc::CMSG_SPACE((count * size_of::<RawFd>()) as u32) as usize }
}

fn send(socket: &OwnedFd, report: &str, fds: &[RawFd]) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: report.as_ptr() as *mut libc::c_void,
        iov_len: report.len(),
    };
    let mut control = vec![0u8; control_len(fds.len().max(1))];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut header: libc::msghdr = unsafe { zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    if !fds.is_empty() {
        header.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        header.msg_controllen = control_len(fds.len());
        // SAFETY: the control buffer is large enough for one header with fds.len() descriptors,
        // so CMSG_FIRSTHDR is non-null and CMSG_DATA has room for the copy.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&header);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as usize;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(cmsg) as *mut RawFd,
                fds.len(),
            );
        }
    }
    // SAFETY: header points at live buffers of the lengths it states.
    if unsafe { libc::sendmsg(socket.as_raw_fd(), &header, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn receive(socket: &OwnedFd) -> anyhow::Result<(String, Vec<OwnedFd>)> {
    let mut text = vec![0u8; MAX_REPORT];
    let mut iov = libc::iovec {
        iov_base: text.as_mut_ptr() as *mut libc::c_void,
        iov_len: text.len(),
    };
    let mut control = vec![0u8; control_len(MAX_FDS)];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut header: libc::msghdr = unsafe { zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    header.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    header.msg_controllen = control.len();
    // SAFETY: header points at live buffers of the lengths it states; MSG_CMSG_CLOEXEC keeps
    // the received descriptors out of any program we might exec.
    let received =
        unsafe { libc::recvmsg(socket.as_raw_fd(), &mut header, libc::MSG_CMSG_CLOEXEC) };
    if received < 0 {
        return Err(io::Error::last_os_error()).context("receiving from the loader");
    }
    let mut fds = Vec::new();
    // SAFETY: recvmsg filled `control` and set msg_controllen; the CMSG macros walk only within
    // it, and each SCM_RIGHTS payload holds descriptors now owned by this process.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&header);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let payload = (*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg) as *const RawFd;
                for index in 0..payload / size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(
                        data.add(index),
                    )));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&header, cmsg);
        }
    }
    if header.msg_flags & libc::MSG_CTRUNC != 0 {
        bail!("the loader's descriptors did not all arrive");
    }
    text.truncate(received as usize);
    Ok((String::from_utf8_lossy(&text).into_owned(), fds))
}
