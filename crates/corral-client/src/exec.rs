//! `lxc exec`: run a command in an instance with this process's terminal or stdio.
//!
//! `POST /1.0/instances/<name>/exec` with `wait-for-websocket` answers with a websocket
//! operation whose metadata `fds` names one secret per stream: `0`, `1`, `2` and `control`
//! (or `0` and `control` with a terminal). Once every websocket is connected the command runs;
//! its output websockets close when it ends, and the operation's metadata `return` is its exit
//! code.

use std::collections::BTreeMap;
use std::io::{self, IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use corral_api::{InstanceExecControl, InstanceExecPost, Operation};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::termios::{self, SetArg, Termios};
use tungstenite::protocol::Role;
use tungstenite::Message;

use crate::{encode_segment, Client, ClientError, Result, WebSocket};

/// What to run, and how.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOptions {
    /// The command and its arguments.
    pub command: Vec<String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Give the command a terminal, and put ours in raw mode (`lxc exec -t`).
    pub interactive: bool,
    /// Working directory; `None` for the daemon's default.
    pub cwd: Option<String>,
    /// UID to run as (0: root).
    pub user: u32,
    /// GID to run as (0: root).
    pub group: u32,
}

impl Client {
    /// Runs a command in `instance` with this process's stdin, stdout and stderr (or its
    /// terminal, when `interactive`), and returns the command's exit code.
    ///
    /// Non-interactive: our stdin goes to websocket `0` (an empty message at end of input), `1`
    /// and `2` to our stdout and stderr; SIGINT, SIGTERM and SIGHUP are forwarded to the command
    /// on `control`. Interactive: the terminal is put in raw mode (and restored, whatever
    /// happens), bytes go both ways on `0`, and the window size is sent at start and on
    /// SIGWINCH.
    pub fn exec(&self, instance: &str, opts: &ExecOptions) -> Result<i32> {
        let (width, height) = if opts.interactive {
            terminal_size().unwrap_or((80, 24))
        } else {
            (0, 0)
        };
        let post = InstanceExecPost {
            command: opts.command.clone(),
            wait_for_websocket: true,
            interactive: opts.interactive,
            environment: opts.env.clone(),
            width: i64::from(width),
            height: i64::from(height),
            record_output: false,
            user: opts.user,
            group: opts.group,
            cwd: opts.cwd.clone().unwrap_or_default(),
        };
        let resp = self.post(&format!("/1.0/instances/{}/exec", encode_segment(instance)), &post)?;
        let op: Operation = serde_json::from_value(resp.metadata.clone())
            .map_err(|e| ClientError::Protocol(format!("exec answered without an operation: {e}")))?;
        let op_ref = if resp.operation.is_empty() {
            op.id.clone()
        } else {
            resp.operation.clone()
        };
        let fds: BTreeMap<String, String> = serde_json::from_value(op.metadata["fds"].clone())
            .map_err(|e| ClientError::Protocol(format!("exec operation without websocket secrets: {e}")))?;
        let secret = |name: &str| {
            fds.get(name)
                .cloned()
                .ok_or_else(|| ClientError::Protocol(format!("exec operation has no websocket {name:?}")))
        };

        // Connect everything first: the command starts once all are there.
        let names: &[&str] = if opts.interactive {
            &["control", "0"]
        } else {
            &["control", "0", "1", "2"]
        };
        let secrets = names.iter().map(|n| secret(n)).collect::<Result<Vec<_>>>()?;
        let mut sockets = self.websockets(&op_ref, &secrets.iter().map(String::as_str).collect::<Vec<_>>())?;
        let streams = sockets.split_off(1);
        let mut control = sockets.remove(0);

        if !opts.interactive && sockets_local(&control, &streams) {
            let [stdin, stdout, stderr] =
                <[WebSocket; 3]>::try_from(streams).map_err(|_| ClientError::Protocol("no stdio".into()))?;
            crate::exec_pump::pump(&mut control, stdin, stdout, stderr)?;
            let op = self.wait_operation(&op_ref, None);
            let _ = control.close(None);
            let _ = control.flush();
            return exit_code(op?);
        }
        let control = Arc::new(Mutex::new(control));
        let forwarder = SignalForwarder::start(control.clone(), opts.interactive)?;

        if opts.interactive {
            let raw = RawTerminal::enter()?;
            send_resize(&control, width, height);
            let [term] = <[WebSocket; 1]>::try_from(streams).map_err(|_| ClientError::Protocol("no pty".into()))?;
            let out = match split_writer(&term) {
                Ok(writer) => {
                    spawn_stdin(writer, true);
                    spawn_output(term, io::stdout())
                }
                // A TLS session has no second handle: one thread both reads and writes it.
                Err(_) => spawn_terminal_pump(term, io::stdout())?,
            };
            let _ = out.join();
            drop(raw);
        } else {
            let [stdin, stdout, stderr] =
                <[WebSocket; 3]>::try_from(streams).map_err(|_| ClientError::Protocol("no stdio".into()))?;
            spawn_stdin(stdin, false);
            let out = spawn_output(stdout, io::stdout());
            let err = spawn_output(stderr, io::stderr());
            let _ = out.join();
            let _ = err.join();
        }

        let result = self.wait_operation(&op_ref, None);
        drop(forwarder);
        if let Ok(mut c) = control.lock() {
            let _ = c.close(None);
            let _ = c.flush();
        }
        exit_code(result?)
    }
}

