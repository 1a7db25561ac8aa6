//! Moving an instance between two corrald: the two ends of a migration, over the websockets of
//! LXD's migration API (`control` and `fs`), whichever side dialed.
//!
//! The protocol is Corral's own (both ends are corrald; LXD's protobuf and rsync are not spoken):
//! - control: the source sends a [`Header`] (the instance's record, its snapshots' records, and
//!   what it will send); the sink answers a [`Reply`] (accepted, or why not; for a refresh, the
//!   snapshots it already has); at the end the sink sends a final [`Reply`] with the outcome.
//! - fs: for each volume, oldest snapshot first and the instance itself last, a text frame
//!   naming it, binary frames of a tar stream of its files, and a text frame ending it.
//! - btrfs to btrfs (the header's `btrfs`, agreed in the reply's `fs`): each volume as a btrfs
//!   send stream instead of a tar. A container of an image (`volatile.base_image`) whose volume
//!   both pools hold, unpacked by the same unpacker ([`BASE_FORMAT`]), goes as its difference
//!   from the image: the source sends against a read-only snapshot of its image volume, and the
//!   sink receives onto a snapshot of its own copy made to carry that snapshot's UUID as its
//!   received UUID (how `btrfs receive` finds a parent). Otherwise the first stream is whole.
//! - criu (optional): a live move with post-copy (the header's `lazy`, agreed in the reply)
//!   carries the memory there while the target already runs the container (migration_pages.rs).
//!
//! The sink writes the volumes straight into its pool (no staging copy) under a
//! `migration-receive` intent, so a sink that dies half-way removes the half instance at its
//! next start; the source only reads, so an interrupted transfer leaves it as it was.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::instances::{instance_key, InstanceRecord, Instances, ServiceError};
use crate::snapshots::{snapshot_key, SnapshotRecord};

type Result<T> = std::result::Result<T, ServiceError>;

/// Bytes per binary frame of a volume's tar stream.
const CHUNK: usize = 1 << 20;

/// One websocket message.
#[derive(Debug)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
    /// The peer closed the websocket (or the connection dropped).
    Closed,
}

/// A websocket either end may have: dialed (blocking tungstenite) or accepted (axum, bridged).
pub trait Link: Send {
    fn send(&mut self, frame: Frame) -> io::Result<()>;
    fn recv(&mut self) -> io::Result<Frame>;
    /// As `recv`, waiting at most `wait`: `None` when nothing came (for the page stream, which
    /// one thread pumps both ways).
    fn recv_timeout(&mut self, wait: std::time::Duration) -> io::Result<Option<Frame>>;
}

impl Link for corral_client::WebSocket {
    fn recv_timeout(&mut self, wait: std::time::Duration) -> io::Result<Option<Frame>> {
        self.get_ref().set_read_timeout(Some(wait))?;
        let got = Link::recv(self);
        let _ = self.get_ref().set_read_timeout(None);
        match got {
            Ok(f) => Ok(Some(f)),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn send(&mut self, frame: Frame) -> io::Result<()> {
        let msg = match frame {
            Frame::Text(t) => tungstenite::Message::text(t),
            Frame::Binary(b) => tungstenite::Message::binary(b),
            Frame::Closed => {
                let _ = self.close(None);
                return self.flush().map_err(ws_err);
            }
        };
        tungstenite::WebSocket::send(self, msg).map_err(ws_err)
    }

    fn recv(&mut self) -> io::Result<Frame> {
        loop {
            match self.read() {
                Ok(tungstenite::Message::Text(t)) => return Ok(Frame::Text(t.to_string())),
                Ok(tungstenite::Message::Binary(b)) => return Ok(Frame::Binary(b.to_vec())),
                Ok(tungstenite::Message::Close(_)) => return Ok(Frame::Closed),
                Ok(_) => continue,
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Ok(Frame::Closed)
                }
                Err(e) => return Err(ws_err(e)),
            }
        }
    }
}

fn ws_err(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        e => io::Error::other(e.to_string()),
    }
}

/// An accepted axum websocket, used from a blocking thread: a task relays frames both ways
/// through bounded channels (which also pace the sender).
pub struct Bridged {
    tx: tokio::sync::mpsc::Sender<Frame>,
    rx: tokio::sync::mpsc::Receiver<Frame>,
    reader: tokio::task::JoinHandle<()>,
    runtime: tokio::runtime::Handle,
}

impl Drop for Bridged {
    /// Closes the websocket: the peer must not wait for frames that will never come.
    fn drop(&mut self) {
        let _ = self.tx.try_send(Frame::Closed);
        self.reader.abort();
    }
}

impl Bridged {
    pub fn new(ws: axum::extract::ws::WebSocket) -> Bridged {
        use axum::extract::ws::Message;
        use futures_util::{SinkExt, StreamExt};
        let (mut sink, mut stream) = ws.split();
        let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Frame>(8);
        let (in_tx, in_rx) = tokio::sync::mpsc::channel::<Frame>(8);
        tokio::spawn(async move {
            while let Some(f) = out_rx.recv().await {
                let msg = match f {
                    Frame::Text(t) => Message::Text(t.into()),
                    Frame::Binary(b) => Message::Binary(b.into()),
                    Frame::Closed => {
                        let _ = sink.send(Message::Close(None)).await;
                        break;
                    }
                };
                if sink.send(msg).await.is_err() {
                    break;
                }
            }
        });
        let reader = tokio::spawn(async move {
            while let Some(msg) = stream.next().await {
                let f = match msg {
                    Ok(Message::Text(t)) => Frame::Text(t.to_string()),
                    Ok(Message::Binary(b)) => Frame::Binary(b.to_vec()),
                    Ok(Message::Close(_)) | Err(_) => break,
                    Ok(_) => continue,
                };
                if in_tx.send(f).await.is_err() {
                    return;
                }
            }
            let _ = in_tx.send(Frame::Closed).await;
        });
        Bridged {
            tx: out_tx,
            rx: in_rx,
            reader,
            runtime: tokio::runtime::Handle::current(),
        }
    }
}

impl Link for Bridged {
    fn send(&mut self, frame: Frame) -> io::Result<()> {
        self.tx
            .blocking_send(frame)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the peer went away"))
    }

    fn recv(&mut self) -> io::Result<Frame> {
        Ok(self.rx.blocking_recv().unwrap_or(Frame::Closed))
    }

    fn recv_timeout(&mut self, wait: std::time::Duration) -> io::Result<Option<Frame>> {
        match self.rx.try_recv() {
            Ok(f) => return Ok(Some(f)),
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => return Ok(Some(Frame::Closed)),
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {}
        }
        let rx = &mut self.rx;
        Ok(
            match self
                .runtime
                .block_on(async { tokio::time::timeout(wait, rx.recv()).await })
            {
                Ok(Some(f)) => Some(f),
                Ok(None) => Some(Frame::Closed),
                Err(_) => None,
            },
        )
    }
}

/// What the source sends first on `control`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Header {
    /// Protocol version; 1.
    pub version: u32,
    pub instance: InstanceRecord,
    /// Oldest first; empty for `instance_only`.
    pub snapshots: Vec<SnapshotRecord>,
    /// How volumes travel: `tar`.
    pub fs: String,
    /// Live: after the volumes (read while the container runs), the source checkpoints it and
    /// sends a delta (what changed meanwhile, with its state); the sink restores it.
    pub live: bool,
    /// The source can send its volumes as btrfs send streams (a btrfs pool, no nested
    /// subvolumes).
    pub btrfs: bool,
    /// With `btrfs`: each snapshot's identity as a btrfs send parent (its received UUID if it
    /// was received, else its UUID), for a refresh to find the snapshots both ends share.
    pub uuids: BTreeMap<String, String>,
    /// Live, post-copy (`migration.stateful.lazy`, allowed here): the memory would stay behind
    /// and be served on the `criu` websocket (migration_pages.rs) while the target runs it.
    pub lazy: bool,
    /// With `btrfs`: the fingerprint of the image the instance was made from, whose volume the
    /// source has in the pool; a sink that has it too can start from its own copy, and only
    /// the difference travels (see [`BASE_FORMAT`]).
    pub base_image: String,
    /// The send identity of the source's read-only snapshot of that image volume, the parent
    /// of the first stream if the sink agrees.
    pub base_uuid: String,
    /// How the source unpacked the image ([`BASE_FORMAT`]): two unpacks are the same files
    /// only if the same unpacker made them.
    pub base_format: String,
}

