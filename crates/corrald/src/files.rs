//! `/1.0/instances/{name}/files?path=/abs/path`: reading and writing files inside an instance,
//! as LXD's file API does.
//!
//! - `GET`: a regular file's bytes (streamed); a directory's entries in a sync envelope; a
//!   symlink's target (made absolute and cleaned, as LXD answers). `X-LXD-uid`, `X-LXD-gid`,
//!   `X-LXD-mode` (`0644`), `X-LXD-type` (and the same as `X-Incus-*`) describe the object.
//! - `HEAD`: the same headers, no body.
//! - `POST`: create or write, as the `X-LXD-`/`X-Incus-` headers `type` (`file`, `directory`,
//!   `symlink`: the body is the target), `write` (`overwrite`, `append`), `uid`, `gid`, `mode`
//!   (octal) and `modify-perm` (which of uid, gid and mode to change on an object that already
//!   exists; LXD's `instances_files_modify_permissions`) say. New files are 0644 and new
//!   directories 0755, owned by root, unless the headers say otherwise.
//! - `DELETE`: a file, a symlink (not what it points to) or an empty directory.
//!
//! Paths are absolute in the instance; like LXD, a path without its leading `/` is taken from
//! the root (`lxc file pull c1/etc/hosts` sends `etc/hosts`). `.` and `..` are resolved
//! lexically first, `..` stopping at `/`.
//!
//! **Security.** The work happens on the instance's root filesystem on the host
//! (`<pool>/containers/<name>/rootfs`), which the container's root controls: any component may
//! be a symlink meant to lead outside. Nothing here resolves a path in the host's namespace:
//! the rootfs directory is opened once (`O_PATH`), the parent of the object is opened from it
//! with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` (absolute symlinks and `..` resolve
//! inside the rootfs, as they would in the container), and the final component is handled
//! relative to that parent with `*at` calls that do not follow it (`O_NOFOLLOW`,
//! `AT_SYMLINK_NOFOLLOW`). The one exception is writing a file, which follows a final symlink
//! as LXD does, again with `openat2(RESOLVE_IN_ROOT)` from the rootfs. Only regular files are
//! ever opened for reading or writing (never a fifo or a device node), and ownership and modes
//! are changed through the open descriptor. `RESOLVE_NO_XDEV` is not used: whatever is mounted
//! under the rootfs in the daemon's namespace was put there by the host's administrator (the
//! container's own mounts live in its monitor's private namespace), and refusing it would only
//! break such setups.
//!
//! **Ownership.** The rootfs is not shifted on disk (the runtime idmaps the mount), so a
//! container id is the same id on disk; ids must be below 65536. Where the filesystem could not
//! idmap and the runtime shifted the rootfs instead (recorded in its `trusted.corral.shift`
//! xattr), ids are translated through that map.
//!
//! **Limits.** A running container's view also includes what is mounted inside it (tmpfs on
//! /run, bind mounts, /proc...); this API sees only the root filesystem itself, as a stopped
//! container has it. Set-id and sticky bits in `mode` are dropped, as LXD drops them. A file
//! is written in place (truncated first, as LXD does): an upload that fails half-way leaves
//! what had arrived. Fifos, sockets and device nodes are neither read nor written (400).

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path as FsPath;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use corral_api as api;
use corral_runtime::spec::IdMap;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::{Gid, Uid, UnlinkatFlags};
use serde::Deserialize;

use crate::api::{envelope, ApiError, ApiResult, AppState};
use crate::instances::DEFAULT_PROJECT;

/// The file routes.
pub fn routes() -> Router<AppState> {
    Router::new().route(
        "/1.0/instances/{name}/files",
        get(get_file).head(head_file).post(post_file).delete(delete_file),
    )
}

// ---- HTTP: parse, call the filesystem service, wrap ----

#[derive(Deserialize, Default)]
#[serde(default)]
struct FileQuery {
    path: Option<String>,
}

/// The most a symlink target (a POST body of type symlink) may be: PATH_MAX.
const MAX_LINK_TARGET: usize = 4095;
/// Bytes read from a file per chunk of a GET answer.
const CHUNK: usize = 256 * 1024;

fn query_path(q: Result<Query<FileQuery>, QueryRejection>) -> Result<InstancePath, ApiError> {
    let Query(q) = q.map_err(|e| ApiError(400, format!("invalid query: {e}")))?;
    Ok(InstancePath::parse(q.path.as_deref().unwrap_or(""))?)
}

/// Runs blocking filesystem work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, FsError> + Send + 'static) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ApiError(500, format!("file operation failed: {e}"))),
    }
}

/// The instance's root filesystem, opened (the instance must exist).
fn open_root(st: &AppState, name: &str) -> Result<InstanceRoot, FsError> {
    let (rec, _) = st
        .instances
        .get(DEFAULT_PROJECT, name)
        .map_err(|e| FsError::from(ApiError::from(e)))?;
    let pool = st
        .instances
        .pool_of(&rec)
        .map_err(|e| FsError::from(ApiError::from(e)))?;
    InstanceRoot::open(&pool.instance_volume(name).join("rootfs"))
}

