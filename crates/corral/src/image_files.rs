//! `corral image import` and `corral image export`: image files to and from the daemon,
//! streamed (a 1 GB rootfs is never held in memory), with a progress line on a terminal.
//!
//! An unpacked image directory (metadata.yaml, rootfs/, templates/) is packed here into a unified
//! zstd tarball as it is sent (chunked: its size is not known beforehand), and a URL is handed to
//! the daemon, which downloads it (`source.type=url`).
//!
//! A unified image is one file, sent as the body of `POST /1.0/images`; a split image (a
//! metadata tarball and a rootfs) goes as a `multipart/form-data` body with a `metadata` part
//! then a `rootfs` part, as LXD's client sends it. `GET /1.0/images/<fp>/export` answers with
//! the one file, or with the same two parts.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use corral_api::ImageAliasesPost;
use corral_client::multipart::{self, MultipartReader};
use corral_client::{encode_segment, Client};

use crate::images::{image_path, resolve};
use crate::progress::Progress;
use crate::remotes::check_remote_arg;

/// `import FILE [ROOTFS] [KEY=VALUE...] [local:]`, lxc's argument order.
pub fn import(c: &Client, args: &[String], aliases: &[String], public: bool) -> Result<()> {
    let mut files = Vec::new();
    let mut properties = Vec::new();
    let mut raw_properties = BTreeMap::new();
    for arg in args {
        if let Some((k, v)) = arg.split_once('=') {
            raw_properties.insert(k.to_string(), v.to_string());
            properties.push(format!("{}={}", encode_segment(k), encode_segment(v)));
        } else if arg.ends_with(':') {
            check_remote_arg(arg)?;
        } else {
            files.push(Path::new(arg));
        }
    }
    let (metadata, rootfs) = match files.as_slice() {
        [url] if is_url(url) => return import_url(c, &url.to_string_lossy(), aliases, public, raw_properties),
        [dir] if dir.is_dir() => return import_dir(c, dir, aliases, public, &properties),
        [unified] => (*unified, None),
        [metadata, rootfs] => (*metadata, Some(*rootfs)),
        [] => bail!("no image file given"),
        _ => bail!("too many files: give an image file, or a split image's metadata and rootfs files"),
    };
    let filename = metadata
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let properties = properties.join("&");
    let mut headers = vec![
        ("X-LXD-filename", filename.as_str()),
        ("X-LXD-public", if public { "true" } else { "false" }),
    ];
    if !properties.is_empty() {
        headers.push(("X-LXD-properties", properties.as_str()));
    }
    let mut progress = Progress::new("Transferring image");
    let show = |sent, total| progress.update(sent, total);
    let resp = match rootfs {
        None => c.upload("/1.0/images", &headers, metadata, show)?,
        Some(rootfs) => c.upload_form(
            "/1.0/images",
            &headers,
            &[("metadata", metadata), ("rootfs", rootfs)],
            show,
        )?,
    };
    progress.finish();
    let fp = finished_fingerprint(c, &resp)?;
    add_aliases(c, &fp, aliases)?;
    outln!("Image imported with fingerprint: {fp}");
    Ok(())
}

fn is_url(arg: &Path) -> bool {
    let s = arg.to_string_lossy();
    s.starts_with("https://") || s.starts_with("http://")
}

/// The fingerprint an import operation ends with.
fn finished_fingerprint(c: &Client, resp: &corral_api::Response) -> Result<String> {
    let op = c.wait(resp, None)?;
    Ok(op.metadata["fingerprint"]
        .as_str()
        .context("the import finished without saying the image's fingerprint")?
        .to_string())
}

