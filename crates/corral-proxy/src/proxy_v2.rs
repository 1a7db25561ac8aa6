//! The HAProxy PROXY protocol, version 2 (binary): the header a `proxy_protocol=true` device sends
//! to its tcp server before the client's bytes, naming the client and the address it connected to.
//!
//! Layout (all big-endian): the 12-byte signature, `0x21` (version 2, command PROXY) or `0x20`
//! (LOCAL: no address, as for a client of a unix socket), the family and transport (`0x11` TCP over
//! IPv4, `0x21` TCP over IPv6, `0x00` unspecified), the length of what follows, then source
//! address, destination address, source port, destination port.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The fixed part: signature, version/command, family, length.
pub const FIXED_LEN: usize = 16;

const CMD_LOCAL: u8 = 0x20;
const CMD_PROXY: u8 = 0x21;
const TCP4: u8 = 0x11;
const TCP6: u8 = 0x21;
const UNSPEC: u8 = 0x00;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyHeader {
    /// No client address to tell (the client came through a unix socket).
    Local,
    /// A TCP client at `source` that connected to `destination`.
    Tcp {
        source: SocketAddr,
        destination: SocketAddr,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("not a PROXY protocol v2 header (bad signature)")]
    Signature,
    #[error("unsupported PROXY protocol version/command byte {0:#04x}")]
    VersionCommand(u8),
    #[error("unsupported PROXY protocol address family/transport byte {0:#04x}")]
    Family(u8),
    #[error("PROXY header address block of {len} bytes is too short for family {family:#04x}")]
    Short { family: u8, len: usize },
}

impl ProxyHeader {
    /// The header for a TCP client; IPv4-mapped IPv6 addresses (a dual-stack listener's IPv4
    /// clients) are sent as IPv4 when both ends are IPv4, and both ends as IPv6 otherwise.
    pub fn tcp(source: SocketAddr, destination: SocketAddr) -> ProxyHeader {
        let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
        let (s, d) = (canon(source), canon(destination));
        let (source, destination) = match (s.ip(), d.ip()) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => (s, d),
            _ => (to_v6(s), to_v6(d)),
        };
        ProxyHeader::Tcp { source, destination }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        match *self {
            ProxyHeader::Local => {
                out.extend_from_slice(&[CMD_LOCAL, UNSPEC, 0, 0]);
            }
            ProxyHeader::Tcp { source, destination } => match (source.ip(), destination.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    out.extend_from_slice(&[CMD_PROXY, TCP4, 0, 12]);
                    out.extend_from_slice(&s.octets());
                    out.extend_from_slice(&d.octets());
                    out.extend_from_slice(&source.port().to_be_bytes());
                    out.extend_from_slice(&destination.port().to_be_bytes());
                }
                _ => {
                    let v6 = |a: SocketAddr| match to_v6(a).ip() {
                        IpAddr::V6(ip) => ip.octets(),
                        IpAddr::V4(ip) => ip.to_ipv6_mapped().octets(),
                    };
                    out.extend_from_slice(&[CMD_PROXY, TCP6, 0, 36]);
                    out.extend_from_slice(&v6(source));
                    out.extend_from_slice(&v6(destination));
                    out.extend_from_slice(&source.port().to_be_bytes());
                    out.extend_from_slice(&destination.port().to_be_bytes());
                }
            },
        }
        out
    }

    /// Decodes a header at the start of `buf`: `Ok(None)` if more bytes are needed, else the
    /// header and its length (TLVs after the addresses are skipped).
    pub fn decode(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, HeaderError> {
        let sig = buf.len().min(SIGNATURE.len());
        if buf[..sig] != SIGNATURE[..sig] {
            return Err(HeaderError::Signature);
        }
        if buf.len() < FIXED_LEN {
            return Ok(None);
        }
        let (ver_cmd, family) = (buf[12], buf[13]);
        let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
        if buf.len() < FIXED_LEN + len {
            return Ok(None);
        }
        let body = &buf[FIXED_LEN..FIXED_LEN + len];
        let total = FIXED_LEN + len;
        match ver_cmd {
            CMD_LOCAL => return Ok(Some((ProxyHeader::Local, total))),
            CMD_PROXY => {}
            other => return Err(HeaderError::VersionCommand(other)),
        }
        let short = || HeaderError::Short { family, len };
        let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
        let header = match family {
            TCP4 => {
                if len < 12 {
                    return Err(short());
                }
                let ip = |b: &[u8]| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
                ProxyHeader::Tcp {
                    source: SocketAddr::new(ip(&body[0..4]), port(&body[8..10])),
                    destination: SocketAddr::new(ip(&body[4..8]), port(&body[10..12])),
                }
            }
            TCP6 => {
                if len < 36 {
                    return Err(short());
                }
                let ip = |b: &[u8]| IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).expect("16 bytes")));
                ProxyHeader::Tcp {
                    source: SocketAddr::new(ip(&body[0..16]), port(&body[32..34])),
                    destination: SocketAddr::new(ip(&body[16..32]), port(&body[34..36])),
                }
            }
            other => return Err(HeaderError::Family(other)),
        };
        Ok(Some((header, total)))
    }
}

fn to_v6(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V4(ip) => SocketAddr::new(ip.to_ipv6_mapped().into(), a.port()),
        IpAddr::V6(_) => a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_bytes() {
        let h = ProxyHeader::tcp("192.0.2.1:40000".parse().unwrap(), "127.0.0.1:8080".parse().unwrap());
        let bytes = h.encode();
        let mut want = SIGNATURE.to_vec();
        want.extend_from_slice(&[
            0x21, 0x11, 0x00, 0x0c, 192, 0, 2, 1, 127, 0, 0, 1, 0x9c, 0x40, 0x1f, 0x90,
        ]);
        assert_eq!(bytes, want);
        assert_eq!(ProxyHeader::decode(&bytes).unwrap(), Some((h, 28)));
        assert_eq!(ProxyHeader::decode(&bytes[..20]).unwrap(), None);
        assert_eq!(ProxyHeader::decode(&bytes[..5]).unwrap(), None);
    }

    #[test]
    fn mapped_and_mixed_families() {
        // A dual-stack listener's IPv4 client is sent as IPv4.
        let h = ProxyHeader::tcp(
            "[::ffff:10.0.0.1]:1".parse().unwrap(),
            "[::ffff:10.0.0.2]:2".parse().unwrap(),
        );
        assert_eq!(
            h,
            ProxyHeader::Tcp {
                source: "10.0.0.1:1".parse().unwrap(),
                destination: "10.0.0.2:2".parse().unwrap()
            }
        );
        let h = ProxyHeader::tcp("10.0.0.1:1".parse().unwrap(), "[2001:db8::1]:2".parse().unwrap());
        let bytes = h.encode();
        assert_eq!((bytes[13], bytes.len()), (0x21, 16 + 36));
        assert_eq!(ProxyHeader::decode(&bytes).unwrap().unwrap().0, h);
    }

    #[test]
    fn local_and_garbage() {
        let bytes = ProxyHeader::Local.encode();
        assert_eq!(bytes.len(), 16);
        assert_eq!(ProxyHeader::decode(&bytes).unwrap(), Some((ProxyHeader::Local, 16)));
        assert_eq!(ProxyHeader::decode(b"GET / HTTP/1.1\r\n"), Err(HeaderError::Signature));
    }
}
