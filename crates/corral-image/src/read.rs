//! Reading image files: fingerprints, the streaming tar pipeline shared by `inspect` and the unpacker, and
//! `inspect`/`verify` themselves.

use std::cell::RefCell;
use std::ffi::OsStr;
use std::fmt::Display;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use sha2::{Digest as _, Sha256};

use crate::compression::{self, detect_format, unsupported_format, Compression, FileFormat};
use crate::{ImageError, ImageFiles, ImageInfo, ImageMetadata};

/// `metadata.yaml` larger than this is refused (real ones are a few kilobytes).
const METADATA_LIMIT: u64 = 16 * 1024 * 1024;

/// A running sha256 over everything read (or written), in order, plus the byte count.
pub(crate) struct Digest {
    hasher: Sha256,
    pub(crate) bytes: u64,
}

impl Digest {
    pub(crate) fn new() -> Self {
        Digest {
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.bytes += data.len() as u64;
    }

    pub(crate) fn hex(self) -> String {
        hex::encode(self.hasher.finalize())
    }

    /// Hash whatever is left of `file` (from its current offset).
    fn hash_rest(&mut self, path: &Path, file: &File) -> Result<(), ImageError> {
        let mut reader = HashingReader {
            file,
            digest: Some(self),
        };
        io::copy(&mut reader, &mut io::sink()).map_err(|source| ImageError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(())
    }

    /// Hash a whole file.
    fn hash_file(&mut self, path: &Path) -> Result<(), ImageError> {
        let file = File::open(path).map_err(|source| ImageError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        self.hash_rest(path, &file)
    }
}

/// Reads a file, feeding every byte read to a [`Digest`]: the fingerprint is taken in the same pass that
/// decompresses and parses the image.
struct HashingReader<'a> {
    file: &'a File,
    digest: Option<&'a mut Digest>,
}

impl Read for HashingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        if let Some(d) = self.digest.as_deref_mut() {
            d.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// What happened on the reading side of a tar stream, so that an error surfacing from the tar crate (which
/// mixes reading and writing errors) can be blamed on the image or on the destination.
#[derive(Default)]
struct ReadState {
    /// The decompressed stream ended.
    eof: bool,
    /// The first error the decompressor (or the file) returned.
    error: Option<String>,
    /// Whether to keep the tail of the decompressed stream in `capture` (see [`ScanCtx::pax_records`]).
    capturing: bool,
    /// The last few MiB of the decompressed stream.
    capture: Vec<u8>,
    /// Stream offset of `capture[0]`.
    capture_start: u64,
}

/// How much of the stream's tail is kept for PAX recovery: far more than any real PAX header.
const CAPTURE_KEEP: usize = 4 << 20;

/// The decompressed stream as the tar reader sees it, recording EOF and errors in a [`ReadState`].
pub(crate) struct Tracked<R> {
    inner: R,
    state: Rc<RefCell<ReadState>>,
}

impl<R: Read> Read for Tracked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(0) if !buf.is_empty() => {
                self.state.borrow_mut().eof = true;
                Ok(0)
            }
            Ok(n) => {
                let mut st = self.state.borrow_mut();
                if st.capturing {
                    st.capture.extend_from_slice(&buf[..n]);
                    if st.capture.len() > 2 * CAPTURE_KEEP {
                        let cut = st.capture.len() - CAPTURE_KEEP;
                        st.capture.drain(..cut);
                        st.capture_start += cut as u64;
                    }
                }
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                self.state.borrow_mut().error.get_or_insert_with(|| e.to_string());
                Err(e)
            }
        }
    }
}

/// The reader a scanned archive is built on.
pub(crate) type Stream<'a> = Tracked<Box<dyn Read + 'a>>;

/// Context handed to the per-entry callback of [`scan`]: which file, and how its reading went so far.
pub(crate) struct ScanCtx {
    pub(crate) path: PathBuf,
    state: Rc<RefCell<ReadState>>,
}

impl ScanCtx {
    /// The image is damaged: prefer the decompressor's own words over the tar crate's.
    pub(crate) fn corrupt(&self, e: impl Display) -> ImageError {
        let detail = self.state.borrow().error.clone().unwrap_or_else(|| e.to_string());
        ImageError::Corrupt {
            path: self.path.clone(),
            detail,
        }
    }

