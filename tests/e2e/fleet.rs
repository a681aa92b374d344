//! `--metrics`: the Prometheus endpoint counts exactly the traffic a test causes on its own
//! watched port, its text passes Prometheus's own checker, and a real Prometheus scrapes it.
//! The last two need Prometheus (`cargo xtask test` installs it on the host; the kernel
//! matrix's guests have none) and are reported skipped where it is missing.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{
    Outcome, Skip,
    expect::check,
    tracer::Tracer,
    workload::{Kind, Socket, V4, V6, free_port, tcp_connection, tcp_listener},
};

/// How long the counters may take to catch up with traffic that already happened.
const SETTLE: Duration = Duration::from_secs(10);

/// One scrape: `name{label="value",...}` (labels sorted by name) → value.
type Scrape = BTreeMap<String, f64>;

fn series(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels = labels.to_vec();
    labels.sort();
    let inner: Vec<String> = labels
        .iter()
        .map(|(label, value)| format!("{label}=\"{value}\""))
        .collect();
    format!("{name}{{{}}}", inner.join(","))
}

/// Reads the exposition text into series. Label order is normalised so lookups do not depend
/// on how the encoder orders them.
fn parse(text: &str) -> Result<Scrape, String> {
    let mut scrape = Scrape::new();
    for line in text
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
    {
        let (key, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| format!("not a sample line: {line}"))?;
        let value: f64 = value
            .parse()
            .map_err(|_| format!("not a sample value: {line}"))?;
        let key = match key.split_once('{') {
            Some((name, labels)) => {
                let labels: Vec<(&str, &str)> = labels
                    .trim_end_matches('}')
                    .split(',')
                    .filter_map(|pair| pair.split_once('='))
                    .map(|(label, value)| (label, value.trim_matches('"')))
                    .collect();
                series(name, &labels)
            }
            None => series(key, &[]),
        };
        scrape.insert(key, value);
    }
    Ok(scrape)
}

fn fetch(url: &str) -> Result<String, String> {
    ureq::get(url)
        .call()
        .and_then(|mut response| response.body_mut().read_to_string())
        .map_err(|err| format!("GET {url}: {err}"))
}

/// The tracer's endpoint and what it served first, so counts are compared as changes.
struct Endpoint {
    url: String,
    baseline: Scrape,
}

impl Endpoint {
    fn new(port: u16) -> Result<Self, String> {
        let url = format!("http://127.0.0.1:{port}/metrics");
        let baseline = parse(&fetch(&url)?)?;
        Ok(Self { url, baseline })
    }

