//! `corral file push|pull|delete|edit`: files inside instances, with `lxc file`'s syntax.
//!
//! Instance paths are written `NAME/PATH` (`c1/etc/hosts`); the daemon's API is
//! `/1.0/instances/NAME/files?path=/PATH`. Files stream both ways (nothing is held in memory
//! whole). As with lxc, `push` keeps the local file's mode and owner unless `--mode`, `--uid`
//! or `--gid` say otherwise; an existing file keeps its own unless they are given.

use std::fs::{self, File};
use std::io::{self, IsTerminal, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use corral_client::{decode, encode_segment, Client};

use crate::remotes::local_name;
use serde_json::Value;

#[derive(Subcommand)]
#[command(defer = true)]
pub enum FileCmd {
    /// Push files into instances
    #[command(
        after_help = "Examples:\n  corral file push /etc/hosts c1/etc/hosts\n  corral file push -p app.conf c1/etc/app/\n  \
                      corral file push -r ./site c1/var/www/\n  corral file push --uid 1000 --gid 1000 --mode 0600 key c1/home/u/key"
    )]
    Push(PushArgs),
    /// Pull files from instances
    #[command(
        after_help = "Examples:\n  corral file pull c1/etc/hosts .\n  corral file pull -r c1/etc/apt ./apt\n  \
                      corral file pull c1/etc/hostname -"
    )]
    Pull(PullArgs),
    /// Delete files (or empty directories) in instances
    #[command(alias = "rm", after_help = "Example:\n  corral file delete c1/tmp/a c1/tmp/b")]
    Delete {
        /// NAME/PATH of each file
        #[arg(required = true, value_name = "NAME/PATH")]
        paths: Vec<String>,
    },
    /// Edit a file in an instance with $EDITOR (or replace it with stdin when that is not a terminal)
    #[command(after_help = "Examples:\n  corral file edit c1/etc/hosts\n  echo c1 | corral file edit c1/etc/hostname")]
    Edit {
        /// NAME/PATH of the file
        #[arg(value_name = "NAME/PATH")]
        path: String,
    },
}

#[derive(Args)]
pub struct PushArgs {
    /// Local files ("-" for stdin)
    #[arg(required = true, value_name = "SOURCE")]
    pub sources: Vec<String>,
    /// Destination NAME/PATH (ending in / for a directory)
    #[arg(value_name = "NAME/PATH")]
    pub target: String,
    /// Push directories recursively
    #[arg(short = 'r', long)]
    pub recursive: bool,
    /// Create any missing parent directories
    #[arg(short = 'p', long = "create-dirs")]
    pub create_dirs: bool,
    /// Owner of the file in the instance (default: the local file's)
    #[arg(long)]
    pub uid: Option<u32>,
    /// Group of the file in the instance (default: the local file's)
    #[arg(long)]
    pub gid: Option<u32>,
    /// Mode of the file in the instance, octal (default: the local file's)
    #[arg(long)]
    pub mode: Option<String>,
}

#[derive(Args)]
pub struct PullArgs {
    /// NAME/PATH of each file
    #[arg(required = true, value_name = "NAME/PATH")]
    pub sources: Vec<String>,
    /// Local destination: a file, a directory, or "-" for stdout
    #[arg(value_name = "TARGET")]
    pub target: String,
    /// Pull directories recursively
    #[arg(short = 'r', long)]
    pub recursive: bool,
    /// Create any missing parent directories of the target
    #[arg(short = 'p', long = "create-dirs")]
    pub create_dirs: bool,
}

pub fn file(c: &Client, cmd: FileCmd) -> Result<()> {
    match cmd {
        FileCmd::Push(a) => push(c, &a),
        FileCmd::Pull(a) => pull(c, &a),
        FileCmd::Delete { paths } => {
            for p in &paths {
                let (name, path) = split(p)?;
                c.delete(&url(&name, &path))?;
            }
            Ok(())
        }
        FileCmd::Edit { path } => edit(c, &path),
    }
}

// ---- paths ----

/// `NAME/PATH` → (name, cleaned absolute path).
fn split(spec: &str) -> Result<(String, String)> {
    let Some((name, path)) = spec.split_once('/') else {
        bail!("invalid instance path {spec:?}: use NAME/PATH, e.g. c1/etc/hosts");
    };
    if name.is_empty() {
        bail!("invalid instance path {spec:?}: the instance name is missing (NAME/PATH)");
    }
    Ok((local_name(name)?.to_string(), clean(&format!("/{path}"))))
}

