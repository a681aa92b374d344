//! portwatch's end-to-end suite: the real binary, as root, against real sockets with known
//! outcomes. The harness is libtest-mimic, so each scenario has its own result (a panic fails
//! that scenario only), `--list` names them all and a name filter picks some. It is not cargo's
//! built-in harness so that the same executable runs on the host and, in `cargo xtask vm-test`,
//! inside each kernel's VM, and so that the helper modes below can turn it into a port holder.
//!
//! Environment: PORTWATCH_BIN (default: the binary cargo built), PORTWATCH_BACKEND (default auto).
//!
//! Scenarios run on three threads unless `--test-threads` says otherwise: the two that wait out
//! TIME_WAIT come first and hold one thread each for a minute while the rest run one after
//! another on the third. Every scenario filters by its own ports and pids, so any other number of
//! threads works too (and other portwatch instances on the host do not disturb them).

mod attribution;
mod bind;
mod bpf;
mod capture;
mod cli;
mod coexistence;
mod connect;
mod connect_fail;
mod exhaustion;
mod expect;
mod failures;
mod faults;
mod fleet;
mod flood;
mod holders;
mod lifetimes;
mod namespaces;
mod parity;
mod pid_reuse;
mod pressure;
mod privileges;
mod report;
mod sharing;
mod tracer;
mod udp;
mod who;
mod workload;

use std::process::ExitCode;

use libtest_mimic::{Arguments, Completion, Trial};

/// A scenario's result: the first thing that did not hold, socket errors included.
pub type Outcome = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// What a scenario returns, as `Err(Skip::because(..))`, when this machine lacks what it needs
/// (a kernel feature, a program): the harness reports it `ignored` with the reason and counts
/// it apart, so a check that never ran cannot pass for one that did.
#[derive(Debug)]
pub struct Skip(String);

impl Skip {
    pub fn because(reason: impl Into<String>) -> Box<dyn std::error::Error + Send + Sync> {
        Box::new(Skip(reason.into()))
    }
}

impl std::fmt::Display for Skip {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "skipped: {}", self.0)
    }
}

impl std::error::Error for Skip {}

/// The threads scenarios run on when `--test-threads` is not given: the two that wait out a
/// TIME_WAIT hold one each while the rest run one after another on the third.
const DEFAULT_THREADS: usize = 3;

/// `module::function` as the scenario's name, which is what filters match.
macro_rules! scenarios {
    ($($module:ident :: $function:ident),* $(,)?) => {
        vec![$(
            Trial::ignorable_test(concat!(stringify!($module), "::", stringify!($function)), || {
                run(concat!(stringify!($module), "::", stringify!($function)), $module::$function)
            })
        ),*]
    };
}

/// Runs a scenario; a failure while the kernel skipped runs of the tracer's programs earns one
/// more attempt, whose result stands.
///
/// On a kernel that preempts inside system calls (Debian's 7.x kernels are built with
/// `PREEMPT_LAZY`), a task preempted inside one of portwatch's programs, or inside a bpf() map
/// call (for kprobes), makes the kernel skip the next run of that program on that CPU, and other
/// scenarios' sockets and tracers run beside each scenario. The tracer counts the skips and says
/// so; the events those runs would have made were never made, so the check cannot tell
/// portwatch from the kernel. Without skipped runs a failure fails at once.
fn run(name: &str, scenario: fn() -> Outcome) -> Result<Completion, libtest_mimic::Failed> {
    match attempt(scenario) {
        Attempt::Failed {
            failure,
            skipped_runs: runs @ 1..,
        } => {
            eprintln!(
                "{name}: failed while the kernel skipped {runs} runs of portwatch's programs; \
                 running it once more. The failure: {failure}"
            );
            attempt(scenario).result()
        }
        attempt => attempt.result(),
    }
}

/// One run of a scenario.
enum Attempt {
    Done(Completion),
    Failed { failure: String, skipped_runs: u64 },
}

impl Attempt {
    fn result(self) -> Result<Completion, libtest_mimic::Failed> {
        match self {
            Attempt::Done(completion) => Ok(completion),
            Attempt::Failed { failure, .. } => Err(failure.into()),
        }
    }
}

fn attempt(scenario: fn() -> Outcome) -> Attempt {
    tracer::take_last_summary();
    tracer::take_skipped_runs();
    match scenario() {
        Ok(()) => Attempt::Done(Completion::Completed),
        Err(failure) => match failure.downcast::<Skip>() {
            Ok(skip) => Attempt::Done(Completion::ignored_with(skip.0)),
            Err(failure) => Attempt::Failed {
                failure: match tracer::take_last_summary() {
                    Some(summary) => format!("{failure}\n  tracer summary: {summary}"),
                    None => failure.to_string(),
                },
                skipped_runs: tracer::take_skipped_runs(),
            },
        },
    }
}

