//! Packing a root filesystem (and templates) into a unified or split image.
//!
//! The tarballs are GNU-format (GNU tar's default, what LXD's and Incus' image builders produce): numeric
//! ownership only (no user or group names, so nothing is remapped through the host's `/etc/passwd`), large
//! ids and sizes in base-256, long names through GNU long-name entries, and xattrs in PAX `SCHILY.xattr.*`
//! records (as GNU tar `--xattrs` writes them). Entries are in a deterministic order (`metadata.yaml`, then
//! `templates/`, then `rootfs/`, each directory's entries sorted by name bytes), `metadata.yaml` gets the
//! image's creation date as mtime, and the compressors are deterministic, so the same tree and metadata give
//! the same fingerprint. Output files are written under a temporary name next to the destination and renamed
//! into place once complete and synced.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tar::{Builder, EntryType, Header};
use tracing::warn;

use crate::compression::Encoder;
use crate::read::Digest;
use crate::{Compression, ImageError, ImageMetadata};

/// xattrs not carried into images: SELinux labels belong to the host that built the tree.
const SKIPPED_XATTRS: &[&[u8]] = &[b"security.selinux"];

/// Pack `rootfs` (a directory), `metadata` and the optional `templates` directory into the unified image `out`
/// (`metadata.yaml`, `templates/`, `rootfs/` in one tarball). Returns the image's fingerprint.
pub fn pack_unified(
    rootfs: &Path,
    metadata: &ImageMetadata,
    templates: Option<&Path>,
    out: &Path,
    compression: Compression,
) -> Result<String, ImageError> {
    check_inputs(rootfs, metadata, templates, &[out])?;
    let tmp = TempOut::create(out)?;
    let mut digest = Digest::new();
    let file = write_tarball(Sink::File(tmp.open()?), out, compression, &mut digest, |b| {
        append_metadata(b, metadata)?;
        if let Some(t) = templates {
            append_tree(b, t, Some("templates"))?;
        }
        append_tree(b, rootfs, Some("rootfs"))
    })?;
    tmp.commit(file.into_file())?;
    Ok(digest.hex())
}

/// Pack an unpacked image directory (`metadata.yaml`, `rootfs/` and, if there, `templates/`: what
/// `lxc image import DIR` takes) into a unified image written to `out` as it is made (nothing is
/// kept on disk). `metadata.yaml` goes in as written in the directory, dated from its
/// `creation_date`; everything else as in [`pack_unified`], so the same directory gives the same
/// fingerprint (the sha256 of the bytes written), which is returned.
pub fn pack_directory(dir: &Path, out: &mut dyn Write, compression: Compression) -> Result<String, ImageError> {
    let meta_path = dir.join("metadata.yaml");
    let yaml = fs::read_to_string(&meta_path).map_err(|e| {
        ImageError::InvalidInput(format!(
            "{} is not an image directory: cannot read {}: {e} (it needs metadata.yaml and rootfs/)",
            dir.display(),
            meta_path.display()
        ))
    })?;
    let metadata = ImageMetadata::from_yaml(&yaml)
        .map_err(|e| ImageError::InvalidInput(format!("invalid {}: {e}", meta_path.display())))?;
    let rootfs = dir.join("rootfs");
    let templates = Some(dir.join("templates")).filter(|t| t.is_dir());
    check_inputs(&rootfs, &metadata, templates.as_deref(), &[])?;
    let mut digest = Digest::new();
    write_tarball(Sink::Stream(out), dir, compression, &mut digest, |b| {
        append_metadata_bytes(b, yaml.as_bytes(), metadata.creation_date)?;
        if let Some(t) = &templates {
            append_tree(b, t, Some("templates"))?;
        }
        append_tree(b, &rootfs, Some("rootfs"))
    })?;
    Ok(digest.hex())
}

