//! The BTF reader on arbitrary bytes, as a corrupt or truncated `/sys/kernel/btf/vmlinux` would
//! give it: every lookup portwatch makes must end in a value or an error, never a panic or hang.
#![no_main]

#[allow(dead_code)]
#[path = "../../src/btf.rs"]
mod btf;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let names = ["tcp_v4_connect", "inet_csk_accept", "btf_trace_inet_sock_set_state"];
    if let Ok(btf) = btf::Btf::parse(data.to_vec(), &names) {
        let _ = btf::offsets(&btf);
        let _ = btf.parameter_count("tcp_v4_connect");
        let _ = btf.attach_points_only(&names);
    }
});
