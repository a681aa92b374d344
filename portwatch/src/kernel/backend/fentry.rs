//! fentry/fexit: BTF trampolines on the socket functions (Linux 5.5+ with BTF, x86-64/arm64).

use aya::{
    Ebpf,
    programs::{Program, ProgramError},
};

use super::{BackendError, Kernel, concurrent, kernel_function, lacks, parameter_count};

/// Program name in the object, the hook it serves, and for fexit programs the parameter count
/// of the kernel function they were written for (their return value sits right after the
/// parameters); 0 for fentry programs, which work whatever the count.
///
/// Attached in this order: every release hook before any claim hook. A claim recorded while its
/// socket's release went unseen would stay in the claim map after the socket is gone, and the
/// next socket allocated at that address would look as if it had claimed already.
pub const PROGRAMS: [(&str, &str, u32); 15] = [
    ("put_port_entry", "put_port", 0),
    ("udp_unhash_entry", "udp_unhash", 0),
    ("time_wait_start", "time_wait_start", 0),
    ("time_wait_end", "time_wait_end", 0),
    ("listen_stop_entry", "listen_stop", 0),
    ("listen_stop_exit", "listen_stop", 0),
    ("inet_bind_exit", "bind", 4),
    ("inet6_bind_exit", "bind6", 4),
    ("hash_connect_exit", "hash_connect", 4),
    ("autobind_exit", "autobind", 1),
    ("listen_start_entry", "listen_start", 0),
    ("listen_start_exit_1", "listen_start", 1),
    ("listen_start_exit_2", "listen_start", 2),
    ("accept_exit_2", "accept", 2),
    ("accept_exit_4", "accept", 4),
];

/// Loads the programs this kernel's signatures call for, all at once (see [`concurrent`]), then
/// attaches them in [`PROGRAMS`] order.
///
/// A hook whose signature no program fits is reported only after the others have loaded: a
/// kernel that refuses trampolines altogether should say so, which is the more basic reason.
pub fn attach(ebpf: &mut Ebpf, kernel: &Kernel) -> Result<(), BackendError> {
    let mut chosen: Vec<(&str, &'static str)> = Vec::new();
    let mut unfit = None;
    for (program, hook, written_for) in PROGRAMS {
        let function = kernel_function(kernel, hook)?;
        let parameters = parameter_count(kernel, function);
        if written_for != 0 && written_for != parameters {
            let variant_fits = PROGRAMS
                .iter()
                .any(|&(_, other, count)| other == hook && count == parameters);
            if !variant_fits {
                unfit.get_or_insert_with(|| {
                    BackendError::Unsupported(format!(
                        "{function} takes {parameters} parameters on this kernel; no fexit \
                         program for that signature"
                    ))
                });
            }
            continue;
        }
        chosen.push((program, function));
    }
    let function_of = |program: &str| {
        chosen
            .iter()
            .find(|(name, _)| *name == program)
            .map_or("", |(_, function)| *function)
    };
    let names: Vec<&str> = chosen.iter().map(|(program, _)| *program).collect();
    concurrent::load_all(ebpf, &names, |program, loaded| {
        let function = function_of(program);
        let result = match loaded {
            Program::FEntry(entry) => entry.load(function, &kernel.aya_btf),
            Program::FExit(exit) => exit.load(function, &kernel.aya_btf),
            _ => return Err(lacks(program)),
        };
        result.map_err(|err| match &err {
            ProgramError::LoadError { io_error, .. }
                if io_error.raw_os_error() == Some(libc::EPERM) =>
            {
                BackendError::Unsupported(format!(
                    "this kernel refuses fentry/fexit programs (EPERM loading {program} on \
                     {function}): BPF trampolines are disabled or unsupported here"
                ))
            }
            _ => BackendError::hook(format!("{program} on {function}"), err),
        })
    })?;
    if let Some(unfit) = unfit {
        return Err(unfit);
    }
    for (program, function) in chosen {
        let attached = match ebpf.program_mut(program) {
            Some(Program::FEntry(entry)) => entry.attach().map(drop),
            Some(Program::FExit(exit)) => exit.attach().map(drop),
            _ => return Err(lacks(program)),
        };
        attached.map_err(|err| BackendError::hook(format!("{program} on {function}"), err))?;
    }
    Ok(())
}
