//! The tracing command: backend → stream → filter/enrich → sink, until a signal, the duration,
//! the count, or a closed stdout ends it.

use std::{
    fs::File,
    io::{self, BufWriter, IsTerminal, Write},
    ops::RangeInclusive,
    os::{
        fd::{AsFd as _, OwnedFd},
        unix::fs::FileTypeExt as _,
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
use portwatch_ebpf::How;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    commands::config::TraceConfig,
    host::containers::Resolver,
    host::enrich::AuditCache,
    host::netns::RangeReader,
    host::ns_ranges::NamespaceRanges,
    host::snapshot::{self, Family},
    kernel::backend::{self, Choice, Kernel},
    kernel::kernel_log::KernelLog,
    kernel::loader::Loaded,
    kernel::skipped::SkippedRuns,
    kernel::stream::Stream,
    live::exhaustion::{self, Explainer, Facts, TimeWaitReuse},
    live::holders::Holders,
    live::pressure::PressureWatch,
    model::clock::{MonotonicClock, Timestamp},
    model::event::{Event, Holder, Kind},
    model::ports::{EphemeralPolicy, PortSet},
    output::Format,
    output::capture::{self, Summary},
    output::metrics_server,
    output::sink::{FileSink, JsonSink, MetricsSink, Sink, Sinks, TableSink},
};

/// How many destinations the metrics' per-destination gauge names: its series stay this few.
const TOP_DESTINATIONS: usize = 20;

/// How often the lost-event counter is read while events flow.
const LOST_POLL: Duration = Duration::from_millis(500);

/// `output`: the capture file opened for `--output`; `metrics`: the bound `--metrics`
/// listener. Both are opened before loading, so a bad path or address fails at once.
/// `namespaces`: reads other network namespaces' ephemeral ranges for pressure events.
pub async fn run(
    config: TraceConfig,
    loaded: Loaded,
    output: Option<(File, u64)>,
    metrics: Option<std::net::TcpListener>,
    namespaces: Option<RangeReader>,
) -> anyhow::Result<()> {
    if config.backend == Choice::Auto {
        for reason in &loaded.passed_over {
            eprintln!("portwatch: passed over {reason}");
        }
    }
    for note in &loaded.notes {
        eprintln!("portwatch: note: {note}");
    }
    let Loaded {
        backend,
        events,
        lost,
        kernel_log,
        attachment,
        ..
    } = loaded;
    let mut stream = Stream::new(events, lost, SkippedRuns::of(&attachment))?;
    let clock = MonotonicClock::measure();
    // Read once: the header, the metrics' ranges, pressure and the reservation hint all use it.
    let ephemeral = EphemeralPolicy::read().ok();
    let ephemeral_range = ephemeral.as_ref().map(|policy| policy.range.clone());
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if !config.quiet {
        let stdout = BufWriter::with_capacity(64 * 1024, io::stdout().lock());
        sinks.push(match config.format {
            Format::Json => Box::new(JsonSink::new(stdout)),
            Format::Table => Box::new(TableSink::new(stdout, colour_wanted())),
        });
    }
    if let (Some(options), Some(file)) = (&config.output, output) {
        let header = capture_header(&config, &backend, &clock, ephemeral_range.as_ref());
        let sink = FileSink::start(options.clone(), header, file)
            .with_context(|| format!("starting the capture in {}", options.path.display()))?;
        sinks.push(Box::new(sink));
    }
    if let Some(listener) = metrics {
        let (metrics, registry) = MetricsSink::new(&backend, ephemeral_range.clone())
            .context("setting up the metrics")?;
        metrics_server::serve(listener, registry)?;
        sinks.push(Box::new(metrics));
    }
    let mut pipeline = Pipeline::new(
        Sinks(sinks),
        clock,
        &config,
        namespaces,
        ephemeral,
        kernel_log,
    );
    // Holders are read after the hooks attach, so no change falls between snapshot and trace,
    // and before the status line, so "attached" means the current holders are already out.
    // Then the capabilities go: tracing needs none (with --audit, CAP_SYS_PTRACE stays).
    let outcome = match pipeline
        .report_holders(&config)
        .and_then(|()| crate::kernel::privileges::drop_all(config.audit))
        .and_then(|()| {
            pipeline
                .containers
                .start()
                .context("starting the container lookups")
        }) {
        Ok(()) => {
            eprintln!(
                "portwatch: attached backend={backend}, watching {}",
                config.describe()
            );
            // Under systemd (Type=notify) the unit counts as started only now, with the
            // holders out and the hooks in place; elsewhere NOTIFY_SOCKET is unset and this
            // does nothing.
            if let Err(err) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
                eprintln!("portwatch: telling the service manager it is ready: {err}");
            }
            pipeline.run(&mut stream, &config).await
        }
        Err(err) => Err(err),
    };
    // Detach before the summary: closing the last descriptors removes the hooks.
    drop(stream);
    backend::detach(attachment);
    let broken_pipe = matches!(&outcome, Err(err) if is_broken_pipe(err));
    pipeline.summary.end = match (&outcome, broken_pipe) {
        (_, true) => "closed-pipe",
        (Err(_), false) => "error",
        (Ok(end), _) => end,
    };
    eprintln!("portwatch: summary {}", pipeline.summary.counts_line());
    let finished = pipeline.sink.finish(&pipeline.summary);
    match outcome {
        Err(_) if broken_pipe => Ok(()),
        Err(err) => Err(err),
        Ok(_) => match finished {
            Err(err) if is_broken_pipe_io(&err) => Ok(()),
            other => other.map_err(Into::into),
        },
    }
}