fn source(name: &str) -> String {
    format!("/1.0/instances/{name}")
}

/// `X-LXD-*` and `X-Incus-*` describing an object.
fn meta_headers(headers: &mut HeaderMap, meta: &Meta) {
    let values = [
        ("uid", meta.uid.to_string()),
        ("gid", meta.gid.to_string()),
        ("mode", format!("{:04o}", meta.mode)),
        ("type", meta.kind.name().to_string()),
    ];
    for prefix in ["X-LXD-", "X-Incus-"] {
        for (k, v) in &values {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(format!("{prefix}{k}").as_bytes()),
                HeaderValue::from_str(v),
            ) {
                headers.insert(name, value);
            }
        }
    }
}

fn octet_headers(headers: &mut HeaderMap, len: u64, path: &InstancePath) {
    headers.insert("Content-Type", HeaderValue::from_static("application/octet-stream"));
    headers.insert("Content-Length", HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&format!("inline;filename={}", path.file_name())) {
        headers.insert("Content-Disposition", v);
    }
}

async fn get_file(
    State(st): State<AppState>,
    Path(name): Path<String>,
    q: Result<Query<FileQuery>, QueryRejection>,
) -> ApiResult {
    let path = query_path(q)?;
    let st2 = st.clone();
    let (name2, path2) = (name.clone(), path.clone());
    let got = blocking(move || open_root(&st2, &name2)?.read(&path2)).await?;
    st.events.lifecycle("instance-file-retrieved", &source(&name));
    let mut resp = match got {
        Content::File(file, meta) => {
            let mut resp = Response::new(stream_file(file, meta.size));
            octet_headers(resp.headers_mut(), meta.size, &path);
            meta_headers(resp.headers_mut(), &meta);
            return Ok(resp);
        }
        Content::Symlink(target, meta) => {
            let mut resp = Response::new(Body::from(target.clone()));
            octet_headers(resp.headers_mut(), target.len() as u64, &path);
            meta_headers(resp.headers_mut(), &meta);
            return Ok(resp);
        }
        Content::Directory(entries, meta) => {
            let mut resp = envelope(api::Response::sync(entries), None);
            meta_headers(resp.headers_mut(), &meta);
            resp
        }
    };
    resp.headers_mut()
        .insert("Content-Type", HeaderValue::from_static("application/json"));
    Ok(resp)
}

async fn head_file(
    State(st): State<AppState>,
    Path(name): Path<String>,
    q: Result<Query<FileQuery>, QueryRejection>,
) -> ApiResult {
    let path = query_path(q)?;
    let path2 = path.clone();
    let meta = blocking(move || open_root(&st, &name)?.stat(&path2)).await?;
    let mut resp = ().into_response();
    if meta.kind == Kind::File {
        octet_headers(resp.headers_mut(), meta.size, &path);
    }
    meta_headers(resp.headers_mut(), &meta);
    Ok(resp)
}

async fn post_file(
    State(st): State<AppState>,
    Path(name): Path<String>,
    q: Result<Query<FileQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let path = query_path(q)?;
    let req = WriteRequest::from_headers(&headers)?;
    let st2 = st.clone();
    let name2 = name.clone();
    match req.kind {
        Kind::File => {
            let file = blocking(move || open_root(&st2, &name2)?.open_for_write(&path, &req)).await?;
            receive(body, file).await?;
        }
        Kind::Directory => {
            blocking(move || open_root(&st2, &name2)?.mkdir(&path, &req)).await?;
        }
        Kind::Symlink => {
            let target = read_small(body, MAX_LINK_TARGET).await?;
            blocking(move || open_root(&st2, &name2)?.symlink(&path, &target, &req)).await?;
        }
    }
    st.events.lifecycle("instance-file-pushed", &source(&name));
    Ok(envelope(api::Response::sync_empty(), None))
}

async fn delete_file(
    State(st): State<AppState>,
    Path(name): Path<String>,
    q: Result<Query<FileQuery>, QueryRejection>,
) -> ApiResult {
    let path = query_path(q)?;
    let st2 = st.clone();
    let name2 = name.clone();
    blocking(move || open_root(&st2, &name2)?.remove(&path)).await?;
    st.events.lifecycle("instance-file-deleted", &source(&name));
    Ok(envelope(api::Response::sync_empty(), None))
}

