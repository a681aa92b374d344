//! The BTF reader on arbitrary bytes, as a corrupt or truncated `/sys/kernel/btf/vmlinux` would
//! give it: every lookup portwatch makes must end in a value or an error, never a panic or hang.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portwatch::fuzzing::btf_reader(data));
