//! `POST /1.0/instances/{name}/exec`: LXD's exec over websockets.
//!
//! The request becomes a `websocket` operation whose metadata lists one secret per stream:
//! `0`, `1`, `2` and `control` (or `0` and `control` with a terminal). The client connects to
//! `/1.0/operations/{id}/websocket?secret=...` for each; once all are there the command starts
//! through the container's monitor, and bytes are pumped between the websockets and the
//! command's pipes or pty. The exit code ends up in the operation's metadata as `return`.
//! Without `wait-for-websocket` the command runs at once, its output discarded.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use corral_api as api;
use corral_runtime::client::{Client, ExecSession, ExecStdio};
use corral_runtime::proto::ExecRequest;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};

use crate::operations::OpHandle;

/// How long the client has to connect every websocket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Websockets waiting to be claimed by their operation, by secret (256 random bits: the
/// secret alone says which operation and stream a connection is for).
#[derive(Clone, Default)]
pub struct PendingSockets {
    inner: Arc<Mutex<HashMap<String, oneshot::Sender<WebSocket>>>>,
}

/// The receiving ends of an exec's websockets, by stream name.
pub type Expected = Vec<(String, oneshot::Receiver<WebSocket>)>;

impl PendingSockets {
    /// Registers the secrets of `fds` before the operation is announced, so that a client that
    /// connects at once is expected.
    pub fn expect_all(&self, fds: &BTreeMap<String, String>) -> Expected {
        let mut map = self.inner.lock().expect("sockets lock poisoned");
        fds.iter()
            .map(|(name, secret)| {
                let (tx, rx) = oneshot::channel();
                map.insert(secret.clone(), tx);
                (name.clone(), rx)
            })
            .collect()
    }

    /// Whether `secret` is still waiting for its connection.
    pub fn is_expected(&self, secret: &str) -> bool {
        self.inner.lock().expect("sockets lock poisoned").contains_key(secret)
    }

    /// Hands a connected socket to its operation.
    pub fn deliver(&self, secret: &str, ws: WebSocket) {
        let tx = self.inner.lock().expect("sockets lock poisoned").remove(secret);
        if let Some(tx) = tx {
            let _ = tx.send(ws);
        }
    }

    pub fn forget(&self, secrets: &[String]) {
        let mut map = self.inner.lock().expect("sockets lock poisoned");
        for s in secrets {
            map.remove(s);
        }
    }
}

/// A websocket secret: 256 random bits, hex.
pub fn secret() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// The streams an exec needs, with their secrets: what goes in the operation's metadata.
pub fn plan(interactive: bool) -> BTreeMap<String, String> {
    let names: &[&str] = if interactive {
        &["0", "control"]
    } else {
        &["0", "1", "2", "control"]
    };
    names.iter().map(|n| (n.to_string(), secret())).collect()
}

/// Runs an exec operation: waits for the websockets (if asked), runs the command, pumps, and
/// records the exit code.
/// Where `record-output` keeps a command's output: a directory and its URL in the logs API.
pub struct OutputDir {
    pub dir: std::path::PathBuf,
    pub url: String,
}

