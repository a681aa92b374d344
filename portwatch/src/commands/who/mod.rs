//! `portwatch who PORT...`: one shot, no BPF. What each port is (IANA class, this host's
//! ephemeral range and reserved ports, /etc/services names) and every socket on it now, with
//! the processes holding them, from the same kernel-filtered snapshot the tracer starts with,
//! in every network namespace on the host (or the one `--netns` names), with the container of
//! each socket's process.

mod print;
mod process;
mod services;

use std::{collections::HashMap, io::Write, process::ExitCode, time::Duration};

use anyhow::Context as _;

use crate::{
    commands::config::WhoConfig,
    host::containers::Lookups,
    host::snapshot::{self, Family, Query, Scope},
    model::container::Container,
    model::ports::{EphemeralPolicy, IanaClass, PortSet},
    model::proto::Proto,
    output::Format,
};

/// Exit codes, so scripts can ask "is anything on this port?".
pub const HELD: ExitCode = ExitCode::SUCCESS;
pub const FREE: ExitCode = ExitCode::FAILURE;
pub const ERROR: u8 = 2;

/// Everything `who` found, ready for a printer.
pub struct Report {
    pub ports: Vec<PortReport>,
    /// None when the sysctls could not be read (a note says why).
    pub policy: Option<EphemeralPolicy>,
    /// What the caller could not see or the kernel cannot show, one sentence each.
    pub notes: Vec<String>,
    /// The namespaces the sockets are in, by inode.
    pub namespaces: HashMap<u32, NamespaceLabel>,
    /// portwatch's own network namespace (the host's, usually).
    pub own_netns: Option<u32>,
}

/// What names a network namespace for a reader.
#[derive(Clone, Debug, Default)]
pub struct NamespaceLabel {
    /// `ip netns` names and the runtimes' bind mounts.
    pub names: Vec<String>,
    /// The container of a process in it.
    pub container: Option<Container>,
}

impl NamespaceLabel {
    /// `web` (a container: the runtimes' own names are generated), `blue`, or nothing.
    pub fn short(&self) -> Option<String> {
        self.container
            .as_ref()
            .map(Container::label)
            .or_else(|| self.names.first().cloned())
    }
}

pub struct PortReport {
    pub port: u16,
    pub class: IanaClass,
    /// None when this host has no readable /etc/services.
    pub services: Option<Vec<services::Service>>,
    pub holders: Vec<Holder>,
}

/// A socket on the port, with what is known of its processes.
pub struct Holder {
    pub socket: snapshot::Socket,
    pub user: Option<String>,
    pub processes: Vec<Process>,
    /// Why `processes` is empty.
    pub missing: Option<Missing>,
    /// The container of its first process.
    pub container: Option<Container>,
}

pub struct Process {
    pub pid: u32,
    pub comm: String,
    pub age: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missing {
    /// No file refers to the socket: the kernel alone holds it (TIME_WAIT, a connection
    /// request, or a socket whose process closed it before the connection ended).
    Kernel,
    /// Its process may be one whose descriptors this caller may not read.
    Hidden,
    /// No visible process holds it (another PID namespace, or it exited meanwhile).
    NotFound,
}

impl Missing {
    pub fn name(self) -> &'static str {
        match self {
            Missing::Kernel => "kernel",
            Missing::Hidden => "hidden",
            Missing::NotFound => "not_found",
        }
    }
}

pub fn run(config: &WhoConfig) -> anyhow::Result<ExitCode> {
    let report = gather(&config.ports, &config.netns)?;
    for note in &report.notes {
        eprintln!("portwatch: note: {note}");
    }
    let mut stdout = std::io::stdout().lock();
    match config.format {
        Format::Json => print::json(&report, &mut stdout),
        Format::Table => print::table(&report, &mut stdout),
    }
    .and_then(|()| stdout.flush())
    .or_else(|err| match err.kind() {
        std::io::ErrorKind::BrokenPipe => Ok(()),
        _ => Err(err),
    })
    .context("writing the report")?;
    let held = report.ports.iter().any(|port| !port.holders.is_empty());
    Ok(if held { HELD } else { FREE })
}

fn gather(ports: &[u16], netns: &Scope) -> anyhow::Result<Report> {
    let snapshot = snapshot::take(&Query {
        ports: Some(PortSet::new(
            ports.iter().map(|&port| port..=port).collect(),
        )),
        protos: vec![Proto::Tcp, Proto::Udp],
        families: vec![Family::Ipv4, Family::Ipv6],
        netns: netns.clone(),
    })?;
    let mut notes = snapshot.notes;
    let mut lookups = Lookups::default();
    let held_in: std::collections::HashSet<u32> =
        snapshot.sockets.iter().map(|socket| socket.netns).collect();
    let namespaces: HashMap<u32, NamespaceLabel> = snapshot
        .namespaces
        .iter()
        .filter(|namespace| held_in.contains(&namespace.inode))
        .map(|namespace| {
            let label = NamespaceLabel {
                names: namespace.names.clone(),
                // Any process in it may be a tool that entered it (`nsenter`, a tracer's
                // thread): the first in a container names the namespace. Ours is the host's.
                container: (Some(namespace.inode) != snapshot.own_netns)
                    .then(|| namespace.pids.iter().find_map(|&pid| lookups.of_pid(pid)))
                    .flatten(),
            };
            (namespace.inode, label)
        })
        .collect();
    let policy = EphemeralPolicy::read()
        .map_err(|err| notes.push(format!("this host's ephemeral range is unknown: {err}")))
        .ok();
    let services_table = services::read()
        .map_err(|err| notes.push(format!("{err}; no service names")))
        .ok()
        .flatten();
    let hidden_possible = snapshot.unreadable_processes > 0;
    let mut hidden = 0;
    let mut reports = Vec::new();
    for &port in ports {
        let holders: Vec<Holder> = snapshot
            .sockets
            .iter()
            .filter(|socket| socket.local.port() == port)
            .map(|socket| {
                let missing = match (socket.inode, socket.owners.is_empty()) {
                    (_, false) => None,
                    (0, true) => Some(Missing::Kernel),
                    (_, true) if hidden_possible => Some(Missing::Hidden),
                    (_, true) => Some(Missing::NotFound),
                };
                hidden += usize::from(missing == Some(Missing::Hidden));
                let container = socket
                    .owners
                    .first()
                    .and_then(|owner| lookups.of_pid(owner.pid))
                    .or_else(|| namespaces.get(&socket.netns)?.container.clone());
                Holder {
                    container,
                    socket: socket.clone(),
                    user: socket.uid.and_then(crate::host::users::through_nss),
                    processes: socket
                        .owners
                        .iter()
                        .map(|owner| Process {
                            pid: owner.pid,
                            comm: owner.comm.clone(),
                            age: process::age(owner.pid),
                        })
                        .collect(),
                    missing,
                }
            })
            .collect();
        reports.push(PortReport {
            port,
            class: IanaClass::of(port),
            services: services_table
                .as_deref()
                .map(|table| services::on_port(table, port)),
            holders,
        });
    }
    if hidden > 0 {
        notes.push(format!(
            "{hidden} socket(s) show no process: {} other processes' descriptors are not readable \
             by this user (their sockets' users are shown); run as root to see every process",
            snapshot.unreadable_processes
        ));
    }
    Ok(Report {
        ports: reports,
        policy,
        notes,
        namespaces,
        own_netns: snapshot.own_netns,
    })
}
