//! CRIU's own timings: the `stats-dump` and `stats-restore` files it writes into an images
//! directory (`StatsEntry` of criu/images/stats.proto), read without a protobuf dependency.
//!
//! Each file is two 32-bit magics, a 32-bit little-endian length and one protobuf message:
//! `StatsEntry { optional DumpStatsEntry dump = 1; optional RestoreStatsEntry restore = 2; }`.
//! Times are in microseconds. Only the fields the daemon logs are kept.

use std::path::Path;
use std::time::Duration;

/// The dump's phases (`DumpStatsEntry`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DumpStats {
    /// Freezing the tasks (field 1).
    pub freezing: Duration,
    /// From frozen to the end of the dump (field 2).
    pub frozen: Duration,
    /// Collecting the memory (field 3).
    pub memdump: Duration,
    /// Writing it (field 4).
    pub memwrite: Duration,
    /// Pages written into the images (field 7).
    pub pages_written: u64,
    /// Pages left to post-copy (field 9).
    pub pages_lazy: u64,
}

/// The restore's phases (`RestoreStatsEntry`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// Forking the task tree (field 3).
    pub forking: Duration,
    /// The whole restore as criu counts it (field 4).
    pub restore: Duration,
    /// Pages restored (field 5).
    pub pages_restored: u64,
}

/// The dump's stats in `image_dir`, if criu wrote them and they parse.
pub fn read_dump(image_dir: &Path) -> Option<DumpStats> {
    parse_dump(&std::fs::read(image_dir.join("stats-dump")).ok()?)
}

fn parse_dump(file: &[u8]) -> Option<DumpStats> {
    let body = message(file)?;
    let dump = fields(body)?.into_iter().find_map(|(n, v)| match (n, v) {
        (1, Value::Bytes(b)) => Some(b),
        _ => None,
    })?;
    let mut s = DumpStats::default();
    for (n, v) in fields(dump)? {
        let Value::Varint(x) = v else { continue };
        match n {
            1 => s.freezing = Duration::from_micros(x),
            2 => s.frozen = Duration::from_micros(x),
            3 => s.memdump = Duration::from_micros(x),
            4 => s.memwrite = Duration::from_micros(x),
            7 => s.pages_written = x,
            9 => s.pages_lazy = x,
            _ => {}
        }
    }
    Some(s)
}

/// The restore's stats in `image_dir`, if criu wrote them and they parse.
pub fn read_restore(image_dir: &Path) -> Option<RestoreStats> {
    parse_restore(&std::fs::read(image_dir.join("stats-restore")).ok()?)
}

fn parse_restore(file: &[u8]) -> Option<RestoreStats> {
    let body = message(file)?;
    let restore = fields(body)?.into_iter().find_map(|(n, v)| match (n, v) {
        (2, Value::Bytes(b)) => Some(b),
        _ => None,
    })?;
    let mut s = RestoreStats::default();
    for (n, v) in fields(restore)? {
        let Value::Varint(x) = v else { continue };
        match n {
            3 => s.forking = Duration::from_micros(x),
            4 => s.restore = Duration::from_micros(x),
            5 => s.pages_restored = x,
            _ => {}
        }
    }
    Some(s)
}

/// The message of a stats file: after the two magics, a length and that many bytes.
fn message(file: &[u8]) -> Option<&[u8]> {
    let len = u32::from_le_bytes(file.get(8..12)?.try_into().ok()?) as usize;
    file.get(12..12 + len)
}

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

/// The (field number, value) pairs of a protobuf message; None if it is malformed.
fn fields(mut buf: &[u8]) -> Option<Vec<(u64, Value<'_>)>> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let value = match key & 7 {
            0 => Value::Varint(varint(&mut buf)?),
            1 => {
                buf = buf.get(8..)?;
                continue;
            }
            2 => {
                let len = usize::try_from(varint(&mut buf)?).ok()?;
                let (b, rest) = (buf.get(..len)?, buf.get(len..)?);
                buf = rest;
                Value::Bytes(b)
            }
            5 => {
                buf = buf.get(4..)?;
                continue;
            }
            _ => return None,
        };
        out.push((key >> 3, value));
    }
    Some(out)
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut x = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        x |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(x);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc_varint(mut x: u64, out: &mut Vec<u8>) {
        loop {
            let b = (x & 0x7f) as u8;
            x >>= 7;
            if x == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn file(field: u64, inner: &[(u64, u64)]) -> Vec<u8> {
        let mut msg = Vec::new();
        for (n, v) in inner {
            enc_varint(n << 3, &mut msg);
            enc_varint(*v, &mut msg);
        }
        let mut body = Vec::new();
        enc_varint((field << 3) | 2, &mut body);
        enc_varint(msg.len() as u64, &mut body);
        body.extend_from_slice(&msg);
        let mut f = vec![0x94, 0x5f, 0x4b, 0x54, 0x56, 0x73, 0x11, 0x57];
        f.extend_from_slice(&(body.len() as u32).to_le_bytes());
        f.extend_from_slice(&body);
        f
    }

    #[test]
    fn reads_dump_and_restore_stats() {
        let dump = file(
            1,
            &[(1, 1500), (2, 250_000), (3, 4000), (4, 90_000), (7, 300_000), (5, 12)],
        );
        assert_eq!(
            parse_dump(&dump),
            Some(DumpStats {
                freezing: Duration::from_micros(1500),
                frozen: Duration::from_micros(250_000),
                memdump: Duration::from_micros(4000),
                memwrite: Duration::from_micros(90_000),
                pages_written: 300_000,
                pages_lazy: 0,
            })
        );
        assert_eq!(
            parse_restore(&file(2, &[(3, 7000), (4, 180_000), (5, 42)])),
            Some(RestoreStats {
                forking: Duration::from_micros(7000),
                restore: Duration::from_micros(180_000),
                pages_restored: 42,
            })
        );
    }

    #[test]
    fn missing_or_cut_files_read_as_none() {
        assert_eq!(read_dump(Path::new("/nonexistent")), None);
        let mut cut = file(1, &[(1, 1500)]);
        cut.truncate(cut.len() - 1);
        assert_eq!(parse_dump(&cut), None);
        // A restore's file read as a dump's: no dump inside.
        assert_eq!(parse_dump(&file(2, &[(3, 7000)])), None);
    }
}