pub async fn run(
    handle: OpHandle,
    sockets: PendingSockets,
    client: Client,
    req: api::InstanceExecPost,
    fds: BTreeMap<String, String>,
    waiting: Expected,
    output: OutputDir,
) -> Result<(), String> {
    let mut exec = ExecRequest::new(&req.command);
    exec.env = req.environment.clone().into_iter().collect();
    exec.uid = req.user;
    exec.gid = req.group;
    exec.cwd = (!req.cwd.is_empty()).then(|| req.cwd.clone());
    exec.rows = u16::try_from(req.height).ok().filter(|h| *h > 0).unwrap_or(24);
    exec.cols = u16::try_from(req.width).ok().filter(|w| *w > 0).unwrap_or(80);

    // However the operation ends (cancelled too), no secret stays valid.
    let _forget = ForgetOnDrop(sockets, fds.values().cloned().collect());
    if !req.wait_for_websocket {
        drop(waiting);
        // With record-output, stdout and stderr go to files the logs API serves (LXD's names).
        let recorded = req.record_output.then(|| {
            let id = uuid::Uuid::new_v4().simple().to_string();
            [1, 2].map(|fd| {
                let file = format!("exec_{id}.{}", if fd == 1 { "stdout" } else { "stderr" });
                (output.dir.join(&file), format!("{}/{file}", output.url))
            })
        });
        let files = recorded.as_ref().map(|r| [r[0].0.clone(), r[1].0.clone()]);
        let dir = output.dir.clone();
        let session = tokio::task::spawn_blocking(move || {
            let null = |w: bool| {
                std::fs::OpenOptions::new()
                    .read(!w)
                    .write(w)
                    .open("/dev/null")
                    .map(OwnedFd::from)
            };
            let out = |i: usize| match &files {
                Some(f) => std::fs::create_dir_all(&dir)
                    .and_then(|_| std::fs::File::create(&f[i]))
                    .map(OwnedFd::from),
                None => null(true),
            };
            let stdio = [
                null(false).map_err(|e| e.to_string())?,
                out(0).map_err(|e| format!("cannot record the output: {e}"))?,
                out(1).map_err(|e| format!("cannot record the output: {e}"))?,
            ];
            client.exec(&exec, ExecStdio::Fds(stdio)).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())??;
        let session = Arc::new(session);
        let mut kill = KillOnDrop(Some(session.clone()));
        let code = wait_session(session).await?;
        kill.disarm();
        let mut meta = serde_json::json!({ "return": code });
        if let Some(r) = recorded {
            meta["output"] = serde_json::json!({ "1": r[0].1, "2": r[1].1 });
        }
        handle.set_metadata(meta);
        return Ok(());
    }

    // Wait for the data websockets; `control` is optional (pylxd never connects it) and is
    // taken whenever it arrives.
    let mut waiting = waiting;
    let control = waiting
        .iter()
        .position(|(n, _)| n == "control")
        .map(|i| waiting.remove(i).1);
    let data = waiting.len();
    let mut connected: HashMap<String, WebSocket> = HashMap::new();
    let all = async {
        for (name, rx) in waiting {
            if let Ok(ws) = rx.await {
                connected.insert(name, ws);
            }
        }
    };
    let timed_out = tokio::time::timeout(CONNECT_TIMEOUT, all).await.is_err();
    if timed_out || connected.len() != data {
        return Err("the client did not connect the exec websockets in time".into());
    }
    if req.interactive {
        run_interactive(handle, client, exec, connected, control).await
    } else {
        run_pipes(handle, client, exec, connected, control).await
    }
}

/// Forgets an operation's websocket secrets when it ends, however it ends.
struct ForgetOnDrop(PendingSockets, Vec<String>);

impl Drop for ForgetOnDrop {
    fn drop(&mut self) {
        self.0.forget(&self.1);
    }
}

/// Kills the command if its operation is dropped before the command ended: what cancelling
/// an exec operation (`DELETE /1.0/operations/{id}`) means.
struct KillOnDrop(Option<Arc<ExecSession>>);

impl KillOnDrop {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(session) = &self.0 {
            let _ = session.signal(libc::SIGKILL);
        }
    }
}

/// Serves the control websocket once (if ever) it connects, until `ended` (then closes it, see
/// [`close_and_linger`]).
fn spawn_control(
    control: Option<oneshot::Receiver<WebSocket>>,
    session: Arc<ExecSession>,
    pty: Option<OwnedFd>,
    mut ended: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Some(rx) = control {
            let connected = tokio::select! {
                ws = rx => ws.ok(),
                _ = ended.wait_for(|e| *e) => None,
            };
            if let Some(ws) = connected {
                control_loop(ws, session, pty, ended).await;
            }
        }
    })
}

