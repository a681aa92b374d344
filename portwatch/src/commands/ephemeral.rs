//! `portwatch ephemeral`: the ephemeral ports of every network namespace now, one shot and
//! without eBPF. Per namespace (this one and those named under /run/netns): the range, the
//! ports in use, the destinations using most of it, the ports blocked for every destination,
//! and only the advice that what it measured supports. The sockets come from sock_diag inside
//! each namespace (the start-up snapshot's query) and go through the same holder table and
//! explanation as a live failure.

use std::{
    fs::File,
    io::Write as _,
    net::{IpAddr, Ipv4Addr},
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::PathBuf,
};

use anyhow::Context as _;

use crate::{
    host::snapshot::{self, Family, Query, Scope},
    live::exhaustion::{self, Facts, TimeWaitReuse},
    live::holders::Holders,
    model::event::{Event, Kind},
    model::exhaustion::Exhaustion,
    model::ports::{EphemeralPolicy, PortSet},
    model::proto::Proto,
};

/// Named namespaces, as `ip netns add` makes them.
const NAMED: &str = "/run/netns";

/// What one namespace showed.
struct View {
    name: String,
    policy: EphemeralPolicy,
    time_wait_reuse: Option<TimeWaitReuse>,
    in_use: usize,
    /// The explanation a connect toward the busiest destination would get now; None when no
    /// socket holds a port of the range.
    busiest: Option<Exhaustion>,
    listening_ports: Vec<u16>,
    notes: Vec<String>,
}

pub fn run() -> anyhow::Result<()> {
    let mut namespaces = vec![("this namespace".to_string(), None)];
    if let Ok(dir) = std::fs::read_dir(NAMED) {
        let mut named: Vec<PathBuf> = dir.filter_map(|entry| Some(entry.ok()?.path())).collect();
        named.sort();
        namespaces.extend(
            named
                .into_iter()
                .map(|path| (format!("netns {}", path.display()), Some(path))),
        );
    }
    let mut out = std::io::stdout().lock();
    for (name, path) in namespaces {
        let view = std::thread::scope(|scope| {
            scope
                .spawn(|| look(name.clone(), path.as_ref()))
                .join()
                .map_err(|_| anyhow::anyhow!("reading {name} failed"))?
        });
        match view {
            Ok(view) => print(&mut out, &view)?,
            Err(err) => writeln!(out, "{name}: {err:#}")?,
        }
    }
    Ok(())
}

/// Reads one namespace, entered on this thread alone (a namespace is per thread).
fn look(name: String, path: Option<&PathBuf>) -> anyhow::Result<View> {
    if let Some(path) = path {
        let namespace = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: the descriptor is an open network namespace file; only this thread enters.
        if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("entering {} (needs CAP_SYS_ADMIN)", path.display()));
        }
    }
    let policy = EphemeralPolicy::read().context("reading the ephemeral range")?;
    // The namespace this thread is in now (entered above, or the process's own).
    let inode = std::fs::metadata("/proc/thread-self/ns/net")
        .context("reading this thread's network namespace")?
        .ino() as u32;
    let held = snapshot::held(&Query {
        ports: Some(PortSet::new(vec![policy.range.clone()])),
        protos: vec![Proto::Tcp],
        families: vec![Family::Ipv4, Family::Ipv6],
        netns: Scope::Only(inode),
    });
    let mut holders = Holders::default();
    let mut sample: Option<Event> = None;
    let mut ports = std::collections::BTreeSet::new();
    let mut listening_ports = Vec::new();
    for event in held.events {
        ports.insert(event.local_port);
        if event.state == Some("listen") {
            listening_ports.push(event.local_port);
        }
        holders.observe(&event);
        sample.get_or_insert(event);
    }
    let time_wait_reuse = TimeWaitReuse::read();
    let facts = Facts {
        range: policy.range.clone(),
        reserved: Some(&policy.reserved),
        time_wait_reuse,
        watched: None,
    };
    let busiest = sample.map(|mut probe| {
        probe.kind = Kind::Fail;
        probe.proto = Proto::Tcp;
        probe.local_port = 0;
        probe.local_addr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        probe.how = Some(portwatch_ebpf::How::Connect);
        probe.errno = Some(libc::EADDRNOTAVAIL);
        probe.remote = None;
        let overview = exhaustion::explain(&probe, &holders, &facts);
        probe.remote = overview
            .busiest
            .first()
            .map(|destination| (destination.addr, destination.port));
        exhaustion::explain(&probe, &holders, &facts)
    });
    Ok(View {
        name,
        time_wait_reuse,
        in_use: ports.len(),
        busiest,
        listening_ports,
        notes: held.notes,
        policy,
    })
}