/// A GET body read from `file` as the client takes it: at most `len` bytes (the size the
/// headers announced), a chunk at a time, never the whole file in memory.
fn stream_file(file: std::fs::File, len: u64) -> Body {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::from_std(file).take(len);
    let chunks = futures_util::stream::unfold(Some(file), |state| async move {
        let mut file = state?;
        let mut buf = vec![0u8; CHUNK];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    Body::from_stream(chunks)
}

/// Writes a POST body into `file` as it arrives.
async fn receive(body: Body, file: std::fs::File) -> Result<(), ApiError> {
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;
    let write_err = |e: std::io::Error| -> ApiError {
        let errno = e.raw_os_error().map(Errno::from_raw).unwrap_or(Errno::EIO);
        FsError::from_errno(errno, "write", &e.to_string()).into()
    };
    let mut file = tokio::fs::File::from_std(file);
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError(400, format!("cannot receive the file: {e}")))?;
        if let Ok(data) = frame.into_data() {
            file.write_all(&data).await.map_err(write_err)?;
        }
    }
    file.flush().await.map_err(write_err)?;
    Ok(())
}

/// Reads a small body (a symlink target) whole, refusing more than `max` bytes.
async fn read_small(body: Body, max: usize) -> Result<Vec<u8>, ApiError> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError(400, format!("cannot receive the request: {e}")))?;
        if let Ok(data) = frame.into_data() {
            out.extend_from_slice(&data);
            if out.len() > max {
                return Err(ApiError(400, format!("symlink target longer than {max} bytes")));
            }
        }
    }
    Ok(out)
}

// ---- request headers ----

/// What a POST asks for, from its `X-LXD-*` (or `X-Incus-*`) headers.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteRequest {
    pub kind: Kind,
    pub append: bool,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Permission bits (set-id and sticky bits dropped).
    pub mode: Option<u32>,
    /// Change these on an object that already exists (LXD's `X-LXD-modify-perm`).
    pub modify_uid: bool,
    pub modify_gid: bool,
    pub modify_mode: bool,
}

/// Ids a container has (its map is 65536 wide).
const ID_LIMIT: u32 = 65536;

impl WriteRequest {
    pub fn from_headers(headers: &HeaderMap) -> Result<WriteRequest, FsError> {
        let header = |name: &str| -> Result<Option<String>, FsError> {
            for prefix in ["X-LXD-", "X-Incus-"] {
                if let Some(v) = headers.get(format!("{prefix}{name}")) {
                    let v = v
                        .to_str()
                        .map_err(|_| FsError::bad(format!("header {prefix}{name} is not text")))?;
                    return Ok(Some(v.trim().to_string()));
                }
            }
            Ok(None)
        };
        let id = |name: &str| -> Result<Option<u32>, FsError> {
            let Some(v) = header(name)? else { return Ok(None) };
            // LXD's clients send -1 for "not given".
            if v.is_empty() || v == "-1" {
                return Ok(None);
            }
            let n: u32 = v
                .parse()
                .map_err(|_| FsError::bad(format!("invalid {name} {v:?}: a decimal number is needed")))?;
            if n >= ID_LIMIT {
                return Err(FsError::bad(format!(
                    "{name} {n} is outside the container's ids (0 to {})",
                    ID_LIMIT - 1
                )));
            }
            Ok(Some(n))
        };
        let uid = id("uid")?;
        let gid = id("gid")?;
        let mode = match header("mode")? {
            None => None,
            Some(v) if v.is_empty() || v == "-1" => None,
            Some(v) => {
                let digits = v.strip_prefix("0o").unwrap_or(&v);
                let m = u32::from_str_radix(digits, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| FsError::bad(format!("invalid mode {v:?}: an octal mode like 0644 is needed")))?;
                Some(m & 0o777)
            }
        };
        let kind = match header("type")?.as_deref() {
            None | Some("") | Some("file") => Kind::File,
            Some("directory") => Kind::Directory,
            Some("symlink") => Kind::Symlink,
            Some(other) => {
                return Err(FsError::bad(format!(
                    "bad file type {other:?}: use file, directory or symlink"
                )))
            }
        };
        let append = match header("write")?.as_deref() {
            None | Some("") | Some("overwrite") => false,
            Some("append") => true,
            Some(other) => {
                return Err(FsError::bad(format!(
                    "bad file write mode {other:?}: use overwrite or append"
                )))
            }
        };
        let mut req = WriteRequest {
            kind,
            append,
            uid,
            gid,
            mode,
            modify_uid: false,
            modify_gid: false,
            modify_mode: false,
        };
        if let Some(list) = header("modify-perm")? {
            for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                match item {
                    "uid" => req.modify_uid = true,
                    "gid" => req.modify_gid = true,
                    "mode" => req.modify_mode = true,
                    other => {
                        return Err(FsError::bad(format!(
                            "bad modify-perm entry {other:?}: use uid, gid or mode"
                        )))
                    }
                }
            }
        }
        Ok(req)
    }
}

// ---- errors ----

/// A failure with the HTTP status it deserves.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct FsError {
    pub code: u16,
    pub message: String,
}

impl FsError {
    fn bad(message: String) -> FsError {
        FsError { code: 400, message }
    }

