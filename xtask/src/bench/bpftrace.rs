//! The bpftrace comparison: a script that reports the same port lifecycle portwatch reports,
//! through tracepoints only (as portwatch's tracepoint backend must), printing every event.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Shown when bpftrace is missing, so the comparison is one package away.
pub const INSTALL_HINT: &str = "install it (Debian/Ubuntu: `apt-get install bpftrace`) to compare";

/// One line per event: `<claim|listen|free> <probe> pid=.. comm=.. ret=.. port=..`, the same
/// kinds portwatch reports, so events per op line up with portwatch's table in `events`.
///
/// - claim: the exits of bind, connect, sendto (autobind) and accept4, with the local port read
///   from the socket behind the fd (the syscall arguments only carry the requested port, which
///   is 0 for bind-any and absent for autobind).
/// - listen / free of TCP sockets that reached a state: `inet_sock_set_state` to LISTEN or CLOSE,
///   filtered in the kernel.
/// - free of sockets that never left CLOSE (a bound TCP socket, an unconnected UDP socket):
///   `close` of an inet socket with a port, still in state CLOSE.
///
/// The `BEGIN` probe marks readiness (see `Tracer::bpftrace`); `READY_FILE` is replaced.
const SCRIPT: &str = r#"BEGIN { system("touch 'READY_FILE'"); }

tracepoint:syscalls:sys_enter_bind,
tracepoint:syscalls:sys_enter_connect,
tracepoint:syscalls:sys_enter_sendto
{
  @fd[tid] = args->fd;
}

tracepoint:syscalls:sys_exit_bind,
tracepoint:syscalls:sys_exit_connect,
tracepoint:syscalls:sys_exit_sendto
{
  $file = *(curtask->files->fdt->fd + @fd[tid]);
  $sk = ((struct socket *)$file->private_data)->sk;
  if (($file->f_inode->i_mode & 0xf000) == 0xc000 &&
      ($sk->__sk_common.skc_family == 2 || $sk->__sk_common.skc_family == 10)) {
    printf("claim %s pid=%d comm=%s ret=%d port=%d\n", probe, pid, comm, args->ret,
           $sk->__sk_common.skc_num);
  }
  delete(@fd[tid]);
}

tracepoint:syscalls:sys_exit_accept4
/args->ret >= 0/
{
  $file = *(curtask->files->fdt->fd + args->ret);
  $sk = ((struct socket *)$file->private_data)->sk;
  if ($sk->__sk_common.skc_family == 2 || $sk->__sk_common.skc_family == 10) {
    printf("claim %s pid=%d comm=%s ret=%d port=%d\n", probe, pid, comm, args->ret,
           $sk->__sk_common.skc_num);
  }
}

tracepoint:sock:inet_sock_set_state
/args->newstate == 10/
{
  printf("listen %s pid=%d comm=%s ret=0 port=%d\n", probe, pid, comm, args->sport);
}

tracepoint:sock:inet_sock_set_state
/args->newstate == 7/
{
  printf("free %s pid=%d comm=%s ret=%d port=%d\n", probe, pid, comm, args->oldstate, args->sport);
}

tracepoint:syscalls:sys_enter_close
{
  $file = *(curtask->files->fdt->fd + args->fd);
  if (($file->f_inode->i_mode & 0xf000) == 0xc000) {
    $sk = ((struct socket *)$file->private_data)->sk;
    if (($sk->__sk_common.skc_family == 2 || $sk->__sk_common.skc_family == 10) &&
        $sk->__sk_common.skc_num != 0 && $sk->__sk_common.skc_state == 7) {
      printf("free %s pid=%d comm=%s ret=0 port=%d\n", probe, pid, comm,
             $sk->__sk_common.skc_num);
    }
  }
}
"#;

/// bpftrace's version line, or None when it is not installed.
pub fn version() -> Option<String> {
    let out = Command::new("bpftrace").arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Writes the script to `path`, with its readiness marker pointing at `ready_file`.
pub fn write_script(path: &Path, ready_file: &Path) -> Result<()> {
    let ready = ready_file
        .to_str()
        .context("non-UTF-8 path for the bpftrace ready file")?;
    if ready.contains(['\'', '"', '\\']) {
        bail!("the bpftrace ready file path {ready:?} cannot be quoted in a script");
    }
    std::fs::write(path, SCRIPT.replace("READY_FILE", ready))
        .with_context(|| format!("writing {}", path.display()))
}