/// Pack a split image: `out_metadata` gets `metadata.yaml` and `templates/`, `out_rootfs` the tree of `rootfs`
/// (at the top level of the tarball), both compressed with `compression`. Returns the image's fingerprint
/// (over the metadata file then the rootfs file).
pub fn pack_split(
    rootfs: &Path,
    metadata: &ImageMetadata,
    templates: Option<&Path>,
    out_metadata: &Path,
    out_rootfs: &Path,
    compression: Compression,
) -> Result<String, ImageError> {
    if out_metadata == out_rootfs {
        return Err(ImageError::InvalidInput(format!(
            "the metadata and the rootfs of a split image cannot both be written to {}",
            out_metadata.display()
        )));
    }
    check_inputs(rootfs, metadata, templates, &[out_metadata, out_rootfs])?;
    let tmp_meta = TempOut::create(out_metadata)?;
    let tmp_rootfs = TempOut::create(out_rootfs)?;
    let mut digest = Digest::new();
    let meta_file = write_tarball(
        Sink::File(tmp_meta.open()?),
        out_metadata,
        compression,
        &mut digest,
        |b| {
            append_metadata(b, metadata)?;
            match templates {
                Some(t) => append_tree(b, t, Some("templates")),
                None => Ok(()),
            }
        },
    )?
    .into_file();
    let rootfs_file = write_tarball(
        Sink::File(tmp_rootfs.open()?),
        out_rootfs,
        compression,
        &mut digest,
        |b| append_tree(b, rootfs, None),
    )?
    .into_file();
    tmp_meta.commit(meta_file)?;
    if let Err(e) = tmp_rootfs.commit(rootfs_file) {
        // Do not leave a metadata file that belongs to no rootfs.
        let _ = fs::remove_file(out_metadata);
        return Err(e);
    }
    Ok(digest.hex())
}

/// Refuse what would give a broken image (or pack the output into itself).
fn check_inputs(
    rootfs: &Path,
    metadata: &ImageMetadata,
    templates: Option<&Path>,
    outs: &[&Path],
) -> Result<(), ImageError> {
    if !rootfs.is_dir() {
        return Err(ImageError::InvalidInput(format!(
            "rootfs {} is not a directory",
            rootfs.display()
        )));
    }
    if let Some(t) = templates {
        if !t.is_dir() {
            return Err(ImageError::InvalidInput(format!(
                "templates {} is not a directory",
                t.display()
            )));
        }
    }
    for (container_path, tpl) in &metadata.templates {
        let name = Path::new(&tpl.template);
        if tpl.template.is_empty() || !name.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(ImageError::InvalidInput(format!(
                "metadata template for {container_path} has an invalid file name {:?}: it must be a relative path \
                 inside templates/",
                tpl.template
            )));
        }
        let found = templates.map(|t| t.join(name)).filter(|p| p.is_file());
        if found.is_none() {
            return Err(ImageError::InvalidInput(format!(
                "metadata template {} for {container_path} is not in the templates directory ({}); add it or \
                 drop the template from the metadata",
                tpl.template,
                templates.map_or("none given".to_string(), |t| t.display().to_string())
            )));
        }
    }
    let canon_rootfs = fs::canonicalize(rootfs).map_err(|source| ImageError::Pack {
        path: rootfs.to_path_buf(),
        source,
    })?;
    for out in outs {
        let parent = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if let Ok(canon_parent) = fs::canonicalize(parent) {
            if canon_parent.starts_with(&canon_rootfs) {
                return Err(ImageError::InvalidInput(format!(
                    "the image file {} must not be inside the rootfs {} it is made from",
                    out.display(),
                    rootfs.display()
                )));
            }
        }
    }
    Ok(())
}

/// An output file written under a temporary name, renamed into place by [`TempOut::commit`], removed if
/// dropped before.
struct TempOut {
    tmp: PathBuf,
    out: PathBuf,
    committed: bool,
}