/// What makes two hosts' volumes of an image with the same fingerprint the same files: the
/// same tarball (the fingerprint) unpacked by the same unpacker (corral-image, deterministic:
/// modes, owners, xattrs, mtimes from the tarball). The volume's own directory, templates/ and
/// metadata.yaml have the times of their unpack, which differ; they are outside the rootfs.
pub const BASE_FORMAT: &str = concat!("corral-image ", env!("CARGO_PKG_VERSION"));

/// The sink's answers on `control`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Reply {
    pub success: bool,
    pub error: String,
    /// For a refresh: snapshots the sink has already, not to send again.
    pub have: Vec<String>,
    /// Live: how long the restore took on the sink, in milliseconds.
    pub restore_ms: u64,
    /// Refresh of a copy the sink has: each volume goes as the files that differ from the
    /// sink's (it sends a manifest of its files first), not whole.
    pub incremental: bool,
    /// `btrfs`: the volumes come as btrfs send streams (each snapshot incremental on the one
    /// before), received with `btrfs receive`; otherwise tar.
    pub fs: String,
    /// A btrfs refresh: the snapshots the sink has as received from the source's (same
    /// identity), usable as parents of incremental streams.
    pub common: Vec<String>,
    /// Post-copy agreed (the header asked and the target can); `lazy_refused` says why not.
    pub lazy: bool,
    pub lazy_refused: String,
    /// `btrfs`, fresh copy: the sink has the header's base image and made a stand-in for the
    /// source's snapshot of it; the first stream goes incremental on it.
    pub base: bool,
}

/// What the sink was asked for.
#[derive(Debug, Clone, Default)]
pub struct SinkRequest {
    pub project: String,
    pub name: String,
    /// The pool for the root volume (the request's root disk, else the source's pool if it exists
    /// here, else the default).
    pub pool: Option<String>,
    /// Config keys that override the source's.
    pub config: BTreeMap<String, String>,
    /// Devices that override the source's (by name).
    pub devices: crate::instances::Devices,
    /// `None`: the source's profiles.
    pub profiles: Option<Vec<String>>,
    pub refresh: bool,
}

fn internal(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Internal(e.to_string())
}

fn link_err(what: &str) -> impl Fn(io::Error) -> ServiceError + '_ {
    move |e| ServiceError::Internal(format!("the migration connection broke ({what}): {e}"))
}

fn send_json<T: Serialize>(link: &mut dyn Link, v: &T) -> Result<()> {
    let text = serde_json::to_string(v).map_err(internal)?;
    link.send(Frame::Text(text)).map_err(link_err("control"))
}

fn recv_json<T: serde::de::DeserializeOwned>(link: &mut dyn Link, what: &str) -> Result<T> {
    match link.recv().map_err(link_err(what))? {
        Frame::Text(t) => serde_json::from_str(&t).map_err(|e| internal(format!("bad {what} message: {e}"))),
        Frame::Binary(_) => Err(internal(format!("unexpected binary data on {what}"))),
        Frame::Closed => Err(ServiceError::Internal(format!(
            "the other end closed the migration ({what}) before it finished"
        ))),
    }
}

/// A volume on `fs`: which one, then its tar stream.
#[derive(Debug, Serialize, Deserialize, Default)]
#[serde(default)]
struct VolumeStart {
    /// `snapshot` or `instance`.
    volume: String,
    name: String,
}

#[derive(Debug, Serialize, Deserialize, Default)]
#[serde(default)]
struct VolumeEnd {
    end: bool,
    /// Set when the source could not read the volume.
    error: String,
}

const TAR_FLAGS: &[&str] = &["--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls"];

/// Streams the files of `dir` as a tar on `fs`, framed as one volume (read ahead meanwhile).
fn send_volume(fs: &mut dyn Link, dir: &Path, volume: &str, name: &str) -> Result<u64> {
    let _ahead = crate::prefetch::Prefetch::start(dir);
    let mut tar = Command::new("tar");
    tar.arg("-C")
        .arg(dir)
        .args(["--create", "--sparse", "--file", "-"])
        .args(TAR_FLAGS)
        .arg(".");
    send_stream(fs, tar, volume, name)
}

/// Sends what `cmd` writes on its stdout, framed as one volume named `volume`/`name`.
fn send_stream(fs: &mut dyn Link, mut cmd: Command, volume: &str, name: &str) -> Result<u64> {
    send_json(
        fs,
        &VolumeStart {
            volume: volume.into(),
            name: name.into(),
        },
    )?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| internal(format!("cannot run {:?}: {e}", cmd.get_program())))?;
    let mut out = child.stdout.take().expect("piped");
    let mut sent = 0u64;
    let mut buf = vec![0u8; CHUNK];
    let streamed = (|| -> Result<()> {
        loop {
            let mut filled = 0;
            while filled < buf.len() {
                match out.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(internal(format!("cannot read the {volume} stream: {e}"))),
                }
            }
            if filled == 0 {
                return Ok(());
            }
            sent += filled as u64;
            fs.send(Frame::Binary(buf[..filled].to_vec())).map_err(link_err("fs"))?;
        }
    })();
    if streamed.is_err() {
        let _ = child.kill();
    }
    let status = child.wait_with_output().map_err(internal)?;
    streamed?;
    let error = if status.status.success() {
        String::new()
    } else {
        format!(
            "could not read the {volume} {name}: {}",
            String::from_utf8_lossy(&status.stderr).trim()
        )
    };
    send_json(
        fs,
        &VolumeEnd {
            end: true,
            error: error.clone(),
        },
    )?;
    if !error.is_empty() {
        return Err(internal(error));
    }
    Ok(sent)
}

/// Reads one volume's tar stream from `fs` into `dir` (which exists and is empty).
fn recv_volume(fs: &mut dyn Link, dir: &Path) -> Result<u64> {
    let mut tar = Command::new("tar");
    tar.arg("-C")
        .arg(dir)
        .args(["--extract", "--file", "-"])
        .args(TAR_FLAGS);
    recv_into(fs, tar, &format!("tar could not write {}", dir.display()))
}

