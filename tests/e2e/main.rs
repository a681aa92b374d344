//! portwatch's end-to-end suite: the real binary, as root, against real sockets with known
//! outcomes. A plain binary (harness = false) so the same executable runs on the host and, in
//! `cargo xtask vm-test`, inside each kernel's VM.
//!
//! Environment: PORTWATCH_BIN (default: the binary cargo built), PORTWATCH_BACKEND (default auto).

mod attribution;
mod bind;
mod capture;
mod cli;
mod connect;
mod expect;
mod failures;
mod fleet;
mod holders;
mod lifetimes;
mod parity;
mod pressure;
mod report;
mod tracer;
mod udp;
mod who;
mod workload;

/// A scenario's result: the first thing that did not hold, socket errors included.
pub type Outcome = Result<(), Box<dyn std::error::Error + Send + Sync>>;

type Scenario = (&'static str, fn() -> Outcome);

const SCENARIOS: &[Scenario] = &[
    ("bad arguments exit 2", cli::bad_arguments_exit_2),
    ("unprivileged exits 1", cli::unprivileged_exit_1),
    (
        "tcp listener and accepted connection",
        bind::tcp_listener_and_accepted_connection,
    ),
    ("tcp bind-any ipv6", bind::tcp_bind_any_ipv6),
    (
        "holder at start is reported",
        bind::holder_at_start_is_reported,
    ),
    ("tcp listen without bind", bind::tcp_listen_without_bind),
    ("tcp connect ipv4", connect::tcp_connect_ipv4),
    ("tcp connect ipv6", connect::tcp_connect_ipv6),
    ("udp bind ipv6", udp::udp_bind_ipv6),
    ("udp send autobind ipv4", udp::udp_send_autobind_ipv4),
    ("udp connect autobind ipv6", udp::udp_connect_autobind_ipv6),
    ("bind EADDRINUSE tcp and udp", failures::bind_eaddrinuse),
    (
        "EADDRINUSE names its holder",
        holders::eaddrinuse_names_its_holder,
    ),
    (
        "ephemeral holder comes with a hint",
        holders::ephemeral_holder_comes_with_a_hint,
    ),
    (
        "capture rotates under churn",
        capture::capture_rotates_under_churn,
    ),
    (
        "SIGHUP reopens the capture",
        capture::sighup_reopens_the_capture,
    ),
    (
        "full disk ends the capture cleanly",
        capture::full_disk_ends_the_capture_cleanly,
    ),
    (
        "unsafe output paths are refused",
        capture::unsafe_output_paths_are_refused,
    ),
    ("audit names the process", capture::audit_names_the_process),
    (
        "pressure rises and eases",
        pressure::pressure_rises_and_eases,
    ),
    (
        "report tells what the capture saw",
        report::report_tells_what_the_capture_saw,
    ),
    (
        "report states lost events",
        report::report_states_lost_events,
    ),
    (
        "report names a truncated file and line",
        report::truncated_capture_is_named_by_file_and_line,
    ),
    (
        "report html is self-contained",
        report::report_html_is_self_contained,
    ),
    (
        "SIGKILL releases held ports",
        lifetimes::sigkill_releases_held_ports,
    ),
    (
        "single watched port sees nothing else",
        lifetimes::single_watched_port_sees_nothing_else,
    ),
    ("TIME_WAIT and its end", lifetimes::time_wait_and_its_end),
    (
        "full TIME_WAIT table frees at once",
        lifetimes::full_time_wait_table_frees_at_once,
    ),
    (
        "ring buffer overflow is counted",
        lifetimes::ring_buffer_overflow_is_counted,
    ),
    ("who tcp listener", who::who_tcp_listener),
    ("who udp socket", who::who_udp_socket),
    ("who TIME_WAIT socket", who::who_time_wait),
    ("who free port", who::who_free_port),
    ("who bound not listening", who::who_bound_not_listening),
    ("who unprivileged", who::who_unprivileged),
    ("held bound not listening", who::held_bound_not_listening),
    (
        "listen twice is one listen",
        parity::listen_twice_is_one_listen,
    ),
    (
        "listen without its port fails",
        parity::listen_without_its_port_fails,
    ),
    ("--count stops the trace", cli::count_stops_the_trace),
    (
        "metrics count own traffic",
        fleet::metrics_count_own_traffic,
    ),
    (
        "prometheus scrapes metrics",
        fleet::prometheus_scrapes_metrics,
    ),
    (
        "closed pipe is a clean exit",
        cli::closed_pipe_is_a_clean_exit,
    ),
];

/// Scenarios that spend their time waiting, run in a thread beside the rest.
const SLOW: &[Scenario] = &[
    ("TIME_WAIT runs out", lifetimes::time_wait_runs_out),
    (
        "TIME_WAIT end is not credited to another holder",
        attribution::time_wait_end_is_not_credited_to_another_holder,
    ),
];

fn main() {
    if let Ok(spec) = std::env::var(lifetimes::HOLDER_ENV) {
        lifetimes::hold(&spec);
    }
    if std::env::var_os(pressure::FILL_ENV).is_some() {
        pressure::fill_the_range();
    }
    if let Ok(spec) = std::env::var(capture::BIND_ONCE_ENV) {
        capture::bind_once(&spec);
    }
    if std::env::var_os(lifetimes::NO_TIME_WAIT_ENV).is_some() {
        lifetimes::close_without_time_wait();
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("e2e: these tests load eBPF programs and must run as root");
        std::process::exit(1);
    }
    let filter = std::env::args().nth(1).filter(|arg| !arg.starts_with('-'));
    let mut failed = Vec::new();
    let mut ran = 0;
    // The one scenario that mostly waits runs beside the others.
    let slow = SLOW
        .iter()
        .filter(|(name, _)| {
            filter
                .as_ref()
                .is_none_or(|filter| name.contains(filter.as_str()))
        })
        .map(|&(name, scenario)| {
            let started = std::time::Instant::now();
            (name, started, std::thread::spawn(scenario))
        })
        .collect::<Vec<_>>();
    for (name, scenario) in SCENARIOS {
        if filter
            .as_ref()
            .is_some_and(|filter| !name.contains(filter.as_str()))
        {
            continue;
        }
        ran += 1;
        let started = std::time::Instant::now();
        match scenario() {
            Ok(()) => println!("e2e: ok   {name} ({:.1}s)", started.elapsed().as_secs_f64()),
            Err(reason) => {
                println!("e2e: FAIL {name}: {reason}");
                failed.push(*name);
            }
        }
    }
    for (name, started, handle) in slow {
        ran += 1;
        match handle.join().unwrap_or_else(|_| Err("panicked".into())) {
            Ok(()) => println!("e2e: ok   {name} ({:.1}s)", started.elapsed().as_secs_f64()),
            Err(reason) => {
                println!("e2e: FAIL {name}: {reason}");
                failed.push(name);
            }
        }
    }
    println!(
        "e2e: backend {}: {} passed, {} failed{}",
        tracer::backend(),
        ran - failed.len(),
        failed.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(" ({})", failed.join(", "))
        }
    );
    std::process::exit(if failed.is_empty() && ran > 0 { 0 } else { 1 });
}