    /// An errno from an operation (`what`) on `path`, with the status LXD gives it.
    fn from_errno(e: Errno, what: &str, path: &str) -> FsError {
        let (code, text) = match e {
            Errno::ENOENT => (404, "not found".to_string()),
            Errno::ENOTDIR => (404, "not found (a parent is not a directory)".to_string()),
            Errno::EEXIST => (409, "already exists".to_string()),
            Errno::EISDIR => (400, "is a directory".to_string()),
            Errno::ENOTEMPTY => (400, "directory not empty".to_string()),
            Errno::ELOOP => (400, "too many levels of symbolic links".to_string()),
            Errno::ENAMETOOLONG => (400, "name too long".to_string()),
            Errno::EACCES | Errno::EPERM => (403, format!("cannot {what}: {}", e.desc().to_lowercase())),
            Errno::EROFS => (400, "read-only file system".to_string()),
            Errno::ENOSPC | Errno::EDQUOT => (507, format!("cannot {what}: {}", e.desc().to_lowercase())),
            _ => (500, format!("cannot {what}: {}", e.desc().to_lowercase())),
        };
        FsError {
            code,
            message: format!("{path}: {text}"),
        }
    }
}

impl From<FsError> for ApiError {
    fn from(e: FsError) -> ApiError {
        if e.code >= 500 {
            tracing::error!(error = %e.message, "file request failed");
        }
        ApiError(e.code, e.message)
    }
}

impl From<ApiError> for FsError {
    fn from(e: ApiError) -> FsError {
        FsError {
            code: e.0,
            message: e.1,
        }
    }
}

// ---- paths ----

/// A path in the instance, cleaned: no empty, `.` or `..` components.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstancePath {
    parts: Vec<String>,
}

impl InstancePath {
    /// Cleans `raw` lexically (`..` stops at `/`). A path without a leading `/` starts at `/`,
    /// as LXD takes it.
    pub fn parse(raw: &str) -> Result<InstancePath, FsError> {
        if raw.is_empty() {
            return Err(FsError::bad("missing path argument: ?path=/absolute/path".into()));
        }
        if raw.contains('\0') {
            return Err(FsError::bad("invalid path: it contains a NUL byte".into()));
        }
        if raw.len() > 4096 {
            return Err(FsError::bad("invalid path: longer than 4096 bytes".into()));
        }
        let mut parts: Vec<String> = Vec::new();
        for c in raw.split('/') {
            match c {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                c if c.len() > 255 => {
                    return Err(FsError::bad(format!(
                        "invalid path: component {c:?} is longer than 255 bytes"
                    )))
                }
                c => parts.push(c.to_string()),
            }
        }
        Ok(InstancePath { parts })
    }

    pub fn is_root(&self) -> bool {
        self.parts.is_empty()
    }

    /// The parent directory, relative to the root (`.` for the root and its children).
    fn parent_rel(&self) -> String {
        match self.parts.len() {
            0 | 1 => ".".into(),
            n => self.parts[..n - 1].join("/"),
        }
    }

    /// The whole path relative to the root.
    fn rel(&self) -> String {
        if self.parts.is_empty() {
            ".".into()
        } else {
            self.parts.join("/")
        }
    }

    /// The last component (`.` for the root).
    fn name(&self) -> &str {
        self.parts.last().map(String::as_str).unwrap_or(".")
    }

    fn file_name(&self) -> &str {
        self.parts.last().map(String::as_str).unwrap_or("/")
    }

    /// The parent, as a path.
    fn parent(&self) -> InstancePath {
        let mut parts = self.parts.clone();
        parts.pop();
        InstancePath { parts }
    }
}

impl std::fmt::Display for InstancePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "/{}", self.parts.join("/"))
    }
}

// ---- the service: one instance's root filesystem ----

/// What an object is, as `X-LXD-type` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Directory,
    Symlink,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Directory => "directory",
            Kind::Symlink => "symlink",
        }
    }
}

/// An object's description, ids as the container sees them.
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    pub kind: Kind,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits.
    pub mode: u32,
    pub size: u64,
}

/// What a GET reads.
pub enum Content {
    File(std::fs::File, Meta),
    Directory(Vec<String>, Meta),
    /// The target, absolute and cleaned, as LXD answers.
    Symlink(String, Meta),
}

/// The root filesystem of one instance, held open: every path is resolved inside it.
pub struct InstanceRoot {
    root: OwnedFd,
    /// The on-disk shift, where the runtime had to shift ownership instead of idmapping.
    shift: Option<IdMap>,
}

/// How every path is resolved: inside the rootfs, never through /proc magic links.
fn in_root() -> ResolveFlag {
    ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS
}