    /// Scrapes until every expected change shows (or SETTLE passes), then demands each exactly:
    /// one scrape must agree on all of them.
    fn expect(&self, changes: &[(String, f64)]) -> Result<String, String> {
        let deadline = Instant::now() + SETTLE;
        loop {
            let text = fetch(&self.url)?;
            let scrape = parse(&text)?;
            let wrong: Vec<String> = changes
                .iter()
                .filter_map(|(key, change)| {
                    let before = self.baseline.get(key).copied().unwrap_or(0.0);
                    let now = scrape.get(key).copied().unwrap_or(0.0);
                    (now - before != *change)
                        .then(|| format!("{key} changed by {}, expected {change}", now - before))
                })
                .collect();
            if wrong.is_empty() {
                return Ok(text);
            }
            if Instant::now() > deadline {
                return Err(format!("{}\n--- scrape ---\n{text}", wrong.join("; ")));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

fn other_free_port(taken: u16) -> u16 {
    loop {
        let port = free_port();
        if port != taken {
            return port;
        }
    }
}

/// A tracer watching `port` and serving metrics on another free port, which it returns.
fn tracer_with_metrics(port: u16) -> Result<(Tracer, u16), String> {
    let metrics_port = other_free_port(port);
    let tracer = Tracer::start(&[
        "--port",
        &port.to_string(),
        "--metrics",
        &format!("127.0.0.1:{metrics_port}"),
    ])?;
    Ok((tracer, metrics_port))
}

/// A holder from before the start, claims, a failure, connections and a TIME_WAIT on one
/// watched port: every counter and the in-use gauge move exactly as caused.
pub fn metrics_count_own_traffic() -> Outcome {
    own_traffic().map(drop)
}

/// Prometheus's own linter and parser accept what the endpoint served after that traffic
/// (`promtool check metrics`); skipped, saying so, on a machine without promtool.
pub fn promtool_accepts_the_metrics() -> Outcome {
    let promtool = on_path("promtool")
        .ok_or_else(|| Skip::because("promtool is not installed (Debian: prometheus)"))?;
    promtool_check(&promtool, &own_traffic()?)
}

/// The traffic of [`metrics_count_own_traffic`], checked; returns the last scrape's text.
fn own_traffic() -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let port = free_port();
    let early = Socket::new(Kind::Udp, V4)?;
    early.bind(port)?;
    let (tracer, metrics_port) = tracer_with_metrics(port)?;
    let endpoint = Endpoint::new(metrics_port)?;
    // free_port picks from 20000-29999: IANA's registered range, outside the ephemeral one.
    let tcp_in_use = series(
        "portwatch_ports_in_use",
        &[("proto", "tcp"), ("range", "registered")],
    );
    let udp_in_use = series(
        "portwatch_ports_in_use",
        &[("proto", "udp"), ("range", "registered")],
    );
    let claims = |proto, how| series("portwatch_claims_total", &[("proto", proto), ("how", how)]);
    let frees = |proto, how| series("portwatch_frees_total", &[("proto", proto), ("how", how)]);
    let time_waits = series("portwatch_time_wait_starts_total", &[("proto", "tcp")]);
    let bind_in_use = series(
        "portwatch_fails_total",
        &[("proto", "tcp"), ("how", "bind"), ("errno", "EADDRINUSE")],
    );

    // The start-up snapshot seeds the gauge: the UDP port is in use before any claim is seen.
    let seeded = endpoint.baseline.get(&udp_in_use).copied();
    check(seeded == Some(1.0), || {
        format!("{udp_in_use} is {seeded:?} at start, with one holder")
    })?;

    let listener = tcp_listener(V4, port)?;
    let refused = Socket::new(Kind::Tcp, V4)?.bind(port);
    check(refused.is_err(), || "a second bind succeeded".into())?;
    let udp = Socket::new(Kind::Udp, V6)?;
    udp.bind(port)?;
    let (client, accepted, _) = tcp_connection(&listener)?;
    // Ports, not sockets: a listener and its accepted connection share one port, and the
    // second UDP socket joins a port already in use.
    endpoint.expect(&[
        (claims("tcp", "bind"), 1.0),
        (claims("tcp", "accept"), 1.0),
        (claims("udp", "bind"), 1.0),
        (bind_in_use.clone(), 1.0),
        (tcp_in_use.clone(), 1.0),
        (udp_in_use.clone(), 0.0),
    ])?;

    // The client closes first: the accepted end closes passively and frees at once.
    client.close();
    accepted.await_peer_close()?;
    accepted.close();
    // Here the accepted end closes first, so it is the one left in TIME_WAIT on the port.
    let (client, accepted, _) = tcp_connection(&listener)?;
    accepted.close();
    thread::sleep(Duration::from_millis(50));
    client.close();
    listener.close();
    udp.close();
    let text = endpoint.expect(&[
        (claims("tcp", "accept"), 2.0),
        (frees("tcp", "bind"), 1.0),
        (frees("tcp", "accept"), 1.0),
        (frees("udp", "bind"), 1.0),
        (time_waits, 1.0),
        (bind_in_use, 1.0),
        // The TIME_WAIT socket still holds the TCP port, the first UDP socket the UDP one.
        (tcp_in_use, 1.0),
        (udp_in_use.clone(), 0.0),
    ])?;
    early.close();
    endpoint.expect(&[(udp_in_use, -1.0)])?;
    tracer.stop()?;
    Ok(text)
}

fn promtool_check(promtool: &Path, text: &str) -> Outcome {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(text.as_bytes())?;
    let output = child.wait_with_output()?;
    check(output.status.success(), || {
        format!(
            "promtool check metrics failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

/// A Prometheus server that is killed when dropped.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real Prometheus scrapes the endpoint: its API reports the target up and holds the
/// claim this test made.
pub fn prometheus_scrapes_metrics() -> Outcome {
    let prometheus = on_path("prometheus")
        .ok_or_else(|| Skip::because("prometheus is not installed (Debian: prometheus)"))?;
    let port = free_port();
    let (tracer, metrics_port) = tracer_with_metrics(port)?;
    let api_port = loop {
        let candidate = other_free_port(port);
        if candidate != metrics_port {
            break candidate;
        }
    };
    let listener = tcp_listener(V4, port)?;
    let dir = scratch_dir()?;
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: portwatch\n    \
             static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n"
        ),
    )?;
    let log = std::fs::File::create(dir.join("prometheus.log"))?;
    let _server = Prometheus(
        Command::new(prometheus)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{api_port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?,
    );
    let api = format!("http://127.0.0.1:{api_port}/api/v1/query?query=");
    query_until(&format!("{api}up%7Bjob%3D%22portwatch%22%7D"), "1", &dir)?;
    query_until(
        &format!("{api}portwatch_claims_total%7Bproto%3D%22tcp%22%2Chow%3D%22bind%22%7D"),
        "1",
        &dir,
    )?;
    listener.close();
    tracer.stop()?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Queries Prometheus's HTTP API until the instant vector's one value is `want` (30 s, as the
/// server starts and scrapes), else fails with the last answer and Prometheus's log.
fn query_until(url: &str, want: &str, dir: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(body) = fetch(url) {
            let answer: serde_json::Value =
                serde_json::from_str(&body).map_err(|err| format!("{url}: {err}: {body}"))?;
            if answer["data"]["result"][0]["value"][1] == want {
                return Ok(());
            }
            last = body;
        }
        thread::sleep(Duration::from_millis(250));
    }
    let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
    Err(format!(
        "Prometheus never answered {want} for {url}: {last}\n--- prometheus log ---\n{log}"
    ))
}

fn scratch_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("portwatch-e2e-prometheus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
