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

/// PAX records: (key, value), in order.
pub(crate) type PaxRecords = Vec<(Vec<u8>, Vec<u8>)>;

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
    /// The image is damaged: prefer the decompressor's own words over the tar crate's, and say plainly when
    /// the data simply ran out.
    pub(crate) fn corrupt(&self, e: impl Display) -> ImageError {
        let state = self.state.borrow();
        let detail = match (&state.error, state.eof) {
            (Some(decoder_error), _) => decoder_error.clone(),
            (None, true) => "the data ends in the middle of an archive entry".to_string(),
            (None, false) => e.to_string(),
        };
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

    /// The PAX records (key, value) of `entry`, exactly as written.
    ///
    /// The tar crate (0.4.46) splits PAX data on newlines, so a binary value holding a 0x0a byte (a
    /// `security.capability` with some capability sets, an IMA signature) comes out as "malformed pax
    /// extension" records (composefs/tar-rs#428). When that happens the records are re-read, by their length
    /// prefixes, from the tail of the stream kept since the entry's header was read; and if one of the
    /// records the tar crate itself acts on (`path`, `linkpath`, `size`, `uid`, `gid`) was among those it
    /// could not read, the entry is refused rather than unpacked under a wrong name or owner.
    pub(crate) fn pax_records(&self, entry: &mut tar::Entry<'_, Stream<'_>>) -> Result<PaxRecords, ImageError> {
        let header_pos = entry.raw_header_position();
        let shown = entry.path_bytes().into_owned();
        let mut ok = Vec::new();
        let mut broken = false;
        match entry.pax_extensions().map_err(|e| self.corrupt(e))? {
            None => return Ok(ok),
            Some(exts) => {
                for ext in exts {
                    match ext {
                        Ok(e) => ok.push((e.key_bytes().to_vec(), e.value_bytes().to_vec())),
                        Err(_) => broken = true,
                    }
                }
            }
        }
        if !broken {
            return Ok(ok);
        }
        let recovered = {
            let st = self.state.borrow();
            recover_pax(&st.capture, st.capture_start, header_pos, &ok)
        };
        let Some(records) = recovered else {
            tracing::warn!(
                image = %self.path.display(),
                entry = %String::from_utf8_lossy(&shown),
                "unreadable PAX records skipped (xattrs may be missing)"
            );
            return Ok(ok);
        };
        for key in [&b"path"[..], b"linkpath", b"size", b"uid", b"gid"] {
            let Some((_, written)) = records.iter().rev().find(|(k, _)| k == key) else {
                continue;
            };
            let num = |n: io::Result<u64>| n.ok().map(|n| n.to_string().into_bytes());
            let used: Option<Vec<u8>> = match key {
                b"path" => Some(entry.path_bytes().into_owned()),
                b"linkpath" => entry.link_name_bytes().map(|l| l.into_owned()),
                b"size" => Some(entry.size().to_string().into_bytes()),
                b"uid" => num(entry.header().uid()),
                _ => num(entry.header().gid()),
            };
            if used.as_deref() != Some(written.as_slice()) {
                return Err(ImageError::InvalidEntry {
                    path: self.path.clone(),
                    entry: String::from_utf8_lossy(&shown).into_owned(),
                    reason: format!(
                        "its PAX header has a value with a newline before its {} record, which the tar reader \
                         misreads; not supported",
                        String::from_utf8_lossy(key)
                    ),
                });
            }
        }
        Ok(records)
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
        return Err(ImageError::Corrupt {
            path: path.to_path_buf(),
            detail: what.into(),
        });
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
            let comps = check_paths(entry, ctx, &path)?;
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
                FileFormat::Tarball(c) => scan(
                    rootfs,
                    &file,
                    Some(&mut digest),
                    c,
                    false,
                    |_| {},
                    |entry, ctx| {
                        let path = entry.path().map_err(|e| ctx.corrupt(e))?.into_owned();
                        check_paths(entry, ctx, &path).map(|_| ())
                    },
                )?,
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

/// The normal components of an entry's path; an entry whose path or hard-link target has a `..` component
/// is refused here, as the unpacker would refuse it: an image that passes [`inspect`] can be unpacked later.
fn check_paths<'p, R: Read>(
    entry: &tar::Entry<'_, R>,
    ctx: &ScanCtx,
    path: &'p Path,
) -> Result<Vec<&'p OsStr>, ImageError> {
    let unsafe_entry = |reason: String| ImageError::UnsafeEntry {
        path: ctx.path.clone(),
        entry: path.display().to_string(),
        reason,
    };
    let comps = normalize(path).map_err(|r| unsafe_entry(r.into()))?;
    if entry.header().entry_type() == tar::EntryType::Link {
        if let Some(link) = entry.link_name().map_err(|e| ctx.corrupt(e))? {
            normalize(&link).map_err(|r| unsafe_entry(format!("its hard link target {}: {r}", link.display())))?;
        }
    }
    Ok(comps)
}