fn print(out: &mut impl std::io::Write, view: &View) -> std::io::Result<()> {
    let range = &view.policy.range;
    writeln!(
        out,
        "{}: ephemeral range {}-{} ({} ports), {} in use (tcp)",
        view.name,
        range.start(),
        range.end(),
        usize::from(range.end() - range.start()) + 1,
        view.in_use
    )?;
    let Some(explained) = &view.busiest else {
        for note in &view.notes {
            writeln!(out, "  note: {note}")?;
        }
        return Ok(());
    };
    let blocked = explained.bound + explained.reserved.unwrap_or(0);
    writeln!(
        out,
        "  blocked for every destination: {blocked} ({} bound, {} listening, {} reserved)",
        explained.bound - explained.listening,
        explained.listening,
        explained.reserved.unwrap_or(0)
    )?;
    for used in &explained.busiest {
        writeln!(
            out,
            "  toward {}: {} ports ({} time_wait)",
            crate::model::text::endpoint(&used.addr, used.port),
            used.ports,
            used.time_wait
        )?;
    }
    if let (Some((addr, port)), Some(usable)) = (explained.destination, explained.usable) {
        writeln!(
            out,
            "  a connect to {} finds {usable} usable ports",
            crate::model::text::endpoint(&addr, port)
        )?;
    }
    for advice in advice(view) {
        writeln!(out, "  advice: {advice}")?;
    }
    for note in &view.notes {
        writeln!(out, "  note: {note}")?;
    }
    Ok(())
}

/// Only what the measurement supports.
fn advice(view: &View) -> Vec<String> {
    let mut advice = Vec::new();
    for port in &view.listening_ports {
        advice.push(format!(
            "a server listens on port {port} inside the ephemeral range, which blocks it for \
             every connect and lets an outgoing connection take it before the server starts: \
             reserve it with `{}`",
            view.policy.reserve_command(*port)
        ));
    }
    let Some(explained) = &view.busiest else {
        return advice;
    };
    let Some(busiest) = explained.busiest.first() else {
        return advice;
    };
    let usable_at_most = explained.size() - explained.bound - explained.reserved.unwrap_or(0);
    // A destination using at least half of what it may use is running out.
    if busiest.ports * 2 >= usable_at_most.max(1) {
        let dest = crate::model::text::endpoint(&busiest.addr, busiest.port);
        advice.push(format!(
            "{dest} uses {} of the {usable_at_most} ports usable toward it: pool connections to \
             it, or widen net.ipv4.ip_local_port_range",
            busiest.ports
        ));
        let reuse = view.time_wait_reuse.map(|reuse| reuse.mode);
        if busiest.time_wait * 2 > busiest.ports && reuse != Some(1) {
            advice.push(format!(
                "{} of them are in TIME_WAIT: net.ipv4.tcp_tw_reuse=1 lets new connects take \
                 those over (it is {}; 2 covers loopback only)",
                busiest.time_wait,
                reuse.map_or_else(|| "unknown".into(), |mode| mode.to_string())
            ));
        }
    }
    if explained.bound > explained.listening {
        advice.push(format!(
            "{} ports are held by sockets a bind() gave them, which no connect may share: \
             clients that bind before connecting should set IP_BIND_ADDRESS_NO_PORT",
            explained.bound - explained.listening
        ));
    }
    advice
}