/// `openat2` from `dir` with `resolve`, retried on EAGAIN (which the kernel returns when a
/// concurrent rename might have let `..` escape: it refuses rather than risk it).
fn openat2(dir: &OwnedFd, rel: &str, flags: OFlag, mode: Mode, resolve: ResolveFlag) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .mode(mode)
        .resolve(resolve);
    let mut tries = 0;
    loop {
        match nix::fcntl::openat2(dir.as_fd(), rel, how) {
            Err(Errno::EAGAIN) if tries < 16 => tries += 1,
            r => return r,
        }
    }
}

fn kind_of(st: &FileStat) -> Option<Kind> {
    match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
        SFlag::S_IFREG => Some(Kind::File),
        SFlag::S_IFDIR => Some(Kind::Directory),
        SFlag::S_IFLNK => Some(Kind::Symlink),
        _ => None,
    }
}

impl InstanceRoot {
    /// Opens the rootfs directory `rootfs` (a host path the daemon made: trusted).
    pub fn open(rootfs: &FsPath) -> Result<InstanceRoot, FsError> {
        let root = nix::fcntl::open(
            rootfs,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| FsError {
            code: 500,
            message: format!("cannot open the instance's root filesystem {}: {e}", rootfs.display()),
        })?;
        let shift = corral_runtime::shift::recorded_map(rootfs);
        Ok(InstanceRoot { root, shift })
    }

    fn uid_from_disk(&self, id: u32) -> u32 {
        match &self.shift {
            None => id,
            Some(m) if id >= m.host_uid && id - m.host_uid < m.size => id - m.host_uid,
            Some(_) => 65534,
        }
    }

    fn gid_from_disk(&self, id: u32) -> u32 {
        match &self.shift {
            None => id,
            Some(m) if id >= m.host_gid && id - m.host_gid < m.size => id - m.host_gid,
            Some(_) => 65534,
        }
    }

    fn uid_to_disk(&self, id: u32) -> Uid {
        Uid::from_raw(self.shift.as_ref().map_or(id, |m| m.host_uid + id))
    }

    fn gid_to_disk(&self, id: u32) -> Gid {
        Gid::from_raw(self.shift.as_ref().map_or(id, |m| m.host_gid + id))
    }

    fn meta(&self, st: &FileStat, kind: Kind) -> Meta {
        Meta {
            kind,
            uid: self.uid_from_disk(st.st_uid),
            gid: self.gid_from_disk(st.st_gid),
            mode: st.st_mode & 0o777,
            size: st.st_size.max(0) as u64,
        }
    }

    /// The parent directory of `path`, resolved inside the root.
    fn parent(&self, path: &InstancePath) -> Result<OwnedFd, FsError> {
        openat2(
            &self.root,
            &path.parent_rel(),
            OFlag::O_PATH | OFlag::O_DIRECTORY,
            Mode::empty(),
            in_root(),
        )
        .map_err(|e| FsError::from_errno(e, "open", &path.parent().to_string()))
    }

    fn fail(e: Errno, what: &str, path: &InstancePath) -> FsError {
        FsError::from_errno(e, what, &path.to_string())
    }

    fn not_regular(path: &InstancePath) -> FsError {
        FsError::bad(format!(
            "{path}: not a regular file, directory or symlink (fifos, sockets and devices are not transferred)"
        ))
    }

