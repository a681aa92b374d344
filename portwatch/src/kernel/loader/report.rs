//! The one message the loader child sends the tracer: text saying how loading went, and, when it
//! went well, the attachment's descriptors as SCM_RIGHTS (through rustix, not hand-made cmsgs).
//!
//! The text is line-based: `ok`, the backend's name, then `note <text>` and `passed <reason>`
//! lines; or `err` and the reason. A child that dies before sending leaves an empty message.

use std::{
    io::{self, IoSlice, IoSliceMut},
    mem::MaybeUninit,
    os::fd::{BorrowedFd, OwnedFd},
};

use anyhow::{bail, ensure};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// The most descriptors one message carries (the kernel's SCM_MAX_FD).
pub const MAX_FDS: usize = 253;
/// Room for the report text.
const MAX_REPORT: usize = 64 * 1024;

/// A successful load, as the text part of the message describes it.
#[derive(Debug, PartialEq, Eq)]
pub struct Attached {
    pub backend: String,
    /// What the backend cannot see on this kernel beyond its documented limits.
    pub notes: Vec<String>,
    /// Why `auto` passed over better backends.
    pub passed_over: Vec<String>,
    /// With `--debug-kernel`: one of the attached programs, by which the tracer finds the
    /// kernel log ring.
    pub log_program: Option<u32>,
}

impl Attached {
    pub fn encode(&self) -> String {
        let mut text = format!("ok\n{}", one_line(&self.backend));
        for note in &self.notes {
            text.push_str("\nnote ");
            text.push_str(&one_line(note));
        }
        for reason in &self.passed_over {
            text.push_str("\npassed ");
            text.push_str(&one_line(reason));
        }
        if let Some(id) = self.log_program {
            text.push_str(&format!("\nlogs {id}"));
        }
        text
    }
}

/// The text for a load that failed with `reason`.
pub fn encode_failure(reason: &str) -> String {
    format!("err\n{reason}")
}

/// Reads the text part back: the attachment, or the child's reason as the error.
pub fn decode(text: &str) -> anyhow::Result<Attached> {
    let mut lines = text.lines();
    match lines.next() {
        Some("ok") => {}
        Some("err") => bail!("{}", lines.collect::<Vec<_>>().join("\n")),
        None => bail!("the loader process died before reporting (see its messages above)"),
        Some(other) => bail!("the loader sent a report that is not one: {other:?}"),
    }
    let backend = lines.next().unwrap_or_default().to_string();
    ensure!(!backend.is_empty(), "the loader's report names no backend");
    let (mut notes, mut passed_over, mut log_program) = (Vec::new(), Vec::new(), None);
    for line in lines {
        if let Some(note) = line.strip_prefix("note ") {
            notes.push(note.to_string());
        } else if let Some(reason) = line.strip_prefix("passed ") {
            passed_over.push(reason.to_string());
        } else if let Some(id) = line.strip_prefix("logs ").and_then(|id| id.parse().ok()) {
            log_program = Some(id);
        } else {
            bail!("the loader's report has a line that is not one: {line:?}");
        }
    }
    Ok(Attached {
        backend,
        notes,
        passed_over,
        log_program,
    })
}

/// Keeps a free-text item (an error chain may span lines) on its one line of the report.
fn one_line(text: &str) -> String {
    text.replace('\n', " ")
}

/// Sends `text` with `fds` attached, in one message.
pub fn send(socket: BorrowedFd<'_>, text: &str, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::other(format!(
            "{} descriptors are more than one message carries ({MAX_FDS})",
            fds.len()
        )));
    }
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other(
            "the descriptors do not fit the control buffer",
        ));
    }
    rustix::net::sendmsg(
        socket,
        &[IoSlice::new(text.as_bytes())],
        &mut control,
        SendFlags::empty(),
    )?;
    Ok(())
}