/// Runs `cmd` with one framed stream from `fs` on its stdin; `failed` says what its failure
/// means, before its own message.
fn recv_into(fs: &mut dyn Link, mut cmd: Command, failed: &str) -> Result<u64> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| internal(format!("cannot run {program}: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped");
    let received = recv_stream(fs, &mut stdin);
    drop(stdin);
    let out = child.wait_with_output().map_err(internal)?;
    let got = received?;
    if !out.status.success() {
        return Err(internal(format!(
            "{failed}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(got)
}

/// Tells the sink on `fs` that the move is off, with `e` as the reason.
fn send_abort(fs: &mut dyn Link, e: &ServiceError) {
    let _ = send_json(
        fs,
        &VolumeStart {
            volume: "abort".into(),
            name: e.to_string(),
        },
    );
}

/// Sends a paused container's last changes (since `marker`) and waits for the sink's answer:
/// the answer, and when the delta was sent (since `paused`).
fn send_delta_for_reply(
    fs: &mut dyn Link,
    control: &mut dyn Link,
    dir: &Path,
    marker: &Path,
    progress: Progress<'_>,
    paused: std::time::Instant,
) -> (Result<Reply>, std::time::Duration) {
    let sent = send_delta(fs, dir, marker);
    let delta_sent = paused.elapsed();
    let done = sent.and_then(|n| {
        progress(n);
        recv_json(control, "control")
    });
    (done, delta_sent)
}

/// Copies one framed stream from `fs` into `to`, up to its end frame.
fn recv_stream(fs: &mut dyn Link, to: &mut dyn Write) -> Result<u64> {
    let mut got = 0u64;
    loop {
        match fs.recv().map_err(link_err("fs"))? {
            Frame::Binary(b) => {
                got += b.len() as u64;
                to.write_all(&b)
                    .map_err(|e| internal(format!("cannot write what arrived: {e}")))?;
            }
            Frame::Text(t) => {
                let end: VolumeEnd = serde_json::from_str(&t).map_err(|e| internal(format!("bad fs message: {e}")))?;
                if !end.error.is_empty() {
                    return Err(ServiceError::Internal(format!("the source failed: {}", end.error)));
                }
                return Ok(got);
            }
            Frame::Closed => {
                return Err(ServiceError::Internal(
                    "the source closed the transfer in the middle of a volume".into(),
                ))
            }
        }
    }
}

/// Live migration's second pass, source side: every path of `dir` (so the sink removes what
/// went), then a tar of what changed since `marker` was touched (ctime: content, metadata,
/// renames), the checkpoint's state with it.
fn send_delta(fs: &mut dyn Link, dir: &Path, marker: &Path) -> Result<u64> {
    let mut list = Command::new("find");
    list.current_dir(dir).args([".", "-mindepth", "1", "-printf", "%P\\0"]);
    let mut total = send_stream(fs, list, "delta-list", "")?;
    let mut tar = Command::new("sh");
    tar.current_dir(dir)
        .args([
            "-c",
            "m=$1; shift; find . -mindepth 1 -cnewer \"$m\" -print0 \
             | tar --null --no-recursion -T - --create --sparse --file - \"$@\"",
            "sh",
        ])
        .arg(marker)
        .args(TAR_FLAGS);
    total += send_stream(fs, tar, "delta", "")?;
    Ok(total)
}

/// What `find -printf` says of each path of `dir`: `path\0type size mtime mode uid gid\0`.
fn manifest(dir: &Path) -> Result<Vec<u8>> {
    let out = Command::new("find")
        .current_dir(dir)
        .args([".", "-mindepth", "1", "-printf", "%P\\0%y %s %T@ %m %U %G %l\\0"])
        .output()
        .map_err(internal)?;
    if !out.status.success() {
        return Err(internal(format!(
            "cannot list {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

fn parse_manifest(bytes: &[u8]) -> std::collections::HashMap<&[u8], &[u8]> {
    let mut fields = bytes.split(|b| *b == 0);
    let mut map = std::collections::HashMap::new();
    while let (Some(path), Some(meta)) = (fields.next(), fields.next()) {
        if !path.is_empty() {
            map.insert(path, meta);
        }
    }
    map
}

/// Refresh, source side: reads the sink's manifest of its copy of the volume, and sends every
/// path (so it removes what went) and a tar of the paths whose type, size, time, mode or owner
/// differ (as rsync's quick check).
fn send_changed(fs: &mut dyn Link, dir: &Path, tmp: &Path) -> Result<u64> {
    let start: VolumeStart = recv_json(fs, "fs")?;
    if start.volume != "manifest" {
        return Err(internal(format!(
            "expected the target's manifest, got {}",
            start.volume
        )));
    }
    let mut theirs = Vec::new();
    recv_stream(fs, &mut theirs)?;
    let theirs = parse_manifest(&theirs);
    let ours_bytes = manifest(dir)?;
    let ours = parse_manifest(&ours_bytes);
    let mut changed = Vec::new();
    let mut all = Vec::new();
    for (path, meta) in &ours {
        all.extend_from_slice(path);
        all.push(0);
        if theirs.get(path) != Some(meta) {
            changed.extend_from_slice(b"./");
            changed.extend_from_slice(path);
            changed.push(0);
        }
    }
    std::fs::create_dir_all(tmp).map_err(internal)?;
    let list = tmp.join(format!("changed-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&list, &changed).map_err(internal)?;
    let _gone = RemoveOnDrop(list.clone());
    let mut total = send_bytes(fs, &all, "delta-list")?;
    let mut tar = Command::new("tar");
    tar.current_dir(dir)
        .args(["--null", "--no-recursion", "-T"])
        .arg(&list)
        .args(["--create", "--sparse", "--file", "-"])
        .args(TAR_FLAGS);
    total += send_stream(fs, tar, "delta", "")?;
    Ok(total)
}

/// Sends `bytes` framed as one stream.
fn send_bytes(fs: &mut dyn Link, bytes: &[u8], volume: &str) -> Result<u64> {
    send_json(
        fs,
        &VolumeStart {
            volume: volume.into(),
            name: String::new(),
        },
    )?;
    for chunk in bytes.chunks(CHUNK) {
        fs.send(Frame::Binary(chunk.to_vec())).map_err(link_err("fs"))?;
    }
    send_json(
        fs,
        &VolumeEnd {
            end: true,
            error: String::new(),
        },
    )?;
    Ok(bytes.len() as u64)
}

/// Refresh, sink side: sends the manifest of `dir`, then applies what differs.
fn recv_changed(fs: &mut dyn Link, dir: &Path) -> Result<u64> {
    send_bytes(fs, &manifest(dir)?, "manifest")?;
    recv_delta(fs, dir)
}

/// Live migration's second pass, sink side: applies the changes and removes what the source no
/// longer has.
fn recv_delta(fs: &mut dyn Link, dir: &Path) -> Result<u64> {
    let start: VolumeStart = recv_json(fs, "fs")?;
    if start.volume == "abort" {
        return Err(ServiceError::Internal(format!(
            "the source stopped the migration: {}",
            start.name
        )));
    }
    if start.volume != "delta-list" {
        return Err(internal(format!(
            "expected the delta's path list, got {}",
            start.volume
        )));
    }
    let mut list = Vec::new();
    let mut total = recv_stream(fs, &mut list)?;
    let start: VolumeStart = recv_json(fs, "fs")?;
    if start.volume != "delta" {
        return Err(internal(format!("expected the delta, got {}", start.volume)));
    }
    total += recv_volume(fs, dir)?;
    let keep: std::collections::HashSet<&[u8]> = list.split(|b| *b == 0).filter(|p| !p.is_empty()).collect();
    let here = Command::new("find")
        .current_dir(dir)
        .args([".", "-mindepth", "1", "-depth", "-printf", "%P\\0"])
        .output()
        .map_err(internal)?;
    use std::os::unix::ffi::OsStrExt;
    for path in here.stdout.split(|b| *b == 0).filter(|p| !p.is_empty()) {
        if keep.contains(path) {
            continue;
        }
        let full = dir.join(std::ffi::OsStr::from_bytes(path));
        let gone = match std::fs::symlink_metadata(&full) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&full),
            Ok(_) => std::fs::remove_file(&full),
            Err(_) => Ok(()),
        };
        gone.map_err(|e| internal(format!("cannot remove {}: {e}", full.display())))?;
    }
    Ok(total)
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A subvolume (or a staging directory of them) removed when dropped.
struct TempSubvolume(std::path::PathBuf);

impl Drop for TempSubvolume {
    fn drop(&mut self) {
        if let Err(e) = corral_storage::btrfs::remove_subvolume(&self.0) {
            tracing::warn!(path = %self.0.display(), error = %e, "cannot remove a migration's temporary subvolume");
        }
    }
}

/// Whether `path` (a btrfs subvolume) has subvolumes inside, which `btrfs send` leaves out.
fn has_nested_subvolumes(path: &Path) -> bool {
    Command::new("btrfs")
        .args(["subvolume", "list", "-o"])
        .arg(path)
        .output()
        .map(|o| !o.status.success() || !o.stdout.is_empty())
        .unwrap_or(true)
}

/// A subvolume's identity as a btrfs send parent: its received UUID if it was received (btrfs
/// send names a parent so, and receive looks it up so), else its UUID.
fn send_identity(path: &Path) -> Option<String> {
    let out = Command::new("btrfs")
        .args(["subvolume", "show"])
        .arg(path)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
            .filter(|v| !v.is_empty() && v != "-")
    };
    field("Received UUID:").or_else(|| field("UUID:"))
}

/// What the sink has received from the source's snapshots (same identity), by name.
fn received_identity(path: &Path) -> Option<String> {
    let out = Command::new("btrfs")
        .args(["subvolume", "show"])
        .arg(path)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Received UUID:").map(|v| v.trim().to_string()))
        .filter(|v| !v.is_empty() && v != "-")
}

/// Sends the read-only subvolume `path` as a btrfs send stream (incremental on `parent`, which
/// the sink has received before), framed as one volume named by its directory name. A full
/// stream's files are read ahead meanwhile (an incremental one reads only what changed).
fn send_btrfs(fs: &mut dyn Link, path: &Path, parent: Option<&Path>, volume: &str) -> Result<u64> {
    let _ahead = parent.is_none().then(|| crate::prefetch::Prefetch::start(path));
    let mut cmd = Command::new("btrfs");
    cmd.args(["send", "-q"]);
    if let Some(p) = parent {
        cmd.arg("-p").arg(p);
    }
    cmd.arg(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    send_stream(fs, cmd, volume, &name)
}

/// Receives one btrfs send stream into `staging` (on the pool's filesystem); the received
/// subvolume is `staging/<name>`.
fn recv_btrfs(fs: &mut dyn Link, staging: &Path) -> Result<u64> {
    let mut receive = Command::new("btrfs");
    receive.args(["receive", "-q"]).arg(staging);
    recv_into(fs, receive, "btrfs receive failed")
}

fn btrfs_cmd(args: &[&std::ffi::OsStr]) -> Result<()> {
    let out = Command::new("btrfs").args(args).output().map_err(internal)?;
    if !out.status.success() {
        return Err(internal(format!(
            "btrfs {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn set_writable(path: &Path) -> Result<()> {
    // -f: a received subvolume turns writable only when forced (it loses its received UUID).
    btrfs_cmd(&[
        "property".as_ref(),
        "set".as_ref(),
        "-f".as_ref(),
        "-ts".as_ref(),
        path.as_os_str(),
        "ro".as_ref(),
        "false".as_ref(),
    ])
}

/// Removes a staging directory and the subvolumes received into it.
pub fn remove_staging(staging: &Path) {
    if corral_storage::btrfs::remove_subvolume(staging).is_ok() {
        return;
    }
    if let Ok(entries) = std::fs::read_dir(staging) {
        for e in entries.flatten() {
            let p = e.path();
            let _ = set_writable(&p);
            let _ = btrfs_cmd(&["subvolume".as_ref(), "delete".as_ref(), p.as_os_str()]);
        }
    }
    let _ = std::fs::remove_dir_all(staging);
}

/// The source's read-only snapshot of the image an instance was made from (removed when
/// dropped), with what the sink needs to stand in for it.
struct Base {
    fingerprint: String,
    identity: String,
    snapshot: TempSubvolume,
}

/// A snapshot of `rec`'s image volume in `pool` (btrfs), if the instance was made from an image
/// the pool still has; `None` (a full stream) if anything is missing.
fn send_base(pool: &crate::storage::Pool, rec: &InstanceRecord) -> Option<Base> {
    let fingerprint = rec.config.get("volatile.base_image").filter(|f| !f.is_empty())?;
    let image = pool.image_volume(fingerprint);
    if !pool.has_image(fingerprint) || has_nested_subvolumes(&image) {
        return None;
    }
    let at = pool
        .path
        .join(format!(".migration-base-{}", uuid::Uuid::new_v4().simple()));
    if let Err(e) = corral_storage::btrfs::readonly_snapshot(&image, &at) {
        tracing::warn!(image = %fingerprint, error = %e, "cannot snapshot the image: the volumes go whole");
        return None;
    }
    let snapshot = TempSubvolume(at);
    let identity = send_identity(&snapshot.0)?;
    Some(Base {
        fingerprint: fingerprint.clone(),
        identity,
        snapshot,
    })
}

/// The sink's stand-in for the source's snapshot of the header's base image, if this pool has
/// that image as the same unpacker made it (`None`: the volumes come whole).
fn stand_in_base(pool: &crate::storage::Pool, header: &Header, staging: &Path) -> Option<std::path::PathBuf> {
    if header.base_image.is_empty()
        || header.base_uuid.is_empty()
        || header.base_format != BASE_FORMAT
        || !pool.has_image(&header.base_image)
    {
        return None;
    }
    let image = pool.image_volume(&header.base_image);
    if has_nested_subvolumes(&image) {
        return None;
    }
    let at = staging.join(".base");
    let made = std::fs::create_dir_all(staging)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            corral_storage::btrfs::stand_in_parent(&image, &at, &header.base_uuid).map_err(|e| e.to_string())
        });
    match made {
        Ok(()) => Some(at),
        Err(e) => {
            tracing::warn!(image = %header.base_image, error = %e, "cannot stand in for the source's image: the volumes come whole");
            None
        }
    }
}

/// Progress of a transfer, for the operation's metadata.
pub type Progress<'a> = &'a (dyn Fn(u64) + Sync);

impl Instances {
    /// The source's side. The instance must be stopped, or `frozen_copy` is the name of a
    /// point-in-time snapshot to read the instance's files from instead, or `live`: the files
    /// are read while it runs, then it is checkpointed and stopped, and what changed meanwhile
    /// goes with its state; if the sink cannot restore it, it is restored here. Answers the
    /// downtime of a live migration.
    #[allow(clippy::too_many_arguments)]
    pub fn send_instance(
        &self,
        project: &str,
        name: &str,
        instance_only: bool,
        frozen_copy: Option<&str>,
        live: bool,
        lazy: bool,
        control: &mut dyn Link,
        fs: &mut dyn Link,
        criu: Option<&mut dyn Link>,
        progress: Progress<'_>,
    ) -> Result<Option<std::time::Duration>> {
        let (rec, _) = self.get(project, name)?;
        let pool = self.pool_of(&rec)?;
        // The volumes are read while the pool's spare copies (if any) stop, as for a start.
        let _quiet = pool.hold_background();
        if live && !matches!(self.runtime(name), crate::instances::Runtime::Running(_)) {
            return Err(ServiceError::BadRequest(format!(
                "{name} is not running: live migration moves a running instance (copy it without --live)"
            )));
        }
        let snapshots: Vec<SnapshotRecord> = if instance_only {
            Vec::new()
        } else {
            self.snapshots(project, name)?
                .into_iter()
                .filter(|s| !s.name.starts_with('.'))
                .collect()
        };
        if live {
            // CRIU's kernel-feature cache, filled while the volumes travel: not in the pause.
            std::thread::spawn(corral_runtime::checkpoint::warm_up);
        }
        // Live: what changes after this instant goes again in the delta.
        let marker = self
            .paths
            .tmp()
            .join(format!("migration-{}", uuid::Uuid::new_v4().simple()));
        if live {
            std::fs::create_dir_all(self.paths.tmp()).map_err(internal)?;
            std::fs::write(&marker, b"").map_err(internal)?;
        }
        let _marker_gone = RemoveOnDrop(marker.clone());
        let can_btrfs = pool.driver.info().name == "btrfs"
            && !live
            && !has_nested_subvolumes(&pool.instance_volume(name))
            && snapshots
                .iter()
                .all(|s| !has_nested_subvolumes(&pool.snapshot_volume(name, &s.name)));
        // The image the instance was made from, if the pool has it: a sink with the same image
        // receives only the difference from it.
        let base = if can_btrfs { send_base(&pool, &rec) } else { None };
        send_json(
            control,
            &Header {
                version: 1,
                instance: rec.clone(),
                snapshots: snapshots.clone(),
                fs: "tar".into(),
                live,
                btrfs: can_btrfs,
                uuids: if can_btrfs {
                    snapshots
                        .iter()
                        .filter_map(|s| Some((s.name.clone(), send_identity(&pool.snapshot_volume(name, &s.name))?)))
                        .collect()
                } else {
                    BTreeMap::new()
                },
                lazy: live && lazy && criu.is_some(),
                base_image: base.as_ref().map(|b| b.fingerprint.clone()).unwrap_or_default(),
                base_uuid: base.as_ref().map(|b| b.identity.clone()).unwrap_or_default(),
                base_format: if base.is_some() {
                    BASE_FORMAT.into()
                } else {
                    String::new()
                },
            },
        )?;
        let reply: Reply = recv_json(control, "control")?;
        if !reply.success {
            return Err(ServiceError::BadRequest(format!("the target refused: {}", reply.error)));
        }
        if reply.fs == "btrfs" {
            let sent = self.send_btrfs_volumes(
                project,
                name,
                &snapshots,
                &reply.have,
                &reply.common,
                frozen_copy,
                base.as_ref().filter(|_| reply.base).map(|b| b.snapshot.0.as_path()),
                fs,
                progress,
            );
            let done: Reply = recv_json(control, "control")?;
            sent?;
            if !done.success {
                return Err(ServiceError::Internal(format!("the target failed: {}", done.error)));
            }
            return Ok(None);
        }
        let mut total = 0u64;
        let tmp = self.paths.tmp();
        let mut send = |fs: &mut dyn Link, dir: &Path, volume: &str, vname: &str| -> Result<()> {
            total += if reply.incremental {
                send_json(
                    fs,
                    &VolumeStart {
                        volume: volume.into(),
                        name: vname.into(),
                    },
                )?;
                send_changed(fs, dir, &tmp)?
            } else {
                send_volume(fs, dir, volume, vname)?
            };
            progress(total);
            Ok(())
        };
        for s in snapshots.iter().filter(|s| !reply.have.contains(&s.name)) {
            send(fs, &pool.snapshot_volume(name, &s.name), "snapshot", &s.name)?;
        }
        let dir = match frozen_copy {
            Some(f) => pool.snapshot_volume(name, f),
            None => pool.instance_volume(name),
        };
        send(fs, &dir, "instance", name)?;
        if !live {
            let done: Reply = recv_json(control, "control")?;
            if !done.success {
                return Err(ServiceError::Internal(format!("the target failed: {}", done.error)));
            }
            return Ok(None);
        }
        // The sink may still be writing what was sent: pausing before it has would put that
        // in the pause. It says when it is ready for the delta.
        let ready: Reply = recv_json(control, "control")?;
        if !ready.success {
            return Err(ServiceError::Internal(format!("the target failed: {}", ready.error)));
        }
        if live && lazy && !reply.lazy {
            tracing::warn!(instance = %name, why = %reply.lazy_refused, "post-copy refused by the target: stop and copy");
        }
        if let (true, Some(criu)) = (reply.lazy, criu) {
            return self.send_lazy_state(project, name, control, fs, criu, &dir, &marker, progress);
        }
        let paused = std::time::Instant::now();
        let stopped = match self.checkpoint_to_stop(project, name) {
            Ok(rec) => rec,
            Err(e) => {
                // The sink waits for the delta: tell it why none comes.
                send_abort(fs, &e);
                return Err(e);
            }
        };
        let checkpointed = paused.elapsed();
        // The record says "stopped with its state" while the delta travels, not in the pause.
        let (marked, (done, delta_sent)) = std::thread::scope(|scope| {
            let marking = scope.spawn(|| self.mark_stopped_stateful(project, &stopped));
            let sent = send_delta_for_reply(fs, control, &dir, &marker, progress, paused);
            let marked = marking
                .join()
                .unwrap_or_else(|_| Err(internal("recording the stateful stop panicked")));
            (marked, sent)
        });
        if let Err(e) = &marked {
            tracing::warn!(instance = %name, error = %e, "cannot record the stateful stop");
        }
        match done {
            Ok(r) if r.success => {
                let downtime = paused.elapsed();
                let ms = |d: std::time::Duration| d.as_millis() as u64;
                tracing::info!(
                    instance = %name,
                    downtime_ms = ms(downtime),
                    dumped_ms = ms(checkpointed),
                    delta_sent_ms = ms(delta_sent),
                    target_restore_ms = r.restore_ms,
                    "live migration done"
                );
                Ok(Some(downtime))
            }
            failed => {
                let why = match failed {
                    Ok(r) => r.error,
                    Err(e) => e.to_string(),
                };
                // The instance comes back here, from the state it was moved with (which the
                // record must name first).
                let back = match marked {
                    Ok(()) => self.start(project, name),
                    Err(_) => self
                        .mark_stopped_stateful(project, &stopped)
                        .and_then(|()| self.start(project, name)),
                };
                Err(ServiceError::Internal(match back {
                    Ok(()) => format!("the target failed: {why}; {name} runs here again"),
                    Err(e) => format!(
                        "the target failed: {why}; restoring {name} here failed too: {e} (its state is kept: `corral start {name}`)"
                    ),
                }))
            }
        }
    }

    /// Live move with post-copy, source side, once the sink has the volumes: the container is
    /// checkpointed without its memory, the state goes in the delta, and criu serves the memory
    /// on `criu` while the sink runs it. If the sink fails before it runs it, the page stream
    /// is made to fail and the container runs on here. Once it runs there, its memory is split
    /// between the hosts until every page has gone: a connection lost then loses it on both.
    #[allow(clippy::too_many_arguments)]
    fn send_lazy_state(
        &self,
        project: &str,
        name: &str,
        control: &mut dyn Link,
        fs: &mut dyn Link,
        criu: &mut dyn Link,
        dir: &Path,
        marker: &Path,
        progress: Progress<'_>,
    ) -> Result<Option<std::time::Duration>> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(internal)?;
        let theirs = std::os::fd::OwnedFd::from(theirs);
        let paused = std::time::Instant::now();
        let dump = match self.begin_lazy_stop(project, name, &theirs) {
            Ok(d) => d,
            Err(e) => {
                send_abort(fs, &e);
                return Err(e);
            }
        };
        drop(theirs);
        let checkpointed = paused.elapsed();
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let pump = scope.spawn(|| crate::migration_pages::pump(criu, &ours, &stop, false));
            let (done, delta_sent) = send_delta_for_reply(fs, control, dir, marker, progress, paused);
            match done {
                Ok(r) if r.success => {
                    let downtime = paused.elapsed();
                    let ms = |d: std::time::Duration| d.as_millis() as u64;
                    tracing::info!(
                        instance = %name,
                        downtime_ms = ms(downtime),
                        dumped_ms = ms(checkpointed),
                        delta_sent_ms = ms(delta_sent),
                        target_restore_ms = r.restore_ms,
                        "live migration (post-copy) running on the target; serving its memory"
                    );
                    let pumped = pump.join();
                    // The target has it all: the stream's end lets criu finish (and stop it here).
                    let _ = ours.shutdown(std::net::Shutdown::Both);
                    let finished = self.end_lazy_stop(project, name, dump, true);
                    let (out, back) = match pumped {
                        Ok(Ok(n)) => n,
                        _ => (0, 0),
                    };
                    tracing::info!(instance = %name, pages_bytes = out, requests_bytes = back, total_ms = ms(paused.elapsed()), "live migration (post-copy) done");
                    finished.map_err(|e| {
                        ServiceError::Internal(format!("{name} runs on the target, but serving its memory failed: {e}"))
                    })?;
                    Ok(Some(downtime))
                }
                failed => {
                    let why = match failed {
                        Ok(r) => r.error,
                        Err(e) => e.to_string(),
                    };
                    stop.store(true, Ordering::Relaxed);
                    let _ = pump.join();
                    // An unknown command fails criu's dump: the container runs on here.
                    let _ = (&ours).write_all(&corral_runtime::checkpoint::PAGE_STREAM_ABORT);
                    let back = self.end_lazy_stop(project, name, dump, false);
                    Err(ServiceError::Internal(match back {
                        Ok(()) => format!("the target failed: {why}; {name} runs here again"),
                        Err(e) => format!("the target failed: {why}; and here: {e}"),
                    }))
                }
            }
        })
    }

    /// The sink's side: receives an instance (or, with `refresh`, brings an existing copy up to
    /// date). On failure nothing of it is left (a refreshed instance keeps what it had).
    pub fn receive_instance(
        &self,
        req: &SinkRequest,
        control: &mut dyn Link,
        fs: &mut dyn Link,
        criu: Option<&mut dyn Link>,
        progress: Progress<'_>,
    ) -> Result<InstanceRecord> {
        let header: Header = recv_json(control, "control")?;
        if header.live {
            std::thread::spawn(corral_runtime::checkpoint::warm_up);
        }
        let prepared = self.prepare_receive(req, &header);
        let (rec, have) = match prepared {
            Ok(p) => p,
            Err(e) => {
                let _ = send_json(
                    control,
                    &Reply {
                        success: false,
                        error: e.to_string(),
                        ..Default::default()
                    },
                );
                return Err(e);
            }
        };
        let incremental = req.refresh && self.get(&req.project, &req.name).is_ok();
        let btrfs_here = self.pools.get(&rec.pool).is_ok_and(|p| p.driver.info().name == "btrfs");
        // A refresh goes by btrfs send when the sink has a snapshot received from one of the
        // source's (the instance then goes incrementally from the newest such), else as the
        // files that differ.
        let common: Vec<String> = if incremental && header.btrfs && btrfs_here && !header.live {
            let pool = self.pools.get(&rec.pool)?;
            have.iter()
                .filter(|n| {
                    header
                        .uuids
                        .get(*n)
                        .is_some_and(|id| received_identity(&pool.snapshot_volume(&rec.name, n)).as_ref() == Some(id))
                })
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let btrfs_refresh = !common.is_empty();
        let incremental = incremental && !btrfs_refresh;
        let fs_kind = if header.btrfs && btrfs_here && !incremental && !header.live {
            "btrfs"
        } else {
            ""
        };
        let lazy_refused = if !header.lazy {
            String::new()
        } else if criu.is_none() {
            "no criu websocket".to_string()
        } else {
            self.lazy_pages_blocker(&rec).unwrap_or_default()
        };
        let lazy = header.lazy && lazy_refused.is_empty();
        // A btrfs receive stages in a directory of the pool (removed at the end, whatever
        // happens), where the stand-in for the source's image goes first if this pool has it.
        let staging = (fs_kind == "btrfs")
            .then(|| self.pools.get(&rec.pool).ok())
            .flatten()
            .map(|pool| {
                (
                    pool.path.join(format!(".migration-{}", uuid::Uuid::new_v4().simple())),
                    pool,
                )
            });
        let _staging_gone = staging.as_ref().map(|(dir, _)| TempSubvolume(dir.clone()));
        let base = match &staging {
            Some((dir, pool)) if !btrfs_refresh => stand_in_base(pool, &header, dir),
            _ => None,
        };
        send_json(
            control,
            &Reply {
                success: true,
                have: have.clone(),
                incremental,
                fs: fs_kind.into(),
                common: common.clone(),
                lazy,
                lazy_refused,
                base: base.is_some(),
                ..Default::default()
            },
        )?;
        let mut restore_ms = 0;
        let received = if let Some((dir, _)) = &staging {
            self.receive_btrfs_volumes(
                req,
                &header,
                rec,
                &have,
                btrfs_refresh,
                dir,
                base.is_some(),
                fs,
                progress,
            )
        } else {
            self.receive_volumes(req, &header, rec, &have, control, fs, progress)
        };
        let result = received.and_then(|rec| {
            if !header.live {
                return Ok(rec);
            }
            let began = std::time::Instant::now();
            tracing::info!(instance = %rec.name, lazy, "live migration: committed, restoring");
            if let (true, Some(criu)) = (lazy, criu) {
                return self.restore_lazy(&req.project, rec, control, criu);
            }
            match self.start(&req.project, &rec.name) {
                Ok(()) => {
                    restore_ms = began.elapsed().as_millis() as u64;
                    Ok(rec)
                }
                Err(e) => {
                    // The source restores it instead: nothing of it stays here.
                    let _ = self.delete(&req.project, &rec.name);
                    Err(ServiceError::Internal(format!("cannot restore it here: {e}")))
                }
            }
        });
        if lazy && header.live {
            // restore_lazy answered the source itself (or the receive failed: below).
            if let Err(e) = &result {
                let _ = send_json(
                    control,
                    &Reply {
                        success: false,
                        error: e.to_string(),
                        ..Default::default()
                    },
                );
            }
            return result;
        }
        let _ = send_json(
            control,
            &Reply {
                success: result.is_ok(),
                error: result.as_ref().err().map(|e| e.to_string()).unwrap_or_default(),
                restore_ms,
                ..Default::default()
            },
        );
        result
    }

    /// Why this host cannot restore `rec` with lazy pages, if it cannot.
    fn lazy_pages_blocker(&self, rec: &InstanceRecord) -> Option<String> {
        let user_namespace = match self.expand(rec) {
            Ok((config, _)) => !crate::config::flag(&config, "security.privileged"),
            Err(_) => !crate::config::flag(&rec.config, "security.privileged"),
        };
        match corral_runtime::checkpoint::criu_binary() {
            Ok(criu) => corral_runtime::checkpoint::lazy_pages_blocker(&criu, user_namespace),
            Err(e) => Some(e.to_string()),
        }
    }

    /// Post-copy, sink side, once the state has arrived: `criu lazy-pages` on it, fed from the
    /// `criu` websocket, then the restore; the source hears the outcome as soon as the
    /// container runs (its pause ends there), and this waits until every page has arrived.
    fn restore_lazy(
        &self,
        project: &str,
        rec: InstanceRecord,
        control: &mut dyn Link,
        criu: &mut dyn Link,
    ) -> Result<InstanceRecord> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let began = std::time::Instant::now();
        let name = rec.name.clone();
        let state = self.state_dir(&rec)?;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(internal)?;
        let theirs = std::os::fd::OwnedFd::from(theirs);
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let pump = scope.spawn(|| crate::migration_pages::pump(criu, &ours, &stop, true));
            let restored = corral_runtime::checkpoint::serve_lazy_pages(&state, &theirs)
                .map_err(|e| ServiceError::Internal(format!("cannot serve lazy pages here: {e}")))
                .and_then(|pages| {
                    self.start(project, &name)
                        .map(|()| pages)
                        .map_err(|e| ServiceError::Internal(format!("cannot restore it here: {e}")))
                });
            drop(theirs);
            let restore_ms = began.elapsed().as_millis() as u64;
            let _ = send_json(
                control,
                &Reply {
                    success: restored.is_ok(),
                    error: restored.as_ref().err().map(|e| e.to_string()).unwrap_or_default(),
                    restore_ms,
                    ..Default::default()
                },
            );
            match restored {
                Ok(pages) => {
                    tracing::info!(instance = %name, restore_ms, "live migration (post-copy): running here; fetching its memory");
                    let fetched = pages.wait();
                    let pumped = pump.join();
                    if let Ok(Ok((requests, pages))) = pumped {
                        tracing::info!(instance = %name, pages_bytes = pages, requests_bytes = requests, took = ?began.elapsed(), "live migration (post-copy): memory complete");
                    }
                    if let Err(e) = fetched {
                        tracing::error!(instance = %name, error = %e, "post-copy: pages missing; the instance may crash");
                    }
                    Ok(rec)
                }
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    let _ = pump.join();
                    let _ = self.delete(project, &name);
                    Err(e)
                }
            }
        })
    }

    /// Checks the request against what is here: the record the instance will have, and (for a
    /// refresh) the snapshots already here.
    fn prepare_receive(&self, req: &SinkRequest, header: &Header) -> Result<(InstanceRecord, Vec<String>)> {
        if header.version != 1 || header.fs != "tar" {
            return Err(ServiceError::BadRequest(format!(
                "unsupported migration (version {}, transfer {:?}): upgrade both servers",
                header.version, header.fs
            )));
        }
        crate::instances::validate_name(&req.name)?;
        let existing = self.get(&req.project, &req.name).ok().map(|(r, _)| r);
        let have = match (&existing, req.refresh) {
            (Some(_), false) => {
                return Err(ServiceError::Conflict(format!(
                    "Instance {:?} already exists (use --refresh to update it)",
                    req.name
                )))
            }
            (Some(_), true) => {
                if !matches!(self.runtime(&req.name), crate::instances::Runtime::Stopped) {
                    return Err(ServiceError::BadRequest(format!(
                        "Instance {:?} is running: stop it before refreshing it",
                        req.name
                    )));
                }
                self.snapshots(&req.project, &req.name)?
                    .into_iter()
                    .map(|s| s.name)
                    .filter(|n| header.snapshots.iter().any(|s| &s.name == n))
                    .collect()
            }
            (None, _) => Vec::new(),
        };
        let mut rec = header.instance.clone();
        rec.name = req.name.clone();
        rec.project = req.project.clone();
        rec.config.extend(req.config.clone());
        rec.config.retain(|_, v| !v.is_empty());
        for (k, d) in &req.devices {
            rec.devices.insert(k.clone(), d.clone());
        }
        if let Some(p) = &req.profiles {
            rec.profiles = p.clone();
        }
        rec.profiles.retain(|p| self.profile(&req.project, p).is_ok());
        // A live migration brings the state with the delta; a stopped stateful instance has it
        // in its volume already.
        rec.stateful = header.live || header.instance.stateful;
        // Where the root volume goes: the request's pool, else the source's if it exists here.
        let pool = match &req.pool {
            Some(p) => p.clone(),
            None if self.pools.get(&rec.pool).is_ok() => rec.pool.clone(),
            None => crate::pools::DEFAULT_POOL.to_string(),
        };
        self.pools.get(&pool).map_err(|e| match e {
            ServiceError::NotFound(m) => ServiceError::BadRequest(format!("{m}: choose an existing pool")),
            e => e,
        })?;
        if let Some(root) = rec.devices.values_mut().find(|d| crate::copy::is_root_disk(d)) {
            root.insert("pool".into(), pool.clone());
        }
        rec.pool = pool;
        crate::config::validate(&rec.config, true)?;
        if let Some(existing) = existing {
            if existing.pool != rec.pool {
                return Err(ServiceError::BadRequest(format!(
                    "Instance {:?} is in pool {:?} here: refresh keeps it there (leave out --storage)",
                    req.name, existing.pool
                )));
            }
        }
        Ok((rec, have))
    }

    #[allow(clippy::too_many_arguments)]
    fn receive_volumes(
        &self,
        req: &SinkRequest,
        header: &Header,
        rec: InstanceRecord,
        have: &[String],
        control: &mut dyn Link,
        fs: &mut dyn Link,
        progress: Progress<'_>,
    ) -> Result<InstanceRecord> {
        let pool = self.pools.get(&rec.pool)?;
        // Somebody waits on this: the pool's spare copies (cp at idle priority) stop meanwhile,
        // as for a start. On a filesystem where each new inode is slow (ext4 without a journal
        // skips the free inodes deleted in the last minute, scanning for them), both writing
        // trees at once would share that cost.
        let _quiet = pool.hold_background();
        let name = rec.name.clone();
        let fresh = !req.refresh || self.get(&req.project, &name).is_err();
        let intent = corral_store::record_intent(
            &*self.store,
            "migration-receive",
            serde_json::json!({ "project": req.project, "name": name, "fresh": fresh }),
        )?;
        let mut total = 0u64;
        let mut new_snapshots = Vec::new();
        let work = (|| -> Result<()> {
            // The instance volume is filled with each snapshot in turn, snapshotted, and last
            // filled with the instance's own files.
            // A refresh changes the copy in place: each volume comes as what differs.
            let mut fill = |fs: &mut dyn Link| -> Result<VolumeStart> {
                let start: VolumeStart = recv_json(fs, "fs")?;
                if fresh {
                    pool.delete_instance(&name)?;
                    pool.create_instance(&name)?;
                    total += recv_volume(fs, &pool.instance_volume(&name))?;
                } else {
                    total += recv_changed(fs, &pool.instance_volume(&name))?;
                }
                progress(total);
                Ok(start)
            };
            for s in header.snapshots.iter().filter(|s| !have.contains(&s.name)) {
                let start = fill(fs)?;
                if start.volume != "snapshot" || start.name != s.name {
                    return Err(internal(format!(
                        "expected snapshot {:?}, got {} {:?}",
                        s.name, start.volume, start.name
                    )));
                }
                pool.snapshot_instance(&name, &s.name)?;
                let mut snap = s.clone();
                snap.instance = name.clone();
                new_snapshots.push(snap);
            }
            let start = fill(fs)?;
            if start.volume != "instance" {
                return Err(internal(format!("expected the instance volume, got {}", start.volume)));
            }
            if header.live {
                // Everything sent so far is written: the source may pause the container now.
                send_json(
                    control,
                    &Reply {
                        success: true,
                        ..Default::default()
                    },
                )?;
                let began = std::time::Instant::now();
                total += recv_delta(fs, &pool.instance_volume(&name))?;
                tracing::info!(instance = %name, took = ?began.elapsed(), "live migration: delta applied");
                progress(total);
            }
            Ok(())
        })();
        self.commit_received(&req.project, rec, &new_snapshots, &intent, fresh, work)
    }

    /// The end of a receive: the records and the end of the intent in one commit if the volumes
    /// arrived (`work`), else what was made is removed.
    fn commit_received(
        &self,
        project: &str,
        rec: InstanceRecord,
        snapshots: &[SnapshotRecord],
        intent: &str,
        fresh: bool,
        work: Result<()>,
    ) -> Result<InstanceRecord> {
        let committed = work.and_then(|_| {
            let mut ops = vec![corral_store::Op::Put(
                instance_key(project, &rec.name),
                serde_json::to_vec(&rec).map_err(internal)?,
            )];
            for s in snapshots {
                ops.push(corral_store::Op::Put(
                    snapshot_key(project, &rec.name, &s.name),
                    serde_json::to_vec(s).map_err(internal)?,
                ));
            }
            ops.push(corral_store::Op::Delete(corral_store::intent_key(intent)));
            self.store.txn(&[], &ops)?;
            Ok(())
        });
        if let Err(e) = committed {
            self.undo_receive(project, &rec.name, fresh, snapshots);
            let _ = corral_store::finish_intent(&*self.store, intent);
            return Err(e);
        }
        Ok(rec)
    }

    /// btrfs to btrfs: every snapshot as a send stream incremental on the one before, then the
    /// instance (from its frozen copy, or a read-only snapshot taken for the send).
    #[allow(clippy::too_many_arguments)]
    fn send_btrfs_volumes(
        &self,
        project: &str,
        name: &str,
        snapshots: &[SnapshotRecord],
        have: &[String],
        common: &[String],
        frozen_copy: Option<&str>,
        base: Option<&Path>,
        fs: &mut dyn Link,
        progress: Progress<'_>,
    ) -> Result<()> {
        let (rec, _) = self.get(project, name)?;
        let pool = self.pool_of(&rec)?;
        let mut total = 0u64;
        // Each stream is incremental on the newest snapshot before it that the sink has as
        // sent from here (one in common, or one just sent); the first on the image (`base`)
        // when the sink has it.
        let mut parent: Option<std::path::PathBuf> = base.map(Path::to_path_buf);
        for s in snapshots {
            let path = pool.snapshot_volume(name, &s.name);
            if common.contains(&s.name) {
                parent = Some(path);
                continue;
            }
            if have.contains(&s.name) {
                continue;
            }
            total += send_btrfs(fs, &path, parent.as_deref(), "snapshot")?;
            progress(total);
            parent = Some(path);
        }
        let temp = format!(".migration-send-{}", uuid::Uuid::new_v4().simple());
        let began = std::time::Instant::now();
        let copy = match frozen_copy {
            Some(f) => f.to_string(),
            None => {
                pool.snapshot_instance(name, &temp)?;
                temp.clone()
            }
        };
        let snapshotted = began.elapsed();
        let sent = send_btrfs(fs, &pool.snapshot_volume(name, &copy), parent.as_deref(), "instance");
        let streamed = began.elapsed() - snapshotted;
        if frozen_copy.is_none() {
            let _ = pool.delete_snapshot(name, &temp);
        }
        total += sent?;
        progress(total);
        tracing::info!(instance = %name, bytes = total, on_image = base.is_some(), ?snapshotted, ?streamed, took = ?began.elapsed(), "sent as btrfs streams");
        Ok(())
    }

    /// The sink's side of [`Instances::send_btrfs_volumes`]: received into a staging directory
    /// of the pool, then each subvolume renamed into its place (the instance's made writable).
    #[allow(clippy::too_many_arguments)]
    fn receive_btrfs_volumes(
        &self,
        req: &SinkRequest,
        header: &Header,
        rec: InstanceRecord,
        have: &[String],
        refresh: bool,
        staging: &Path,
        on_image: bool,
        fs: &mut dyn Link,
        progress: Progress<'_>,
    ) -> Result<InstanceRecord> {
        let pool = self.pools.get(&rec.pool)?;
        let name = rec.name.clone();
        let fresh = !refresh;
        let intent = corral_store::record_intent(
            &*self.store,
            "migration-receive",
            serde_json::json!({ "project": req.project, "name": name, "fresh": fresh }),
        )?;
        let staging = staging.to_path_buf();
        let mut placed = Vec::new();
        let mut total = 0u64;
        let work = (|| -> Result<()> {
            std::fs::create_dir_all(&staging).map_err(internal)?;
            // Each stream lands where it is received: a snapshot straight in its place (it keeps
            // its received UUID, which the next snapshot's incremental stream looks for), the
            // instance in the staging directory (made writable there, then moved).
            let mut receive = |fs: &mut dyn Link, want: &str, into: &Path| -> Result<std::path::PathBuf> {
                let start: VolumeStart = recv_json(fs, "fs")?;
                if start.volume != want || start.name.is_empty() || start.name.contains('/') {
                    return Err(internal(format!(
                        "expected a {want} volume, got {} {:?}",
                        start.volume, start.name
                    )));
                }
                std::fs::create_dir_all(into).map_err(internal)?;
                total += recv_btrfs(fs, into)?;
                progress(total);
                Ok(into.join(&start.name))
            };
            for s in header.snapshots.iter().filter(|s| !have.contains(&s.name)) {
                let to = pool.snapshot_volume(&name, &s.name);
                let into = to.parent().map(Path::to_path_buf).unwrap_or_else(|| staging.clone());
                let got = receive(fs, "snapshot", &into)?;
                let mut snap = s.clone();
                snap.instance = name.clone();
                placed.push(snap);
                if got != to {
                    return Err(internal(format!("snapshot {:?} arrived as {}", s.name, got.display())));
                }
            }
            let t = std::time::Instant::now();
            let got = receive(fs, "instance", &staging)?;
            let received = t.elapsed();
            set_writable(&got)?;
            tracing::info!(instance = %name, ?received, writable = ?(t.elapsed() - received), "instance stream received");
            let to = pool.instance_volume(&name);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).map_err(internal)?;
            }
            if refresh && to.exists() {
                // The refreshed copy replaces the old one, which goes with the staging directory.
                let old = staging.join(".replaced");
                std::fs::rename(&to, &old).map_err(|e| internal(format!("cannot replace {}: {e}", to.display())))?;
                if let Err(e) = std::fs::rename(&got, &to) {
                    let _ = std::fs::rename(&old, &to);
                    return Err(internal(format!("cannot place {}: {e}", to.display())));
                }
            } else {
                std::fs::rename(&got, &to).map_err(|e| internal(format!("cannot place {}: {e}", to.display())))?;
            }
            Ok(())
        })();
        remove_staging(&staging);
        if work.is_ok() {
            tracing::info!(instance = %name, bytes = total, refresh, on_image, snapshots = placed.len(), "received as btrfs streams");
        }
        self.commit_received(&req.project, rec, &placed, &intent, fresh, work)
    }

    /// A point-in-time copy of a (running) instance's files, taken while it is frozen: a pool
    /// snapshot named `copy` without a record, read by [`Instances::send_instance`].
    pub fn point_in_time_copy(&self, project: &str, name: &str, copy: &str) -> Result<()> {
        let (rec, _) = self.get(project, name)?;
        let pool = self.pool_of(&rec)?;
        let running = matches!(self.runtime(name), crate::instances::Runtime::Running(_));
        if running {
            self.client(name)
                .freeze()
                .map_err(|e| internal(format!("cannot freeze {name}: {e}")))?;
        }
        let taken = pool.snapshot_instance(name, copy);
        if running {
            let _ = self.client(name).thaw();
        }
        taken.map_err(ServiceError::from)
    }

    pub fn drop_point_in_time_copy(&self, project: &str, name: &str, copy: &str) {
        if let Ok((rec, _)) = self.get(project, name) {
            if let Ok(pool) = self.pool_of(&rec) {
                let _ = pool.delete_snapshot(name, copy);
            }
        }
    }

    /// Removes what a failed receive made: the whole instance if it was new, else the snapshots
    /// it added (the refreshed instance's own volume is as the failure left it).
    pub fn undo_receive(&self, project: &str, name: &str, fresh: bool, added: &[SnapshotRecord]) {
        for pool in self.pools.all() {
            if fresh {
                let _ = pool.delete_all_snapshots(name);
                let _ = pool.delete_instance(name);
            } else {
                for s in added {
                    let _ = pool.delete_snapshot(name, &s.name);
                }
            }
        }
        if fresh && self.store.get(&instance_key(project, name)).ok().flatten().is_none() {
            let _ = self.store.delete(&instance_key(project, name));
        }
    }
}