/// What a capture file's header says about this trace.
fn capture_header(
    config: &TraceConfig,
    backend: &str,
    clock: &MonotonicClock,
    ephemeral_range: Option<&RangeInclusive<u16>>,
) -> capture::Header {
    let (kernel, hostname, boot_id) = capture::host_facts();
    let (started, monotonic_ns) = clock.anchor();
    capture::Header {
        capture_id: capture::new_capture_id(),
        version: env!("CARGO_PKG_VERSION"),
        backend: backend.to_string(),
        kernel,
        hostname,
        boot_id,
        watching: config.describe(),
        filters: config.filters(),
        started,
        monotonic_ns,
        audit: config.audit,
        ephemeral_range: ephemeral_range.map(|range| format!("{}-{}", range.start(), range.end())),
    }
}

/// `--check`: attach each candidate once, report, detach.
pub fn check(config: &TraceConfig) -> anyhow::Result<()> {
    let kernel = Kernel::read().context("reading the kernel's type information")?;
    let mut picked = None;
    for (backend, outcome) in backend::check(&kernel, &config.load_spec()) {
        match outcome {
            Ok(()) => {
                println!("{}\tok", backend.name());
                picked.get_or_insert(backend);
            }
            Err(err) => println!("{}\tunsupported\t{err}", backend.name()),
        }
    }
    match picked {
        Some(backend) => {
            println!("auto\t{}", backend.name());
            Ok(())
        }
        None => bail!("no backend could attach on this kernel"),
    }
}

fn colour_wanted() -> bool {
    io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.downcast_ref::<io::Error>()
        .is_some_and(is_broken_pipe_io)
}

fn is_broken_pipe_io(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::BrokenPipe
}

/// Filters, enrichment, counting and the sinks: everything between decoding and output.
struct Pipeline {
    sink: Sinks,
    clock: MonotonicClock,
    summary: Summary,
    emitted: u64,
    /// Who holds each watched port now: names the holder behind a failure and the claimer of a
    /// port freed without a seen claim.
    holders: Holders,
    audit: Option<AuditCache>,
    containers: Resolver,
    pressure: Option<PressureWatch>,
    /// Each namespace's ephemeral range, for pressure and the exhaustion explanation.
    ranges: NamespaceRanges,
    /// This host's ephemeral range and reserved ports, for the hint on a failure whose holder
    /// got the port as an ephemeral one.
    ephemeral: Option<EphemeralPolicy>,
    own_netns: Option<u32>,
    explainer: Explainer,
    /// This namespace's `tcp_tw_reuse`, for the exhaustion explanation.
    time_wait_reuse: Option<TimeWaitReuse>,
    /// The ports the holder table follows.
    watched: Option<PortSet>,
    /// `--debug-kernel`: read with the lost counter, and once more at the end.
    kernel_log: Option<KernelLog>,
}