    /// Describes `path` (a final symlink is described, not followed).
    pub fn stat(&self, path: &InstancePath) -> Result<Meta, FsError> {
        let parent = self.parent(path)?;
        let st = nix::sys::stat::fstatat(&parent, path.name(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| Self::fail(e, "stat", path))?;
        let kind = kind_of(&st).ok_or_else(|| Self::not_regular(path))?;
        Ok(self.meta(&st, kind))
    }

    /// Opens what a GET of `path` answers.
    pub fn read(&self, path: &InstancePath) -> Result<Content, FsError> {
        let parent = self.parent(path)?;
        let name = path.name();
        let st = nix::sys::stat::fstatat(&parent, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| Self::fail(e, "stat", path))?;
        match kind_of(&st) {
            Some(Kind::File) => {
                // O_NOFOLLOW: what was a file a moment ago may have become a symlink.
                // O_NONBLOCK: ... or a fifo, which must not hang the daemon.
                let fd = nix::fcntl::openat(
                    &parent,
                    name,
                    OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NOCTTY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| Self::fail(e, "open", path))?;
                let st = nix::sys::stat::fstat(&fd).map_err(|e| Self::fail(e, "stat", path))?;
                if kind_of(&st) != Some(Kind::File) {
                    return Err(Self::not_regular(path));
                }
                Ok(Content::File(std::fs::File::from(fd), self.meta(&st, Kind::File)))
            }
            Some(Kind::Directory) => {
                let mut dir = nix::dir::Dir::openat(
                    &parent,
                    name,
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| Self::fail(e, "open", path))?;
                let st = nix::sys::stat::fstat(&dir).map_err(|e| Self::fail(e, "stat", path))?;
                let mut entries = Vec::new();
                for entry in dir.iter() {
                    let entry = entry.map_err(|e| Self::fail(e, "list", path))?;
                    let n = entry.file_name().to_bytes();
                    if n != b"." && n != b".." {
                        entries.push(String::from_utf8_lossy(n).into_owned());
                    }
                }
                entries.sort();
                Ok(Content::Directory(entries, self.meta(&st, Kind::Directory)))
            }
            Some(Kind::Symlink) => {
                let target = nix::fcntl::readlinkat(&parent, name).map_err(|e| Self::fail(e, "read the link", path))?;
                let target = String::from_utf8_lossy(target.as_bytes()).into_owned();
                // LXD answers the target made absolute (relative to the link's directory) and
                // cleaned, without resolving it.
                let joined = if target.starts_with('/') {
                    target
                } else {
                    format!("{}/{target}", path.parent())
                };
                let clean = InstancePath::parse(&joined).map(|p| p.to_string()).unwrap_or(joined);
                Ok(Content::Symlink(clean, self.meta(&st, Kind::Symlink)))
            }
            None => Err(Self::not_regular(path)),
        }
    }

    /// Opens (creating it if needed) the regular file `path` for a POST, following a final
    /// symlink inside the root as LXD does, and sets its ownership and mode as `req` says.
    pub fn open_for_write(&self, path: &InstancePath, req: &WriteRequest) -> Result<std::fs::File, FsError> {
        if path.is_root() {
            return Err(Self::fail(Errno::EISDIR, "write", path));
        }
        let rel = path.rel();
        // What is there now (following symlinks, inside the root)? Only a regular file may be
        // opened for writing: opening a fifo or a device has effects of its own.
        let existed = match openat2(&self.root, &rel, OFlag::O_PATH, Mode::empty(), in_root()) {
            Ok(fd) => {
                let st = nix::sys::stat::fstat(&fd).map_err(|e| Self::fail(e, "stat", path))?;
                match kind_of(&st) {
                    Some(Kind::File) => true,
                    Some(Kind::Directory) => return Err(Self::fail(Errno::EISDIR, "write", path)),
                    _ => return Err(Self::not_regular(path)),
                }
            }
            Err(Errno::ENOENT) => false,
            Err(e) => return Err(Self::fail(e, "open", path)),
        };
        let mut flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_NOCTTY | OFlag::O_NONBLOCK;
        flags |= if req.append { OFlag::O_APPEND } else { OFlag::O_TRUNC };
        let fd = openat2(&self.root, &rel, flags, Mode::from_bits_truncate(0o600), in_root())
            .map_err(|e| Self::fail(e, "open", path))?;
        let st = nix::sys::stat::fstat(&fd).map_err(|e| Self::fail(e, "stat", path))?;
        if kind_of(&st) != Some(Kind::File) {
            return Err(Self::not_regular(path));
        }
        if !existed {
            let (uid, gid) = (req.uid.unwrap_or(0), req.gid.unwrap_or(0));
            nix::unistd::fchown(&fd, Some(self.uid_to_disk(uid)), Some(self.gid_to_disk(gid)))
                .map_err(|e| Self::fail(e, "change the owner of", path))?;
            nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(req.mode.unwrap_or(0o644)))
                .map_err(|e| Self::fail(e, "change the mode of", path))?;
        } else {
            let uid = req.uid.filter(|_| req.modify_uid).map(|u| self.uid_to_disk(u));
            let gid = req.gid.filter(|_| req.modify_gid).map(|g| self.gid_to_disk(g));
            if uid.is_some() || gid.is_some() {
                nix::unistd::fchown(&fd, uid, gid).map_err(|e| Self::fail(e, "change the owner of", path))?;
            }
            // After chown, which clears set-id bits.
            if let Some(mode) = req.mode.filter(|_| req.modify_mode) {
                nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(mode))
                    .map_err(|e| Self::fail(e, "change the mode of", path))?;
            }
        }
        Ok(std::fs::File::from(fd))
    }

    /// Creates the directory `path` (its parent must exist). One that exists already is left
    /// as it is, as LXD does.
    pub fn mkdir(&self, path: &InstancePath, req: &WriteRequest) -> Result<(), FsError> {
        let parent = self.parent(path)?;
        let name = path.name();
        match nix::sys::stat::mkdirat(&parent, name, Mode::from_bits_truncate(0o700)) {
            Ok(()) => {}
            Err(Errno::EEXIST) => {
                // Something is there: fine if it is (or leads to) a directory.
                return match openat2(
                    &self.root,
                    &path.rel(),
                    OFlag::O_PATH | OFlag::O_DIRECTORY,
                    Mode::empty(),
                    in_root(),
                ) {
                    Ok(_) => Ok(()),
                    Err(_) => Err(FsError {
                        code: 409,
                        message: format!("{path}: already exists and is not a directory"),
                    }),
                };
            }
            Err(e) => return Err(Self::fail(e, "create", path)),
        }
        let fd = nix::fcntl::openat(
            &parent,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Self::fail(e, "open", path))?;
        let (uid, gid) = (req.uid.unwrap_or(0), req.gid.unwrap_or(0));
        nix::unistd::fchown(&fd, Some(self.uid_to_disk(uid)), Some(self.gid_to_disk(gid)))
            .map_err(|e| Self::fail(e, "change the owner of", path))?;
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(req.mode.unwrap_or(0o755)))
            .map_err(|e| Self::fail(e, "change the mode of", path))?;
        Ok(())
    }

    /// Creates the symlink `path` → `target`. One that exists already with the same target is
    /// left as it is; anything else there is a conflict.
    pub fn symlink(&self, path: &InstancePath, target: &[u8], req: &WriteRequest) -> Result<(), FsError> {
        if target.is_empty() || target.contains(&0) {
            return Err(FsError::bad(format!(
                "{path}: invalid symlink target (the body must be a non-empty path without NUL bytes)"
            )));
        }
        let parent = self.parent(path)?;
        let name = path.name();
        let target = OsStr::from_bytes(target);
        match nix::unistd::symlinkat(target, &parent, name) {
            Ok(()) => {}
            Err(Errno::EEXIST) => {
                return match nix::fcntl::readlinkat(&parent, name) {
                    Ok(current) if current == target => Ok(()),
                    _ => Err(FsError {
                        code: 409,
                        message: format!("{path}: already exists"),
                    }),
                };
            }
            Err(e) => return Err(Self::fail(e, "create", path)),
        }
        if req.uid.is_some() || req.gid.is_some() {
            let uid = req.uid.map(|u| self.uid_to_disk(u));
            let gid = req.gid.map(|g| self.gid_to_disk(g));
            nix::unistd::fchownat(&parent, name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(|e| Self::fail(e, "change the owner of", path))?;
        }
        Ok(())
    }

    /// Removes a file, a symlink (not its target) or an empty directory.
    pub fn remove(&self, path: &InstancePath) -> Result<(), FsError> {
        if path.is_root() {
            return Err(FsError::bad("cannot delete the instance's root directory".into()));
        }
        let parent = self.parent(path)?;
        let name = path.name();
        match nix::unistd::unlinkat(&parent, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) => Ok(()),
            Err(Errno::EISDIR) | Err(Errno::EPERM) => nix::unistd::unlinkat(&parent, name, UnlinkatFlags::RemoveDir)
                .map_err(|e| match e {
                    Errno::ENOTEMPTY | Errno::EEXIST => FsError::bad(format!(
                        "{path}: directory not empty (only empty directories are deleted)"
                    )),
                    e => Self::fail(e, "delete", path),
                }),
            Err(e) => Err(Self::fail(e, "delete", path)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_cleaned_inside_the_root() {
        let p = |s: &str| InstancePath::parse(s).unwrap().to_string();
        assert_eq!(p("/etc/hosts"), "/etc/hosts");
        assert_eq!(p("etc/hosts"), "/etc/hosts");
        assert_eq!(p("/../../../etc/./shadow"), "/etc/shadow");
        assert_eq!(p("/a/b/../../../.."), "/");
        assert_eq!(p("//a//b/"), "/a/b");
        assert!(InstancePath::parse("/").unwrap().is_root());
        assert_eq!(InstancePath::parse("").unwrap_err().code, 400);
        assert_eq!(InstancePath::parse("/a\0b").unwrap_err().code, 400);
        let x = InstancePath::parse("/a/b/c").unwrap();
        assert_eq!((x.parent_rel(), x.name(), x.rel()), ("a/b".into(), "c", "a/b/c".into()));
        let top = InstancePath::parse("/c").unwrap();
        assert_eq!((top.parent_rel(), top.name()), (".".into(), "c"));
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn write_headers_like_lxd() {
        let r = WriteRequest::from_headers(&headers(&[])).unwrap();
        assert_eq!((r.kind, r.append, r.uid, r.mode), (Kind::File, false, None, None));
        let r = WriteRequest::from_headers(&headers(&[
            ("X-LXD-uid", "1000"),
            ("X-LXD-gid", "1001"),
            ("X-LXD-mode", "0640"),
            ("X-LXD-type", "directory"),
            ("X-LXD-write", "append"),
            ("X-LXD-modify-perm", "uid,mode"),
        ]))
        .unwrap();
        assert_eq!(
            (r.kind, r.append, r.uid, r.gid, r.mode),
            (Kind::Directory, true, Some(1000), Some(1001), Some(0o640))
        );
        assert!(r.modify_uid && !r.modify_gid && r.modify_mode);
        let r = WriteRequest::from_headers(&headers(&[("X-Incus-mode", "4755"), ("X-Incus-type", "symlink")])).unwrap();
        assert_eq!((r.kind, r.mode), (Kind::Symlink, Some(0o755)));
        let r = WriteRequest::from_headers(&headers(&[("X-LXD-uid", "-1")])).unwrap();
        assert_eq!(r.uid, None);
        for bad in [
            ("X-LXD-uid", "65536"),
            ("X-LXD-gid", "-5"),
            ("X-LXD-mode", "0999"),
            ("X-LXD-mode", "rwx"),
            ("X-LXD-mode", "077777"),
            ("X-LXD-type", "fifo"),
            ("X-LXD-write", "truncate"),
            ("X-LXD-modify-perm", "owner"),
        ] {
            let e = WriteRequest::from_headers(&headers(&[bad])).unwrap_err();
            assert_eq!(e.code, 400, "{bad:?}: {e}");
        }
    }

    /// The resolution itself, on a scratch directory: symlinks and `..` stay inside.
    #[test]
    fn nothing_resolves_outside_the_root() {
        use std::io::Read;
        struct Scratch(std::path::PathBuf);
        impl Drop for Scratch {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let scratch = Scratch(std::env::temp_dir().join(format!("corrald-files-unit-{}", std::process::id())));
        let base = scratch.0.clone();
        let _ = std::fs::remove_dir_all(&base);
        let (rootfs, outside) = (base.join("rootfs"), base.join("outside"));
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let secret = outside.join("secret");
        std::fs::write(&secret, "HOST").unwrap();
        std::fs::write(rootfs.join("etc/secret"), "MINE").unwrap();
        let up = "../../../../../../../../../..";
        std::os::unix::fs::symlink("/", rootfs.join("abs")).unwrap();
        std::os::unix::fs::symlink(up, rootfs.join("rel")).unwrap();
        std::os::unix::fs::symlink(&secret, rootfs.join("lnk")).unwrap();
        std::os::unix::fs::symlink(format!("{up}{}", secret.display()), rootfs.join("lnkrel")).unwrap();
        let root = InstanceRoot::open(&rootfs).unwrap();
        let p = |s: &str| InstancePath::parse(s).unwrap();
        let read = |s: &str| match root.read(&p(s)) {
            Ok(Content::File(mut f, _)) => {
                let mut out = String::new();
                f.read_to_string(&mut out).unwrap();
                Ok(out)
            }
            Ok(Content::Symlink(t, _)) => Ok(format!("symlink {t}")),
            Ok(Content::Directory(e, _)) => Ok(format!("directory {e:?}")),
            Err(e) => Err(e.code),
        };
        let secret_s = secret.display().to_string();
        for via in ["/abs", "/rel", "/../.."] {
            assert_eq!(read(&format!("{via}/etc/secret")), Ok("MINE".into()), "{via}");
            assert_eq!(read(&format!("{via}{secret_s}")), Err(404), "{via}");
        }
        assert_eq!(read("/lnk"), Ok(format!("symlink {secret_s}")));
        assert_eq!(read("/lnkrel"), Ok(format!("symlink {secret_s}")));
        if nix::unistd::geteuid().is_root() {
            // Writing follows a final symlink, inside the root (where the same directories
            // exist: a dangling link into a missing directory is a 404).
            let inside = rootfs.join(&secret_s[1..]);
            let req = WriteRequest::from_headers(&HeaderMap::new()).unwrap();
            assert_eq!(root.open_for_write(&p("/lnk"), &req).unwrap_err().code, 404);
            std::fs::create_dir_all(inside.parent().unwrap()).unwrap();
            let req = WriteRequest::from_headers(&HeaderMap::new()).unwrap();
            for link in ["/lnk", "/lnkrel", &format!("/abs{secret_s}")] {
                use std::io::Write;
                let mut f = root.open_for_write(&p(link), &req).unwrap();
                f.write_all(b"PWNED").unwrap();
            }
            assert_eq!(std::fs::read_to_string(&secret).unwrap(), "HOST");
            assert_eq!(std::fs::read_to_string(&inside).unwrap(), "PWNED");
            let mut dir_req = req.clone();
            dir_req.kind = Kind::Directory;
            root.mkdir(&p(&format!("/rel{}/made", outside.display())), &dir_req)
                .unwrap();
            assert!(!outside.join("made").exists());
            assert!(inside.parent().unwrap().join("made").is_dir());
            root.remove(&p(&format!("/abs{secret_s}"))).unwrap();
            assert!(secret.exists() && !inside.exists());
        }
    }

    #[test]
    fn errno_statuses() {
        assert_eq!(FsError::from_errno(Errno::ENOENT, "open", "/x").code, 404);
        assert_eq!(
            FsError::from_errno(Errno::ENOENT, "open", "/x").message,
            "/x: not found"
        );
        assert_eq!(FsError::from_errno(Errno::EEXIST, "create", "/x").code, 409);
        assert_eq!(FsError::from_errno(Errno::ENOTEMPTY, "delete", "/x").code, 400);
        assert_eq!(FsError::from_errno(Errno::EIO, "read", "/x").code, 500);
    }
}
