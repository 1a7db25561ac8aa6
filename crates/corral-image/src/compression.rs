//! Compression formats, detected by magic bytes (never by file name), and their streaming codecs.

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;
use std::str::FromStr;

use crate::ImageError;

/// How a tarball is compressed.
///
/// Detection is by magic bytes, as LXD and Incus do: gzip `1f 8b`, xz `fd 37 7a 58 5a 00`, zstd `28 b5 2f fd`,
/// bzip2 `BZh`, and a plain tar by `ustar` at offset 257.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    /// A plain tarball.
    None,
    /// gzip (`.tar.gz`).
    Gzip,
    /// xz (`.tar.xz`), what LXD's and Incus' image servers use for unified images.
    #[default]
    Xz,
    /// zstd (`.tar.zst`).
    Zstd,
    /// bzip2 (`.tar.bz2`).
    Bzip2,
}

impl Compression {
    /// All of them, for tests and command lines.
    pub const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Xz,
        Compression::Zstd,
        Compression::Bzip2,
    ];

    /// The usual file name extension, e.g. `tar.xz`.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => "tar",
            Compression::Gzip => "tar.gz",
            Compression::Xz => "tar.xz",
            Compression::Zstd => "tar.zst",
            Compression::Bzip2 => "tar.bz2",
        }
    }

    /// The short name used on command lines (`none`, `gz`, `xz`, `zstd`, `bz2`).
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gz",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Bzip2 => "bz2",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Compression {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "none" | "tar" | "uncompressed" => Ok(Compression::None),
            "gz" | "gzip" | "tgz" => Ok(Compression::Gzip),
            "xz" => Ok(Compression::Xz),
            "zst" | "zstd" => Ok(Compression::Zstd),
            "bz2" | "bzip2" => Ok(Compression::Bzip2),
            other => Err(format!("unknown compression {other:?}: use none, gz, xz, zstd or bz2")),
        }
    }
}

/// What a file holding an image (or half of one) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileFormat {
    /// A tarball, compressed or not.
    Tarball(Compression),
    /// A squashfs filesystem (the usual rootfs of a split image on image servers).
    Squashfs,
    /// A qcow2 disk (the rootfs of a virtual-machine image).
    Qcow2,
}

/// Bytes needed to recognise every format (the `ustar` magic sits at 257..262).
const SNIFF_LEN: usize = 512;

/// Recognise a format from the first bytes of a file.
pub(crate) fn sniff(head: &[u8]) -> Option<FileFormat> {
    if head.starts_with(&[0x1f, 0x8b]) {
        Some(FileFormat::Tarball(Compression::Gzip))
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Some(FileFormat::Tarball(Compression::Xz))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some(FileFormat::Tarball(Compression::Zstd))
    } else if head.starts_with(b"BZh") {
        Some(FileFormat::Tarball(Compression::Bzip2))
    } else if head.starts_with(b"hsqs") {
        // squashfs superblock magic 0x73717368, little-endian.
        Some(FileFormat::Squashfs)
    } else if head.starts_with(b"QFI\xfb") {
        Some(FileFormat::Qcow2)
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        Some(FileFormat::Tarball(Compression::None))
    } else {
        None
    }
}

/// Detect the format of `path` by its magic bytes.
pub fn detect_format(path: &Path) -> Result<FileFormat, ImageError> {
    let read_err = |source| ImageError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let mut head = Vec::with_capacity(SNIFF_LEN);
    file.take(SNIFF_LEN as u64).read_to_end(&mut head).map_err(read_err)?;
    if head.is_empty() {
        return Err(ImageError::UnknownFormat {
            path: path.to_path_buf(),
            detail: "the file is empty".into(),
        });
    }
    sniff(&head).ok_or_else(|| ImageError::UnknownFormat {
        path: path.to_path_buf(),
        detail: format!(
            "no tar, gzip, xz, zstd, bzip2 or squashfs signature (it starts with {})",
            hex::encode(&head[..head.len().min(8)])
        ),
    })
}

