//! The kernel's count of events that found the ring buffer full, read from memory.
//!
//! The LOST map is an array with a slot per possible CPU, created mappable, and the tracer maps
//! it read-only. Reading it through bpf() instead would hold the CPU's `bpf_prog_active` for
//! the lookup, during which the kernel skips, and before Linux 6.7 counts nowhere, every kprobe
//! and syscall-tracepoint program run on that CPU; the lookup can be preempted there, so a read
//! every half second could cost events no counter shows.

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

/// How many slots the LOST map gets: one per possible CPU (what the kernel numbers CPUs by).
pub fn slots() -> u32 {
    aya::util::nr_cpus().map_or(1, |cpus| u32::try_from(cpus.max(1)).unwrap_or(u32::MAX))
}

/// A read-only view of the LOST map's counters.
pub struct LostCounter {
    slots: NonNull<AtomicU64>,
    count: usize,
    len: usize,
    /// The total as last read.
    reported: u64,
}

// SAFETY: the mapping is shared memory the kernel updates a word at a time; reading it through
// AtomicU64 loads is sound from any thread.
unsafe impl Send for LostCounter {}

impl LostCounter {
    /// Maps the counters of the LOST map `map`, loaded with [`slots`] slots; the mapping keeps
    /// the map alive, so the descriptor is not needed afterwards.
    pub fn map(map: &OwnedFd) -> io::Result<Self> {
        let count = slots() as usize;
        // SAFETY: sysconf has no memory effects.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = (count * size_of::<u64>()).div_ceil(page) * page;
        // SAFETY: a new read-only shared mapping of a map descriptor we own; the kernel checks
        // that the map is mappable and at least `len` bytes long, and returns MAP_FAILED if not.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                map.as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let slots = NonNull::new(address.cast::<AtomicU64>()).ok_or(io::ErrorKind::Other)?;
        Ok(Self {
            slots,
            count,
            len,
            reported: 0,
        })
    }

    /// Events lost since the last call, on every CPU.
    pub fn newly_lost(&mut self) -> u64 {
        let total = self.total();
        let new = total.saturating_sub(self.reported);
        self.reported = total;
        new
    }

    /// Events lost since the programs were loaded, on every CPU.
    fn total(&self) -> u64 {
        (0..self.count)
            .map(|slot| {
                // SAFETY: the mapping is live until drop, page-aligned and `count` u64 slots
                // long; each slot is one 8-byte-aligned word the kernel writes whole.
                unsafe { self.slots.add(slot).as_ref() }.load(Ordering::Relaxed)
            })
            .fold(0, u64::wrapping_add)
    }
}

impl Drop for LostCounter {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`, which nothing uses after this.
        unsafe { libc::munmap(self.slots.as_ptr().cast(), self.len) };
    }
}