impl TempOut {
    fn create(out: &Path) -> Result<Self, ImageError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = out
            .file_name()
            .ok_or_else(|| ImageError::InvalidInput(format!("{} cannot be an image file name", out.display())))?;
        let mut tmp_name = OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(
            ".tmp-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let tmp = out.with_file_name(tmp_name);
        if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|source| ImageError::Write {
                path: out.to_path_buf(),
                source,
            })?;
        }
        Ok(TempOut {
            tmp,
            out: out.to_path_buf(),
            committed: false,
        })
    }

    fn open(&self) -> Result<File, ImageError> {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&self.tmp)
            .map_err(|source| ImageError::Write {
                path: self.out.clone(),
                source,
            })
    }

    fn commit(mut self, file: File) -> Result<(), ImageError> {
        let err = |source| ImageError::Write {
            path: self.out.clone(),
            source,
        };
        file.sync_all().map_err(err)?;
        drop(file);
        fs::rename(&self.tmp, &self.out).map_err(err)?;
        self.committed = true;
        if let Some(parent) = self.out.parent().filter(|p| !p.as_os_str().is_empty()) {
            // Make the rename itself durable; not fatal if the filesystem cannot sync directories.
            if let Ok(dir) = File::open(parent) {
                let _ = dir.sync_all();
            }
        }
        Ok(())
    }
}

impl Drop for TempOut {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Hashes what goes to the file (the compressed bytes: the fingerprint).
struct HashingWriter<'a, W> {
    inner: W,
    digest: &'a mut Digest,
}

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.digest.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Where a tarball goes: a file of ours, or a caller's stream.
enum Sink<'a> {
    File(File),
    Stream(&'a mut dyn Write),
}

impl Sink<'_> {
    fn into_file(self) -> File {
        match self {
            Sink::File(f) => f,
            Sink::Stream(_) => unreachable!("only file sinks are committed"),
        }
    }
}

impl Write for Sink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::File(f) => f.write(buf),
            Sink::Stream(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::File(f) => f.flush(),
            Sink::Stream(s) => s.flush(),
        }
    }
}

type Tarball<'a> = Builder<Encoder<HashingWriter<'a, BufWriter<Sink<'a>>>>>;

/// A read error on the tree being packed, told apart from write errors on the image.
#[derive(Debug)]
struct SourceError {
    path: PathBuf,
    source: io::Error,
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.source)
    }
}

impl std::error::Error for SourceError {}

fn source_err(path: &Path, source: io::Error) -> io::Error {
    io::Error::other(SourceError {
        path: path.to_path_buf(),
        source,
    })
}

/// Write one tarball to `sink` (for `out`, named in errors), with `fill` adding the entries;
/// returns the sink (a file unsynced).
fn write_tarball<'a>(
    sink: Sink<'a>,
    out: &Path,
    compression: Compression,
    digest: &'a mut Digest,
    fill: impl FnOnce(&mut Tarball<'a>) -> io::Result<()>,
) -> Result<Sink<'a>, ImageError> {
    let to_error = |e: io::Error| match e.get_ref().and_then(|i| i.downcast_ref::<SourceError>()) {
        Some(_) => {
            let inner = e.into_inner().and_then(|i| i.downcast::<SourceError>().ok());
            match inner {
                Some(se) => {
                    let se = *se;
                    ImageError::Pack {
                        path: se.path,
                        source: se.source,
                    }
                }
                None => unreachable!("checked above"),
            }
        }
        None => ImageError::Write {
            path: out.to_path_buf(),
            source: e,
        },
    };
    let writer = HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, sink),
        digest,
    };
    let mut builder = Builder::new(Encoder::new(compression, writer).map_err(to_error)?);
    builder.mode(tar::HeaderMode::Complete);
    builder.follow_symlinks(false);
    fill(&mut builder).map_err(to_error)?;
    let encoder = builder.into_inner().map_err(to_error)?;
    let writer = encoder.finish().map_err(to_error)?;
    writer.inner.into_inner().map_err(|e| to_error(e.into_error()))
}