/// Detect how the tarball at `path` is compressed.
///
/// A squashfs or qcow2 file gives [`ImageError::Unsupported`]; anything else that is not a tarball gives
/// [`ImageError::UnknownFormat`].
pub fn detect_compression(path: &Path) -> Result<Compression, ImageError> {
    match detect_format(path)? {
        FileFormat::Tarball(c) => Ok(c),
        other => Err(unsupported_format(path, other)),
    }
}

/// The error for a non-tarball format where a tarball is needed.
pub(crate) fn unsupported_format(path: &Path, format: FileFormat) -> ImageError {
    let reason = match format {
        FileFormat::Squashfs => "a squashfs file, not a tarball",
        FileFormat::Qcow2 => "qcow2 disk (a virtual-machine image): not supported, corral runs system containers",
        FileFormat::Tarball(_) => "a tarball is expected here",
    };
    ImageError::Unsupported {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// A decompressing reader for `compression` over `raw`.
pub(crate) fn decoder<'a, R: Read + 'a>(compression: Compression, raw: R) -> io::Result<Box<dyn Read + 'a>> {
    const BUF: usize = 256 * 1024;
    let raw = BufReader::with_capacity(BUF, raw);
    Ok(match compression {
        Compression::None => Box::new(raw),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(raw)),
        Compression::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(raw)),
        Compression::Zstd => {
            let mut d = zstd::stream::read::Decoder::with_buffer(raw)?;
            // Accept frames made with `zstd --long` (windows up to 2 GiB), as the zstd command line does
            // when told; the default limit of 128 MiB would refuse them.
            d.window_log_max(31)?;
            Box::new(d)
        }
        Compression::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(raw)),
    })
}

/// A compressing writer; [`Encoder::finish`] writes the trailer and returns the inner writer.
pub(crate) enum Encoder<W: Write> {
    None(W),
    Gzip(flate2::write::GzEncoder<W>),
    Xz(liblzma::write::XzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Bzip2(bzip2::write::BzEncoder<W>),
}

/// Worker threads for the compressors that have them (xz, zstd): their output does not depend on the count.
fn threads() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(8) as u32
}

impl<W: Write> Encoder<W> {
    /// Levels are the command-line tools' defaults, which is also what LXD gets when it publishes an image
    /// through them (gzip 6, xz 6, bzip2 9), except zstd: 1 rather than 3 (see [`ZSTD_LEVEL`]). xz and zstd
    /// use one worker per core (up to 8); their output does not depend on the number of workers, so packing
    /// stays deterministic.
    pub(crate) fn new(compression: Compression, w: W) -> io::Result<Self> {
        Ok(match compression {
            Compression::None => Encoder::None(w),
            Compression::Gzip => Encoder::Gzip(flate2::GzBuilder::new().write(w, flate2::Compression::new(6))),
            Compression::Xz => {
                let stream = liblzma::stream::MtStreamBuilder::new()
                    .preset(6)
                    .check(liblzma::stream::Check::Crc64)
                    .threads(threads())
                    .encoder()
                    .map_err(io::Error::other)?;
                Encoder::Xz(liblzma::write::XzEncoder::new_stream(w, stream))
            }
            Compression::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(w, ZSTD_LEVEL)?;
                e.include_checksum(true)?;
                e.multithread(threads())?;
                Encoder::Zstd(e)
            }
            Compression::Bzip2 => Encoder::Bzip2(bzip2::write::BzEncoder::new(w, bzip2::Compression::best())),
        })
    }

    pub(crate) fn finish(self) -> io::Result<W> {
        match self {
            Encoder::None(w) => Ok(w),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Xz(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
            Encoder::Bzip2(e) => e.finish(),
        }
    }
}

/// zstd level for packing. 1, not the `zstd` command's default 3: on the Debian 12 test image (248 MB of
/// rootfs) level 3 costs 1.8 s of CPU against 1.0 s for level 1, for a file 18% smaller (56 against 66 MB);
/// packing is what `publish` waits on, and both decompress at the same speed.
const ZSTD_LEVEL: i32 = 1;

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::None(w) => w.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Xz(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
            Encoder::Bzip2(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::Xz(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
            Encoder::Bzip2(e) => e.flush(),
        }
    }
}