async fn run_pipes(
    handle: OpHandle,
    client: Client,
    exec: ExecRequest,
    mut ws: HashMap<String, WebSocket>,
    control: Option<oneshot::Receiver<WebSocket>>,
) -> Result<(), String> {
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| e.to_string());
    let (in_r, in_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let session = tokio::task::spawn_blocking(move || client.exec(&exec, ExecStdio::Fds([in_r, out_w, err_w])))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let take =
        |ws: &mut HashMap<String, WebSocket>, k: &str| ws.remove(k).ok_or_else(|| format!("websocket {k} missing"));
    let (stdin, stdout, stderr) = (take(&mut ws, "0")?, take(&mut ws, "1")?, take(&mut ws, "2")?);
    let session = Arc::new(session);
    let (ended_tx, ended) = tokio::sync::watch::channel(false);
    let stdin_task = tokio::spawn(pump_pipe_in(stdin, in_w, ended));
    let out_task = tokio::spawn(pump_pipe_out(out_r, stdout));
    let err_task = tokio::spawn(pump_pipe_out(err_r, stderr));
    let control_task = spawn_control(control, session.clone(), None, ended_tx.subscribe());
    let mut kill = KillOnDrop(Some(session.clone()));
    let code = wait_session(session).await?;
    kill.disarm();
    // All output is sent before the operation says the command is done.
    let _ = out_task.await;
    let _ = err_task.await;
    // stdin's websocket closes itself (its client answers); it is not cut off.
    let _ = ended_tx.send(true);
    drop((stdin_task, control_task));
    handle.set_metadata(serde_json::json!({ "return": code }));
    Ok(())
}

async fn run_interactive(
    handle: OpHandle,
    client: Client,
    exec: ExecRequest,
    mut ws: HashMap<String, WebSocket>,
    control: Option<oneshot::Receiver<WebSocket>>,
) -> Result<(), String> {
    let session = tokio::task::spawn_blocking(move || client.exec(&exec, ExecStdio::Pty))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let pty = session.pty.as_ref().ok_or("the monitor sent no pty")?;
    let (pty_in, pty_out) = (
        pty.try_clone().map_err(|e| e.to_string())?,
        pty.try_clone().map_err(|e| e.to_string())?,
    );
    let resize_fd = pty.try_clone().map_err(|e| e.to_string())?;
    let term = ws.remove("0").ok_or("websocket 0 missing")?;

    let (sink, stream) = term.split();
    let session = Arc::new(session);
    let in_task = tokio::spawn(pump_in_stream(stream, pty_in));
    let out_task = tokio::spawn(pump_out_sink(pty_out, sink));
    let (ended_tx, ended) = tokio::sync::watch::channel(false);
    let control_task = spawn_control(control, session.clone(), Some(resize_fd), ended);
    let mut kill = KillOnDrop(Some(session.clone()));
    let code = wait_session(session).await?;
    kill.disarm();
    // The pty reads EIO once the command and its children are gone; give it a moment.
    let _ = tokio::time::timeout(Duration::from_secs(1), out_task).await;
    in_task.abort();
    let _ = ended_tx.send(true);
    drop(control_task);
    handle.set_metadata(serde_json::json!({ "return": code }));
    Ok(())
}

async fn wait_session(session: Arc<ExecSession>) -> Result<i32, String> {
    tokio::task::spawn_blocking(move || session.wait().map_err(|e| e.to_string()))
        .await
        .map_err(|e| e.to_string())?
}

/// How long a websocket we closed stays open for the client's answering close.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Ends a websocket as RFC 6455 has it: our close, then the connection stays until the client's
/// close comes back (or [`CLOSE_LINGER`] passes), on a task of its own so that nothing waits for
/// it. Dropping the connection at once made a client answering our close (pylxd's ws4py) write
/// into a closed socket and fail the exec with EPIPE.
fn close_and_linger(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut stream: futures_util::stream::SplitStream<WebSocket>,
) {
    tokio::spawn(async move {
        if sink.send(Message::Close(None)).await.is_err() {
            return;
        }
        let answered = async {
            while let Some(Ok(msg)) = stream.next().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_LINGER, answered).await;
    });
}