/// `metadata.yaml`: root-owned, 0644, dated from the image's creation date.
fn append_metadata(b: &mut Tarball<'_>, metadata: &ImageMetadata) -> io::Result<()> {
    append_metadata_bytes(b, metadata.to_yaml().as_bytes(), metadata.creation_date)
}

/// `metadata.yaml` with the content `yaml`: root-owned, 0644, dated `creation_date`.
fn append_metadata_bytes(b: &mut Tarball<'_>, yaml: &[u8], creation_date: i64) -> io::Result<()> {
    let mut h = Header::new_gnu();
    h.set_entry_type(EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(creation_date.max(0) as u64);
    h.set_size(yaml.len() as u64);
    b.append_data(&mut h, "metadata.yaml", yaml)
}

/// Add the tree at `src` as `prefix/` (or at the top level, with the root as `./`).
fn append_tree(b: &mut Tarball<'_>, src: &Path, prefix: Option<&str>) -> io::Result<()> {
    // The tree's own root may be reached through a symlink: describe the directory, not the link.
    let src = &fs::canonicalize(src).map_err(|e| source_err(src, e))?;
    let meta = fs::metadata(src).map_err(|e| source_err(src, e))?;
    let archive_root = match prefix {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from("."),
    };
    let mut walker = Walker {
        builder: b,
        links: HashMap::new(),
    };
    walker.add(src, &archive_root, &meta)?;
    walker.add_children(src, prefix.map(PathBuf::from).unwrap_or_default())
}

struct Walker<'a, 'b> {
    builder: &'a mut Tarball<'b>,
    /// First archive path of each multiply-linked file, by (device, inode).
    links: HashMap<(u64, u64), PathBuf>,
}

impl Walker<'_, '_> {
    fn add_children(&mut self, dir: &Path, archive_dir: PathBuf) -> io::Result<()> {
        let mut names: Vec<OsString> = fs::read_dir(dir)
            .map_err(|e| source_err(dir, e))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()
            .map_err(|e| source_err(dir, e))?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let src = dir.join(&name);
            let apath = archive_dir.join(&name);
            let meta = fs::symlink_metadata(&src).map_err(|e| source_err(&src, e))?;
            self.add(&src, &apath, &meta)?;
            if meta.is_dir() {
                self.add_children(&src, apath)?;
            }
        }
        Ok(())
    }

    fn add(&mut self, src: &Path, apath: &Path, meta: &fs::Metadata) -> io::Result<()> {
        let ft = meta.file_type();
        let mut h = Header::new_gnu();
        h.set_mode(meta.mode() & 0o7777);
        h.set_uid(meta.uid().into());
        h.set_gid(meta.gid().into());
        h.set_mtime(meta.mtime().max(0) as u64);
        h.set_size(0);

        if ft.is_file() && meta.nlink() > 1 {
            if let Some(first) = self.links.get(&(meta.dev(), meta.ino())) {
                h.set_entry_type(EntryType::Link);
                let first = first.clone();
                return self.builder.append_link(&mut h, apath, first);
            }
            self.links.insert((meta.dev(), meta.ino()), apath.to_path_buf());
        }

        let xattrs = read_xattrs(src)?;
        if !xattrs.is_empty() {
            self.append_pax(apath, &xattrs, meta.mtime())?;
        }

        if ft.is_dir() {
            h.set_entry_type(EntryType::Directory);
            // GNU tar writes directories with a trailing slash.
            let mut p = apath.as_os_str().to_os_string();
            if !p.as_bytes().ends_with(b"/") {
                p.push("/");
            }
            self.builder.append_data(&mut h, Path::new(&p), io::empty())
        } else if ft.is_file() {
            h.set_entry_type(EntryType::Regular);
            h.set_size(meta.len());
            let file = OpenOptions::new()
                .read(true)
                .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
                .open(src)
                .map_err(|e| source_err(src, e))?;
            let data = ExactReader {
                file,
                left: meta.len(),
                path: src,
            };
            self.builder.append_data(&mut h, apath, data)
        } else if ft.is_symlink() {
            h.set_entry_type(EntryType::Symlink);
            let target = fs::read_link(src).map_err(|e| source_err(src, e))?;
            self.builder.append_link(&mut h, apath, target)
        } else {
            use std::os::unix::fs::FileTypeExt;
            if ft.is_char_device() || ft.is_block_device() {
                h.set_entry_type(if ft.is_char_device() {
                    EntryType::Char
                } else {
                    EntryType::Block
                });
                let rdev = meta.rdev();
                let major = u32::try_from(nix::sys::stat::major(rdev)).map_err(io::Error::other)?;
                let minor = u32::try_from(nix::sys::stat::minor(rdev)).map_err(io::Error::other)?;
                h.set_device_major(major)?;
                h.set_device_minor(minor)?;
            } else if ft.is_fifo() {
                h.set_entry_type(EntryType::Fifo);
            } else {
                warn!(path = %src.display(), "socket not packed (tar cannot hold sockets)");
                return Ok(());
            }
            self.builder.append_data(&mut h, apath, io::empty())
        }
    }

    /// A PAX extended header (`x`) carrying `SCHILY.xattr.NAME=VALUE` records for the next entry.
    fn append_pax(&mut self, apath: &Path, xattrs: &[(OsString, Vec<u8>)], mtime: i64) -> io::Result<()> {
        let mut data = Vec::new();
        for (name, value) in xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(name.as_bytes());
            pax_record(&mut data, &key, value);
        }
        let mut h = Header::new_ustar();
        // The name of an extended header is informational; GNU tar uses "DIR/PaxHeaders/NAME".
        let base = apath.file_name().map(|n| n.as_bytes()).unwrap_or(b"root");
        let mut name = b"PaxHeaders/".to_vec();
        name.extend_from_slice(&base[..base.len().min(88)]);
        h.as_old_mut().name[..name.len()].copy_from_slice(&name);
        h.set_entry_type(EntryType::XHeader);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime.max(0) as u64);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.builder.append(&h, data.as_slice())
    }
}

