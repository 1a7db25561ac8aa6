//! The stdio of a non-interactive `exec` on the unix socket, pumped by one thread.
//!
//! One `poll` loop over our stdin, the three stream websockets, the control websocket and a
//! signalfd, instead of a thread per stream and one for signals: a short command (`exec c1 --
//! true`) is then not paying for four thread starts, their malloc arenas and their joins. The
//! sockets are non-blocking and every websocket write that cannot finish is kept in
//! tungstenite's buffer and flushed when the socket is writable again; while stdin's websocket
//! has such a backlog, stdin is not read. So a command that neither reads its input nor stops
//! writing its output cannot wedge us: its output is always drained.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};

use corral_api::InstanceExecControl;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use tungstenite::Message;

use crate::transport::Stream;
use crate::WebSocket;

/// Signals forwarded to the command while it runs.
const FORWARDED: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

/// Whether `ws` can be pumped here (a unix socket; a TLS session is left to the threads).
pub(crate) fn can_pump(ws: &WebSocket) -> bool {
    matches!(ws.get_ref(), Stream::Unix(_))
}

fn socket(ws: &WebSocket) -> BorrowedFd<'_> {
    match ws.get_ref() {
        Stream::Unix(s) => s.as_fd(),
        Stream::Tls(s) => s.sock.as_fd(),
    }
}

fn set_nonblocking(ws: &WebSocket) -> io::Result<()> {
    match ws.get_ref() {
        Stream::Unix(s) => s.set_nonblocking(true),
        Stream::Tls(s) => s.sock.set_nonblocking(true),
    }
}

fn would_block(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if io.kind() == io::ErrorKind::WouldBlock)
}

/// An output websocket copied to `out` until the daemon closes it.
struct Output<W: Write> {
    ws: Option<WebSocket>,
    out: W,
}

impl<W: Write> Output<W> {
    /// Reads what is there; false once the stream is over (closed, failed, or `out` refuses).
    fn drain(&mut self) -> bool {
        let Some(ws) = self.ws.as_mut() else { return false };
        loop {
            let data = match ws.read() {
                Ok(Message::Binary(b)) => b.to_vec(),
                Ok(Message::Text(t)) => t.as_bytes().to_vec(),
                // tungstenite answers pings and the close itself (queued: flushed below).
                Ok(_) => continue,
                Err(e) if would_block(&e) => {
                    let _ = ws.flush();
                    return true;
                }
                Err(_) => break,
            };
            if self.out.write_all(&data).and_then(|_| self.out.flush()).is_err() {
                break;
            }
        }
        self.ws = None;
        false
    }
}

/// Runs until the command's stdout and stderr websockets are closed.
pub(crate) fn pump(
    control: &mut WebSocket,
    stdin_ws: WebSocket,
    stdout_ws: WebSocket,
    stderr_ws: WebSocket,
) -> io::Result<()> {
    for ws in [&*control, &stdin_ws, &stdout_ws, &stderr_ws] {
        set_nonblocking(ws)?;
    }
    let mut mask = SigSet::empty();
    for s in FORWARDED {
        mask.add(s);
    }
    let old_mask = mask.thread_swap_mask(SigmaskHow::SIG_BLOCK).map_err(io::Error::from)?;
    let result = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(io::Error::from)
        .and_then(|signals| run(control, stdin_ws, stdout_ws, stderr_ws, &signals));
    let _ = old_mask.thread_set_mask();
    result
}

fn run(
    control: &mut WebSocket,
    stdin_ws: WebSocket,
    stdout_ws: WebSocket,
    stderr_ws: WebSocket,
    signals: &SignalFd,
) -> io::Result<()> {
    let mut stdout = Output {
        ws: Some(stdout_ws),
        out: io::stdout().lock(),
    };
    let mut stderr = Output {
        ws: Some(stderr_ws),
        out: io::stderr().lock(),
    };
    let mut input = Some(stdin_ws);
    // Until the daemon closes it (then a poll would always find it readable).
    let mut control_open = true;
    // Until our stdin ends (then the command gets an empty message: its end of input).
    let mut stdin_open = true;
    let mut buf = vec![0u8; 32 * 1024];
    let stdin = io::stdin();

    while stdout.ws.is_some() || stderr.ws.is_some() {
        // A write to stdin's websocket that did not finish: wait for room before reading more.
        let backlog = match input.as_mut() {
            Some(ws) => match ws.flush() {
                Ok(()) => false,
                Err(e) if would_block(&e) => true,
                Err(_) => {
                    input = None;
                    false
                }
            },
            None => false,
        };
        if input.is_some() && !stdin_open && !backlog {
            // Everything, the end of input included, is sent.
            input = None;
        }
        let want_stdin = stdin_open && input.is_some() && !backlog;
        let control_events = if control_open {
            PollFlags::POLLIN
        } else {
            PollFlags::empty()
        };
        let mut fds = vec![
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(socket(control), control_events),
        ];
        let watched = [&stdout.ws, &stderr.ws];
        let outputs: Vec<usize> = watched
            .iter()
            .filter_map(|ws| ws.as_ref())
            .map(|ws| {
                fds.push(PollFd::new(socket(ws), PollFlags::POLLIN));
                fds.len() - 1
            })
            .collect();
        let input_slot = input.as_ref().filter(|_| backlog).map(|ws| {
            fds.push(PollFd::new(socket(ws), PollFlags::POLLOUT));
            fds.len() - 1
        });
        let stdin_slot = want_stdin.then(|| {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
            fds.len() - 1
        });
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let ready = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
        let signal_ready = ready(0);
        let control_ready = ready(1);
        let outputs_ready: Vec<bool> = outputs.iter().map(|&i| ready(i)).collect();
        let stdin_ready = stdin_slot.is_some_and(ready);
        let _ = input_slot.map(ready);
        drop(fds);

        if signal_ready {
            while let Ok(Some(info)) = signals.read_signal() {
                forward_signal(control, info.ssi_signo as i32);
            }
        }
        if control_ready {
            // Pings and the daemon's close; nothing else comes on it.
            control_open = loop {
                match control.read() {
                    Ok(_) => {}
                    Err(e) => break would_block(&e),
                }
            };
        }
        let mut slot = outputs_ready.into_iter();
        if stdout.ws.is_some() && slot.next() == Some(true) {
            stdout.drain();
        }
        if stderr.ws.is_some() && slot.next() == Some(true) {
            stderr.drain();
        }
        if stdin_ready {
            let ws = input.as_mut().expect("polled only with stdin's websocket");
            match stdin.lock().read(&mut buf) {
                Ok(0) | Err(_) => {
                    stdin_open = false;
                    let _ = ws.write(Message::binary(Vec::new()));
                    let _ = ws.close(None);
                }
                Ok(n) => {
                    if let Err(e) = ws.write(Message::binary(buf[..n].to_vec())) {
                        if !would_block(&e) {
                            input = None;
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

fn forward_signal(control: &mut WebSocket, signal: i32) {
    let msg = InstanceExecControl {
        command: corral_api::instance::exec_control::SIGNAL.into(),
        args: BTreeMap::new(),
        signal,
    };
    if let Ok(text) = serde_json::to_string(&msg) {
        // Non-blocking: a control message that cannot go now goes with the next flush.
        let _ = control.write(Message::text(text));
        let _ = control.flush();
    }
}