/// Reads the pty `fd` until end of file (on a thread), sending each chunk as a binary message;
/// then closes.
async fn pump_out_sink(fd: OwnedFd, mut sink: futures_util::stream::SplitSink<WebSocket, Message>) {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut f = std::fs::File::from(fd);
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match f.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    while let Some(chunk) = rx.recv().await {
        if sink.send(Message::Binary(chunk.into())).await.is_err() {
            return;
        }
    }
    let _ = sink.send(Message::Close(None)).await;
}

/// Writes what the client sends to the pty `fd` (from a thread); end of input (close, or an
/// empty message) closes it.
async fn pump_in_stream(mut stream: futures_util::stream::SplitStream<WebSocket>, fd: OwnedFd) {
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut f = std::fs::File::from(fd);
        while let Ok(chunk) = rx.recv() {
            if f.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    while let Some(Ok(msg)) = stream.next().await {
        let data = match msg {
            Message::Binary(b) => b.to_vec(),
            Message::Text(t) => t.as_bytes().to_vec(),
            Message::Close(_) => break,
            _ => continue,
        };
        if data.is_empty() {
            break;
        }
        if tx.send(data).is_err() {
            break;
        }
    }
}

/// Reads the pipe `fd` until end of file, sending each chunk as a binary message; then closes.
/// On the runtime, not a thread: pipes can be polled (a pty, in [`pump_out_sink`], cannot
/// be registered with the runtime's reactor as reliably).
async fn pump_pipe_out(fd: OwnedFd, ws: WebSocket) {
    use tokio::io::AsyncReadExt;
    let (mut sink, stream) = ws.split();
    if let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
    close_and_linger(sink, stream);
}

/// Writes what the client sends to the pipe `fd`; end of input (close, or an empty message)
/// closes it.
/// Once `ended` says the command is over, the websocket is closed (see [`close_and_linger`]).
async fn pump_pipe_in(ws: WebSocket, fd: OwnedFd, mut ended: tokio::sync::watch::Receiver<bool>) {
    use tokio::io::AsyncWriteExt;
    let (sink, mut stream) = ws.split();
    if let Ok(mut pipe) = tokio::net::unix::pipe::Sender::from_owned_fd(fd) {
        loop {
            let msg = tokio::select! {
                msg = stream.next() => msg,
                _ = ended.wait_for(|e| *e) => break,
            };
            let data = match msg {
                Some(Ok(Message::Binary(b))) => b,
                Some(Ok(Message::Text(t))) => axum::body::Bytes::copy_from_slice(t.as_bytes()),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => continue,
            };
            if data.is_empty() || pipe.write_all(&data).await.is_err() {
                break;
            }
        }
    }
    // The pipe is closed (end of input for the command); the websocket waits for the end.
    let _ = ended.wait_for(|e| *e).await;
    close_and_linger(sink, stream);
}

/// Handles `window-resize` and `signal` messages.
async fn control_loop(
    mut ws: WebSocket,
    session: Arc<ExecSession>,
    pty: Option<OwnedFd>,
    mut ended: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let msg = tokio::select! {
            msg = ws.next() => msg,
            _ = ended.wait_for(|e| *e) => {
                let (sink, stream) = ws.split();
                close_and_linger(sink, stream);
                return;
            }
        };
        let Some(Ok(msg)) = msg else { return };
        let text = match msg {
            Message::Text(t) => t.to_string(),
            Message::Binary(b) => String::from_utf8_lossy(&b).into_owned(),
            Message::Close(_) => break,
            _ => continue,
        };
        let Ok(ctl) = serde_json::from_str::<api::InstanceExecControl>(&text) else {
            continue;
        };
        match ctl.command.as_str() {
            "window-resize" => {
                let get = |k: &str| ctl.args.get(k).and_then(|v| v.parse::<u16>().ok());
                if let (Some(fd), Some(w), Some(h)) = (&pty, get("width"), get("height")) {
                    let _ = corral_runtime::client::resize_pty(fd, h, w);
                }
            }
            "signal" => {
                let _ = session.signal(ctl.signal);
            }
            _ => {}
        }
    }
}