/// `import URL`: the daemon downloads it (LXD's `source.type=url`): the URL's answer names the
/// image file in an `LXD-Image-URL` header and its sha256 in `LXD-Image-Hash`, or is the image.
fn import_url(
    c: &Client,
    url: &str,
    aliases: &[String],
    public: bool,
    properties: BTreeMap<String, String>,
) -> Result<()> {
    let post = corral_api::ImagesPost {
        public,
        properties,
        aliases: aliases
            .iter()
            .map(|n| corral_api::ImageAlias {
                name: n.clone(),
                description: String::new(),
            })
            .collect(),
        source: Some(corral_api::ImagesPostSource {
            kind: "url".into(),
            url: url.to_string(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let resp = c.post("/1.0/images", &post)?;
    let fp = finished_fingerprint(c, &resp)?;
    outln!("Image imported with fingerprint: {fp}");
    Ok(())
}

/// `import DIR`: the unpacked image in `dir` packed into a unified zstd tarball as it is sent;
/// the fingerprint is that tarball's sha256 (the daemon's, checked against the packer's).
fn import_dir(c: &Client, dir: &Path, aliases: &[String], public: bool, properties: &[String]) -> Result<()> {
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "image".into());
    let filename = format!("{name}.tar.zst");
    let properties = properties.join("&");
    let mut headers = vec![
        ("X-LXD-filename", filename.as_str()),
        ("X-LXD-public", if public { "true" } else { "false" }),
    ];
    if !properties.is_empty() {
        headers.push(("X-LXD-properties", properties.as_str()));
    }
    let (mut writer, mut reader) = chunk_channel();
    let dir_owned = dir.to_path_buf();
    let packer = std::thread::spawn(move || {
        let packed = corral_image::pack_directory(&dir_owned, &mut writer, corral_image::Compression::Zstd);
        writer.finish(packed.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        packed
    });
    let mut progress = Progress::new("Packing and transferring image");
    let sent = c.upload_stream("/1.0/images", &headers, &mut reader, |n| progress.update(n, 0));
    drop(reader);
    progress.finish();
    let packed = packer
        .join()
        .map_err(|_| anyhow::anyhow!("the packer of {} failed", dir.display()))?;
    let local_fp = packed.with_context(|| format!("cannot pack {}", dir.display()))?;
    let fp = finished_fingerprint(c, &sent?)?;
    if fp != local_fp {
        bail!("corrald received image {fp}, but {local_fp} was sent: the transfer changed it; import it again");
    }
    add_aliases(c, &fp, aliases)?;
    outln!("Image imported with fingerprint: {fp}");
    Ok(())
}

enum Chunk {
    Data(Vec<u8>),
    Done(std::result::Result<(), String>),
}

/// A pipe between the packer's thread and the upload: a failure of the packer reaches the
/// reader as an error (not as an end of stream, which would send a cut image).
fn chunk_channel() -> (ChunkWriter, ChunkReader) {
    let (tx, rx) = std::sync::mpsc::sync_channel(8);
    (
        ChunkWriter(tx),
        ChunkReader {
            rx,
            buf: Vec::new(),
            pos: 0,
            done: false,
        },
    )
}

struct ChunkWriter(std::sync::mpsc::SyncSender<Chunk>);

impl ChunkWriter {
    fn finish(self, outcome: std::result::Result<(), String>) {
        let _ = self.0.send(Chunk::Done(outcome));
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .send(Chunk::Data(buf.to_vec()))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the upload stopped"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct ChunkReader {
    rx: std::sync::mpsc::Receiver<Chunk>,
    buf: Vec<u8>,
    pos: usize,
    done: bool,
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Chunk::Data(d)) => {
                    self.buf = d;
                    self.pos = 0;
                }
                Ok(Chunk::Done(Ok(()))) => self.done = true,
                Ok(Chunk::Done(Err(e))) => return Err(std::io::Error::other(e)),
                Err(_) => return Err(std::io::Error::other("the packer stopped before the end")),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn add_aliases(c: &Client, fp: &str, aliases: &[String]) -> Result<()> {
    for a in aliases {
        let post = ImageAliasesPost {
            name: a.clone(),
            target: fp.to_string(),
            ..Default::default()
        };
        c.post("/1.0/images/aliases", &post)
            .with_context(|| format!("the image was imported as {fp}, but alias {a} could not be created"))?;
    }
    Ok(())
}

/// `export IMAGE [TARGET]`, with lxc's naming of the files.
pub fn export(c: &Client, image: &str, target: Option<&Path>) -> Result<()> {
    let fp = resolve(c, image)?;
    let (resp, body) = c.download(&format!("{}/export", image_path(&fp)))?;
    let total: u64 = resp.header("Content-Length").and_then(|l| l.parse().ok()).unwrap_or(0);
    let into_dir = target.is_none_or(Path::is_dir);
    let target = target.unwrap_or(Path::new("."));
    let mut progress = Progress::new("Exporting the image");
    let mut written = 0u64;
    let mut copy = |from: &mut dyn Read, to: &Path| -> Result<()> {
        save(from, to, &mut |n| {
            written += n;
            progress.update(written, total);
        })
    };
    let content_type = resp.header("Content-Type").unwrap_or_default();
    if let Some(boundary) = multipart::boundary(content_type) {
        let mut parts = MultipartReader::new(body, &boundary);
        let mut saved = Vec::new();
        while let Some(part) = parts.next_part().context("cannot read the export")? {
            let is_rootfs = match part.name.as_str() {
                "metadata" => false,
                "rootfs" | "rootfs.img" => true,
                other => bail!("the export has an unexpected part {other:?}"),
            };
            let path = if into_dir {
                let fallback = if is_rootfs {
                    format!("{fp}.root")
                } else {
                    format!("meta-{fp}")
                };
                target.join(file_name_or(&part.filename, &fallback))
            } else if is_rootfs {
                with_suffix(target, ".root")
            } else {
                target.to_path_buf()
            };
            if let Err(e) = copy(&mut parts, &path) {
                for p in &saved {
                    let _ = std::fs::remove_file(p);
                }
                return Err(e);
            }
            saved.push(path);
        }
        if saved.len() != 2 {
            bail!(
                "the export of a split image should be a metadata file and a rootfs, not {} files",
                saved.len()
            );
        }
    } else {
        let disposition = resp.header("Content-Disposition").unwrap_or_default();
        let server_name = multipart::disposition_param(disposition, "filename").unwrap_or_default();
        let name = file_name_or(&server_name, &fp);
        let path = if into_dir {
            target.join(&name)
        } else {
            // lxc adds the image's extension to a file name given (busybox → busybox.tar.gz).
            match name.split_once('.') {
                Some((_, ext)) if !target.to_string_lossy().ends_with(&format!(".{ext}")) => {
                    with_suffix(target, &format!(".{ext}"))
                }
                _ => target.to_path_buf(),
            }
        };
        let mut body = body;
        copy(&mut body, &path)?;
    }
    progress.finish();
    outln!("Image exported successfully!");
    Ok(())
}

/// `name` if it is a plain file name (the server chose it: no directories, no `..`), else
/// `fallback`.
fn file_name_or(name: &str, fallback: &str) -> String {
    let plain = !name.is_empty() && !name.contains('/') && name != "." && name != "..";
    if plain { name } else { fallback }.to_string()
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// Copies `from` into a new file `to`, calling `progress` with each count of bytes written; on
/// failure, removes what was written.
pub(crate) fn save(from: &mut dyn Read, to: &Path, progress: &mut dyn FnMut(u64)) -> Result<()> {
    let result = (|| -> Result<()> {
        let file = File::create(to).with_context(|| format!("cannot create {}", to.display()))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("cannot read the image from corrald"),
            };
            out.write_all(&buf[..n])
                .with_context(|| format!("cannot write {}", to.display()))?;
            progress(n as u64);
        }
        out.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .with_context(|| format!("cannot write {}", to.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(to);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_stay_in_the_target() {
        assert_eq!(file_name_or("meta-abc.tar.xz", "x"), "meta-abc.tar.xz");
        assert_eq!(file_name_or("../../etc/passwd", "x"), "x");
        assert_eq!(file_name_or("..", "x"), "x");
        assert_eq!(file_name_or("", "x"), "x");
        assert_eq!(with_suffix(Path::new("/tmp/bb"), ".root"), Path::new("/tmp/bb.root"));
    }
}