    /// An error from an operation that both reads the archive and writes `dest` (the tar crate's
    /// `unpack_in`): the image's fault if reading failed or ran out, else the destination's.
    pub(crate) fn classify(&self, e: io::Error, dest: &Path) -> ImageError {
        let state = self.state.borrow();
        if state.error.is_some() || state.eof {
            drop(state);
            self.corrupt(e)
        } else {
            ImageError::Unpack {
                image: self.path.clone(),
                dest: dest.to_path_buf(),
                source: e,
            }
        }
    }
}

/// Stream through the tarball at `path` (compressed with `compression`), calling `f` on every entry, then
/// make sure the archive was complete: it must end with its end-of-archive marker, and the rest of the
/// compressed stream (padding, trailer, checksum) must decode cleanly. Every byte read from `file` goes
/// into `digest`; call [`Digest::hash_rest`] afterwards to hash any bytes the decoder left unread.
/// With `keep_pax`, the callback may use [`ScanCtx::pax_records`].
pub(crate) fn scan<'f, F>(
    path: &Path,
    file: &'f File,
    digest: Option<&'f mut Digest>,
    compression: Compression,
    keep_pax: bool,
    configure: impl FnOnce(&mut tar::Archive<Stream<'f>>),
    mut f: F,
) -> Result<(), ImageError>
where
    F: FnMut(&mut tar::Entry<'_, Stream<'f>>, &ScanCtx) -> Result<(), ImageError>,
{
    let state = Rc::new(RefCell::new(ReadState {
        capturing: keep_pax,
        ..ReadState::default()
    }));
    let ctx = ScanCtx {
        path: path.to_path_buf(),
        state: state.clone(),
    };
    let raw = HashingReader { file, digest };
    let decoder = compression::decoder(compression, raw).map_err(|e| ctx.corrupt(e))?;
    let mut archive = tar::Archive::new(Tracked {
        inner: decoder,
        state: state.clone(),
    });
    archive.set_ignore_zeros(false);
    configure(&mut archive);
    let mut count = 0u64;
    for entry in archive.entries().map_err(|e| ctx.corrupt(e))? {
        let mut entry = entry.map_err(|e| ctx.corrupt(e))?;
        count += 1;
        f(&mut entry, &ctx)?;
    }
    if state.borrow().eof {
        let what = if count == 0 {
            "no tar archive in it"
        } else {
            "the tar archive ends before its end-of-archive marker"
        };
        return Err(ctx.corrupt(what));
    }
    // The tar reader stops at the first zero block: read the rest so the decompressor checks the end of
    // its stream (gzip's CRC and length, xz's index and check, zstd's content checksum, ...).
    state.borrow_mut().capturing = false;
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| ctx.corrupt(e))?;
    Ok(())
}

/// An archive path as its normal components: leading `/` and `.` components dropped (as GNU tar and the tar
/// crate do), `..` refused.
pub(crate) fn normalize(path: &Path) -> Result<Vec<&OsStr>, &'static str> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Prefix(_) | Component::RootDir | Component::CurDir => {}
            Component::ParentDir => return Err("the path contains `..`"),
            Component::Normal(n) => out.push(n),
        }
    }
    Ok(out)
}

/// Open a file for reading, naming it in the error.
pub(crate) fn open(path: &Path) -> Result<File, ImageError> {
    File::open(path).map_err(|source| ImageError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The tarball format of `path`, or the right error if it is something else.
pub(crate) fn tarball_compression(path: &Path) -> Result<Compression, ImageError> {
    match detect_format(path)? {
        FileFormat::Tarball(c) => Ok(c),
        other => Err(unsupported_format(path, other)),
    }
}

/// Fingerprint of a unified image: the sha256 of the tarball as given, in lowercase hex.
pub fn fingerprint_unified(path: &Path) -> Result<String, ImageError> {
    let mut d = Digest::new();
    d.hash_file(path)?;
    Ok(d.hex())
}

/// Fingerprint of a split image: the sha256 over the metadata file's bytes followed by the rootfs file's bytes.
pub fn fingerprint_split(metadata: &Path, rootfs: &Path) -> Result<String, ImageError> {
    let mut d = Digest::new();
    d.hash_file(metadata)?;
    d.hash_file(rootfs)?;
    Ok(d.hex())
}

/// Fingerprint of an image, unified or split.
pub fn fingerprint(files: &ImageFiles) -> Result<String, ImageError> {
    match &files.rootfs {
        None => fingerprint_unified(&files.metadata),
        Some(rootfs) => fingerprint_split(&files.metadata, rootfs),
    }
}

/// Check that the image's fingerprint is `expected` (64 hex digits, any case).
pub fn verify(files: &ImageFiles, expected_fingerprint: &str) -> Result<(), ImageError> {
    let expected = expected_fingerprint.trim().to_ascii_lowercase();
    if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ImageError::InvalidFingerprint(expected_fingerprint.to_string()));
    }
    let actual = fingerprint(files)?;
    if actual != expected {
        return Err(ImageError::FingerprintMismatch {
            files: files.to_string(),
            expected,
            actual,
        });
    }
    Ok(())
}

