//! Reading kernel socket, file and task fields through the BTF-derived offsets.
//!
//! Every read goes through `bpf_probe_read_kernel`, so a stale or wrong pointer yields an error
//! (mapped to zero here), never a fault.

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_kernel_buf};
use portwatch_ebpf::FAMILY_INET6;

use crate::{globals::global, maps::Connection};

/// Reads a `T` at `base + offset`, or `T::default()` when the read faults.
#[inline(always)]
pub fn read<T: Default>(base: u64, offset: u32) -> T {
    // SAFETY: bpf_probe_read_kernel checks the address itself and fails instead of faulting.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }.unwrap_or_default()
}

#[inline(always)]
pub fn family(sk: u64) -> u16 {
    read(sk, global!(OFFSETS.skc_family))
}

/// The TCP state (`TCP_LISTEN` and so on).
#[inline(always)]
pub fn state(sk: u64) -> u8 {
    read(sk, global!(OFFSETS.skc_state))
}

#[inline(always)]
pub fn protocol(sk: u64) -> u16 {
    read(sk, global!(OFFSETS.sk_protocol))
}

/// The local port in host order as the bind tables hold it (`inet_num`). Zero before a port is
/// assigned and again once it is released.
#[inline(always)]
pub fn local_port(sk: u64) -> u16 {
    read(sk, global!(OFFSETS.skc_num))
}

/// The source port the socket sends from (`inet_sport`): still set on transitions into CLOSE,
/// when `inet_num` already reads zero. Only valid on full sockets, not TIME_WAIT ones.
#[inline(always)]
pub fn source_port(sk: u64) -> u16 {
    u16::from_be(read(sk, global!(OFFSETS.inet_sport)))
}

/// Where the socket lives and whom it talks to, read into an event being filled in.
pub struct Endpoints<'a> {
    pub local_addr: &'a mut [u8; 16],
    pub remote_addr: &'a mut [u8; 16],
    pub remote_port: &'a mut u16,
    pub netns: &'a mut u32,
}

/// Fills addresses, remote port and network namespace from the socket's `sock_common`, which
/// full and TIME_WAIT sockets share.
#[inline(always)]
pub fn read_endpoints(sk: u64, family: u16, out: Endpoints<'_>) {
    let (local, remote, len) = if family == FAMILY_INET6 {
        (
            global!(OFFSETS.skc_v6_rcv_saddr),
            global!(OFFSETS.skc_v6_daddr),
            16,
        )
    } else {
        (
            global!(OFFSETS.skc_rcv_saddr),
            global!(OFFSETS.skc_daddr),
            4,
        )
    };
    // SAFETY: bpf_probe_read_kernel_buf validates the source address; the destinations are
    // 16-byte arrays and len is at most 16.
    unsafe {
        let _ =
            bpf_probe_read_kernel_buf((sk + local as u64) as *const u8, &mut out.local_addr[..len]);
        let _ = bpf_probe_read_kernel_buf(
            (sk + remote as u64) as *const u8,
            &mut out.remote_addr[..len],
        );
    }
    *out.remote_port = u16::from_be(read(sk, global!(OFFSETS.skc_dport)));
    let net: u64 = read(sk, global!(OFFSETS.skc_net));
    *out.netns = if net == 0 {
        0
    } else {
        read(net, global!(OFFSETS.net_ns_inum))
    };
}

/// Resolves a file descriptor of the current task to its `struct sock`, or 0 when the descriptor
/// is not a socket. `private_data` of a non-socket file points elsewhere, so the walk checks that
/// the candidate socket points back at the same file before trusting it.
#[inline(always)]
pub fn sock_from_fd(fd: u64) -> u64 {
    // SAFETY: the helper has no preconditions; it returns the current task's address.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read(task, global!(OFFSETS.task_files));
    if files == 0 {
        return 0;
    }
    let fdt: u64 = read(files, global!(OFFSETS.files_fdt));
    let max_fds: u32 = read(fdt, global!(OFFSETS.fdt_max_fds));
    if fd >= max_fds as u64 {
        return 0;
    }
    let fd_array: u64 = read(fdt, global!(OFFSETS.fdt_fd));
    let file: u64 = read(fd_array + fd * 8, 0);
    if file == 0 {
        return 0;
    }
    let socket: u64 = read(file, global!(OFFSETS.file_private_data));
    if socket == 0 || read::<u64>(socket, global!(OFFSETS.socket_file)) != file {
        return 0;
    }
    read(socket, global!(OFFSETS.socket_sk))
}

/// The connection a socket (full or TIME_WAIT) belongs to. `local_port` is passed in because
/// full sockets on their way to TIME_WAIT already read zero in `inet_num`.
#[inline(always)]
pub fn connection(sk: u64, local_port: u16) -> Connection {
    let family = family(sk);
    let mut connection = Connection {
        netns: 0,
        family,
        local_port,
        remote_port: 0,
        _pad: 0,
        local_addr: [0; 16],
        remote_addr: [0; 16],
    };
    read_endpoints(
        sk,
        family,
        Endpoints {
            local_addr: &mut connection.local_addr,
            remote_addr: &mut connection.remote_addr,
            remote_port: &mut connection.remote_port,
            netns: &mut connection.netns,
        },
    );
    connection
}
