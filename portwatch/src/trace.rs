//! The tracing command: backend → stream → filter/enrich → sink, until a signal, the duration,
//! the count, or a closed stdout ends it.

use std::{
    collections::HashMap,
    io::{self, BufWriter, IsTerminal, Write},
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    backend::{self, Backend, Kernel},
    cli::{BackendArg, Config, Format},
    clock::{MonotonicClock, Timestamp},
    event::{Event, Kind, Proto},
    loader::Loaded,
    sink::{JsonSink, Sink, TableSink},
    snapshot,
    stream::Stream,
};

/// How often the lost-event counter is read while events flow.
const LOST_POLL: Duration = Duration::from_millis(500);

pub async fn run(config: Config, loaded: Loaded) -> anyhow::Result<()> {
    if config.backend == BackendArg::Auto {
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
        attachment,
        ..
    } = loaded;
    let mut stream = Stream::new(events, lost)?;
    let stdout = BufWriter::with_capacity(64 * 1024, io::stdout().lock());
    let sink: Box<dyn Sink> = match config.format {
        Format::Json => Box::new(JsonSink::new(stdout)),
        Format::Table => Box::new(TableSink::new(stdout, colour_wanted())),
    };
    let mut pipeline = Pipeline::new(sink);
    // Holders are read after the hooks attach, so no change falls between snapshot and trace,
    // and before the status line, so "attached" means the current holders are already out.
    // Then every capability goes: tracing needs none.
    let outcome = match pipeline
        .report_holders(&config)
        .and_then(|()| crate::privileges::drop_all())
    {
        Ok(()) => {
            eprintln!(
                "portwatch: attached backend={backend}, watching {}",
                config.describe()
            );
            pipeline.run(&mut stream, &config).await
        }
        Err(err) => Err(err),
    };
    // Detach before the summary: closing the last descriptors removes the hooks.
    drop((stream, attachment));
    eprintln!("portwatch: summary {}", pipeline.summary());
    match outcome {
        Err(err) if is_broken_pipe(&err) => Ok(()),
        other => other,
    }
}

/// `--check`: attach each candidate once, report, detach.
pub fn check(config: &Config) -> anyhow::Result<()> {
    let kernel = Kernel::read(&Backend::candidates(config.backend))
        .context("reading the kernel's type information")?;
    let mut picked = None;
    for (backend, outcome) in backend::check(&kernel, config) {
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
        .is_some_and(|err| err.kind() == io::ErrorKind::BrokenPipe)
}

/// Filters, enrichment, counting and the sink: everything between decoding and output.
struct Pipeline {
    sink: Box<dyn Sink>,
    clock: MonotonicClock,
    counts: HashMap<Kind, u64>,
    lost: u64,
    emitted: u64,
    /// Holders found at start-up, to name the claimer of a port freed without a seen claim.
    holders: HashMap<(Proto, u16), Event>,
}

impl Pipeline {
    fn new(sink: Box<dyn Sink>) -> Self {
        Self {
            sink,
            clock: MonotonicClock::new(),
            counts: HashMap::new(),
            lost: 0,
            emitted: 0,
            holders: HashMap::new(),
        }
    }

    async fn run(&mut self, stream: &mut Stream, config: &Config) -> anyhow::Result<()> {
        let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        let mut terminate =
            signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let deadline =
            tokio::time::sleep(config.duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
        tokio::pin!(deadline);
        let mut lost_poll = tokio::time::interval(LOST_POLL);
        while !self.reached_count(config) {
            tokio::select! {
                readable = stream.readable() => {
                    readable?;
                    self.drain(stream, config)?;
                }
                _ = lost_poll.tick() => self.report_lost(stream)?,
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
                _ = &mut deadline => break,
            }
        }
        // Whatever the kernel submitted before we stopped still belongs to the trace.
        if !self.reached_count(config) {
            self.drain(stream, config)?;
        }
        self.report_lost(stream)?;
        self.sink.flush()?;
        Ok(())
    }

    fn reached_count(&self, config: &Config) -> bool {
        config.count.is_some_and(|count| self.emitted >= count)
    }

    fn report_holders(&mut self, config: &Config) -> anyhow::Result<()> {
        let held = snapshot::held(|proto, addr, port| {
            config.protos.contains(&proto)
                && (if addr.is_ipv4() {
                    config.ipv4
                } else {
                    config.ipv6
                })
                && config
                    .ports
                    .as_ref()
                    .is_none_or(|ports| ports.contains(port))
        });
        for event in held {
            self.deliver(&event, config)?;
            // Only holders with a process can name a claimer (TIME_WAIT sockets have none).
            if event.pid != 0 {
                self.holders
                    .entry((event.proto, event.local_port))
                    .or_insert(event);
            }
        }
        self.sink.flush()?;
        Ok(())
    }

    fn drain(&mut self, stream: &mut Stream, config: &Config) -> anyhow::Result<()> {
        let mut result = Ok(());
        stream.drain(|raw| {
            let ts = self.clock.to_wall(raw.ts_ns);
            if let Some(mut event) = Event::from_raw(raw, ts) {
                self.attribute_unseen_claim(&mut event);
                result = self.deliver(&event, config);
            }
            result.is_ok() && !self.reached_count(config)
        });
        result?;
        // The ring buffer is empty: the stream is idle, so this is the moment to flush.
        self.sink.flush()?;
        Ok(())
    }

    /// A free whose claim predates tracing carries whoever ran when the port was released; if
    /// the start-up snapshot knew the holder, name it instead.
    fn attribute_unseen_claim(&self, event: &mut Event) {
        if event.claimer_seen || event.kind != Kind::Free {
            return;
        }
        if let Some(holder) = self.holders.get(&(event.proto, event.local_port))
            && holder.pid != 0
        {
            event.pid = holder.pid;
            event.tid = holder.tid;
            event.comm.clone_from(&holder.comm);
            event.uid = holder.uid;
            event.claimer_seen = true;
        }
    }

    fn deliver(&mut self, event: &Event, config: &Config) -> anyhow::Result<()> {
        if !config.kinds.contains(&event.kind)
            || (!config.pids.is_empty() && !config.pids.contains(&event.pid))
            || (!config.comms.is_empty() && !config.comms.contains(&event.comm))
            || self.reached_count(config)
        {
            return Ok(());
        }
        self.sink.event(event)?;
        *self.counts.entry(event.kind).or_default() += 1;
        self.emitted += 1;
        Ok(())
    }

    fn report_lost(&mut self, stream: &mut Stream) -> anyhow::Result<()> {
        let lost = stream.newly_lost()?;
        if lost > 0 {
            self.lost += lost;
            self.sink.lost(Timestamp::now(), lost)?;
            self.sink.flush()?;
        }
        Ok(())
    }

    fn summary(&self) -> String {
        let mut parts: Vec<String> = Kind::ALL
            .iter()
            .map(|kind| {
                format!(
                    "{}={}",
                    kind.name(),
                    self.counts.get(kind).copied().unwrap_or(0)
                )
            })
            .collect();
        parts.push(format!("lost={}", self.lost));
        parts.join(" ")
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        let _ = self.sink.flush();
        let _ = io::stderr().flush();
    }
}
