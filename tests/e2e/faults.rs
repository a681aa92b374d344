//! Faults the tracer must survive without harm to the host: being killed outright, and starting
//! with descriptors it should not keep.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use crate::{
    Outcome,
    bpf::Held,
    expect::{check, exactly, want},
    tracer::Tracer,
    workload::{Kind, Socket, V4, free_port},
};

/// How long the kernel may take to free a killed process's objects (their release is deferred
/// work, not part of the exit).
const RELEASE_GRACE: Duration = Duration::from_secs(10);

/// `kill -9` mid-trace: the programs, maps, links and cgroup attachments the tracer held (its
/// own ids, read from its fdinfo, since other tracers may run on this host) all disappear from
/// the kernel's listings, and a new tracer attaches at once and works.
pub fn kill_9_leaves_nothing() -> Outcome {
    let me = std::process::id();
    let port = free_port();
    let tracer = Tracer::start(&["--port", &port.to_string()])?;
    let held = Held::of_process(tracer.pid())?;
    check(
        !held.programs.is_empty() && (!held.links.is_empty() || held.perf_events > 0),
        || format!("the tracer holds no programs, or neither links nor perf events: {held:?}"),
    )?;
    check(
        tracer.backend != "tracepoint" || !held.cgroup_programs.is_empty(),
        || format!("the tracepoint backend holds no cgroup link: {held:?}"),
    )?;
    // The listings must see them now, or their absence later would prove nothing.
    let listed = held.still_listed()?;
    let expected = held.programs.len() + held.maps.len() + held.links.len();
    check(
        listed.len() == expected + held.cgroup_programs.len(),
        || format!("only {listed:?} of {held:?} are listed while the tracer runs"),
    )?;
    let socket = Socket::rebinding(Kind::Udp, V4)?;
    socket.bind(port)?;
    tracer.kill()?;
    let killed = Instant::now();
    let deadline = killed + RELEASE_GRACE;
    loop {
        let left = held.still_listed()?;
        if left.is_empty() {
            eprintln!(
                "e2e: kill -9: {} programs, {} maps, {} links ({} on a cgroup), {} perf events \
                 before, none listed {} ms after",
                held.programs.len(),
                held.maps.len(),
                held.links.len(),
                held.cgroup_programs.len(),
                held.perf_events,
                killed.elapsed().as_millis()
            );
            break;
        }
        if Instant::now() > deadline {
            return Err(
                format!("{:?} after kill -9, still listed: {left:?}", RELEASE_GRACE).into(),
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    socket.close();
    let again = Tracer::start(&["--port", &port.to_string()])?;
    let socket = Socket::rebinding(Kind::Udp, V4)?;
    socket.bind(port)?;
    socket.close();
    let trace = again.stop()?;
    let events = trace.on_port(port);
    exactly(&events, &want("claim", port, me, "udp", "ipv4"), 1)?;
    exactly(&events, &want("free", port, me, "udp", "ipv4"), 1)
}

/// The loader child hands over only the attachment's descriptors: a pipe the tracer inherited
/// is open in it exactly as often as it was inherited, not again as a copy from the child.
pub fn loader_passes_only_the_attachment() -> Outcome {
    let mut ends = [0; 2];
    // SAFETY: pipe fills the two-element array; without O_CLOEXEC both ends are inherited.
    if unsafe { libc::pipe(ends.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: pipe just opened both descriptors and nothing else owns them.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
    let tracer = Tracer::start(&["--port", &free_port().to_string()]);
    // Other scenarios' children must not inherit them any longer than needed.
    let target = std::fs::read_link(format!("/proc/self/fd/{}", read_end.as_raw_fd()))?;
    drop((read_end, write_end));
    let tracer = tracer?;
    let mut copies = 0;
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for entry in std::fs::read_dir(format!("/proc/{}/fd", tracer.pid()))? {
        let Ok(link) = std::fs::read_link(entry?.path()) else {
            continue;
        };
        if link == target {
            copies += 1;
        }
        *kinds
            .entry(link.to_string_lossy().into_owned())
            .or_default() += 1;
    }
    tracer.stop()?;
    check(copies == 2, || {
        format!("the tracer holds {copies} descriptors of an inherited pipe, not 2: {kinds:?}")
    })?;
    check(
        kinds.contains_key("anon_inode:bpf_link") || kinds.contains_key("anon_inode:[perf_event]"),
        || format!("the tracer holds no link or perf event: {kinds:?}"),
    )
}
