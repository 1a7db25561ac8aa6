//! The tarball side of backups (instances' and custom volumes'): making one as a stream, and
//! reading an upload.
//!
//! Export. A plain backup is GNU tar over bind mounts of the volumes (made in a private mount
//! namespace of that process, so they vanish with it), through the compressor: nothing is
//! copied. An optimized one (`optimized_storage`) holds the driver's native streams (`btrfs
//! send`) as members; tar needs each member's size before its bytes, so each stream is sent
//! twice: once only counted, then for real, written as it comes, and a second pass that does
//! not give the same number of bytes fails the export rather than write a wrong archive. Nothing
//! is staged at full size either way. A failure half-way is reported through [`Export::failure`]
//! and ends the HTTP body with an error, so the client never takes a cut archive for whole.
//!
//! Import. The upload is decompressed by its own tool (found from its first bytes) and read
//! here: `backup/index.yaml` comes first; a plain backup's bytes (those read included) then go
//! to `tar -x` in a staging directory; an optimized backup's members are received by the
//! pool's driver (`btrfs receive`) as they arrive, into the staging directory too.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use corral_storage::{Driver, Vol};

use crate::backups::BackupIndex;
use crate::instances::{Result, ServiceError};

fn bad(msg: impl Into<String>) -> ServiceError {
    ServiceError::BadRequest(msg.into())
}

fn internal(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Internal(e.to_string())
}

/// The compressor command of an algorithm (`None` for no compression).
fn compressor(algorithm: &str) -> Result<Option<&'static [&'static str]>> {
    Ok(match algorithm {
        "" | "gzip" => Some(&["gzip", "-c", "-6"]),
        "none" => None,
        "xz" => Some(&["xz", "-c", "-T0", "-3"]),
        "zstd" => Some(&["zstd", "-c", "-q", "-T0", "-3"]),
        other => {
            return Err(bad(format!(
                "unknown compression algorithm {other:?}: use none, gzip, xz or zstd"
            )))
        }
    })
}

/// Checks a compression algorithm's name.
pub fn check_compression(algorithm: &str) -> Result<()> {
    compressor(algorithm).map(|_| ())
}

/// Refuses an optimized backup on a pool whose driver has no native stream format.
pub fn check_optimizable(pool: &crate::storage::Pool) -> Result<()> {
    match pool.driver.info().name {
        "btrfs" => Ok(()),
        other => Err(bad(format!(
            "optimized_storage backups are btrfs send streams: pool {} is {other}; leave optimized_storage false",
            pool.name
        ))),
    }
}

/// What a tarball's first bytes say about its compression: the decompressor to put before tar.
pub fn decompressor_for(head: &[u8]) -> Option<&'static [&'static str]> {
    if head.starts_with(&[0x1f, 0x8b]) {
        Some(&["gzip", "-dc"])
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Some(&["xz", "-dc", "-T0"])
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some(&["zstd", "-dc", "-q"])
    } else if head.starts_with(b"BZh") {
        Some(&["bzip2", "-dc"])
    } else {
        None
    }
}

/// Why an export failed half-way, set before its output ends.
pub type Failure = Arc<Mutex<Option<String>>>;

/// A backup tarball being made: `child`'s stdout is the tarball; `stage` is the caller's to
/// remove once the child has exited; `failure` is set if the export broke off.
pub struct Export {
    pub child: Child,
    pub stage: PathBuf,
    pub failure: Failure,
}

/// One directory of a plain backup tarball: `backup/<at>` holds the tree at `from`.
pub struct Member {
    pub at: String,
    pub from: PathBuf,
}

impl Member {
    pub fn dir(at: &str, from: PathBuf) -> Member {
        Member {
            at: at.to_string(),
            from,
        }
    }
}

/// Writes `backup/index.yaml` under `stage`.
fn write_index(stage: &Path, index: &BackupIndex) -> Result<Vec<u8>> {
    let backup = stage.join("backup");
    std::fs::create_dir_all(&backup).map_err(internal)?;
    let text = serde_json::to_vec_pretty(index).map_err(internal)?;
    std::fs::write(backup.join("index.yaml"), &text).map_err(internal)?;
    Ok(text)
}

