//! The daemon's side of a monitor: spawning one, and talking to a running one.

use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};

use crate::packet;
use crate::proto::{self, ExecRequest, MonitorState, Ready, Reply, Request, StopOutcome};
use crate::spec::{ContainerSpec, Mount};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot run the monitor {exe}: {source}")]
    Spawn { exe: PathBuf, source: io::Error },
    #[error("the container did not start: {0}")]
    StartFailed(String),
    #[error("the monitor exited without reporting; see {0}")]
    NoReport(PathBuf),
    #[error("no monitor answers at {path} (is the container running?): {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("talking to the monitor: {0}")]
    Io(#[from] io::Error),
    #[error("the monitor refused: {0}")]
    Refused(String),
    #[error("unexpected answer from the monitor: {0:?}")]
    Unexpected(Box<Reply>),
}

/// A pidfd of a monitor (`MonitorState::monitor_pid`): it becomes readable when the monitor,
/// and so the container, is gone; what a daemon waits on to learn that a container stopped.
pub fn monitor_pidfd(monitor_pid: i32) -> io::Result<OwnedFd> {
    crate::sys::pidfd_open(monitor_pid)
}

/// Starts a container: writes its spec into `spec.run_dir` and runs `<monitor_exe> monitor
/// <run_dir>`, which outlives the caller. Returns once init runs, or with the reason it did not.
pub fn spawn(monitor_exe: &Path, spec: &ContainerSpec) -> Result<Client, ClientError> {
    let run_dir = &spec.run_dir;
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ClientError::Write { path, source }
    };
    // Traversable (not readable) by everyone: the container's root, an unprivileged host uid,
    // must reach the rootfs staged below it.
    fs::create_dir_all(run_dir).map_err(werr(run_dir))?;
    fs::set_permissions(run_dir, fs::Permissions::from_mode(0o711)).map_err(werr(run_dir))?;
    let spec_path = run_dir.join(proto::SPEC);
    let tmp = run_dir.join(".spec.json.tmp");
    let data = serde_json::to_vec_pretty(spec).map_err(|e| ClientError::Io(io::Error::other(e)))?;
    fs::write(&tmp, data).map_err(werr(&tmp))?;
    fs::rename(&tmp, &spec_path).map_err(werr(&spec_path))?;
    let log = run_dir.join("monitor.log");
    let log_file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(werr(&log))?;

    let mut child = Command::new(monitor_exe)
        .arg("monitor")
        .arg(run_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .map_err(|source| ClientError::Spawn {
            exe: monitor_exe.to_path_buf(),
            source,
        })?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut line = String::new();
    let read = BufReader::new(stdout).read_line(&mut line);
    // The direct child exits as soon as it has forked the real monitor.
    let _ = child.wait();
    read?;
    match serde_json::from_str::<Ready>(line.trim()) {
        Ok(Ready::Started { .. }) => Ok(Client::new(run_dir)),
        Ok(Ready::Failed(reason)) => Err(ClientError::StartFailed(reason)),
        Err(_) => Err(ClientError::NoReport(log)),
    }
}

/// Sets the window size of a pty master (an exec's terminal).
pub fn resize_pty(pty: &OwnedFd, rows: u16, cols: u16) -> Result<(), ClientError> {
    crate::sys::set_window_size(pty.as_fd(), rows, cols)?;
    Ok(())
}

/// A handle on a running container's monitor. Cheap: each call opens its own connection.
#[derive(Debug, Clone)]
pub struct Client {
    run_dir: PathBuf,
}

/// What an exec produced, for [`Client::exec_output`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// How the command's stdio is wired.
pub enum ExecStdio {
    /// stdin, stdout, stderr, handed to the command as they are.
    Fds([OwnedFd; 3]),
    /// A pty allocated inside the container; its master comes back in the session.
    Pty,
}

/// A running exec.
pub struct ExecSession {
    conn: OwnedFd,
    /// The pty master, when the exec has a tty.
    pub pty: Option<OwnedFd>,
}

impl ExecSession {
    /// Delivers `sig` to the command.
    pub fn signal(&self, sig: i32) -> Result<(), ClientError> {
        packet::send(self.conn.as_fd(), &Request::Signal(sig), &[])?;
        Ok(())
    }

    /// Changes the size of the command's terminal (the kernel sends it SIGWINCH).
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), ClientError> {
        let pty = self
            .pty
            .as_ref()
            .ok_or_else(|| ClientError::Refused("the exec has no pty to resize".into()))?;
        crate::sys::set_window_size(pty.as_fd(), rows, cols)?;
        Ok(())
    }

    /// Waits for the command's end; its exit code, or 128 + the signal that killed it.
    pub fn wait(&self) -> Result<i32, ClientError> {
        match packet::recv::<Reply>(self.conn.as_fd())? {
            Some((Reply::Exited { code }, _)) => Ok(code),
            Some((Reply::Error(e), _)) => Err(ClientError::Refused(e)),
            Some((other, _)) => Err(ClientError::Unexpected(Box::new(other))),
            None => Err(ClientError::Refused("the container stopped during the exec".into())),
        }
    }
}

impl Client {
    /// A handle on the monitor of the container whose run directory is `run_dir`.
    pub fn new(run_dir: &Path) -> Client {
        Client {
            run_dir: run_dir.to_path_buf(),
        }
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Whether a monitor is there to answer.
    pub fn is_running(&self) -> bool {
        self.connect().is_ok()
    }

    fn connect(&self) -> Result<OwnedFd, ClientError> {
        let path = self.run_dir.join(proto::SOCKET);
        let cerr = |source: io::Error| ClientError::Connect {
            path: path.clone(),
            source,
        };
        let sock = socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None)
            .map_err(|e| cerr(e.into()))?;
        let addr = UnixAddr::new(&path).map_err(|e| cerr(e.into()))?;
        connect(sock.as_raw_fd(), &addr).map_err(|e| cerr(e.into()))?;
        Ok(sock)
    }

