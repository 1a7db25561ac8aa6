//! `/1.0/instances/{name}/console`: the console log (GET), attaching (POST), clearing the log
//! (DELETE).
//!
//! Attaching is a `websocket` operation with the secrets of `0` (the terminal) and `control`
//! (window-resize messages, accepted and ignored: the console pty's size is the monitor's), the
//! same mechanism as exec's (`exec_ws`). Once `0` connects, its bytes are pumped to and from
//! the monitor's console connection; the operation ends when the client closes `0` or
//! `control` (a detach: the container keeps running) or when the container stops.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use axum::extract::{Path, State};
use axum::response::Response as HttpResponse;
use axum::routing::get;
use axum::Router;
use corral_api as api;
use corral_runtime::client::Client;
use corral_runtime::proto::MAX_PACKET;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};

use crate::api::{operation, parse, raw_bytes, resources, ApiError, ApiResult, AppState};
use crate::exec_ws::{Expected, PendingSockets};
use crate::instances::{Runtime, DEFAULT_PROJECT};
use crate::operations::{OpClass, OpHandle};

/// How long the client has to connect the `0` websocket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The console routes.
pub fn routes() -> Router<AppState> {
    Router::new().route(
        "/1.0/instances/{name}/console",
        get(console_log).post(console_attach).delete(console_clear),
    )
}

/// `GET /1.0/instances/{name}/console`: the console log, from the monitor while the instance
/// runs, else as the last run left it.
async fn console_log(State(st): State<AppState>, Path(name): Path<String>) -> Result<HttpResponse, ApiError> {
    st.instances.get(DEFAULT_PROJECT, &name)?;
    let client = st.instances.client(&name);
    let run_dir = st.instances.paths.run_dir(&name);
    let log = tokio::task::spawn_blocking(move || match client.console_log() {
        Ok(log) => log,
        Err(_) => std::fs::read(run_dir.join("console.log")).unwrap_or_default(),
    })
    .await
    .map_err(|e| ApiError(500, e.to_string()))?;
    Ok(raw_bytes(log))
}

/// `DELETE /1.0/instances/{name}/console`: LXD empties the log; the monitor's ring buffer has
/// no way to be cleared yet, so say so rather than pretend.
async fn console_clear(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult {
    st.instances.get(DEFAULT_PROJECT, &name)?;
    Err(ApiError(400, "clearing the console log is not supported yet".into()))
}

/// `POST /1.0/instances/{name}/console`: a websocket operation attaching to the console.
async fn console_attach(State(st): State<AppState>, Path(name): Path<String>, body: axum::body::Bytes) -> ApiResult {
    let req: api::InstanceConsolePost = if body.iter().all(u8::is_ascii_whitespace) {
        api::InstanceConsolePost::default()
    } else {
        parse(&body)?
    };
    st.instances.get(DEFAULT_PROJECT, &name)?;
    if !req.kind.is_empty() && req.kind != "console" {
        return Err(ApiError(
            400,
            format!("console type {:?} is not supported by containers", req.kind),
        ));
    }
    let Runtime::Running(_) = st.instances.runtime(&name) else {
        return Err(ApiError(400, "Instance is not running".into()));
    };
    st.events
        .lifecycle("instance-console", &format!("/1.0/instances/{name}"));
    let fds = crate::exec_ws::plan(true);
    let meta = serde_json::json!({ "fds": fds });
    let waiting = st.sockets.expect_all(&fds);
    let client = st.instances.client(&name);
    let sockets = st.sockets.clone();
    let mut op = st.ops.spawn(
        OpClass::Websocket,
        "Showing console",
        resources("instances", &name),
        false,
        move |h| run(h, sockets, client, fds, waiting),
    );
    // The secrets must be in the operation before the client can read it.
    st.ops.set_metadata(&op.id, meta.clone());
    op.metadata = meta;
    operation(op)
}

/// Runs a console operation; the secrets are forgotten whatever happens.
async fn run(
    _handle: OpHandle,
    sockets: PendingSockets,
    client: Client,
    fds: BTreeMap<String, String>,
    waiting: Expected,
) -> Result<(), String> {
    let secrets: Vec<String> = fds.values().cloned().collect();
    let result = attach(client, waiting).await;
    sockets.forget(&secrets);
    result
}

async fn attach(client: Client, waiting: Expected) -> Result<(), String> {
    let mut term_rx = None;
    let mut control_rx = None;
    for (name, rx) in waiting {
        match name.as_str() {
            "0" => term_rx = Some(rx),
            "control" => control_rx = Some(rx),
            _ => {}
        }
    }
    let term_rx = term_rx.ok_or("websocket 0 missing")?;
    let term = match tokio::time::timeout(CONNECT_TIMEOUT, term_rx).await {
        Ok(Ok(ws)) => ws,
        _ => return Err("the client did not connect the console websocket in time".into()),
    };
    let conn = tokio::task::spawn_blocking(move || client.console_attach())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let reader = conn.try_clone().map_err(|e| e.to_string())?;
    let writer = conn.try_clone().map_err(|e| e.to_string())?;

    let (sink, stream) = term.split();
    let mut out_task = tokio::spawn(pump_out(reader, sink));
    let mut in_task = tokio::spawn(pump_in(stream, writer));
    let mut control_task = tokio::spawn(drain_control(control_rx));
    let stopped = tokio::select! {
        // The monitor closed the connection: the container stopped.
        _ = &mut out_task => true,
        // The client closed `0` or `control`: a detach.
        _ = &mut in_task => false,
        _ = &mut control_task => false,
    };
    // Wakes the reader thread and tells the monitor this client is gone; the container runs on.
    let _ = nix::sys::socket::shutdown(conn.as_raw_fd(), nix::sys::socket::Shutdown::Both);
    if !stopped {
        // Lets the output pump send its close.
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut out_task).await;
        out_task.abort();
    }
    in_task.abort();
    control_task.abort();
    Ok(())
}

/// Console output packets from the monitor, to the client as binary messages; then a close.
async fn pump_out(fd: OwnedFd, mut sink: SplitSink<WebSocket, Message>) {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    std::thread::spawn(move || {
        let mut f = std::fs::File::from(fd);
        let mut buf = vec![0u8; MAX_PACKET];
        loop {
            match f.read(&mut buf) {
                Ok(0) => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
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

/// The client's keystrokes, to the monitor as packets (each at most [`MAX_PACKET`] bytes).
/// Returns when the client closes the websocket.
async fn pump_in(mut stream: SplitStream<WebSocket>, fd: OwnedFd) {
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut f = std::fs::File::from(fd);
        while let Ok(data) = rx.recv() {
            for chunk in data.chunks(MAX_PACKET) {
                if f.write_all(chunk).is_err() {
                    return;
                }
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
        if !data.is_empty() && tx.send(data).is_err() {
            break;
        }
    }
}

/// Accepts the control websocket and drains it (window-resize is ignored: the console pty's
/// size is the monitor's). Returns when a connected control websocket closes; never if the
/// client does not connect one.
async fn drain_control(control: Option<oneshot::Receiver<WebSocket>>) {
    let Some(Ok(mut ws)) = (match control {
        Some(rx) => Some(rx.await),
        None => None,
    }) else {
        return std::future::pending().await;
    };
    while let Some(Ok(msg)) = ws.next().await {
        if let Message::Close(_) = msg {
            break;
        }
    }
}
