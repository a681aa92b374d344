//! Program runs the kernel skipped: events that were never made, so no ring buffer could count
//! them as lost.
//!
//! The kernel runs one BPF program at a time per CPU for kprobes and syscall tracepoints: while
//! its `bpf_prog_active` is held (by another program there, or by any process's bpf() map call,
//! which can be preempted holding it) such a run is skipped. Since Linux 6.7 it counts each skip
//! in the program's `recursion_misses` (fentry programs' own recursion guard counts there since
//! 5.12); older kernels count kprobe and tracepoint skips nowhere.

use std::{
    io,
    mem::{offset_of, size_of},
    os::fd::{AsRawFd, OwnedFd},
};

use aya_obj::generated::bpf_prog_info;

/// `BPF_OBJ_GET_INFO_BY_FD` of `enum bpf_cmd`.
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// The attachment's programs, asked for their skipped runs.
pub struct SkippedRuns {
    programs: Vec<OwnedFd>,
    reported: u64,
}

impl SkippedRuns {
    /// Copies of the program descriptors among `attachment` (the copies do not keep the hooks
    /// attached: links and perf events do).
    pub fn of(attachment: &[OwnedFd]) -> Self {
        let programs = attachment
            .iter()
            .filter(|fd| {
                std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                    .is_ok_and(|target| target.as_os_str() == "anon_inode:bpf-prog")
            })
            .filter_map(|fd| fd.try_clone().ok())
            .collect();
        Self {
            programs,
            reported: 0,
        }
    }

    /// Runs skipped since the last call, over every program; None when the kernel would not
    /// say (a kernel that refuses bpf() to a task without capabilities, as Debian's 5.10 does).
    pub fn newly_skipped(&mut self) -> Option<u64> {
        let mut total = 0u64;
        for program in &self.programs {
            total = total.saturating_add(recursion_misses(program).ok()?);
        }
        let new = total.saturating_sub(self.reported);
        self.reported = total;
        Some(new)
    }

    /// Every run skipped so far, as last read.
    pub fn total(&self) -> u64 {
        self.reported
    }
}

/// The kernel's count of skipped runs of `program` (0 on kernels that do not count them).
fn recursion_misses(program: &OwnedFd) -> io::Result<u64> {
    let mut info = [0u8; size_of::<bpf_prog_info>()];
    // bpf_attr for BPF_OBJ_GET_INFO_BY_FD: bpf_fd, info_len, info.
    let mut attr = [0u64; 2];
    attr[0] = u64::from(program.as_raw_fd() as u32) | ((info.len() as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    // SAFETY: attr is a live 16-byte bpf_attr prefix for this command, pointing at `info`, a
    // live writable buffer of the length it gives; the kernel writes at most that many bytes.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            attr.as_mut_ptr(),
            size_of::<[u64; 2]>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let at = offset_of!(bpf_prog_info, recursion_misses);
    let mut field = [0u8; 8];
    field.copy_from_slice(&info[at..at + 8]);
    Ok(u64::from_ne_bytes(field))
}
