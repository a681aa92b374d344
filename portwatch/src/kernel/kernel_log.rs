//! `--debug-kernel`: the kernel programs' aya-log records, printed on stderr beside portwatch's
//! own messages. The records travel in their own ring buffer (`AYA_LOGS`), which is read on the
//! tracer's half-second timer; they are rare by design (see portwatch-ebpf's `diag`).

use aya_log::EbpfLogger;

/// Prints each record as one `portwatch: kernel: <level>: <message>` line.
pub struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let level = record.level().as_str().to_ascii_lowercase();
        eprintln!("portwatch: kernel: {level}: {}", record.args());
    }

    fn flush(&self) {}
}

pub type KernelLog = EbpfLogger<Stderr>;

/// Opens the log ring that `program_id`, one of the programs writing to it, refers to.
/// Finding it by id takes CAP_SYS_ADMIN, so this runs before the tracer drops its capabilities.
pub fn open(program_id: u32) -> anyhow::Result<KernelLog> {
    EbpfLogger::init_from_id_with_logger(program_id, Stderr).map_err(|err| {
        anyhow::anyhow!(
            "--debug-kernel could not open the kernel programs' log ring ({err}); finding it \
             needs CAP_SYS_ADMIN"
        )
    })
}