/// Lexical cleaning of an absolute instance path (`..` stops at `/`).
fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

fn join(dir: &str, name: &str) -> String {
    clean(&format!("{dir}/{name}"))
}

fn dirname(path: &str) -> String {
    match path.rsplit_once('/') {
        Some((d, _)) if !d.is_empty() => d.to_string(),
        _ => "/".into(),
    }
}

fn basename(path: &str) -> String {
    path.rsplit('/').find(|s| !s.is_empty()).unwrap_or("/").to_string()
}

fn url(name: &str, path: &str) -> String {
    format!(
        "/1.0/instances/{}/files?path={}",
        encode_segment(name),
        encode_segment(path)
    )
}

/// `--mode` as lxc reads it: octal, three or four digits.
fn parse_mode(s: &str) -> Result<u32> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .with_context(|| format!("invalid mode {s:?}: use an octal mode like 0644"))
}

// ---- push ----

/// Headers of a POST to the file API.
#[derive(Default)]
struct Push<'a> {
    kind: &'a str,
    uid: Option<u32>,
    gid: Option<u32>,
    mode: Option<u32>,
    /// Which of uid, gid, mode to change if the file exists already.
    modify: Vec<&'static str>,
}

impl Push<'_> {
    fn headers(&self) -> Vec<(String, String)> {
        let mut h = vec![("X-LXD-type".to_string(), self.kind.to_string())];
        if let Some(u) = self.uid {
            h.push(("X-LXD-uid".into(), u.to_string()));
        }
        if let Some(g) = self.gid {
            h.push(("X-LXD-gid".into(), g.to_string()));
        }
        if let Some(m) = self.mode {
            h.push(("X-LXD-mode".into(), format!("{:04o}", m & 0o777)));
        }
        if !self.modify.is_empty() {
            h.push(("X-LXD-modify-perm".into(), self.modify.join(",")));
        }
        h
    }

    /// Sends `body` (a local file's contents, or the target of a symlink) to `name`:`path`.
    fn send(&self, c: &Client, name: &str, path: &str, body: Body<'_>) -> Result<()> {
        let headers = self.headers();
        let refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let u = url(name, path);
        match body {
            Body::File(file) => {
                c.upload(&u, &refs, file, |_, _| {})
                    .with_context(|| format!("cannot push {} to {name}{path}", file.display()))?;
            }
            Body::Bytes(b) => {
                let resp = c.raw("POST", &u, &refs, Some(b))?;
                decode(resp).with_context(|| format!("cannot create {name}{path}"))?;
            }
        }
        Ok(())
    }
}