/// Starts a plain backup tarball: `backup/index.yaml` first, then each member's tree, through
/// the compressor of `algorithm`.
pub fn spawn_tarball(stage: &Path, index: &BackupIndex, members: &[Member], algorithm: &str) -> Result<Export> {
    let compress = compressor(algorithm)?;
    write_index(stage, index)?;
    // The top-level entries after index.yaml, in the members' order (names of our own making).
    let mut tops: Vec<&str> = Vec::new();
    for m in members {
        let top = m.at.split('/').next().unwrap_or_default();
        if !tops.contains(&top) {
            tops.push(top);
        }
    }
    // sh -c SCRIPT sh STAGE [AT FROM]...: bind each tree in, then tar.
    let mut script = String::from(
        "set -e\nstage=$1; shift\n\
         while [ $# -gt 0 ]; do mkdir -p \"$stage/backup/$1\"; mount --bind \"$2\" \"$stage/backup/$1\"; shift 2; done\n",
    );
    script.push_str(
        "tar -C \"$stage\" --create --numeric-owner --xattrs --xattrs-include='*' --acls --sparse \
         --file - backup/index.yaml",
    );
    for t in tops {
        script.push_str(&format!(" 'backup/{t}'"));
    }
    if let Some(c) = compress {
        script.push_str(" | ");
        script.push_str(&c.join(" "));
    }
    script.push('\n');
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script, "sh"])
        .arg(stage);
    for m in members {
        cmd.arg(&m.at).arg(&m.from);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| internal(format!("cannot run the export: {e}")))?;
    Ok(Export {
        child,
        stage: stage.to_path_buf(),
        failure: Failure::default(),
    })
}

/// One native stream of an optimized backup: `backup/<at>` is the driver's send of `snapshot`,
/// incremental from `parent`.
pub struct Stream {
    pub at: String,
    pub snapshot: Vol,
    pub parent: Option<Vol>,
}

/// The streams of an optimized backup of `vol`: each snapshot (`<snap_dir>/<name>.bin`)
/// incremental from the one before, then the backup's own point-in-time snapshot `frozen`
/// (`<main>.bin`) incremental from the last.
pub fn chain(vol: &Vol, snapshots: &[String], frozen: &str, main: &str, snap_dir: &str) -> Vec<Stream> {
    let mut out = Vec::new();
    let mut parent: Option<Vol> = None;
    for s in snapshots {
        let snap = vol.snapshot(s);
        out.push(Stream {
            at: format!("{snap_dir}/{s}.bin"),
            snapshot: snap.clone(),
            parent: parent.replace(snap),
        });
    }
    out.push(Stream {
        at: format!("{main}.bin"),
        snapshot: vol.snapshot(frozen),
        parent,
    });
    out
}

/// Starts an optimized backup tarball: `backup/index.yaml`, then each stream, in order (a
/// stream's parent before it), through the compressor of `algorithm`.
pub fn spawn_optimized_tarball(
    stage: &Path,
    index: &BackupIndex,
    driver: Arc<dyn Driver>,
    streams: Vec<Stream>,
    algorithm: &str,
) -> Result<Export> {
    let compress = compressor(algorithm)?;
    let index_text = write_index(stage, index)?;
    let argv: &[&str] = compress.unwrap_or(&["cat"]);
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| internal(format!("cannot run {}: {e}", argv[0])))?;
    let mut sink = child.stdin.take().expect("piped");
    let failure = Failure::default();
    let failed = failure.clone();
    std::thread::spawn(move || {
        let written = (|| -> std::result::Result<(), String> {
            append(
                &mut sink,
                "backup/index.yaml",
                index_text.len() as u64,
                &mut &index_text[..],
            )?;
            for s in &streams {
                let name = format!("backup/{}", s.at);
                // First pass: the size tar's header needs.
                let size = send(&*driver, s, &mut std::io::sink())?;
                // Second pass: the bytes, which must come to that size.
                let mut child = driver.send(&s.snapshot, s.parent.as_ref()).map_err(|e| e.to_string())?;
                let mut out = child.stdout.take().expect("piped");
                let appended = append(&mut sink, &name, size, &mut out);
                drop(out);
                let status = child.wait_with_output().map_err(|e| e.to_string())?;
                appended?;
                if !status.status.success() {
                    return Err(format!(
                        "btrfs send of {} failed: {}",
                        s.snapshot,
                        String::from_utf8_lossy(&status.stderr).trim()
                    ));
                }
            }
            // The end of the archive: two zero blocks.
            sink.write_all(&[0u8; 1024]).map_err(|e| e.to_string())
        })();
        if let Err(e) = written {
            tracing::warn!(error = %e, "optimized backup export failed");
            *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
        }
        drop(sink);
    });
    Ok(Export {
        child,
        stage: stage.to_path_buf(),
        failure,
    })
}

