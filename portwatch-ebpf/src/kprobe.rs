//! The kprobe backend: the same kernel functions as the fentry backend, through kprobes and
//! kretprobes, for kernels with kprobes but without BTF trampolines. A kretprobe cannot see the
//! arguments, so the entry probe parks them in `IN_FLIGHT` for the return probe.

use aya_ebpf::{
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};

use crate::{
    kfunc::{self, Hook},
    lifecycle,
    maps::InFlight,
};

#[inline(always)]
fn park(ctx: &ProbeContext, hook: Hook, sk_arg: usize) {
    kfunc::remember(
        hook,
        InFlight {
            sk: ctx.arg(sk_arg).unwrap_or(0),
            arg: ctx.arg(1).unwrap_or(0),
            ..InFlight::default()
        },
    );
}

#[inline(always)]
fn returned(ctx: &RetProbeContext) -> i32 {
    ctx.ret::<u64>() as i32
}

#[kprobe(function = "__inet_bind")]
pub fn kp_inet_bind(ctx: ProbeContext) -> u32 {
    park(&ctx, Hook::Bind, 0);
    0
}

#[kretprobe(function = "__inet_bind")]
pub fn kp_inet_bind_ret(ctx: RetProbeContext) -> u32 {
    if let Some(call) = kfunc::take(Hook::Bind) {
        kfunc::after_bind(call.sk, call.arg, returned(&ctx));
    }
    0
}

#[kprobe(function = "__inet6_bind")]
pub fn kp_inet6_bind(ctx: ProbeContext) -> u32 {
    park(&ctx, Hook::Bind6, 0);
    0
}

#[kretprobe(function = "__inet6_bind")]
pub fn kp_inet6_bind_ret(ctx: RetProbeContext) -> u32 {
    if let Some(call) = kfunc::take(Hook::Bind6) {
        kfunc::after_bind(call.sk, call.arg, returned(&ctx));
    }
    0
}

#[kprobe(function = "__inet_hash_connect")]
pub fn kp_hash_connect(ctx: ProbeContext) -> u32 {
    park(&ctx, Hook::HashConnect, 1);
    0
}

#[kretprobe(function = "__inet_hash_connect")]
pub fn kp_hash_connect_ret(ctx: RetProbeContext) -> u32 {
    if let Some(call) = kfunc::take(Hook::HashConnect) {
        kfunc::after_hash_connect(call.sk, returned(&ctx));
    }
    0
}

#[kprobe(function = "inet_dgram_connect")]
pub fn kp_dgram_connect(ctx: ProbeContext) -> u32 {
    kfunc::before_dgram_connect(ctx.arg(0).unwrap_or(0), ctx.arg(1).unwrap_or(0));
    0
}

#[kprobe(function = "inet_autobind")]
pub fn kp_autobind(ctx: ProbeContext) -> u32 {
    park(&ctx, Hook::Autobind, 0);
    0
}

#[kretprobe(function = "inet_autobind")]
pub fn kp_autobind_ret(ctx: RetProbeContext) -> u32 {
    if let Some(call) = kfunc::take(Hook::Autobind) {
        kfunc::after_autobind(call.sk, returned(&ctx));
    }
    0
}

#[kprobe(function = "inet_csk_listen_start")]
pub fn kp_listen_start(ctx: ProbeContext) -> u32 {
    let sk = ctx.arg(0).unwrap_or(0);
    kfunc::before_listen_start(sk);
    park(&ctx, Hook::ListenSocket, 0);
    0
}

#[kretprobe(function = "inet_csk_listen_start")]
pub fn kp_listen_start_ret(ctx: RetProbeContext) -> u32 {
    if let Some(call) = kfunc::take(Hook::ListenSocket) {
        kfunc::after_listen_start(call.sk, returned(&ctx));
    }
    0
}

#[kretprobe(function = "inet_csk_accept")]
pub fn kp_accept_ret(ctx: RetProbeContext) -> u32 {
    kfunc::after_accept(ctx.ret::<u64>());
    0
}

#[kprobe(function = "inet_csk_listen_stop")]
pub fn kp_listen_stop(ctx: ProbeContext) -> u32 {
    kfunc::before_listen_stop(ctx.arg(0).unwrap_or(0));
    0
}

#[kretprobe(function = "inet_csk_listen_stop")]
pub fn kp_listen_stop_ret(_ctx: RetProbeContext) -> u32 {
    lifecycle::listener_stopped();
    0
}

#[kprobe(function = "inet_put_port")]
pub fn kp_put_port(ctx: ProbeContext) -> u32 {
    kfunc::port_table_left(ctx.arg(0).unwrap_or(0));
    0
}

#[kprobe(function = "udp_lib_unhash")]
pub fn kp_udp_unhash(ctx: ProbeContext) -> u32 {
    kfunc::port_table_left(ctx.arg(0).unwrap_or(0));
    0
}

#[kprobe(function = "inet_twsk_hashdance")]
pub fn kp_time_wait_start(ctx: ProbeContext) -> u32 {
    kfunc::time_wait_began(ctx.arg(1).unwrap_or(0));
    0
}

#[kprobe(function = "inet_twsk_bind_unhash")]
pub fn kp_time_wait_end(ctx: ProbeContext) -> u32 {
    lifecycle::left_time_wait(ctx.arg(0).unwrap_or(0));
    0
}