/// The `metadata.yaml` of an image, read without checking the rest of it (for an image [`inspect`] accepted
/// before): the reading stops at that entry, which images put first.
pub fn read_metadata(files: &ImageFiles) -> Result<ImageMetadata, ImageError> {
    let path = files.metadata.as_path();
    let compression = tarball_compression(path)?;
    let file = open(path)?;
    let corrupt = |e: io::Error| ImageError::Corrupt {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    let mut archive = tar::Archive::new(compression::decoder(compression, &file).map_err(corrupt)?);
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let name = entry.path().map_err(corrupt)?.into_owned();
        if normalize(&name).is_ok_and(|c| c.len() == 1 && c[0] == "metadata.yaml")
            && entry.header().entry_type().is_file()
        {
            let mut buf = Vec::new();
            (&mut entry)
                .take(METADATA_LIMIT + 1)
                .read_to_end(&mut buf)
                .map_err(corrupt)?;
            let text = String::from_utf8(buf).map_err(|e| ImageError::InvalidMetadata {
                path: path.to_path_buf(),
                detail: format!("not UTF-8 text ({e})"),
            })?;
            return ImageMetadata::from_yaml(&text).map_err(|detail| ImageError::InvalidMetadata {
                path: path.to_path_buf(),
                detail,
            });
        }
    }
    Err(ImageError::NoMetadata {
        path: path.to_path_buf(),
    })
}

/// Find the PAX data of the entry whose header is at stream offset `header_pos` in the captured stream tail:
/// the extension headers (`x`, `L`, `K`) just before it form a chain of valid headers that ends exactly at
/// `header_pos`. Walk back block by block for the nearest chain start holding an `x` whose records parse
/// cleanly and include everything the tar crate did read (`ok`).
fn recover_pax(capture: &[u8], capture_start: u64, header_pos: u64, ok: &[(Vec<u8>, Vec<u8>)]) -> Option<PaxRecords> {
    let end = usize::try_from(header_pos.checked_sub(capture_start)?).ok()?;
    if end > capture.len() {
        return None;
    }
    let mut start = end;
    while start >= 512 {
        start -= 512;
        let Some(data) = extension_chain(capture, start, end) else {
            continue;
        };
        let Some(records) = parse_pax(data) else { continue };
        if ok.iter().all(|r| records.contains(r)) {
            return Some(records);
        }
    }
    None
}

/// If `capture[start..end]` is a chain of extension headers with their data, the data of its last `x`.
fn extension_chain(capture: &[u8], start: usize, end: usize) -> Option<&[u8]> {
    let mut p = start;
    let mut pax = None;
    while p < end {
        let header = capture.get(p..p + 512)?;
        if &header[257..262] != b"ustar" || !checksum_ok(header) {
            return None;
        }
        let size = usize::try_from(numeric_field(&header[124..136])?).ok()?;
        let data_start = p + 512;
        let data_end = data_start.checked_add(size)?;
        match header[156] {
            b'x' => pax = Some(capture.get(data_start..data_end)?),
            b'L' | b'K' => {}
            _ => return None,
        }
        p = data_start.checked_add(size.checked_add(511)? & !511)?;
    }
    if p == end {
        pax
    } else {
        None
    }
}

fn checksum_ok(header: &[u8]) -> bool {
    let Some(stored) = numeric_field(&header[148..156]) else {
        return false;
    };
    let sum: u64 = header
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                u64::from(b' ')
            } else {
                u64::from(*b)
            }
        })
        .sum();
    sum == stored
}

/// A tar numeric field: octal (space/NUL padded), or base-256 when the high bit of the first byte is set.
fn numeric_field(field: &[u8]) -> Option<u64> {
    if field.first()? & 0x80 != 0 {
        let mut n: u64 = u64::from(field[0] & 0x7f);
        for b in &field[1..] {
            n = n.checked_mul(256)?.checked_add(u64::from(*b))?;
        }
        return Some(n);
    }
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c| c == ' ' || c == '\0');
    u64::from_str_radix(text, 8).ok()
}

/// Parse PAX records `"LEN KEY=VALUE\n"` by their length prefixes (values may hold any byte).
fn parse_pax(mut data: &[u8]) -> Option<PaxRecords> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let space = data.iter().position(|b| *b == b' ')?;
        let len: usize = std::str::from_utf8(&data[..space]).ok()?.parse().ok()?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return None;
        }
        let record = &data[space + 1..len - 1];
        let eq = record.iter().position(|b| *b == b'=')?;
        out.push((record[..eq].to_vec(), record[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_by_length() {
        let mut data = Vec::new();
        crate::pack::pax_record(
            &mut data,
            b"SCHILY.xattr.security.capability",
            b"\x01\x00\x00\x02\x0a\x00=\n",
        );
        crate::pack::pax_record(&mut data, b"path", b"a/b");
        let recs = parse_pax(&data).unwrap();
        assert_eq!(
            recs[0],
            (
                b"SCHILY.xattr.security.capability".to_vec(),
                b"\x01\x00\x00\x02\x0a\x00=\n".to_vec()
            )
        );
        assert_eq!(recs[1], (b"path".to_vec(), b"a/b".to_vec()));
        assert!(parse_pax(b"5 a=b\n").is_none(), "length mismatch");
        assert!(parse_pax(b"6 ab\n").is_none(), "no =");
    }

    #[test]
    fn numeric_fields() {
        assert_eq!(numeric_field(b"0000644\0"), Some(0o644));
        assert_eq!(numeric_field(b"   755 \0"), Some(0o755));
        assert_eq!(
            numeric_field(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0x77, 0x35, 0x94, 0x01]),
            Some(2_000_000_001)
        );
        assert_eq!(numeric_field(b"zz"), None);
    }
}