    fn call(&self, req: &Request) -> Result<(OwnedFd, Reply, Vec<OwnedFd>), ClientError> {
        let conn = self.connect()?;
        packet::send(conn.as_fd(), req, &[])?;
        match packet::recv::<Reply>(conn.as_fd())? {
            Some((Reply::Error(e), _)) => Err(ClientError::Refused(e)),
            Some((reply, fds)) => Ok((conn, reply, fds)),
            None => Err(ClientError::Refused("the monitor closed the connection".into())),
        }
    }

    fn expect_ok(&self, req: &Request) -> Result<(), ClientError> {
        match self.call(req)?.1 {
            Reply::Ok => Ok(()),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    pub fn state(&self) -> Result<MonitorState, ClientError> {
        match self.call(&Request::State)?.1 {
            Reply::State(s) => Ok(s),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    /// Stops the container (cleanly within `timeout`, or at once with `force`) and waits until
    /// it is gone.
    pub fn stop(&self, timeout: Duration, force: bool) -> Result<StopOutcome, ClientError> {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        match self.call(&Request::Stop { timeout_ms, force })?.1 {
            Reply::Stopped(outcome) => Ok(outcome),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    pub fn freeze(&self) -> Result<(), ClientError> {
        self.expect_ok(&Request::Freeze)
    }

    pub fn thaw(&self) -> Result<(), ClientError> {
        self.expect_ok(&Request::Thaw)
    }

    /// Hot-plugs `mount` into the running container: a bind of its source (a `MonitorBind`,
    /// idmapped or not, or a `Bind`), made by the monitor as at start, on a mount point created
    /// as the container's root (no symlink followed), with its propagation. Returns once the
    /// container sees it; the target is then listed in [`MonitorState::hotplugged`] and
    /// [`MonitorState::disks`].
    pub fn mount(&self, mount: &Mount) -> Result<(), ClientError> {
        self.expect_ok(&Request::Mount { mount: mount.clone() })
    }

    /// Detaches the disk bind on `target`, made at start or hot-plugged (and what is mounted
    /// below it). The binds of a container restored by CRIU are refused.
    pub fn unmount(&self, target: &Path) -> Result<(), ClientError> {
        self.expect_ok(&Request::Unmount {
            target: target.to_path_buf(),
        })
    }

    /// The newest console output (up to the ring buffer's size).
    pub fn console_log(&self) -> Result<Vec<u8>, ClientError> {
        let (conn, reply, _) = self.call(&Request::ConsoleLog)?;
        let Reply::ConsoleLog { len } = reply else {
            return Err(ClientError::Unexpected(Box::new(reply)));
        };
        let mut out = Vec::with_capacity(len);
        let mut buf = vec![0u8; proto::MAX_PACKET];
        while out.len() < len {
            let (n, _) = packet::recv_bytes(conn.as_fd(), &mut buf)?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        Ok(out)
    }

    /// Attaches to the console: the returned socket carries raw output packets from the
    /// container and takes raw input packets to it. Closing it detaches.
    pub fn console_attach(&self) -> Result<OwnedFd, ClientError> {
        match self.call(&Request::ConsoleAttach)? {
            (conn, Reply::ConsoleAttached, _) => Ok(conn),
            (_, other, _) => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    /// Starts `req` in the container.
    pub fn exec(&self, req: &ExecRequest, stdio: ExecStdio) -> Result<ExecSession, ClientError> {
        let mut req = req.clone();
        let conn = self.connect()?;
        match &stdio {
            ExecStdio::Fds(fds) => {
                req.tty = false;
                let raw = [fds[0].as_raw_fd(), fds[1].as_raw_fd(), fds[2].as_raw_fd()];
                packet::send(conn.as_fd(), &Request::Exec(req), &raw)?;
            }
            ExecStdio::Pty => {
                req.tty = true;
                packet::send(conn.as_fd(), &Request::Exec(req), &[])?;
            }
        }
        // Our copies must go, or the command's stdout never reaches end of file.
        drop(stdio);
        match packet::recv::<Reply>(conn.as_fd())? {
            Some((Reply::ExecStarted { pty }, fds)) => Ok(ExecSession {
                conn,
                pty: if pty { fds.into_iter().next() } else { None },
            }),
            Some((Reply::Error(e), _)) => Err(ClientError::Refused(e)),
            Some((other, _)) => Err(ClientError::Unexpected(Box::new(other))),
            None => Err(ClientError::Refused("the monitor closed the connection".into())),
        }
    }

    /// Runs `req` with stdin from `input` and collects stdout and stderr.
    pub fn exec_output(&self, req: &ExecRequest, input: &[u8]) -> Result<Output, ClientError> {
        let (stdin_r, stdin_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        let (stdout_r, stdout_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        let (stderr_r, stderr_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        let session = self.exec(req, ExecStdio::Fds([stdin_r, stdout_w, stderr_w]))?;
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            let mut f = fs::File::from(stdin_w);
            let _ = io::Write::write_all(&mut f, &input);
        });
        let err_reader = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = fs::File::from(stderr_r).read_to_end(&mut v);
            v
        });
        let mut stdout = Vec::new();
        fs::File::from(stdout_r).read_to_end(&mut stdout)?;
        let stderr = err_reader.join().unwrap_or_default();
        let _ = writer.join();
        let code = session.wait()?;
        Ok(Output { code, stdout, stderr })
    }
}