/// Whether every websocket is on the unix socket (then one thread pumps them all).
fn sockets_local(control: &WebSocket, streams: &[WebSocket]) -> bool {
    crate::exec_pump::can_pump(control) && streams.iter().all(crate::exec_pump::can_pump)
}

/// The command's exit code, from its finished operation.
fn exit_code(op: Operation) -> Result<i32> {
    op.metadata["return"]
        .as_i64()
        .map(|c| c as i32)
        .ok_or_else(|| ClientError::Protocol(format!("exec finished without an exit code: {}", op.metadata)))
}

/// A second handle on a websocket's connection, for writing while another thread reads.
fn split_writer(ws: &WebSocket) -> Result<WebSocket> {
    let stream = ws.get_ref().try_clone()?;
    Ok(tungstenite::WebSocket::from_raw_socket(stream, Role::Client, None))
}

/// Copies our stdin to `ws`. At end of input: on a terminal (`tty`), sends ^D, which ends the
/// input of a program reading the terminal; otherwise sends an empty message (end of file for
/// the command) and closes. Detached: a read from a terminal may block until we exit.
fn spawn_stdin(mut ws: WebSocket, tty: bool) {
    std::thread::spawn(move || {
        let mut stdin = io::stdin().lock();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if ws.send(Message::binary(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        if tty {
            let _ = ws.send(Message::binary(vec![4u8]));
            return;
        }
        let _ = ws.send(Message::binary(Vec::new()));
        let _ = ws.close(None);
        let _ = ws.flush();
    });
}

/// For a connection without a second handle (HTTPS): stdin is read by a thread into a channel;
/// this thread sends what it got and reads the websocket with a short timeout in turn, until
/// the daemon closes it.
fn spawn_terminal_pump(mut ws: WebSocket, mut out: impl Write + Send + 'static) -> Result<JoinHandle<()>> {
    ws.get_ref()
        .set_read_timeout(Some(std::time::Duration::from_millis(20)))?;
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut stdin = io::stdin().lock();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        // End of input on a terminal: ^D, as spawn_stdin sends.
        let _ = tx.send(vec![4u8]);
    });
    Ok(std::thread::spawn(move || loop {
        while let Ok(data) = rx.try_recv() {
            if ws.send(Message::binary(data)).is_err() {
                return;
            }
        }
        match ws.read() {
            Ok(Message::Binary(b)) => {
                if out.write_all(&b).and_then(|_| out.flush()).is_err() {
                    return;
                }
            }
            Ok(Message::Text(t)) => {
                if out.write_all(t.as_bytes()).and_then(|_| out.flush()).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
            {
                let _ = ws.flush();
            }
            Err(_) => return,
        }
    }))
}

/// Copies what arrives on `ws` to `out` until the daemon closes it.
fn spawn_output(mut ws: WebSocket, mut out: impl Write + Send + 'static) -> JoinHandle<()> {
    std::thread::spawn(move || loop {
        match ws.read() {
            Ok(Message::Binary(b)) => {
                if out.write_all(&b).and_then(|_| out.flush()).is_err() {
                    return;
                }
            }
            Ok(Message::Text(t)) => {
                if out.write_all(t.as_bytes()).and_then(|_| out.flush()).is_err() {
                    return;
                }
            }
            // tungstenite answers a close itself; keep reading until the connection ends.
            Ok(_) => {}
            Err(_) => return,
        }
    })
}

fn send_control(control: &Mutex<WebSocket>, msg: &InstanceExecControl) {
    let Ok(text) = serde_json::to_string(msg) else { return };
    if let Ok(mut ws) = control.lock() {
        let _ = ws.send(Message::text(text));
    }
}

fn send_resize(control: &Mutex<WebSocket>, width: u16, height: u16) {
    let args = BTreeMap::from([
        ("width".to_string(), width.to_string()),
        ("height".to_string(), height.to_string()),
    ]);
    send_control(
        control,
        &InstanceExecControl {
            command: corral_api::instance::exec_control::WINDOW_RESIZE.into(),
            args,
            signal: 0,
        },
    );
}

/// The terminal's size (columns, rows), from stdout or else stdin.
pub fn terminal_size() -> Option<(u16, u16)> {
    [libc::STDOUT_FILENO, libc::STDIN_FILENO].into_iter().find_map(|fd| {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, which points to a live,
        // properly aligned local.
        let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws as *mut libc::winsize) };
        (r == 0 && ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col, ws.ws_row))
    })
}

