//! fentry/fexit: BTF trampolines on the socket functions (Linux 5.5+ with BTF, x86-64/arm64).

use aya::{
    Ebpf,
    programs::{Program, ProgramError},
};

use portwatch_ebpf::programs::{self, Kind};

use super::{BackendError, Kernel, concurrent, kernel_function, lacks, parameter_count};

/// Loads the programs this kernel's signatures call for, all at once (see [`concurrent`]), then
/// attaches them in the order of [`programs::PROGRAMS`].
///
/// A hook whose signature no program fits is reported only after the others have loaded: a
/// kernel that refuses trampolines altogether should say so, which is the more basic reason.
pub fn attach(ebpf: &mut Ebpf, kernel: &Kernel) -> Result<(), BackendError> {
    let (chosen, unfit) = choose(kernel)?;
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

/// A fentry backend's programs with the kernel function each goes on, and why a hook has none.
type Chosen = (Vec<(&'static str, &'static str)>, Option<BackendError>);

/// The programs this kernel's signatures call for, each with the kernel function it goes on,
/// and the first hook no program fits, if any. Of a hook's fexit variants, the one written for
/// the function's parameter count on this kernel.
fn choose(kernel: &Kernel) -> Result<Chosen, BackendError> {
    let mut chosen = Vec::new();
    let mut unfit = None;
    for program in programs::of(programs::Backend::Fentry) {
        let function = kernel_function(kernel, program.hook)?;
        let parameters = parameter_count(kernel, function);
        if let Kind::FExit {
            parameters: Some(written_for),
        } = program.kind
            && written_for != parameters
        {
            let variant_fits = programs::of(programs::Backend::Fentry).any(|other| {
                other.hook == program.hook
                    && other.kind
                        == Kind::FExit {
                            parameters: Some(parameters),
                        }
            });
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
        chosen.push((program.name, function));
    }
    Ok((chosen, unfit))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the kernel running the tests every hook finds a program, and `__inet_hash_connect`
    /// the variant for its parameter count (five since 6.15, as on this project's 6.18 CI host,
    /// which refuses trampolines: there only the choice can be checked).
    #[test]
    fn every_hook_fits_this_kernel() {
        let kernel = Kernel::read().expect("this kernel's BTF");
        let (chosen, unfit) = choose(&kernel).expect("every hook has a kernel function");
        assert!(unfit.is_none(), "{unfit:?}");
        let connect: Vec<&str> = chosen
            .iter()
            .filter(|(_, function)| *function == "__inet_hash_connect")
            .map(|(program, _)| *program)
            .collect();
        let parameters = parameter_count(&kernel, "__inet_hash_connect");
        assert_eq!(connect, [format!("hash_connect_exit_{parameters}")]);
    }
}