enum Body<'a> {
    File(&'a Path),
    Bytes(&'a [u8]),
}

/// What the instance has at `path`: its `X-LXD-type`, or `None` when there is nothing.
fn remote_type(c: &Client, name: &str, path: &str) -> Result<Option<String>> {
    match c.download(&url(name, path)) {
        Ok((resp, _body)) => Ok(Some(resp.header("X-LXD-type").unwrap_or("file").to_string())),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// `mkdir -p` in the instance, as lxc does it: new directories get `mode` (the daemon's
/// default without), `uid` and `gid`.
fn mkdir_p(c: &Client, name: &str, path: &str, mode: Option<u32>, uid: Option<u32>, gid: Option<u32>) -> Result<()> {
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // The deepest ancestor that exists.
    let mut have = 0;
    for i in (1..=parts.len()).rev() {
        let cur = format!("/{}", parts[..i].join("/"));
        match remote_type(c, name, &cur)? {
            Some(t) if t == "directory" => {
                have = i;
                break;
            }
            Some(_) => bail!("{name}{cur} exists and is not a directory"),
            None => {}
        }
    }
    for i in have + 1..=parts.len() {
        let cur = format!("/{}", parts[..i].join("/"));
        let p = Push {
            kind: "directory",
            uid,
            gid,
            mode,
            ..Default::default()
        };
        p.send(c, name, &cur, Body::Bytes(b""))?;
    }
    Ok(())
}

/// Writes stdin to a temporary file (the upload needs its length first).
fn spool_stdin() -> Result<TempFile> {
    let tmp = TempFile::new("stdin")?;
    let mut f = File::create(&tmp.0).with_context(|| format!("cannot create {}", tmp.0.display()))?;
    io::copy(&mut io::stdin().lock(), &mut f).context("cannot read stdin")?;
    f.flush()?;
    Ok(tmp)
}

fn push(c: &Client, a: &PushArgs) -> Result<()> {
    let (name, target) = split(&a.target)?;
    let target_is_dir = a.target.ends_with('/') || target == "/";
    let mode = a.mode.as_deref().map(parse_mode).transpose()?;
    if a.recursive {
        if a.uid.is_some() || a.gid.is_some() || a.mode.is_some() {
            bail!("--uid, --gid and --mode can't be used with --recursive: each file keeps its own");
        }
        if a.create_dirs {
            let meta = fs::metadata(&a.sources[0]).with_context(|| format!("cannot read {}", a.sources[0]))?;
            mkdir_p(
                c,
                &name,
                &target,
                Some(meta.mode() & 0o777),
                Some(meta.uid()),
                Some(meta.gid()),
            )?;
        }
        for src in &a.sources {
            push_tree(c, &name, Path::new(src), &target)?;
        }
        return Ok(());
    }
    if a.sources.len() > 1 && !target_is_dir {
        bail!("more than one file to push: the target must be a directory ending in / (e.g. {name}/tmp/)");
    }
    // Modify-perm: an existing file gets only what was asked for explicitly.
    let mut modify = Vec::new();
    if a.uid.is_some() {
        modify.push("uid");
    }
    if a.gid.is_some() {
        modify.push("gid");
    }
    if a.mode.is_some() {
        modify.push("mode");
    }
    for src in &a.sources {
        let stdin_tmp;
        let (local, meta) = if src == "-" {
            stdin_tmp = spool_stdin()?;
            (stdin_tmp.0.clone(), None)
        } else {
            let meta = fs::metadata(src).with_context(|| format!("cannot read {src}"))?;
            if meta.is_dir() {
                bail!("{src} is a directory: use -r to push it");
            }
            (PathBuf::from(src), Some(meta))
        };
        let dest = if target_is_dir {
            join(&target, &basename(src))
        } else {
            target.clone()
        };
        let uid = a.uid.or(meta.as_ref().map(|m| m.uid()));
        let gid = a.gid.or(meta.as_ref().map(|m| m.gid()));
        if a.create_dirs {
            mkdir_p(c, &name, &dirname(&dest), None, uid, gid)?;
        }
        let p = Push {
            kind: "file",
            uid,
            gid,
            mode: mode.or(meta.as_ref().map(|m| m.mode() & 0o777)),
            modify: modify.clone(),
        };
        p.send(c, &name, &dest, Body::File(&local))?;
    }
    Ok(())
}

/// Pushes `src` (a file, symlink or directory, recursively) into the directory `target`.
fn push_tree(c: &Client, name: &str, src: &Path, target: &str) -> Result<()> {
    let meta = fs::symlink_metadata(src).with_context(|| format!("cannot read {}", src.display()))?;
    let base = src
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| basename(&src.to_string_lossy()));
    let dest = join(target, &base);
    let p = |kind| Push {
        kind,
        uid: Some(meta.uid()),
        gid: Some(meta.gid()),
        mode: Some(meta.mode() & 0o777),
        ..Default::default()
    };
    let ft = meta.file_type();
    if ft.is_dir() {
        p("directory").send(c, name, &dest, Body::Bytes(b""))?;
        let mut entries: Vec<PathBuf> = fs::read_dir(src)
            .with_context(|| format!("cannot list {}", src.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<io::Result<_>>()?;
        entries.sort();
        for e in entries {
            push_tree(c, name, &e, &dest)?;
        }
    } else if ft.is_symlink() {
        let link = fs::read_link(src).with_context(|| format!("cannot read the link {}", src.display()))?;
        p("symlink").send(c, name, &dest, Body::Bytes(link.as_os_str().as_encoded_bytes()))?;
    } else if ft.is_file() {
        p("file").send(c, name, &dest, Body::File(src))?;
    } else {
        bail!(
            "{} isn't a supported file type (only files, directories and symlinks)",
            src.display()
        );
    }
    Ok(())
}

// ---- pull ----

/// A file from the instance, headers read and body ready.
struct Remote {
    kind: String,
    mode: u32,
    body: corral_client::files::Download,
}

fn get(c: &Client, name: &str, path: &str) -> Result<Remote> {
    let (resp, body) = c
        .download(&url(name, path))
        .with_context(|| format!("cannot pull {name}{path}"))?;
    let mode = resp
        .header("X-LXD-mode")
        .and_then(|m| u32::from_str_radix(m, 8).ok())
        .unwrap_or(0o644);
    Ok(Remote {
        kind: resp.header("X-LXD-type").unwrap_or("file").to_string(),
        mode,
        body,
    })
}

fn read_text(r: impl Read) -> Result<String> {
    let mut s = Vec::new();
    r.take(1 << 20).read_to_end(&mut s)?;
    Ok(String::from_utf8_lossy(&s).into_owned())
}

/// Writes a pulled file to `dest` (`-`: stdout) with the instance's mode.
fn save(mut body: impl Read, dest: &Path, mode: u32) -> Result<()> {
    if dest == Path::new("-") {
        let mut out = io::stdout().lock();
        io::copy(&mut body, &mut out)?;
        out.flush()?;
        return Ok(());
    }
    let mut f = File::create(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    fs::set_permissions(dest, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", dest.display()))?;
    io::copy(&mut body, &mut f).with_context(|| format!("cannot write {}", dest.display()))?;
    f.flush()?;
    Ok(())
}

fn pull(c: &Client, a: &PullArgs) -> Result<()> {
    let target = PathBuf::from(&a.target);
    let to_stdout = a.target == "-";
    let mut target_is_dir = false;
    if !to_stdout {
        match fs::metadata(&target) {
            Ok(m) => {
                target_is_dir = m.is_dir();
                if !target_is_dir && a.sources.len() > 1 {
                    bail!("more than one file to pull, but {} is not a directory", a.target);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if a.target.ends_with('/') || a.sources.len() > 1 {
                    fs::create_dir_all(&target).with_context(|| format!("cannot create {}", a.target))?;
                    target_is_dir = true;
                } else if a.create_dirs {
                    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
                        fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
                    }
                }
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", a.target)),
        }
    }
    for src in &a.sources {
        let (name, path) = split(src)?;
        let mut remote = get(c, &name, &path)?;
        if remote.kind == "directory" {
            if !a.recursive {
                bail!("{src} is a directory: use -r to pull it");
            }
            if to_stdout {
                bail!("cannot pull a directory to stdout");
            }
            if !target.exists() {
                fs::create_dir_all(&target).with_context(|| format!("cannot create {}", a.target))?;
            }
            pull_tree(c, &name, &path, &target)?;
            continue;
        }
        let dest = if target_is_dir {
            target.join(basename(&path))
        } else {
            target.clone()
        };
        if remote.kind == "symlink" {
            let mut link = read_text(remote.body)?;
            if !to_stdout && !a.recursive {
                std::os::unix::fs::symlink(link.trim_end_matches('\n'), &dest)
                    .with_context(|| format!("cannot create the symlink {}", dest.display()))?;
                continue;
            }
            // Follow the link (inside the instance) to what it leads to.
            let mut from = path.clone();
            let mut hops = 0;
            loop {
                let link_path = link.trim_end_matches('\n');
                let next = if link_path.starts_with('/') {
                    clean(link_path)
                } else {
                    join(&dirname(&from), link_path)
                };
                remote = get(c, &name, &next)?;
                if remote.kind != "symlink" {
                    break;
                }
                hops += 1;
                if hops > 255 {
                    bail!("{src}: too many levels of symbolic links");
                }
                from = next;
                link = read_text(remote.body)?;
            }
            if remote.kind == "directory" {
                bail!("{src} leads to a directory: pull it with -r");
            }
        }
        save(remote.body, &dest, remote.mode)?;
    }
    Ok(())
}

/// Pulls `path` (anything) into the local directory `dir`, recursively.
fn pull_tree(c: &Client, name: &str, path: &str, dir: &Path) -> Result<()> {
    let remote = get(c, name, path)?;
    let dest = dir.join(basename(path));
    match remote.kind.as_str() {
        "directory" => {
            let listing: Value = serde_json::from_str(&read_text(remote.body)?)
                .with_context(|| format!("bad directory listing of {name}{path}"))?;
            let entries: Vec<String> = serde_json::from_value(listing["metadata"].clone())
                .with_context(|| format!("bad directory listing of {name}{path}"))?;
            fs::DirBuilder::new()
                .mode(remote.mode)
                .create(&dest)
                .with_context(|| format!("cannot create {}", dest.display()))?;
            for e in entries {
                pull_tree(c, name, &join(path, &e), &dest)?;
            }
        }
        "symlink" => {
            let link = read_text(remote.body)?;
            std::os::unix::fs::symlink(link.trim_end_matches('\n'), &dest)
                .with_context(|| format!("cannot create the symlink {}", dest.display()))?;
        }
        "file" => save(remote.body, &dest, remote.mode)?,
        other => bail!("{name}{path}: unknown file type {other:?}"),
    }
    Ok(())
}

// ---- edit ----

/// A temporary file, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(hint: &str) -> Result<TempFile> {
        let p = std::env::temp_dir().join(format!("corral_file_edit_{}_{hint}", uuid::Uuid::new_v4().simple()));
        Ok(TempFile(p))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn same_contents(a: &Path, b: &Path) -> Result<bool> {
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

fn edit(c: &Client, spec: &str) -> Result<()> {
    let (name, path) = split(spec)?;
    // An existing file keeps its mode and owner: no uid, gid or mode is sent.
    let plain = Push {
        kind: "file",
        ..Default::default()
    };
    if !io::stdin().is_terminal() {
        let tmp = spool_stdin()?;
        return plain.send(c, &name, &path, Body::File(&tmp.0));
    }
    let ext = Path::new(&path)
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    let work = TempFile::new(&format!("edit{ext}"))?;
    let orig = TempFile::new("orig")?;
    let remote = get(c, &name, &path)?;
    if remote.kind != "file" {
        bail!("{spec} is a {}: only regular files can be edited", remote.kind);
    }
    save(remote.body, &work.0, 0o600)?;
    fs::copy(&work.0, &orig.0).context("cannot keep a copy of the file")?;
    let editor = ["VISUAL", "EDITOR"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|e| !e.trim().is_empty()))
        .unwrap_or_else(|| "vi".into());
    // Through the shell, so that EDITOR may carry arguments ("code -w").
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(&work.0)
        .status()
        .with_context(|| format!("cannot run the editor {editor:?}"))?;
    if !status.success() {
        bail!("the editor {editor:?} failed ({status}): {spec} is unchanged");
    }
    if same_contents(&work.0, &orig.0)? {
        return Ok(());
    }
    plain.send(c, &name, &path, Body::File(&work.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_paths() {
        assert_eq!(split("c1/etc/hosts").unwrap(), ("c1".into(), "/etc/hosts".into()));
        assert_eq!(split("c1/").unwrap(), ("c1".into(), "/".into()));
        assert_eq!(split("c1/a/../../b/./c/").unwrap(), ("c1".into(), "/b/c".into()));
        assert!(split("c1").is_err());
        assert!(split("/etc").is_err());
        assert_eq!(dirname("/a/b"), "/a");
        assert_eq!(dirname("/a"), "/");
        assert_eq!(basename("/a/b"), "b");
        assert_eq!(basename("x"), "x");
        assert_eq!(join("/a", "b"), "/a/b");
        assert_eq!(url("c1", "/etc/a b"), "/1.0/instances/c1/files?path=%2Fetc%2Fa%20b");
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("644").unwrap(), 0o644);
        assert_eq!(parse_mode("0600").unwrap(), 0o600);
        assert!(parse_mode("999").is_err());
        assert!(parse_mode("rw").is_err());
    }

    #[test]
    fn push_headers() {
        let p = Push {
            kind: "file",
            uid: Some(1000),
            gid: None,
            mode: Some(0o640),
            modify: vec!["uid", "mode"],
        };
        let h = p.headers();
        assert!(h.contains(&("X-LXD-type".into(), "file".into())));
        assert!(h.contains(&("X-LXD-uid".into(), "1000".into())));
        assert!(h.contains(&("X-LXD-mode".into(), "0640".into())));
        assert!(h.contains(&("X-LXD-modify-perm".into(), "uid,mode".into())));
        assert!(!h.iter().any(|(k, _)| k == "X-LXD-gid"));
    }
}
