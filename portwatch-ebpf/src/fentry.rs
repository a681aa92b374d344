//! The fentry/fexit backend: BTF trampolines on the kernel's bind, connect, autobind, listen,
//! accept and port-release functions. Cheapest per call and sees kernel-internal sockets too.
//! Userspace loads `time_wait_start` and `time_wait_end` against whichever function names the
//! running kernel has.

use aya_ebpf::{
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
};

use crate::{globals::global, kfunc};

/// A fexit program's view of the traced function's return value: the context slot after the
/// arguments. The index comes from BTF at load time and is a verifier-known constant, so only the
/// matching arm is ever verified. Read as a 32-bit int: these functions return `int`.
#[inline(always)]
fn returned(ctx: &FExitContext, index: u32) -> i32 {
    let raw: u64 = match index {
        1 => ctx.arg(1),
        2 => ctx.arg(2),
        3 => ctx.arg(3),
        4 => ctx.arg(4),
        5 => ctx.arg(5),
        _ => ctx.arg(6),
    };
    raw as i32
}

#[fexit(function = "__inet_bind")]
pub fn inet_bind_exit(ctx: FExitContext) -> i32 {
    kfunc::after_bind(
        ctx.arg(0),
        ctx.arg(1),
        returned(&ctx, global!(OFFSETS.fexit_ret_bind)),
    );
    0
}

#[fexit(function = "__inet6_bind")]
pub fn inet6_bind_exit(ctx: FExitContext) -> i32 {
    kfunc::after_bind(
        ctx.arg(0),
        ctx.arg(1),
        returned(&ctx, global!(OFFSETS.fexit_ret_bind6)),
    );
    0
}

#[fexit(function = "__inet_hash_connect")]
pub fn hash_connect_exit(ctx: FExitContext) -> i32 {
    kfunc::after_hash_connect(
        ctx.arg(1),
        returned(&ctx, global!(OFFSETS.fexit_ret_hash_connect)),
    );
    0
}

#[fexit(function = "inet_autobind")]
pub fn autobind_exit(ctx: FExitContext) -> i32 {
    kfunc::after_autobind(
        ctx.arg(0),
        returned(&ctx, global!(OFFSETS.fexit_ret_autobind)),
    );
    0
}

#[fentry(function = "inet_csk_listen_start")]
pub fn listen_start_entry(ctx: FEntryContext) -> i32 {
    kfunc::before_listen_start(ctx.arg(0));
    0
}

#[fexit(function = "inet_csk_listen_start")]
pub fn listen_start_exit(ctx: FExitContext) -> i32 {
    kfunc::after_listen_start(
        ctx.arg(0),
        returned(&ctx, global!(OFFSETS.fexit_ret_listen)),
    );
    0
}

#[fexit(function = "inet_csk_accept")]
pub fn accept_exit(ctx: FExitContext) -> i32 {
    let child = match global!(OFFSETS.fexit_ret_accept) {
        2 => ctx.arg(2),
        _ => ctx.arg(4),
    };
    kfunc::after_accept(child);
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
    kfunc::time_wait_began(ctx.arg(0), ctx.arg(1));
    0
}

#[fentry(function = "inet_twsk_bind_unhash")]
pub fn time_wait_end(ctx: FEntryContext) -> i32 {
    crate::lifecycle::left_time_wait(ctx.arg(0));
    0
}