fn scenarios() -> Vec<Trial> {
    scenarios![
        // First: these mostly wait, and hold one thread each while the others run.
        lifetimes::time_wait_runs_out,
        attribution::time_wait_end_is_not_credited_to_another_holder,
        cli::bad_arguments_exit_2,
        cli::unprivileged_exit_1,
        bind::tcp_listener_and_accepted_connection,
        bind::tcp_bind_any_ipv6,
        bind::holder_at_start_is_reported,
        bind::tcp_listen_without_bind,
        connect::tcp_connect_ipv4,
        connect::tcp_connect_ipv6,
        connect_fail::tcp_ipv4_names_destination,
        connect_fail::tcp_ipv6_names_destination,
        connect_fail::udp_connect_names_destination,
        exhaustion::one_destination_exhausted_another_connects,
        exhaustion::one_destination_exhausted_ipv6,
        exhaustion::time_wait_exhaustion,
        exhaustion::time_wait_reuse_is_counted_once,
        exhaustion::bound_ports_block_every_destination,
        exhaustion::bind_before_connect_with_and_without_no_port,
        exhaustion::udp_connect_exhaustion,
        exhaustion::a_namespace_gone_unread_does_not_hide_the_next,
        exhaustion::one_shot_view_agrees_with_the_kernel,
        udp::udp_bind_ipv6,
        udp::udp_send_autobind_ipv4,
        udp::udp_connect_autobind_ipv6,
        failures::bind_eaddrinuse,
        holders::eaddrinuse_names_its_holder,
        holders::ephemeral_holder_comes_with_a_hint,
        holders::listener_first_time_wait_last,
        capture::capture_rotates_under_churn,
        capture::rotate_keep_deletes_the_oldest_parts,
        capture::sighup_reopens_the_capture,
        capture::full_disk_ends_the_capture_cleanly,
        capture::unsafe_output_paths_are_refused,
        capture::audit_names_the_process,
        pressure::pressure_rises_and_eases,
        report::report_tells_what_the_capture_saw,
        report::report_states_lost_events,
        report::truncated_capture_is_named_by_file_and_line,
        report::report_html_is_self_contained,
        report::failed_claims_are_grouped,
        report::thousands_of_connections_stay_short,
        report::plain_json_stream_is_read,
        report::report_losses_match_what_the_load_caused,
        parity::listen_twice_is_one_listen,
        parity::listen_without_its_port_fails,
        parity::refused_connect_claims_and_frees,
        parity::bound_socket_refused_frees_once,
        parity::disconnect_frees_once,
        parity::closing_listener_with_queued_connections_frees_once,
        parity::fast_open_send_claims,
        parity::udp_write_autobind,
        parity::mptcp_binds_are_claims,
        who::who_tcp_listener,
        who::who_udp_socket,
        who::who_time_wait,
        who::who_free_port,
        who::who_bound_not_listening,
        who::who_unprivileged,
        who::held_bound_not_listening,
        fleet::metrics_count_own_traffic,
        fleet::promtool_accepts_the_metrics,
        fleet::prometheus_scrapes_metrics,
        lifetimes::sigkill_releases_held_ports,
        lifetimes::single_watched_port_sees_nothing_else,
        lifetimes::time_wait_and_its_end,
        lifetimes::full_time_wait_table_frees_at_once,
        flood::ring_buffer_overflow_is_counted,
        flood::flood_is_accounted_exactly,
        coexistence::two_instances_with_overlapping_filters,
        coexistence::traced_processes_see_no_difference,
        faults::kill_9_leaves_nothing,
        faults::loader_passes_only_the_attachment,
        sharing::inherited_socket_closed_by_child,
        sharing::passed_socket_closed_by_receiver,
        sharing::thread_claim_names_its_tid,
        sharing::reuseport_group_frees_per_socket,
        sharing::dual_stack_listener_accepts_ipv4,
        pid_reuse::reused_pid_is_another_process,
        pid_reuse::free_after_reuse_names_the_first_life,
        privileges::capabilities_dropped_after_attach,
        privileges::runs_as_nobody_with_only_load_capabilities,
        cli::count_stops_the_trace,
        cli::closed_pipe_is_a_clean_exit,
        namespaces::who_covers_every_namespace,
        namespaces::held_and_holders_in_other_namespaces,
        namespaces::podman_container_is_named,
        namespaces::podman_container_started_later_resolves,
        namespaces::docker_container_is_named,
    ]
}

fn main() -> ExitCode {
    if let Ok(spec) = std::env::var(lifetimes::HOLDER_ENV) {
        lifetimes::hold(&spec);
    }
    if let Ok(spec) = std::env::var(sharing::SHARE_ENV) {
        sharing::helper(&spec);
    }
    if std::env::var_os(pressure::FILL_ENV).is_some() {
        pressure::fill_the_range();
    }
    if let Ok(spec) = std::env::var(pid_reuse::KEEP_ENV) {
        pid_reuse::keep_after_exit(&spec);
    }
    if let Ok(spec) = std::env::var(capture::BIND_ONCE_ENV) {
        capture::bind_once(&spec);
    }
    if std::env::var_os(lifetimes::NO_TIME_WAIT_ENV).is_some() {
        lifetimes::close_without_time_wait();
    }
    let mut args = Arguments::from_args();
    if args.list {
        return libtest_mimic::run(&args, scenarios()).exit_code();
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("e2e: these tests load eBPF programs and must run as root");
        return ExitCode::FAILURE;
    }
    args.test_threads.get_or_insert(DEFAULT_THREADS);
    println!(
        "e2e: portwatch {} with backend {}",
        tracer::binary(),
        tracer::backend()
    );
    let conclusion = libtest_mimic::run(&args, scenarios());
    if conclusion.num_passed + conclusion.num_failed + conclusion.num_ignored == 0 {
        // A filter that matches nothing must not look like a passing suite.
        eprintln!("e2e: no scenario ran (filter matched nothing)");
        return ExitCode::FAILURE;
    }
    conclusion.exit_code()
}
