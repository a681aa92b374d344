//! The ephemeral range of another network namespace. Net sysctls answer for the reader's own
//! namespace, so reading one means entering the namespace, which takes CAP_SYS_ADMIN: more
//! than the tracer keeps after attaching. A small process forked before the tracer drops its
//! capabilities keeps that one capability and does only this, over a socket pair: given a pid
//! and a namespace inode, it enters the namespace through the pid and reads
//! `net.ipv4.ip_local_port_range`. It dies with the tracer.

use std::{
    fs::File,
    io::{Read, Write},
    ops::RangeInclusive,
    os::{
        fd::AsRawFd as _,
        unix::{fs::MetadataExt as _, net::UnixStream},
    },
};

use rustix::thread::{CapabilitySet, CapabilitySets};

use crate::model::ports;

/// What the reader found for one namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reading {
    Found(RangeInclusive<u16>),
    /// The process is gone, or in another namespace now: another of the namespace's
    /// processes may still show the way in.
    Gone,
    /// The reader may not enter it (it lacks CAP_SYS_ADMIN, or the namespace file is denied).
    Refused,
}

/// The answer's first byte for each [`Reading`].
const FOUND: u8 = 1;
const GONE: u8 = 0;
const REFUSED: u8 = 2;

pub struct RangeReader {
    socket: UnixStream,
    child: libc::pid_t,
}

impl RangeReader {
    /// Forks the reader. Must run while the process has one thread (fork copies only the
    /// calling one) and still holds CAP_SYS_ADMIN; without it the reader answers nothing.
    pub fn spawn() -> std::io::Result<Self> {
        let (ours, theirs) = UnixStream::pair()?;
        // SAFETY: the process is single-threaded here; the child only reads and writes its
        // socket and files, then leaves through _exit without running the parent's destructors.
        match unsafe { libc::fork() } {
            -1 => Err(std::io::Error::last_os_error()),
            0 => {
                drop(ours);
                serve(theirs);
                // SAFETY: _exit ends the child without unwinding into the tracer's code.
                unsafe { libc::_exit(0) }
            }
            child => Ok(Self {
                socket: ours,
                child,
            }),
        }
    }

    /// The range network namespace `netns` uses, entered through process `pid`. A reader that
    /// no longer answers refuses.
    pub fn range_of(&mut self, pid: u32, netns: u32) -> Reading {
        let mut request = [0u8; 8];
        request[..4].copy_from_slice(&pid.to_ne_bytes());
        request[4..].copy_from_slice(&netns.to_ne_bytes());
        let mut answer = [0u8; 5];
        if self.socket.write_all(&request).is_err() || self.socket.read_exact(&mut answer).is_err()
        {
            return Reading::Refused;
        }
        let low = u16::from_ne_bytes([answer[1], answer[2]]);
        let high = u16::from_ne_bytes([answer[3], answer[4]]);
        match answer[0] {
            FOUND => Reading::Found(low..=high),
            GONE => Reading::Gone,
            _ => Reading::Refused,
        }
    }
}

impl Drop for RangeReader {
    fn drop(&mut self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        // SAFETY: waitpid on our own child with a null status pointer.
        unsafe { libc::waitpid(self.child, std::ptr::null_mut(), 0) };
    }
}

/// The reader's loop: one answer per request until the tracer closes its end (or dies: the
/// kernel then kills the reader).
fn serve(mut socket: UnixStream) {
    // SAFETY: prctl with PR_SET_PDEATHSIG and a valid signal number.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    close_all_but(socket.as_raw_fd());
    // Entering a namespace takes CAP_SYS_ADMIN; opening another process's namespace file takes
    // ptrace access to it, which a process with more capabilities than the reader grants only
    // with CAP_SYS_PTRACE.
    let enter = CapabilitySet::SYS_ADMIN | CapabilitySet::SYS_PTRACE;
    let only_namespaces = CapabilitySets {
        effective: enter,
        permitted: enter,
        inheritable: CapabilitySet::empty(),
    };
    let _ = rustix::thread::set_capabilities(None, only_namespaces);
    let mut request = [0u8; 8];
    while socket.read_exact(&mut request).is_ok() {
        let pid = u32::from_ne_bytes([request[0], request[1], request[2], request[3]]);
        let netns = u32::from_ne_bytes([request[4], request[5], request[6], request[7]]);
        let mut answer = [0u8; 5];
        match enter_and_read(pid, netns) {
            Reading::Found(range) => {
                answer[0] = FOUND;
                answer[1..3].copy_from_slice(&range.start().to_ne_bytes());
                answer[3..].copy_from_slice(&range.end().to_ne_bytes());
            }
            Reading::Gone => answer[0] = GONE,
            Reading::Refused => answer[0] = REFUSED,
        }
        if socket.write_all(&answer).is_err() {
            break;
        }
    }
}

/// The reader holds nothing of the tracer's: not its output, not its listener, not a BPF
/// object that would keep a hook attached after the tracer let go of it.
fn close_all_but(keep: i32) {
    let open: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|dir| {
            dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    for fd in open {
        if fd > 2 && fd != keep {
            // SAFETY: closing a descriptor this process owns; nothing in it uses them again.
            unsafe { libc::close(fd) };
        }
    }
}

fn enter_and_read(pid: u32, netns: u32) -> Reading {
    let refused_or_gone = |err: std::io::Error| match err.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => Reading::Refused,
        _ => Reading::Gone,
    };
    let namespace = match File::open(format!("/proc/{pid}/ns/net")) {
        Ok(namespace) => namespace,
        Err(err) => return refused_or_gone(err),
    };
    // The pid may have been reused by a process in another namespace.
    if namespace.metadata().map(|meta| meta.ino() as u32).ok() != Some(netns) {
        return Reading::Gone;
    }
    // SAFETY: the descriptor is an open network namespace file; this single-threaded process
    // exists only to enter namespaces.
    if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return refused_or_gone(std::io::Error::last_os_error());
    }
    let mut text = String::new();
    let read = File::open("/proc/sys/net/ipv4/ip_local_port_range")
        .and_then(|mut file| file.read_to_string(&mut text));
    match read.ok().and_then(|_| ports::parse_ephemeral(&text)) {
        Some(range) => Reading::Found(range),
        None => Reading::Refused,
    }
}