impl Pipeline {
    fn new(
        sink: Sinks,
        clock: MonotonicClock,
        config: &TraceConfig,
        namespaces: Option<RangeReader>,
        ephemeral: Option<EphemeralPolicy>,
        kernel_log: Option<KernelLog>,
    ) -> Self {
        Self {
            sink,
            summary: Summary {
                started: Some(clock.anchor().0),
                ..Summary::default()
            },
            clock,
            emitted: 0,
            holders: Holders::default(),
            audit: config.audit.then(AuditCache::load),
            containers: Resolver::default(),
            pressure: (config.pressure_pct > 0).then(|| PressureWatch::new(config.pressure_pct)),
            ranges: NamespaceRanges::new(
                namespaces,
                ephemeral.as_ref().map(|policy| policy.range.clone()),
            ),
            ephemeral,
            own_netns: snapshot::own_netns(),
            explainer: Explainer::default(),
            time_wait_reuse: TimeWaitReuse::read(),
            watched: config.ports.clone(),
            kernel_log,
        }
    }

    /// Runs until something ends the trace; returns what did.
    async fn run(
        &mut self,
        stream: &mut Stream,
        config: &TraceConfig,
    ) -> anyhow::Result<&'static str> {
        let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        let mut terminate =
            signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut hangup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
        let deadline =
            tokio::time::sleep(config.duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
        tokio::pin!(deadline);
        let mut lost_poll = tokio::time::interval(LOST_POLL);
        let reader_gone = stdout_reader_gone(config);
        tokio::pin!(reader_gone);
        let end = loop {
            if self.reached_count(config) {
                break "count";
            }
            tokio::select! {
                readable = stream.readable() => {
                    readable?;
                    self.drain(stream, config)?;
                }
                _ = lost_poll.tick() => {
                    self.report_lost(stream)?;
                    self.sink.destinations(&self.holders.top_destinations(TOP_DESTINATIONS))?;
                    self.flush_kernel_log();
                    // However busy the stream, nothing waits in memory longer than this.
                    self.sink.flush()?;
                }
                _ = hangup.recv() => self.sink.reopen()?,
                () = &mut reader_gone => break "closed-pipe",
                _ = interrupt.recv() => break "interrupt",
                _ = terminate.recv() => break "terminate",
                _ = &mut deadline => break "duration",
            }
        };
        // Whatever the kernel submitted before we stopped still belongs to the trace.
        if !self.reached_count(config) {
            self.drain(stream, config)?;
        }
        self.report_lost(stream)?;
        self.flush_kernel_log();
        self.sink.flush()?;
        Ok(end)
    }

    fn flush_kernel_log(&mut self) {
        if let Some(log) = &mut self.kernel_log {
            log.flush();
        }
    }

    fn reached_count(&self, config: &TraceConfig) -> bool {
        config.count.is_some_and(|count| self.emitted >= count)
    }

    fn report_holders(&mut self, config: &TraceConfig) -> anyhow::Result<()> {
        let held = snapshot::held(&snapshot::Query {
            ports: config.ports.clone(),
            protos: config.protos.iter().copied().collect(),
            families: [(config.ipv4, Family::Ipv4), (config.ipv6, Family::Ipv6)]
                .into_iter()
                .filter_map(|(wanted, family)| wanted.then_some(family))
                .collect(),
            netns: config
                .netns
                .map_or(snapshot::Scope::All, snapshot::Scope::Only),
        });
        for note in &held.notes {
            eprintln!("portwatch: note: {note}");
        }
        for mut event in held.events {
            self.understand(&mut event)?;
            self.deliver(&mut event, config)?;
        }
        self.sink.flush()?;
        // The snapshot's buffers are freed by now, but the allocator keeps freed memory for
        // reuse: with a hundred thousand sockets at start-up that is tens of megabytes the
        // tracer would otherwise hold for the rest of the trace.
        // SAFETY: malloc_trim only returns free heap pages to the kernel; it touches no memory
        // in use.
        unsafe { libc::malloc_trim(0) };
        Ok(())
    }