/// Append one PAX record, `"LEN KEY=VALUE\n"`, where LEN counts the whole record including itself.
pub(crate) fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// The xattrs of `path` (not following a symlink), sorted by name.
fn read_xattrs(path: &Path) -> io::Result<Vec<(OsString, Vec<u8>)>> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOTSUP as i32) => return Ok(Vec::new()),
        Err(e) => return Err(source_err(path, e)),
    };
    let mut out = Vec::new();
    for name in names {
        if SKIPPED_XATTRS.contains(&name.as_bytes()) {
            continue;
        }
        if let Some(value) = xattr::get(path, &name).map_err(|e| source_err(path, e))? {
            out.push((name, value));
        }
    }
    out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(out)
}

/// Reads exactly the `left` bytes the header announced: a file that shrinks while being packed is an error
/// (rather than a corrupt archive), one that grows is cut at its size when it was listed.
struct ExactReader<'a> {
    file: File,
    left: u64,
    path: &'a Path,
}

impl Read for ExactReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.file.read(&mut buf[..want]).map_err(|e| source_err(self.path, e))?;
        if n == 0 {
            return Err(source_err(
                self.path,
                io::Error::new(io::ErrorKind::UnexpectedEof, "the file shrank while being packed"),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::pax_record;

    #[test]
    fn pax_record_lengths() {
        let mut v = Vec::new();
        pax_record(&mut v, b"path", b"x");
        assert_eq!(v, b"9 path=x\n");
        // Where adding the length's own digits carries it to one more digit.
        let mut v = Vec::new();
        pax_record(&mut v, b"k", &[b'v'; 93]);
        let s = String::from_utf8(v).unwrap();
        let (len, _) = s.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), s.len());
        for n in 0..300 {
            let mut v = Vec::new();
            pax_record(&mut v, b"SCHILY.xattr.user.x", &vec![b'a'; n]);
            let s = String::from_utf8(v).unwrap();
            let (len, _) = s.split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), s.len(), "value length {n}");
        }
    }
}