/// Receives one message: its text and the descriptors it carried, now owned by this process and
/// closed on exec.
pub fn receive(socket: BorrowedFd<'_>) -> anyhow::Result<(String, Vec<OwnedFd>)> {
    let mut text = vec![0u8; MAX_REPORT];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let message = rustix::net::recvmsg(
        socket,
        &mut [IoSliceMut::new(&mut text)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let mut fds = Vec::new();
    for ancillary in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = ancillary {
            fds.extend(received);
        }
    }
    if message.flags.contains(ReturnFlags::CTRUNC) {
        bail!("the loader's descriptors did not all arrive");
    }
    if message.flags.contains(ReturnFlags::TRUNC) {
        bail!("the loader's report is longer than {MAX_REPORT} bytes");
    }
    text.truncate(message.bytes);
    Ok((String::from_utf8_lossy(&text).into_owned(), fds))
}

#[cfg(test)]
mod tests {
    use std::{
        fs::File,
        io::{Read, Write},
        os::fd::AsFd,
    };

    use rustix::net::{AddressFamily, SocketFlags, SocketType};

    use super::*;

    fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
        rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap()
    }

    fn attached() -> Attached {
        Attached {
            backend: "tracepoint".into(),
            notes: vec!["no TIME_WAIT end".into()],
            passed_over: vec!["fentry: EPERM".into(), "kprobe: no kprobes".into()],
            log_program: Some(4711),
        }
    }

    #[test]
    fn a_report_round_trips() {
        assert_eq!(decode(&attached().encode()).unwrap(), attached());
    }

    #[test]
    fn multi_line_reasons_stay_on_their_line() {
        let mut report = attached();
        report.passed_over = vec!["fentry: loading failed:\nverifier said no".into()];
        let decoded = decode(&report.encode()).unwrap();
        assert_eq!(
            decoded.passed_over,
            ["fentry: loading failed: verifier said no"]
        );
        assert_eq!(decoded.notes, attached().notes);
    }

    #[test]
    fn a_failure_carries_the_childs_reason() {
        let error = decode(&encode_failure("no backend could attach (x; y)")).unwrap_err();
        assert_eq!(error.to_string(), "no backend could attach (x; y)");
    }

    #[test]
    fn silence_and_garbage_are_errors() {
        assert!(
            decode("")
                .unwrap_err()
                .to_string()
                .contains("died before reporting")
        );
        assert!(
            decode("ok")
                .unwrap_err()
                .to_string()
                .contains("names no backend")
        );
        assert!(decode("hello").unwrap_err().to_string().contains("not one"));
        assert!(decode("ok\nkprobe\nbogus line").is_err());
    }

    /// Text and descriptors cross a real socket pair: a pipe's write end sent over it still
    /// reaches the pipe.
    #[test]
    fn descriptors_arrive_and_work() {
        let (sender, receiver) = seqpacket_pair();
        let (read_end, write_end) = std::io::pipe().unwrap();
        let text = attached().encode();
        send(sender.as_fd(), &text, &[write_end.as_fd()]).unwrap();
        drop(write_end);
        let (received, fds) = receive(receiver.as_fd()).unwrap();
        assert_eq!(received, text);
        assert_eq!(fds.len(), 1);
        let mut pipe_in = File::from(fds.into_iter().next().unwrap());
        pipe_in.write_all(b"through").unwrap();
        drop(pipe_in);
        let mut read = String::new();
        let mut read_end = read_end;
        read_end.read_to_string(&mut read).unwrap();
        assert_eq!(read, "through");
    }

    #[test]
    fn a_message_without_descriptors_is_fine_and_a_closed_peer_is_silence() {
        let (sender, receiver) = seqpacket_pair();
        send(sender.as_fd(), &encode_failure("nope"), &[]).unwrap();
        drop(sender);
        let (text, fds) = receive(receiver.as_fd()).unwrap();
        assert!(fds.is_empty());
        assert_eq!(decode(&text).unwrap_err().to_string(), "nope");
        let (text, _) = receive(receiver.as_fd()).unwrap();
        assert!(decode(&text).unwrap_err().to_string().contains("died"));
    }
}