    fn drain(&mut self, stream: &mut Stream, config: &TraceConfig) -> anyhow::Result<()> {
        let mut result = Ok(());
        stream.drain(|raw| {
            let ts = self.clock.to_wall(raw.ts_ns);
            if let Some(mut event) = Event::from_raw(raw, ts) {
                result = self
                    .understand(&mut event)
                    .and_then(|()| self.deliver(&mut event, config));
            }
            result.is_ok() && !self.reached_count(config)
        });
        result?;
        // The ring buffer is empty: the stream is idle, so this is the moment to flush.
        self.sink.flush()?;
        Ok(())
    }

    /// Adds what only the live holder table knows, then updates it (and the pressure counts)
    /// with the event.
    fn understand(&mut self, event: &mut Event) -> anyhow::Result<()> {
        // A namespace's range is read from its first claim, while the claiming thread (the
        // way into the namespace) most likely still runs: a failure may be its last act.
        if event.kind == Kind::Claim {
            self.ranges.range_of(event);
        }
        match event.kind {
            // A free whose claim predates tracing carries whoever ran when the port was
            // released; if the table knows who held that very socket, name it instead.
            Kind::Free if !event.claimer_seen => {
                if let Some(claimer) = self.holders.claimer_of(event) {
                    event.task = Some(claimer);
                    event.claimer_seen = true;
                }
            }
            Kind::Fail if names_a_holder(event) => {
                let holder = self.holders.holder_for(event);
                // The policy is this namespace's; others have their own range.
                let here = event.netns.is_none() || event.netns == self.own_netns;
                event.hint = holder
                    .as_ref()
                    .filter(|holder| here && got_it_as_ephemeral(holder))
                    .zip(self.ephemeral.as_ref())
                    .and_then(|(_, policy)| policy.reserve_hint(event.local_port));
                event.holder = Some(holder);
            }
            Kind::Fail if exhaustion::applies(event) => self.explain(event),
            _ => {}
        }
        let change = self.holders.observe(event);
        if let Some(change) = &change {
            self.sink.occupancy(change)?;
            if change.taken {
                self.explainer.port_taken(change);
            }
        }
        let Some(pressure) = &mut self.pressure else {
            return Ok(());
        };
        let namespace = change
            .and_then(|change| pressure.observe(event, &change, &self.holders, &mut self.ranges));
        let destination = match event.kind {
            Kind::Claim | Kind::Free => {
                pressure.observe_destination(event, &self.holders, &mut self.ranges)
            }
            _ => None,
        };
        for crossing in namespace.iter().chain(&destination) {
            self.sink.pressure(crossing)?;
        }
        Ok(())
    }

    /// Says why the kernel found no port, if this namespace's range is known.
    fn explain(&mut self, event: &mut Event) {
        let Some(range) = self.ranges.range_of(event) else {
            return;
        };
        // Reserved ports and tcp_tw_reuse are read here for this namespace only.
        let here = event.netns.is_none() || event.netns == self.own_netns;
        let facts = Facts {
            range,
            reserved: self
                .ephemeral
                .as_ref()
                .filter(|_| here)
                .map(|policy| policy.reserved.as_slice()),
            time_wait_reuse: self.time_wait_reuse.filter(|_| here),
            watched: self.watched.as_ref(),
        };
        event.exhaustion = Some(self.explainer.explain(event, &self.holders, &facts));
    }

