//! kprobes and kretprobes on the same socket functions as fentry (any kernel with
//! CONFIG_KPROBES; the offsets still come from BTF).

use aya::{Ebpf, programs::Program};

use portwatch_ebpf::programs;

use super::{BackendError, Kernel, concurrent, kernel_function, lacks};

/// Present when the kernel was built with kprobe support (CONFIG_KPROBES and perf events).
const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe";

/// Loads every program at once (see [`concurrent`]), then attaches them in the order of
/// [`programs::PROGRAMS`].
pub fn attach(ebpf: &mut Ebpf, kernel: &Kernel) -> Result<(), BackendError> {
    if !std::path::Path::new(KPROBE_PMU).exists() {
        return Err(BackendError::Unsupported(format!(
            "this kernel has no kprobes ({KPROBE_PMU} is missing: built without CONFIG_KPROBES)"
        )));
    }
    let mut chosen: Vec<(&str, &'static str)> = Vec::new();
    for program in programs::of(programs::Backend::Kprobe) {
        chosen.push((program.name, kernel_function(kernel, program.hook)?));
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