/// The local terminal in raw mode, restored on drop (also when unwinding).
struct RawTerminal {
    saved: Option<Termios>,
}

impl RawTerminal {
    fn enter() -> Result<RawTerminal> {
        let stdin = io::stdin();
        if !stdin.is_terminal() {
            return Ok(RawTerminal { saved: None });
        }
        let saved = termios::tcgetattr(stdin.as_fd()).map_err(io::Error::from)?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSADRAIN, &raw).map_err(io::Error::from)?;
        Ok(RawTerminal { saved: Some(saved) })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = termios::tcsetattr(io::stdin().as_fd(), SetArg::TCSADRAIN, saved);
        }
    }
}

/// Blocks SIGINT, SIGTERM, SIGHUP and SIGWINCH in this thread (and the threads it starts) and
/// handles them in a thread of its own: forwarded to the command as `signal` control messages,
/// or, for SIGWINCH on a terminal, as `window-resize`. Dropping it stops the thread and restores
/// the signal mask.
struct SignalForwarder {
    thread: Option<JoinHandle<()>>,
    pthread: nix::sys::pthread::Pthread,
    done: Arc<AtomicBool>,
    old_mask: SigSet,
}

impl SignalForwarder {
    fn start(control: Arc<Mutex<WebSocket>>, interactive: bool) -> Result<SignalForwarder> {
        let mut set = SigSet::empty();
        for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGWINCH] {
            set.add(s);
        }
        let old_mask = set.thread_swap_mask(SigmaskHow::SIG_BLOCK).map_err(io::Error::from)?;
        let done = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = done.clone();
        let thread = std::thread::spawn(move || {
            let _ = tx.send(nix::sys::pthread::pthread_self());
            loop {
                let Ok(sig) = set.wait() else { continue };
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                match sig {
                    Signal::SIGWINCH if interactive => {
                        if let Some((w, h)) = terminal_size() {
                            send_resize(&control, w, h);
                        }
                    }
                    Signal::SIGWINCH => {}
                    other => send_control(
                        &control,
                        &InstanceExecControl {
                            command: corral_api::instance::exec_control::SIGNAL.into(),
                            args: BTreeMap::new(),
                            signal: other as i32,
                        },
                    ),
                }
            }
        });
        let pthread = rx
            .recv()
            .map_err(|_| ClientError::Io(io::Error::other("the signal thread died")))?;
        Ok(SignalForwarder {
            thread: Some(thread),
            pthread,
            done,
            old_mask,
        })
    }
}

impl Drop for SignalForwarder {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            if nix::sys::pthread::pthread_kill(self.pthread, Signal::SIGWINCH).is_ok() {
                let _ = t.join();
            }
        }
        let _ = self.old_mask.thread_set_mask();
    }
}
