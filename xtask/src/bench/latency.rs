//! How long a lone event waits before portwatch prints it. Delivery is batched (the kernel
//! programs submit without waking the reader, which looks every few tens of milliseconds), so
//! this is what batching costs someone watching a quiet port.

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::tracer::Tracer;

/// Claims timed, each alone in the ring: spaced further apart than the reader's poll interval.
const SAMPLES: usize = 20;
const SPACING: Duration = Duration::from_millis(60);
const GIVE_UP: Duration = Duration::from_secs(2);

/// Milliseconds from each bind to its `claim` line in portwatch's output.
pub fn measure(portwatch: &Path, output: &Path, cpus: &[usize]) -> Result<Vec<f64>> {
    let port = TcpListener::bind(("127.0.0.1", 0))
        .and_then(|probe| probe.local_addr())
        .context("finding a free port for the latency probe")?
        .port();
    let port_arg = port.to_string();
    let tracer = Tracer::portwatch(
        portwatch,
        &["--port", &port_arg, "--events", "claim", "--json"],
        output,
        cpus,
    )?;
    let mut samples = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let before = lines(output)?;
        let started = Instant::now();
        let listener = TcpListener::bind(("127.0.0.1", port))
            .with_context(|| format!("binding the latency probe's port {port}"))?;
        while lines(output)? == before {
            if started.elapsed() > GIVE_UP {
                bail!("portwatch printed no claim within {GIVE_UP:?} of a bind on port {port}");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        samples.push(started.elapsed().as_secs_f64() * 1e3);
        drop(listener);
        std::thread::sleep(SPACING);
    }
    tracer.stop()?;
    Ok(samples)
}

fn lines(output: &Path) -> Result<usize> {
    let text = std::fs::read(output)
        .with_context(|| format!("reading tracer output {}", output.display()))?;
    Ok(text.iter().filter(|&&byte| byte == b'\n').count())
}
