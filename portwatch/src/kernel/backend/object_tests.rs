//! The program table of the ABI crate against the object it describes, parsed from the bytes
//! embedded in this binary (no kernel needed): every program listed is in the object, of the
//! kind listed, and every program in the object is listed.

use std::collections::BTreeSet;

use aya_obj::{Object, ProgramSection};
use portwatch_ebpf::programs::{Backend, FUNCTIONS, Kind, PROGRAMS};

use super::{OBJECT, tracepoint::BTF_TRACEPOINT_TYPES};

fn object() -> Object {
    Object::parse(OBJECT).expect("the embedded kernel object parses")
}

#[test]
fn the_table_lists_exactly_the_objects_programs() {
    let object = object();
    let in_object: BTreeSet<&str> = object.programs.keys().map(String::as_str).collect();
    let in_table: BTreeSet<&str> = PROGRAMS.iter().map(|program| program.name).collect();
    assert_eq!(in_table.len(), PROGRAMS.len(), "a program is listed twice");
    let unlisted: Vec<_> = in_object.difference(&in_table).collect();
    let missing: Vec<_> = in_table.difference(&in_object).collect();
    assert!(
        unlisted.is_empty() && missing.is_empty(),
        "in the object but not the table: {unlisted:?}; in the table but not the object: \
         {missing:?}"
    );
}

#[test]
fn every_program_is_of_the_kind_listed() {
    let object = object();
    for program in PROGRAMS {
        let Some(found) = object.programs.get(program.name) else {
            panic!("{} is not in the object", program.name);
        };
        let section = &found.section;
        let fits = match program.kind {
            Kind::FEntry => matches!(section, ProgramSection::FEntry { .. }),
            Kind::FExit { .. } => matches!(section, ProgramSection::FExit { .. }),
            Kind::KProbe => matches!(section, ProgramSection::KProbe),
            Kind::KRetProbe => matches!(section, ProgramSection::KRetProbe),
            Kind::SyscallEnter(_) | Kind::SyscallExit(_) => {
                matches!(section, ProgramSection::TracePoint)
            }
            Kind::BtfTracepoint(_) => matches!(section, ProgramSection::BtfTracePoint),
            Kind::CgroupSock => matches!(section, ProgramSection::CgroupSock { .. }),
        };
        assert!(
            fits,
            "{} is listed as {:?} but the object has it as {section:?}",
            program.name, program.kind
        );
    }
}

/// What the backends look up by name in the kernel's BTF is named in the table.
#[test]
fn every_hook_names_a_kernel_function_or_btf_tracepoint() {
    for program in PROGRAMS {
        match (program.backend, program.kind) {
            (Backend::Fentry | Backend::Kprobe, _) => assert!(
                FUNCTIONS.iter().any(|(hook, _)| *hook == program.hook),
                "{} hooks {}, which FUNCTIONS does not name",
                program.name,
                program.hook
            ),
            (Backend::Tracepoint, Kind::BtfTracepoint(tracepoint)) => assert!(
                BTF_TRACEPOINT_TYPES.contains(&format!("btf_trace_{tracepoint}").as_str()),
                "{}: btf_trace_{tracepoint} is not among the BTF types looked up",
                program.name
            ),
            (Backend::Tracepoint, _) => {}
        }
    }
}