/// Runs one send into `to`; the bytes it gave.
fn send(driver: &dyn Driver, s: &Stream, to: &mut dyn Write) -> std::result::Result<u64, String> {
    let mut child = driver.send(&s.snapshot, s.parent.as_ref()).map_err(|e| e.to_string())?;
    let mut out = child.stdout.take().expect("piped");
    let copied = std::io::copy(&mut out, to);
    drop(out);
    let status = child.wait_with_output().map_err(|e| e.to_string())?;
    if !status.status.success() {
        return Err(format!(
            "btrfs send of {} failed: {}",
            s.snapshot,
            String::from_utf8_lossy(&status.stderr).trim()
        ));
    }
    copied.map_err(|e| e.to_string())
}

/// Appends a regular file member of `size` bytes read from `from`, which must give exactly that.
fn append(to: &mut dyn Write, name: &str, size: u64, from: &mut dyn Read) -> std::result::Result<(), String> {
    let mut header = tar::Header::new_gnu();
    header.set_path(name).map_err(|e| e.to_string())?;
    header.set_size(size);
    header.set_mode(0o600);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mtime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    header.set_cksum();
    to.write_all(header.as_bytes()).map_err(|e| e.to_string())?;
    let copied = std::io::copy(&mut from.take(size), to).map_err(|e| e.to_string())?;
    let mut extra = [0u8; 1];
    let more = from.read(&mut extra).map_err(|e| e.to_string())?;
    if copied != size || more != 0 {
        return Err(format!(
            "{name}: the stream's second pass gave {} bytes where the first gave {size}: the \
             volume changed during the export; export again",
            if more != 0 {
                "more".to_string()
            } else {
                copied.to_string()
            }
        ));
    }
    let pad = (512 - size % 512) % 512;
    to.write_all(&vec![0u8; pad as usize]).map_err(|e| e.to_string())
}

/// What an upload held: its index, and for an optimized backup where the driver received each
/// stream (by member path under `backup/`, e.g. `snapshots/s1.bin`).
pub struct Unpacked {
    pub index: BackupIndex,
    pub received: BTreeMap<String, PathBuf>,
}

