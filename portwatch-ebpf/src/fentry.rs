//! The fentry/fexit backend: BTF trampolines on the kernel's bind, connect, autobind, listen,
//! accept and port-release functions. Cheapest per call and sees kernel-internal sockets too.
//! Userspace loads `time_wait_start` and `time_wait_end` against whichever function names the
//! running kernel has, and of the per-signature variants the one that matches it.

use aya_ebpf::{
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
};

use crate::kfunc;

/// A fexit program's view of the traced function's return value: the context slot after the
/// arguments, read as the 32-bit `int` these functions return. The slot must be a constant in the
/// instruction (the verifier refuses computed context offsets), so functions whose parameter
/// count differs between kernels get one program per count and userspace loads the one that fits.
macro_rules! returned {
    ($ctx:expr, $slot:literal) => {
        $ctx.arg::<u64>($slot) as i32
    };
}

#[fexit(function = "__inet_bind")]
pub fn inet_bind_exit(ctx: FExitContext) -> i32 {
    kfunc::after_bind(ctx.arg(0), ctx.arg(1), returned!(ctx, 4));
    0
}

#[fexit(function = "__inet6_bind")]
pub fn inet6_bind_exit(ctx: FExitContext) -> i32 {
    kfunc::after_bind(ctx.arg(0), ctx.arg(1), returned!(ctx, 4));
    0
}

/// `__inet_hash_connect(death_row, sk, port_offset, check_established)`, before 6.15.
#[fexit(function = "__inet_hash_connect")]
pub fn hash_connect_exit_4(ctx: FExitContext) -> i32 {
    kfunc::after_hash_connect(ctx.arg(1), returned!(ctx, 4));
    0
}

/// `__inet_hash_connect(death_row, sk, port_offset, hash_port0, check_established)`, Linux 6.15
/// and later.
#[fexit(function = "__inet_hash_connect")]
pub fn hash_connect_exit_5(ctx: FExitContext) -> i32 {
    kfunc::after_hash_connect(ctx.arg(1), returned!(ctx, 5));
    0
}

#[fentry(function = "inet_dgram_connect")]
pub fn dgram_connect_entry(ctx: FEntryContext) -> i32 {
    kfunc::before_dgram_connect(ctx.arg(0), ctx.arg(1));
    0
}

#[fexit(function = "inet_autobind")]
pub fn autobind_exit(ctx: FExitContext) -> i32 {
    kfunc::after_autobind(ctx.arg(0), returned!(ctx, 1));
    0
}

#[fentry(function = "inet_csk_listen_start")]
pub fn listen_start_entry(ctx: FEntryContext) -> i32 {
    kfunc::before_listen_start(ctx.arg(0));
    0
}

/// `inet_csk_listen_start(sk)`, Linux 5.19 and later.
#[fexit(function = "inet_csk_listen_start")]
pub fn listen_start_exit_1(ctx: FExitContext) -> i32 {
    kfunc::after_listen_start(ctx.arg(0), returned!(ctx, 1));
    0
}

/// `inet_csk_listen_start(sk, backlog)`, before 5.19.
#[fexit(function = "inet_csk_listen_start")]
pub fn listen_start_exit_2(ctx: FExitContext) -> i32 {
    kfunc::after_listen_start(ctx.arg(0), returned!(ctx, 2));
    0
}

/// `inet_csk_accept(sk, arg)`, Linux 6.10 and later.
#[fexit(function = "inet_csk_accept")]
pub fn accept_exit_2(ctx: FExitContext) -> i32 {
    kfunc::after_accept(ctx.arg(2));
    0
}

/// `inet_csk_accept(sk, flags, err, kern)`, before 6.10.
#[fexit(function = "inet_csk_accept")]
pub fn accept_exit_4(ctx: FExitContext) -> i32 {
    kfunc::after_accept(ctx.arg(4));
    0
}

#[fentry(function = "inet_csk_listen_stop")]
pub fn listen_stop_entry(ctx: FEntryContext) -> i32 {
    kfunc::before_listen_stop(ctx.arg(0));
    0
}

#[fexit(function = "inet_csk_listen_stop")]
pub fn listen_stop_exit(_ctx: FExitContext) -> i32 {
    crate::lifecycle::listener_stopped();
    0
}

#[fentry(function = "inet_put_port")]
pub fn put_port_entry(ctx: FEntryContext) -> i32 {
    kfunc::port_table_left(ctx.arg(0));
    0
}

#[fentry(function = "udp_lib_unhash")]
pub fn udp_unhash_entry(ctx: FEntryContext) -> i32 {
    kfunc::port_table_left(ctx.arg(0));
    0
}

#[fentry(function = "inet_twsk_hashdance")]
pub fn time_wait_start(ctx: FEntryContext) -> i32 {
    kfunc::time_wait_began(ctx.arg(1));
    0
}

#[fentry(function = "inet_twsk_bind_unhash")]
pub fn time_wait_end(ctx: FEntryContext) -> i32 {
    crate::lifecycle::left_time_wait(ctx.arg(0));
    0
}