    fn deliver(&mut self, event: &mut Event, config: &TraceConfig) -> anyhow::Result<()> {
        if event.kind == Kind::Fail && event.local_port == 0 {
            let namespace_range = self.ranges.range_of(event);
            let host_range = self.ephemeral.as_ref().map(|policy| &policy.range);
            if !config.wants_portless_failure(namespace_range.as_ref(), host_range) {
                return Ok(());
            }
        }
        let pid = event.task.as_ref().map(|task| task.pid);
        let comm = event.task.as_ref().map(|task| task.comm.as_str());
        let comm = comm.as_deref();
        event.container = event
            .task
            .as_ref()
            .and_then(|task| self.containers.of_task(task, event.cgroup_id));
        if !config.kinds.contains(&event.kind)
            || config.netns.is_some_and(|netns| event.netns != Some(netns))
            || !config.containers.passes(event.container.as_deref())
            || (!config.pids.is_empty() && !pid.is_some_and(|pid| config.pids.contains(&pid)))
            || (!config.comms.is_empty() && !comm.is_some_and(|comm| config.comms.contains(comm)))
            || self.reached_count(config)
        {
            return Ok(());
        }
        if let (Some(cache), Some(task)) = (&mut self.audit, &event.task) {
            event.audit = Some(cache.lookup(task, event.uid));
        }
        self.sink.event(event)?;
        *self.summary.counts.entry(event.kind).or_default() += 1;
        self.emitted += 1;
        Ok(())
    }

    fn report_lost(&mut self, stream: &mut Stream) -> anyhow::Result<()> {
        let newly_skipped = stream.newly_skipped();
        if let Some((_, total)) = newly_skipped {
            self.summary.skipped_runs = Some(total);
        }
        if let Some((skipped, total)) = newly_skipped
            && skipped > 0
        {
            eprintln!(
                "portwatch: warning: the kernel skipped {skipped} more runs of portwatch's \
                 programs ({total} in all), which it does while a program is already \
                 running on that CPU (in a preempted task) or another BPF program or a bpf() \
                 map call holds it; whatever events those runs would have made are missing, \
                 and not counted as lost"
            );
        }
        let lost = stream.newly_lost();
        if lost > 0 {
            self.summary.lost += lost;
            self.sink.lost(Timestamp::now(), lost)?;
            self.sink.flush()?;
        }
        Ok(())
    }
}

/// Resolves when stdout is a pipe or socket whose reader went away (`| head` is done), so
/// portwatch ends then and not at its next write; never resolves for a terminal or a file.
async fn stdout_reader_gone(config: &TraceConfig) {
    let watched = if config.quiet {
        None
    } else {
        io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .ok()
            .map(File::from)
            .filter(is_pipe_or_socket)
            .and_then(|file| {
                // SAFETY: the AsyncFd owns this duplicate of stdout, which stays open and is
                // only watched (never read or written) until the AsyncFd is dropped.
                unsafe { AsyncFd::register_with_interest(OwnedFd::from(file), Interest::ERROR) }
                    .ok()
            })
    };
    match watched {
        // The write end of a pipe reports an error condition once the read end is closed.
        Some(fd) => {
            let _ = fd.ready(Interest::ERROR).await;
        }
        None => std::future::pending().await,
    }
}

fn is_pipe_or_socket(file: &File) -> bool {
    file.metadata()
        .is_ok_and(|meta| meta.file_type().is_fifo() || meta.file_type().is_socket())
}

/// Whether the kernel handed the holder its port from the ephemeral range.
fn got_it_as_ephemeral(holder: &Holder) -> bool {
    matches!(
        holder.how,
        Some(How::Connect | How::Autobind | How::BindAny)
    )
}

/// Failures where one port was wanted and something else has it.
fn names_a_holder(event: &Event) -> bool {
    event.local_port != 0
        && matches!(
            event.errno,
            Some(libc::EADDRINUSE) | Some(libc::EADDRNOTAVAIL)
        )
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        let _ = self.sink.flush();
        let _ = io::stderr().flush();
    }
}
