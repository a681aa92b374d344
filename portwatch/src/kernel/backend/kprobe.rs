//! kprobes and kretprobes on the same socket functions as fentry (any kernel with
//! CONFIG_KPROBES; the offsets still come from BTF).

use aya::{Ebpf, programs::Program};

use super::{BackendError, Kernel, concurrent, kernel_function, lacks};

/// Program name in the object, and the hook it serves. Release hooks come first, for the reason
/// given at [`super::fentry::PROGRAMS`].
pub const PROGRAMS: [(&str, &str); 17] = [
    ("kp_put_port", "put_port"),
    ("kp_udp_unhash", "udp_unhash"),
    ("kp_time_wait_start", "time_wait_start"),
    ("kp_time_wait_end", "time_wait_end"),
    ("kp_listen_stop", "listen_stop"),
    ("kp_listen_stop_ret", "listen_stop"),
    ("kp_inet_bind", "bind"),
    ("kp_inet_bind_ret", "bind"),
    ("kp_inet6_bind", "bind6"),
    ("kp_inet6_bind_ret", "bind6"),
    ("kp_hash_connect", "hash_connect"),
    ("kp_hash_connect_ret", "hash_connect"),
    ("kp_autobind", "autobind"),
    ("kp_autobind_ret", "autobind"),
    ("kp_listen_start", "listen_start"),
    ("kp_listen_start_ret", "listen_start"),
    ("kp_accept_ret", "accept"),
];

/// Present when the kernel was built with kprobe support (CONFIG_KPROBES and perf events).
const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe";

/// Loads every program at once (see [`concurrent`]), then attaches them in [`PROGRAMS`] order.
pub fn attach(ebpf: &mut Ebpf, kernel: &Kernel) -> Result<(), BackendError> {
    if !std::path::Path::new(KPROBE_PMU).exists() {
        return Err(BackendError::Unsupported(format!(
            "this kernel has no kprobes ({KPROBE_PMU} is missing: built without CONFIG_KPROBES)"
        )));
    }
    let mut chosen: Vec<(&str, &'static str)> = Vec::new();
    for (program, hook) in PROGRAMS {
        chosen.push((program, kernel_function(kernel, hook)?));
    }
    let names: Vec<&str> = chosen.iter().map(|(program, _)| *program).collect();
    concurrent::load_all(ebpf, &names, |program, loaded| match loaded {
        Program::KProbe(probe) => probe
            .load()
            .map_err(|err| BackendError::hook(format!("loading {program}"), err)),
        _ => Err(lacks(program)),
    })?;
    for (program, function) in chosen {
        let Some(Program::KProbe(probe)) = ebpf.program_mut(program) else {
            return Err(lacks(program));
        };
        probe
            .attach(function, 0)
            .map(drop)
            .map_err(|err| BackendError::hook(format!("{program} on {function}"), err))?;
    }
    Ok(())
}
