//! Every network namespace and container on the host: `who` and the tracer against listeners
//! in namespaces this test makes (bind-mounted under /run/netns, as `ip netns add` does, with
//! system calls only, so the scenarios run in the kernel matrix's busybox guests too), and
//! against a real podman container where podman can run.

use std::{
    ffi::CString,
    fs,
    os::{fd::AsRawFd as _, unix::ffi::OsStrExt as _},
    path::PathBuf,
    process::Command,
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    Outcome, Skip,
    expect::check,
    lifetimes::bring_loopback_up,
    tracer::{Tracer, binary, netns_inode, own_netns},
    workload::{Kind, Socket, V4, free_port, tcp_listener},
};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// A network namespace kept by a bind mount under /run/netns; unmounted and removed on drop.
struct Netns {
    name: String,
    path: PathBuf,
    inode: u64,
}

impl Netns {
    fn new(tag: &str) -> Result<Self, Error> {
        let name = format!("pw-e2e-{}-{tag}", std::process::id());
        let path = PathBuf::from("/run/netns").join(&name);
        fs::create_dir_all("/run/netns")?;
        fs::write(&path, b"")?;
        let target = CString::new(path.as_os_str().as_bytes())?;
        // A thread may change its network namespace on its own; this one makes a new one,
        // pins it on the file and ends.
        thread::spawn(move || -> std::io::Result<()> {
            // SAFETY: unshare with a valid flag affects only this thread's network namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            bring_loopback_up();
            // SAFETY: a bind mount of this thread's namespace file onto an existing empty
            // file, with valid NUL-terminated paths and no data.
            let mounted = unsafe {
                libc::mount(
                    c"/proc/thread-self/ns/net".as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                )
            };
            if mounted != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
        .join()
        .map_err(|_| "the namespace thread panicked")??;
        let inode = netns_inode(path.to_str().ok_or("path")?)?;
        Ok(Self { name, path, inode })
    }

    /// Runs `work` on a thread inside the namespace: sockets it opens belong to it, and stay
    /// this process's.
    fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> Result<T, Error> {
        let file = fs::File::open(&self.path)?;
        thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: setns on an open network namespace file changes only this
                    // thread's namespace; the thread ends with `work`.
                    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(std::io::Error::last_os_error().into());
                    }
                    Ok(work())
                })
                .join()
                .map_err(|_| Error::from("the namespace's thread panicked"))?
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(path) = CString::new(self.path.as_os_str().as_bytes()) {
            // SAFETY: unmounting our own bind mount by its NUL-terminated path.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = fs::remove_file(&self.path);
    }
}