/// Reads an uploaded backup tarball (compressed or not, as its first bytes say): a plain one
/// is unpacked into `stage`, an optimized one's streams received by `pool`'s driver into
/// `stage/received/`. `what` names the expected kind in errors.
pub fn unpack(body: &mut (dyn Read + Send), stage: &Path, pool: &crate::storage::Pool, what: &str) -> Result<Unpacked> {
    let mut head = vec![0u8; 8];
    let mut got = 0;
    while got < head.len() {
        match body.read(&mut head[got..]).map_err(internal)? {
            0 => break,
            n => got += n,
        }
    }
    head.truncate(got);
    if head.is_empty() {
        return Err(bad("the backup is empty: send the tarball as the request body"));
    }
    let Some(argv) = decompressor_for(&head) else {
        return unpack_tar(&mut (&head[..]).chain(body), stage, pool, what);
    };
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| internal(format!("cannot run {}: {e}", argv[0])))?;
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = child.stdout.take().expect("piped");
    let (fed, read) = std::thread::scope(|scope| {
        let feeder = scope.spawn(move || {
            let r = stdin
                .write_all(&head)
                .and_then(|_| std::io::copy(body, &mut stdin).map(|_| ()));
            drop(stdin);
            r
        });
        let read = unpack_tar(&mut stdout, stage, pool, what);
        if read.is_ok() {
            // What follows the archive's end (padding) is read, so the decompressor ends well.
            let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        }
        // On a failure the decompressor, then the feeder, stop on the closed pipe.
        drop(stdout);
        (
            feeder.join().unwrap_or_else(|_| Err(std::io::Error::other("panicked"))),
            read,
        )
    });
    let out = child.wait_with_output().map_err(internal)?;
    let read = read?;
    if let Err(e) = fed {
        return Err(bad(format!("the backup upload broke off: {e}")));
    }
    if !out.status.success() {
        return Err(bad(format!(
            "the backup is not a valid tarball: {} says {}",
            argv[0],
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(read)
}

/// Reads a decompressed tar stream (see [`unpack`]).
fn unpack_tar(tar_in: &mut dyn Read, stage: &Path, pool: &crate::storage::Pool, what: &str) -> Result<Unpacked> {
    // The first member, read here: index.yaml, which says what the rest is.
    let mut first = vec![0u8; 512];
    read_full(tar_in, &mut first)?;
    let header = tar::Header::from_byte_slice(&first);
    let first_name = header
        .path()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut index = None;
    if first_name == "backup/index.yaml" {
        let size = header
            .entry_size()
            .map_err(|e| bad(format!("the backup is not a valid tarball: {e}")))?;
        if size > 16 << 20 {
            return Err(bad("backup/index.yaml is over 16 MiB: not a backup"));
        }
        let mut body = vec![0u8; size.div_ceil(512) as usize * 512];
        read_full(tar_in, &mut body)?;
        first.extend_from_slice(&body);
        let text = String::from_utf8_lossy(&body[..size as usize]);
        let parsed: BackupIndex =
            serde_saphyr::from_str(&text).map_err(|e| bad(format!("backup/index.yaml is invalid: {e}")))?;
        index = Some(parsed);
    }
    if let Some(index) = index.filter(|i| i.optimized) {
        let backend = if index.backend.is_empty() {
            "unknown"
        } else {
            &index.backend
        };
        let driver = pool.driver.info().name;
        if backend != driver {
            return Err(bad(format!(
                "this optimized backup holds {backend} streams: it can only be imported into a {backend} pool, \
                 and pool {} is {driver} (make the backup without optimized_storage to import it anywhere)",
                pool.name
            )));
        }
        let received = receive_streams(tar_in, stage, pool)?;
        return Ok(Unpacked { index, received });
    }
    let mut child = Command::new("tar")
        .args([
            "-x",
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            "--acls",
            "-C",
        ])
        .arg(stage)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| internal(format!("cannot run tar: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped");
    let copied = stdin
        .write_all(&first)
        .and_then(|_| std::io::copy(tar_in, &mut stdin).map(|_| ()));
    drop(stdin);
    let out = child.wait_with_output().map_err(internal)?;
    if !out.status.success() {
        return Err(bad(format!(
            "the backup is not a valid tarball: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    if let Err(e) = copied {
        return Err(bad(format!("the backup upload broke off: {e}")));
    }
    let index_text = std::fs::read_to_string(stage.join("backup/index.yaml"))
        .map_err(|_| bad(format!("the tarball has no backup/index.yaml: it is not {what}")))?;
    let index = serde_saphyr::from_str(&index_text).map_err(|e| bad(format!("backup/index.yaml is invalid: {e}")))?;
    Ok(Unpacked {
        index,
        received: BTreeMap::new(),
    })
}

fn read_full(from: &mut dyn Read, buf: &mut [u8]) -> Result<()> {
    from.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            bad("the backup is not a valid tarball: it ends early")
        } else {
            bad(format!("the backup upload broke off: {e}"))
        }
    })
}

/// Receives each `.bin` member of an optimized backup as it arrives.
fn receive_streams(
    tar_in: &mut dyn Read,
    stage: &Path,
    pool: &crate::storage::Pool,
) -> Result<BTreeMap<String, PathBuf>> {
    let mut received = BTreeMap::new();
    let mut archive = tar::Archive::new(tar_in);
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("the backup is not a valid tarball: {e}")))?;
    for (i, entry) in entries.enumerate() {
        let mut entry = entry.map_err(|e| bad(format!("the backup is not a valid tarball: {e}")))?;
        let path = entry.path().map_err(internal)?.to_string_lossy().into_owned();
        let Some(rel) = path.strip_prefix("backup/") else {
            continue;
        };
        if !rel.ends_with(".bin") || rel.contains("..") {
            continue;
        }
        let size = entry.size();
        let scratch = stage.join("received").join(i.to_string());
        let mut counted = Counted {
            inner: &mut entry,
            n: 0,
        };
        let made = pool
            .driver
            .receive(&mut counted, &scratch)
            .map_err(|e| bad(format!("cannot receive {path}: {e}")))?;
        if counted.n < size {
            return Err(bad(format!("the backup is not a valid tarball: {path} ends early")));
        }
        received.insert(rel.to_string(), made);
    }
    Ok(received)
}

/// A reader that counts what it gave.
struct Counted<'a> {
    inner: &'a mut dyn Read,
    n: u64,
}

impl Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}
