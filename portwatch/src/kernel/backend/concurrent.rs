//! Loads a backend's programs into the kernel on every CPU at once.
//!
//! The verifier runs in the thread that loads a program, and privileged loads do not take the
//! verifier's global lock, so programs load in parallel. Verification is most of portwatch's
//! start-up (the tracepoint backend's syscall exit program alone takes about 18 ms here), so this
//! shortens the time to "attached" by about as much as the CPUs can share. Attaching stays
//! sequential and ordered, in the backends themselves.

use std::{
    num::NonZeroUsize,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
};

use aya::{Ebpf, programs::Program};

use super::{BackendError, lacks};

/// Loads every program in `names` with `load`. After an error no further load starts, and an
/// error is returned once the loads under way have finished (the caller unloads whatever did
/// load).
pub fn load_all<F>(ebpf: &mut Ebpf, names: &[&str], load: F) -> Result<(), BackendError>
where
    F: Fn(&str, &mut Program) -> Result<(), BackendError> + Sync,
{
    let mut wanted: Vec<(&str, &mut Program)> = ebpf
        .programs_mut()
        .filter(|(name, _)| names.contains(name))
        .collect();
    if let Some(missing) = names
        .iter()
        .find(|name| !wanted.iter().any(|(found, _)| found == *name))
    {
        return Err(lacks(missing));
    }
    // Taken from the back: the first named, which backends list as their largest, start first.
    wanted.sort_by_key(|(name, _)| std::cmp::Reverse(names.iter().position(|n| n == name)));
    let workers = thread::available_parallelism()
        .map_or(1, NonZeroUsize::get)
        .min(wanted.len());
    let queue = Mutex::new(wanted);
    let failed = AtomicBool::new(false);
    let next = || {
        if failed.load(Ordering::Relaxed) {
            return None;
        }
        queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop()
    };
    thread::scope(|scope| {
        let workers: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    while let Some((name, program)) = next() {
                        if let Err(err) = load(name, program) {
                            failed.store(true, Ordering::Relaxed);
                            return Some(err);
                        }
                    }
                    None
                })
            })
            .collect();
        let errors: Vec<BackendError> = workers
            .into_iter()
            .filter_map(|worker| match worker.join() {
                Ok(error) => error,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect();
        errors.into_iter().next().map_or(Ok(()), Err)
    })
}