/// `portwatch who PORT --json [args]`: its one JSON line and exit code.
fn who(port: u16, args: &[&str]) -> Result<(Value, Option<i32>), Error> {
    let output = Command::new(binary())
        .args(["who", &port.to_string(), "--json"])
        .args(args)
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().next().ok_or_else(|| {
        format!(
            "who printed nothing; stderr {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    Ok((serde_json::from_str(line)?, output.status.code()))
}

fn sockets(answer: &Value) -> Vec<Value> {
    answer["sockets"].as_array().cloned().unwrap_or_default()
}

fn netns_of(socket: &Value) -> Option<u64> {
    socket["netns"].as_u64()
}

/// `who` finds a listener on the same port in this namespace and in two others, names each
/// namespace, and `--netns` narrows by name, inode and `self`.
pub fn who_covers_every_namespace() -> Outcome {
    let port = free_port();
    let blue = Netns::new("blue")?;
    let green = Netns::new("green")?;
    let _here = tcp_listener(V4, port)?;
    let _in_blue = blue.run(|| tcp_listener(V4, port))??;
    let _in_green = green.run(|| tcp_listener(V4, port))??;
    let (answer, code) = who(port, &[])?;
    check(code == Some(0), || format!("exit {code:?}: {answer}"))?;
    let found = sockets(&answer);
    let mut namespaces: Vec<u64> = found.iter().filter_map(netns_of).collect();
    namespaces.sort_unstable();
    let mut wanted = vec![own_netns(), blue.inode, green.inode];
    wanted.sort_unstable();
    check(namespaces == wanted, || {
        format!("expected listeners in {wanted:?}, got {answer}")
    })?;
    for socket in &found {
        check(socket["pid"] == std::process::id(), || {
            format!("not this process: {socket}")
        })?;
        check(socket["state"] == "listen", || socket.to_string())?;
    }
    let in_blue = found
        .iter()
        .find(|socket| netns_of(socket) == Some(blue.inode))
        .ok_or("no socket in blue")?;
    check(in_blue["netns_names"][0] == blue.name.as_str(), || {
        format!("blue's socket does not name it: {in_blue}")
    })?;
    check(found[0]["netns_own"] == true, || {
        format!("portwatch's own namespace comes first: {answer}")
    })?;
    for (args, expected) in [
        (vec!["--netns", blue.name.as_str()], blue.inode),
        (vec!["--netns", &green.inode.to_string()], green.inode),
        (vec!["--netns", "self"], own_netns()),
    ] {
        let (answer, code) = who(port, &args)?;
        let found = sockets(&answer);
        check(code == Some(0) && found.len() == 1, || {
            format!("{args:?}: exit {code:?}, {answer}")
        })?;
        check(netns_of(&found[0]) == Some(expected), || {
            format!("{args:?}: {answer}")
        })?;
    }
    // Free in every namespace: exit 1, as before.
    let other = free_port();
    let (answer, code) = who(other, &[])?;
    check(code == Some(1) && sockets(&answer).is_empty(), || {
        format!("port {other}: exit {code:?}, {answer}")
    })?;
    let refused = Command::new(binary())
        .args(["who", "80", "--netns", "/etc/hostname"])
        .output()?;
    check(refused.status.code() == Some(2), || {
        format!("--netns /etc/hostname: {refused:?}")
    })
}

/// A listener in another namespace before tracing starts is a `held` event there; a bind on
/// its port in that namespace fails naming it as the holder, and one made after the start in
/// a third namespace is traced with its namespace. `--netns` keeps only one namespace.
pub fn held_and_holders_in_other_namespaces() -> Outcome {
    let port = free_port();
    let blue = Netns::new("held")?;
    let green = Netns::new("later")?;
    let _before = blue.run(|| tcp_listener(V4, port))??;
    let tracer = Tracer::start(&["--port", &port.to_string()])?;
    let narrowed = Tracer::start(&[
        "--port",
        &port.to_string(),
        "--netns",
        &green.inode.to_string(),
    ])?;
    let refused = blue.run(|| {
        let socket = Socket::new(Kind::Tcp, V4)?;
        socket.bind(port).map(|()| socket)
    })?;
    let refused = refused.map(drop);
    check(
        refused
            .as_ref()
            .is_err_and(|err| err.raw_os_error() == Some(libc::EADDRINUSE)),
        || format!("the second bind in blue did not fail with EADDRINUSE: {refused:?}"),
    )?;
    let _after = green.run(|| tcp_listener(V4, port))??;
    thread::sleep(Duration::from_millis(300));
    let trace = tracer.stop()?;
    let narrowed = narrowed.stop()?;
    let me = std::process::id();
    let in_namespace = |events: &[Value], netns: u64, kind: &str| -> Vec<Value> {
        events
            .iter()
            .filter(|event| {
                event["local_port"] == port
                    && event["event"] == kind
                    && event["netns"].as_u64() == Some(netns)
            })
            .cloned()
            .collect()
    };
    let held = in_namespace(&trace.events, blue.inode, "held");
    check(held.len() == 1 && held[0]["pid"] == me, || {
        format!(
            "expected one held event in blue by {me}: {:?}",
            trace.events
        )
    })?;
    let failed = in_namespace(&trace.events, blue.inode, "fail");
    check(failed.len() == 1, || {
        format!("expected one fail in blue: {:?}", trace.events)
    })?;
    check(
        failed[0]["errno"] == "EADDRINUSE" && failed[0]["holder"]["pid"] == me,
        || {
            format!(
                "the failure does not name the holder found at start: {}",
                failed[0]
            )
        },
    )?;
    let listened = in_namespace(&trace.events, green.inode, "listen");
    check(!listened.is_empty(), || {
        format!("no listen in green: {:?}", trace.events)
    })?;
    let outside = narrowed
        .events
        .iter()
        .filter(|event| event["local_port"] == port)
        .filter(|event| event["netns"].as_u64() != Some(green.inode))
        .count();
    let inside = in_namespace(&narrowed.events, green.inode, "listen").len();
    check(outside == 0 && inside > 0, || {
        format!(
            "--netns green let {outside} other events through and kept {inside}: {:?}",
            narrowed.events
        )
    })
}

/// The container engines the scenarios drive.
#[derive(Clone, Copy, PartialEq)]
enum Engine {
    Podman,
    Docker,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Podman => "podman",
            Engine::Docker => "docker",
        }
    }
}

/// podman's command line as it works on this kind of host: runc (crun refuses hybrid
/// cgroups), the cgroupfs manager, and explicit ulimits.
fn podman(args: &[&str]) -> Result<String, Error> {
    engine(Engine::Podman, args)
}

fn engine(engine: Engine, args: &[&str]) -> Result<String, Error> {
    let mut command = match engine {
        Engine::Podman => {
            let mut command = Command::new("podman");
            command.args(["--runtime", "/usr/sbin/runc", "--cgroup-manager=cgroupfs"]);
            command
        }
        // Debian's docker.io client (another `docker` earlier on PATH may not match the daemon).
        Engine::Docker => Command::new("/usr/bin/docker"),
    };
    let output = command.args(args).output()?;
    if !output.status.success() {
        return Err(format!(
            "{} {args:?}: {}",
            engine.name(),
            String::from_utf8_lossy(&output.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// The image: busybox alone, built from a local directory (no registry).
const IMAGE: &str = "localhost/portwatch-e2e-busybox";

/// Why there is no podman here to test with (then the scenario says it skipped), or the
/// image built once for every scenario; a podman that is there and cannot build is a failure.
fn podman_image() -> Result<Option<String>, Error> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    for needed in ["/usr/bin/podman", "/usr/sbin/runc", "/bin/busybox"] {
        if fs::metadata(needed).is_err() {
            return Ok(Some(format!(
                "{needed} is missing (Debian: podman, runc, busybox-static)"
            )));
        }
    }
    let built = BUILT.get_or_init(|| {
        if podman(&["image", "exists", IMAGE]).is_ok() {
            return Ok(());
        }
        let context = std::env::temp_dir().join(format!("pw-e2e-image-{}", std::process::id()));
        let built = fs::create_dir_all(&context)
            .and_then(|()| fs::copy("/bin/busybox", context.join("busybox")).map(drop))
            .and_then(|()| {
                fs::write(
                    context.join("Containerfile"),
                    "FROM scratch\nCOPY busybox /bin/busybox\nENTRYPOINT [\"/bin/busybox\"]\n",
                )
            })
            .map_err(Error::from)
            .and_then(|()| podman(&["build", "-q", "-t", IMAGE, context.to_str().unwrap_or("")]));
        let _ = fs::remove_dir_all(&context);
        built
            .map(drop)
            .map_err(|err| format!("building the image: {err}"))
    });
    built.clone().map(|()| None).map_err(Error::from)
}

/// A running container, removed on drop.
struct Container {
    engine: Engine,
    name: String,
    id: String,
}

impl Container {
    fn listen(tag: &str, port: u16) -> Result<Self, Error> {
        Self::listen_in(Engine::Podman, IMAGE, tag, port)
    }

    fn listen_in(engine: Engine, image: &str, tag: &str, port: u16) -> Result<Self, Error> {
        let name = format!("pw-e2e-{}-{tag}", std::process::id());
        let id = self::engine(
            engine,
            &[
                "run",
                "-d",
                "--network",
                if engine == Engine::Docker {
                    "none"
                } else {
                    "private"
                },
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=1024:1024",
                "--name",
                &name,
                image,
                "nc",
                "-l",
                "-p",
                &port.to_string(),
            ],
        )?;
        let container = Self { engine, name, id };
        // Listening takes the container's first moments.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let (answer, _) = who(port, &[])?;
            if sockets(&answer)
                .iter()
                .any(|socket| socket["state"] == "listen")
            {
                return Ok(container);
            }
            thread::sleep(Duration::from_millis(100));
        }
        Err(format!("container {} never listened on {port}", container.name).into())
    }

    fn netns(&self) -> Result<u64, Error> {
        let pid = engine(
            self.engine,
            &["inspect", "-f", "{{.State.Pid}}", &self.name],
        )?;
        Ok(netns_inode(&format!("/proc/{pid}/ns/net"))?)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = match self.engine {
            Engine::Podman => podman(&["rm", "-f", "-t", "0", &self.name]),
            Engine::Docker => engine(Engine::Docker, &["rm", "-f", &self.name]),
        };
    }
}

/// Whether a `container` object names this container.
fn names(container: &Value, expected: &Container) -> bool {
    container["runtime"] == expected.engine.name()
        && container["id"] == expected.id.as_str()
        && container["name"] == expected.name.as_str()
        && container["resolving"] == false
}

/// A podman container listening before tracing starts: `who` names it (runtime, id, name)
/// in its namespace; the tracer's `held` event does too, and a bind inside the container on
/// the same port fails naming that holder, without `--audit`. `--container` keeps its events
/// only. Skipped, saying why, where podman cannot run.
pub fn podman_container_is_named() -> Outcome {
    if let Some(reason) = podman_image()? {
        return Err(Skip::because(format!("no container runtime: {reason}")));
    }
    let port = free_port();
    let web = Container::listen("web", port)?;
    let netns = web.netns()?;
    check(netns != own_netns(), || {
        "the container shares our namespace".to_string()
    })?;
    let (answer, code) = who(port, &[])?;
    let found = sockets(&answer);
    check(code == Some(0) && found.len() == 1, || {
        format!("exit {code:?}: {answer}")
    })?;
    check(
        netns_of(&found[0]) == Some(netns) && names(&found[0]["container"], &web),
        || {
            format!(
                "who does not name container {} ({}): {answer}",
                web.name, web.id
            )
        },
    )?;
    let tracer = Tracer::start(&["--port", &port.to_string()])?;
    let only_web = Tracer::start(&["--port", &port.to_string(), "--container", &web.name])?;
    let only_other = Tracer::start(&["--port", &port.to_string(), "--container", "no-such"])?;
    let second = podman(&[
        "exec",
        &web.name,
        "/bin/busybox",
        "nc",
        "-l",
        "-p",
        &port.to_string(),
    ]);
    check(
        second
            .as_ref()
            .is_err_and(|err| err.to_string().contains("in use")),
        || format!("the second listener in the container did not fail: {second:?}"),
    )?;
    thread::sleep(Duration::from_millis(300));
    let trace = tracer.stop()?;
    let only_web = only_web.stop()?;
    let only_other = only_other.stop()?;
    let on_port = |events: &[Value]| -> Vec<Value> {
        events
            .iter()
            .filter(|event| event["local_port"] == port)
            .cloned()
            .collect()
    };
    let events = on_port(&trace.events);
    let held: Vec<&Value> = events.iter().filter(|e| e["event"] == "held").collect();
    check(
        held.len() == 1 && held[0]["netns"] == netns && names(&held[0]["container"], &web),
        || format!("the held event does not name the container: {events:?}"),
    )?;
    let failed: Vec<&Value> = events.iter().filter(|e| e["event"] == "fail").collect();
    check(
        failed.len() == 1
            && failed[0]["errno"] == "EADDRINUSE"
            && failed[0]["holder"]["pid"] == held[0]["pid"]
            && failed[0]["container"]["id"] == web.id.as_str(),
        || format!("the failure inside the container does not name its holder: {events:?}"),
    )?;
    check(on_port(&only_web.events).len() == events.len(), || {
        format!(
            "--container {} kept {:?} of {events:?} (its stderr: {:?})",
            web.name, only_web.events, only_web.stderr
        )
    })?;
    check(on_port(&only_other.events).is_empty(), || {
        format!("--container no-such kept {:?}", only_other.events)
    })
}

/// A container started after tracing began: its first events may say the name is being
/// asked for (`"resolving": true`, `"name": null`), never a blank that looks like data, and
/// the runtime's answer arrives without the tracer waiting for it.
pub fn podman_container_started_later_resolves() -> Outcome {
    if let Some(reason) = podman_image()? {
        return Err(Skip::because(format!("no container runtime: {reason}")));
    }
    let port = free_port();
    let tracer = Tracer::start(&["--port", &port.to_string()])?;
    let later = Container::listen("later", port)?;
    // A second claim in the same container, once the runtime has had time to answer.
    thread::sleep(Duration::from_millis(500));
    let _ = podman(&[
        "exec",
        &later.name,
        "/bin/busybox",
        "nc",
        "-l",
        "-p",
        &port.to_string(),
    ]);
    thread::sleep(Duration::from_millis(300));
    let trace = tracer.stop()?;
    let events: Vec<&Value> = trace
        .events
        .iter()
        .filter(|event| event["local_port"] == port && !event["container"].is_null())
        .collect();
    check(events.len() >= 2, || {
        format!(
            "expected the listen and the failed bind: {:?}",
            trace.events
        )
    })?;
    for event in &events {
        let container = &event["container"];
        let pending = container["resolving"] == true && container["name"].is_null();
        check(
            container["id"] == later.id.as_str() && (pending || names(container, &later)),
            || format!("neither resolving nor named: {event}"),
        )?;
    }
    let last = events.last().ok_or("no events")?;
    check(names(&last["container"], &later), || {
        format!("the runtime's answer never arrived: {last}")
    })
}

/// A docker container (its daemon's HTTP API answers the name): `who` and the tracer's `held`
/// event name it. Skipped, saying why, when no docker daemon answers on /run/docker.sock
/// (Debian's docker.io needs its daemon running; the test does not start one).
pub fn docker_container_is_named() -> Outcome {
    if engine(Engine::Docker, &["version"]).is_err() {
        return Err(Skip::because(
            "no docker daemon answers /usr/bin/docker version (Debian: docker.io)",
        ));
    }
    if engine(Engine::Docker, &["image", "inspect", IMAGE]).is_err() {
        let context = std::env::temp_dir().join(format!("pw-e2e-docker-{}", std::process::id()));
        fs::create_dir_all(&context)?;
        fs::copy("/bin/busybox", context.join("busybox"))?;
        fs::write(
            context.join("Dockerfile"),
            "FROM scratch\nCOPY busybox /bin/busybox\nENTRYPOINT [\"/bin/busybox\"]\n",
        )?;
        let built = engine(
            Engine::Docker,
            &["build", "-q", "-t", IMAGE, context.to_str().unwrap_or("")],
        );
        let _ = fs::remove_dir_all(&context);
        built?;
    }
    let port = free_port();
    let web = Container::listen_in(Engine::Docker, IMAGE, "docker", port)?;
    let (answer, _) = who(port, &[])?;
    let found = sockets(&answer);
    check(
        found.len() == 1
            && netns_of(&found[0]) == Some(web.netns()?)
            && names(&found[0]["container"], &web),
        || format!("who does not name docker container {}: {answer}", web.name),
    )?;
    let tracer = Tracer::start(&["--port", &port.to_string()])?;
    thread::sleep(Duration::from_millis(200));
    let trace = tracer.stop()?;
    let held: Vec<&Value> = trace
        .events
        .iter()
        .filter(|event| event["local_port"] == port && event["event"] == "held")
        .collect();
    check(
        held.len() == 1 && names(&held[0]["container"], &web),
        || format!("the held event does not name it: {:?}", trace.events),
    )
}