/// Read an image without unpacking it: its fingerprint, its `metadata.yaml`, its size.
///
/// Everything is streamed in one pass per file: the bytes are hashed as they are decompressed, and the whole
/// tarball (for a split image, both tarballs; a squashfs rootfs is only hashed) is decoded to its end, so a
/// truncated or corrupt download is reported here, naming the file, rather than half-way through an unpack.
/// Nothing is written to disk.
pub fn inspect(files: &ImageFiles) -> Result<ImageInfo, ImageError> {
    let meta_path = files.metadata.as_path();
    let meta_compression = tarball_compression(meta_path)?;
    let mut digest = Digest::new();
    let file = open(meta_path)?;
    let mut yaml: Option<Vec<u8>> = None;
    let mut saw_rootfs = false;
    scan(
        meta_path,
        &file,
        Some(&mut digest),
        meta_compression,
        false,
        |_| {},
        |entry, ctx| {
            let path = entry.path().map_err(|e| ctx.corrupt(e))?.into_owned();
            let Ok(comps) = normalize(&path) else { return Ok(()) };
            match comps.as_slice() {
                [name] if *name == "metadata.yaml" && entry.header().entry_type().is_file() => {
                    let mut buf = Vec::new();
                    entry
                        .take(METADATA_LIMIT + 1)
                        .read_to_end(&mut buf)
                        .map_err(|e| ctx.corrupt(e))?;
                    if buf.len() as u64 > METADATA_LIMIT {
                        return Err(ImageError::InvalidMetadata {
                            path: ctx.path.clone(),
                            detail: format!("larger than {} MiB", METADATA_LIMIT >> 20),
                        });
                    }
                    yaml = Some(buf);
                }
                [first, ..] if *first == "rootfs" => saw_rootfs = true,
                _ => {}
            }
            Ok(())
        },
    )?;
    digest.hash_rest(meta_path, &file)?;
    drop(file);

    let yaml = yaml.ok_or_else(|| ImageError::NoMetadata {
        path: meta_path.to_path_buf(),
    })?;
    let text = String::from_utf8(yaml).map_err(|e| ImageError::InvalidMetadata {
        path: meta_path.to_path_buf(),
        detail: format!("not UTF-8 text ({e})"),
    })?;
    let metadata = ImageMetadata::from_yaml(&text).map_err(|detail| ImageError::InvalidMetadata {
        path: meta_path.to_path_buf(),
        detail,
    })?;

    let rootfs_format = match &files.rootfs {
        None => {
            if !saw_rootfs {
                return Err(ImageError::NoRootfs {
                    path: meta_path.to_path_buf(),
                });
            }
            FileFormat::Tarball(meta_compression)
        }
        Some(rootfs) => {
            let format = detect_format(rootfs)?;
            let file = open(rootfs)?;
            match format {
                FileFormat::Tarball(c) => scan(rootfs, &file, Some(&mut digest), c, false, |_| {}, |_, _| Ok(()))?,
                FileFormat::Squashfs => {}
                FileFormat::Qcow2 => return Err(unsupported_format(rootfs, format)),
            }
            digest.hash_rest(rootfs, &file)?;
            format
        }
    };
    Ok(ImageInfo {
        size: digest.bytes,
        fingerprint: digest.hex(),
        metadata,
        split: files.rootfs.is_some(),
        rootfs_format,
    })
}
