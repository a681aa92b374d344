//! fentry/fexit: BTF trampolines on the socket functions (Linux 5.5+ with BTF, x86-64/arm64).

use aya::{
    Ebpf,
    programs::{Program, ProgramError},
};

use super::{BackendError, Kernel, kernel_function};

/// Program name in the object, and the hook it serves.
const PROGRAMS: [(&str, &str); 11] = [
    ("inet_bind_exit", "bind"),
    ("inet6_bind_exit", "bind6"),
    ("hash_connect_exit", "hash_connect"),
    ("autobind_exit", "autobind"),
    ("listen_start_entry", "listen_start"),
    ("listen_start_exit", "listen_start"),
    ("accept_exit", "accept"),
    ("put_port_entry", "put_port"),
    ("udp_unhash_entry", "udp_unhash"),
    ("time_wait_start", "time_wait_start"),
    ("time_wait_end", "time_wait_end"),
];

pub fn attach(ebpf: &mut Ebpf, kernel: &Kernel) -> Result<(), BackendError> {
    for (program, hook) in PROGRAMS {
        let function = kernel_function(kernel, hook)?;
        let label = format!("{program} on {function}");
        let result = match ebpf.program_mut(program) {
            Some(Program::FEntry(entry)) => entry
                .load(function, &kernel.aya_btf)
                .and_then(|()| entry.attach().map(drop)),
            Some(Program::FExit(exit)) => exit
                .load(function, &kernel.aya_btf)
                .and_then(|()| exit.attach().map(drop)),
            _ => {
                return Err(BackendError::Unsupported(format!(
                    "the object lacks {program}"
                )));
            }
        };
        result.map_err(|err| match &err {
            ProgramError::LoadError { io_error, .. }
                if io_error.raw_os_error() == Some(libc::EPERM) =>
            {
                BackendError::Unsupported(format!(
                    "this kernel refuses fentry/fexit programs (EPERM loading {label}): BPF \
                     trampolines are disabled or unsupported here"
                ))
            }
            _ => BackendError::hook(label, err),
        })?;
    }
    Ok(())
}
