//! Who a free names when its claim predates the trace: only the holder of that very socket.

use crate::{
    Outcome,
    expect::check,
    tracer::Tracer,
    workload::{Kind, Socket, V4, free_port, tcp_listener},
};

/// Port A is in TIME_WAIT towards B (no process holds a TIME_WAIT socket) while this process
/// holds an established A → C, both from before the trace. When the TIME_WAIT runs out, the
/// free must not be credited to this process just because it holds the same port: it says
/// `claimer_seen: false`. Waits out the kernel's 60 s TIME_WAIT.
pub fn time_wait_end_is_not_credited_to_another_holder() -> Outcome {
    let me = std::process::id();
    let port = free_port();
    let (first, second) = (tcp_listener(V4, 0)?, tcp_listener(V4, 0)?);
    let client = Socket::new(Kind::Tcp, V4)?;
    client.reuse_address()?;
    client.bind(port)?;
    client.connect(first.local_port()?)?;
    let accepted = first.accept()?;
    client.close();
    std::thread::sleep(std::time::Duration::from_millis(50));
    accepted.close();
    std::thread::sleep(std::time::Duration::from_millis(50));
    let holder = Socket::new(Kind::Tcp, V4)?;
    holder.reuse_address()?;
    holder.bind(port)?;
    holder.connect(second.local_port()?)?;
    // The tracepoint backend recognises TIME_WAIT timers once it has seen one start on a
    // watched port: show it one on a second watched port.
    let other = free_port();
    let tracer = Tracer::start(&["--port", &format!("{port},{other}")])?;
    let client = Socket::new(Kind::Tcp, V4)?;
    client.bind(other)?;
    client.connect(first.local_port()?)?;
    let accepted = first.accept()?;
    client.close();
    std::thread::sleep(std::time::Duration::from_millis(50));
    accepted.close();
    std::thread::sleep(std::time::Duration::from_secs(63));
    let trace = tracer.stop()?;
    let first_port = first.local_port()?;
    let held = trace.on_port(port);
    check(
        held.iter().any(|event| {
            event["event"] == "held" && event["state"] == "established" && event["pid"] == me
        }),
        || format!("the established holder is not in the snapshot: {held:?}"),
    )?;
    let end = held
        .iter()
        .find(|event| event["event"] == "free" && event["remote_port"] == first_port)
        .ok_or_else(|| format!("no end of the TIME_WAIT towards {first_port}: {held:?}"))?;
    // Unseen, its identity is whatever task ran when the kernel released the port (on some
    // kernels the timer interrupts this very process): what matters is that it is not claimed.
    check(end["claimer_seen"] == false, || {
        format!("the TIME_WAIT's end was credited to a holder: {end}")
    })
}
