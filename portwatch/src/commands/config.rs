//! What each command was asked to do, validated: the command line builds these, the commands
//! read them, and nothing below the commands sees either.

use std::{collections::HashSet, net::SocketAddr, ops::RangeInclusive, time::Duration};

use crate::{
    host::snapshot::Scope,
    kernel::backend::{Choice, LoadSpec},
    model::{container, event::Kind, ports::PortSet, proto::Proto},
    output::{Format, sink::FileOptions},
};

/// Everything the tracer needs to know, validated.
#[derive(Clone, Debug)]
pub struct TraceConfig {
    /// None: every port.
    pub ports: Option<PortSet>,
    /// `--ephemeral`: the host's ephemeral range is added to `ports` by
    /// [`TraceConfig::with_ephemeral_range`], when the command starts.
    pub watch_ephemeral: bool,
    pub pids: HashSet<u32>,
    pub comms: HashSet<String>,
    pub protos: HashSet<Proto>,
    pub ipv4: bool,
    pub ipv6: bool,
    pub kinds: HashSet<Kind>,
    pub duration: Option<Duration>,
    pub count: Option<u64>,
    pub format: Format,
    pub backend: Choice,
    pub check: bool,
    pub ring_bytes: u32,
    pub output: Option<FileOptions>,
    pub quiet: bool,
    pub audit: bool,
    /// Whether the kernel programs' aya-log diagnostics are on.
    pub debug_kernel: bool,
    /// Percent of the ephemeral range in use that makes a `pressure` event; 0: off.
    pub pressure_pct: u8,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// `--netns`: only this namespace (inode).
    pub netns: Option<u32>,
    /// `--container` and `--pod`: only processes in these.
    pub containers: container::Filter,
}

impl TraceConfig {
    /// Folds in the host's ephemeral range (read when the command starts, not while parsing):
    /// `--ephemeral` watches it.
    pub fn with_ephemeral_range(
        mut self,
        range: std::io::Result<RangeInclusive<u16>>,
    ) -> anyhow::Result<Self> {
        if self.watch_ephemeral {
            let range = range
                .as_ref()
                .map_err(|err| anyhow::anyhow!("--ephemeral: {err}"))?;
            let mut ranges = self
                .ports
                .as_ref()
                .map(|set| set.ranges().to_vec())
                .unwrap_or_default();
            ranges.push(range.clone());
            self.ports = Some(PortSet::new(ranges));
        }
        Ok(self)
    }

    /// Whether a failure without a port belongs to the trace: when watching every port, or
    /// ports that overlap the ephemeral range of the failure's own namespace (None: unknown,
    /// then this host's range decides).
    pub fn wants_portless_failure(
        &self,
        namespace_range: Option<&RangeInclusive<u16>>,
        host_range: Option<&RangeInclusive<u16>>,
    ) -> bool {
        match (&self.ports, namespace_range.or(host_range)) {
            (None, _) => true,
            (Some(set), Some(range)) => set.intersects(range),
            (Some(_), None) => false,
        }
    }

    /// What the kernel side is loaded with: the filters the programs apply themselves.
    pub fn load_spec(&self) -> LoadSpec {
        LoadSpec {
            choice: self.backend,
            ports: self.ports.clone(),
            // Whether a failure without a port matters depends on its own namespace's range,
            // which only the tracer can tell (wants_portless_failure): the kernel sends them all.
            portless_failures: true,
            tcp: self.protos.contains(&Proto::Tcp),
            udp: self.protos.contains(&Proto::Udp),
            ipv4: self.ipv4,
            ipv6: self.ipv6,
            ring_bytes: self.ring_bytes,
            debug_kernel: self.debug_kernel,
        }
    }

    /// The userspace filters as a capture header lists them (`pid=12`, `comm=nginx`,
    /// `events=claim,fail`), sorted so that equal filters read equal.
    pub fn filters(&self) -> Vec<String> {
        let mut filters: Vec<String> = self
            .pids
            .iter()
            .map(|pid| format!("pid={pid}"))
            .chain(self.comms.iter().map(|comm| format!("comm={comm}")))
            .chain(self.netns.iter().map(|netns| format!("netns={netns}")))
            .chain(self.containers.describe())
            .collect();
        filters.sort();
        if self.kinds.len() < Kind::ALL.len() {
            let kinds: Vec<&str> = Kind::ALL
                .iter()
                .filter(|kind| self.kinds.contains(kind))
                .map(|kind| kind.name())
                .collect();
            filters.push(format!("events={}", kinds.join(",")));
        }
        filters
    }

    /// What is watched, in words, for the status line.
    pub fn describe(&self) -> String {
        let ports = match &self.ports {
            Some(set) => format!("ports {}", set.describe()),
            None => "every port".to_string(),
        };
        let mut protos: Vec<&str> = self.protos.iter().map(|proto| proto.name()).collect();
        protos.sort();
        let families = match (self.ipv4, self.ipv6) {
            (true, true) => "ipv4+ipv6",
            (true, false) => "ipv4",
            _ => "ipv6",
        };
        format!("{ports} ({}, {families})", protos.join("+"))
    }
}

/// What `who` looks up, validated.
#[derive(Clone, Debug)]
pub struct WhoConfig {
    /// In the order given, each once.
    pub ports: Vec<u16>,
    pub format: Format,
    pub netns: Scope,
}
