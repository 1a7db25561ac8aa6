//! LXD's proxy addresses: `tcp:<addr>:<port>[-<port>][,<port>]`, the same with `udp:`, and
//! `unix:<path>` or `unix:@<abstract name>`.
//!
//! Parsed as LXD's `ProxyParseAddr` does (the protocol up to the first `:`, the address and the
//! ports split as Go's `net.SplitHostPort`, a literal IP only, never a host name, an empty address
//! meaning "any" to listen on and "this system" to connect to), with two stricter rules: ports are
//! 1-65535 and a unix path is absolute (LXD resolved a relative one against its forkproxy's working
//! directory, which nobody can rely on).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

/// What a parse error quotes as the accepted forms.
pub const ADDRESS_FORMS: &str =
    "tcp:<addr>:<port>[-<port>][,<port>], udp:<addr>:<port>[-<port>][,<port>], unix:<path> or unix:@<name>";

/// The longest unix socket path or abstract name: `sun_path` holds 108 bytes, and a path ends in a
/// NUL (an abstract name starts with one).
pub const MAX_UNIX_NAME: usize = 107;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Unix,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Unix => "unix",
        })
    }
}

/// An IP (or none: any/this system) and its ports, ranges expanded, in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InetAddr {
    pub ip: Option<IpAddr>,
    pub ports: Vec<u16>,
}

/// A unix socket: a filesystem path (resolved in a mount namespace) or an abstract name (which
/// lives in a network namespace).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum UnixName {
    Path(PathBuf),
    /// The name without its leading `@`.
    Abstract(Vec<u8>),
}

impl fmt::Display for UnixName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnixName::Path(p) => write!(f, "{}", p.display()),
            UnixName::Abstract(name) => write!(f, "@{}", String::from_utf8_lossy(name)),
        }
    }
}

/// One `listen` or `connect` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyAddr {
    Tcp(InetAddr),
    Udp(InetAddr),
    Unix(UnixName),
}

/// One socket to listen on or connect to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Tcp(InetEndpoint),
    Udp(InetEndpoint),
    Unix(UnixName),
}

/// An IP (or none) and one port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InetEndpoint {
    pub ip: Option<IpAddr>,
    pub port: u16,
}

impl InetEndpoint {
    /// The addresses to try binding, in order: the IP given, or without one every address of both
    /// families (`[::]`, dual-stack, as Go listens on `:PORT`), then `0.0.0.0` where there is no
    /// IPv6.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        match self.ip {
            Some(ip) => vec![SocketAddr::new(ip, self.port)],
            None => vec![
                SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), self.port),
                SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), self.port),
            ],
        }
    }

    /// The address to connect to: without an IP, this system (127.0.0.1), as Go dials `:PORT`.
    /// (An unspecified IP given explicitly is passed on: Linux connects `0.0.0.0` and `::` to the
    /// namespace's own loopback.)
    pub fn connect_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip.unwrap_or(Ipv4Addr::LOCALHOST.into()), self.port)
    }
}

impl fmt::Display for InetEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Some(IpAddr::V4(ip)) => write!(f, "{ip}:{}", self.port),
            None => write!(f, ":{}", self.port),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(e) => write!(f, "tcp:{e}"),
            Endpoint::Udp(e) => write!(f, "udp:{e}"),
            Endpoint::Unix(n) => write!(f, "unix:{n}"),
        }
    }
}

/// A `listen` or `connect` value that is not one of [`ADDRESS_FORMS`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid proxy address {input:?}: {problem}; the accepted forms are {ADDRESS_FORMS}")]
pub struct AddrError {
    pub input: String,
    pub problem: AddrProblem,
}

/// What is wrong with an address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddrProblem {
    #[error("unknown protocol type {0:?} (tcp, udp or unix)")]
    UnknownProtocol(String),
    #[error("missing address after \"{0}:\"")]
    MissingAddress(Protocol),
    #[error("missing port in {0:?} (a {1} address ends in :<port>)")]
    MissingPort(String, Protocol),
    #[error("too many colons in {0:?}: an IPv6 address goes in brackets, as in [::1]:80")]
    TooManyColons(String),
    #[error("{0:?} is not an IP address (host names are not accepted)")]
    NotAnIp(String),
    #[error("empty port in the port list {0:?}")]
    EmptyPort(String),
    #[error("invalid port {0:?}: a port is a number from 1 to 65535")]
    BadPort(String),
    #[error("only one '-' allowed in port range {0:?}")]
    RangeDashes(String),
    #[error("end port should be higher than start port in port range {0:?}")]
    RangeOrder(String),
    #[error("unix socket path {0:?} is not absolute")]
    RelativePath(String),
    #[error("unix socket name {name:?} is {len} bytes long, longer than the {MAX_UNIX_NAME} a socket address holds")]
    TooLong { name: String, len: usize },
    #[error("empty abstract unix socket name after '@'")]
    EmptyAbstract,
    #[error("unix socket name contains a NUL byte")]
    Nul,
}

impl FromStr for ProxyAddr {
    type Err = AddrError;

    fn from_str(input: &str) -> Result<ProxyAddr, AddrError> {
        let err = |problem| AddrError {
            input: input.to_string(),
            problem,
        };
        let (proto, rest) = match input.split_once(':') {
            Some((p, rest)) => (p, Some(rest)),
            None => (input, None),
        };
        let protocol = match proto {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "unix" => Protocol::Unix,
            other => return Err(err(AddrProblem::UnknownProtocol(other.to_string()))),
        };
        let rest = match rest {
            Some(r) if !r.is_empty() => r,
            _ => return Err(err(AddrProblem::MissingAddress(protocol))),
        };
        match protocol {
            Protocol::Unix => parse_unix(rest).map(ProxyAddr::Unix).map_err(err),
            Protocol::Tcp => parse_inet(rest, protocol).map(ProxyAddr::Tcp).map_err(err),
            Protocol::Udp => parse_inet(rest, protocol).map(ProxyAddr::Udp).map_err(err),
        }
    }
}

fn parse_unix(rest: &str) -> Result<UnixName, AddrProblem> {
    if rest.contains('\0') {
        return Err(AddrProblem::Nul);
    }
    let too_long = |len| AddrProblem::TooLong {
        name: rest.to_string(),
        len,
    };
    if let Some(name) = rest.strip_prefix('@') {
        if name.is_empty() {
            return Err(AddrProblem::EmptyAbstract);
        }
        if name.len() > MAX_UNIX_NAME {
            return Err(too_long(name.len()));
        }
        return Ok(UnixName::Abstract(name.as_bytes().to_vec()));
    }
    if !rest.starts_with('/') {
        return Err(AddrProblem::RelativePath(rest.to_string()));
    }
    if rest.len() > MAX_UNIX_NAME {
        return Err(too_long(rest.len()));
    }
    Ok(UnixName::Path(PathBuf::from(rest)))
}

/// `<addr>:<ports>` as Go's `net.SplitHostPort` splits it, then the IP and the port list.
fn parse_inet(rest: &str, protocol: Protocol) -> Result<InetAddr, AddrProblem> {
    let (host, ports) = if let Some(bracketed) = rest.strip_prefix('[') {
        let Some((host, after)) = bracketed.split_once(']') else {
            return Err(AddrProblem::NotAnIp(rest.to_string()));
        };
        match after.strip_prefix(':') {
            Some(ports) => (host, ports),
            None => return Err(AddrProblem::MissingPort(rest.to_string(), protocol)),
        }
    } else {
        match rest.matches(':').count() {
            0 => return Err(AddrProblem::MissingPort(rest.to_string(), protocol)),
            1 => rest.split_once(':').expect("one colon"),
            _ => return Err(AddrProblem::TooManyColons(rest.to_string())),
        }
    };
    let ip = if host.is_empty() {
        None
    } else {
        Some(IpAddr::from_str(host).map_err(|_| AddrProblem::NotAnIp(host.to_string()))?)
    };
    if ports.is_empty() {
        return Err(AddrProblem::MissingPort(rest.to_string(), protocol));
    }
    let mut out = Vec::new();
    for item in ports.split(',') {
        if item.is_empty() {
            return Err(AddrProblem::EmptyPort(ports.to_string()));
        }
        let mut bounds = item.split('-');
        let first = parse_port(bounds.next().unwrap_or_default())?;
        match (bounds.next(), bounds.next()) {
            (None, _) => out.push(first),
            (Some(last), None) => {
                let last = parse_port(last)?;
                if last <= first {
                    return Err(AddrProblem::RangeOrder(item.to_string()));
                }
                out.extend(first..=last);
            }
            (Some(_), Some(_)) => return Err(AddrProblem::RangeDashes(item.to_string())),
        }
    }
    Ok(InetAddr { ip, ports: out })
}

fn parse_port(s: &str) -> Result<u16, AddrProblem> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 && s.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
        _ => Err(AddrProblem::BadPort(s.to_string())),
    }
}

impl ProxyAddr {
    pub fn protocol(&self) -> Protocol {
        match self {
            ProxyAddr::Tcp(_) => Protocol::Tcp,
            ProxyAddr::Udp(_) => Protocol::Udp,
            ProxyAddr::Unix(_) => Protocol::Unix,
        }
    }

    /// One endpoint per port (one for a unix socket).
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let inet = |a: &InetAddr| {
            a.ports
                .iter()
                .map(|&port| InetEndpoint { ip: a.ip, port })
                .collect::<Vec<_>>()
        };
        match self {
            ProxyAddr::Tcp(a) => inet(a).into_iter().map(Endpoint::Tcp).collect(),
            ProxyAddr::Udp(a) => inet(a).into_iter().map(Endpoint::Udp).collect(),
            ProxyAddr::Unix(n) => vec![Endpoint::Unix(n.clone())],
        }
    }

    /// How many endpoints: ports, or one for a unix socket.
    pub fn count(&self) -> usize {
        match self {
            ProxyAddr::Tcp(a) | ProxyAddr::Udp(a) => a.ports.len(),
            ProxyAddr::Unix(_) => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ProxyAddr, AddrProblem> {
        s.parse::<ProxyAddr>().map_err(|e| {
            assert_eq!(e.input, s);
            e.problem
        })
    }

    fn tcp(ip: Option<&str>, ports: &[u16]) -> ProxyAddr {
        ProxyAddr::Tcp(InetAddr {
            ip: ip.map(|s| s.parse().unwrap()),
            ports: ports.to_vec(),
        })
    }

    #[test]
    fn good_addresses() {
        assert_eq!(parse("tcp:127.0.0.1:80").unwrap(), tcp(Some("127.0.0.1"), &[80]));
        assert_eq!(parse("tcp:0.0.0.0:80,443").unwrap(), tcp(Some("0.0.0.0"), &[80, 443]));
        assert_eq!(
            parse("tcp:127.0.0.1:8000-8002").unwrap(),
            tcp(Some("127.0.0.1"), &[8000, 8001, 8002])
        );
        assert_eq!(parse("tcp:[::1]:1-2,10").unwrap(), tcp(Some("::1"), &[1, 2, 10]));
        assert_eq!(parse("tcp::22").unwrap(), tcp(None, &[22]));
        assert_eq!(parse("tcp:[1.2.3.4]:22").unwrap(), tcp(Some("1.2.3.4"), &[22]));
        assert_eq!(
            parse("udp:10.0.0.1:53").unwrap(),
            ProxyAddr::Udp(InetAddr {
                ip: Some("10.0.0.1".parse().unwrap()),
                ports: vec![53]
            })
        );
        assert_eq!(
            parse("unix:/run/x.sock").unwrap(),
            ProxyAddr::Unix(UnixName::Path("/run/x.sock".into()))
        );
        assert_eq!(
            parse("unix:@lxd/x").unwrap(),
            ProxyAddr::Unix(UnixName::Abstract(b"lxd/x".to_vec()))
        );
        assert_eq!(parse("tcp:127.0.0.1:65535").unwrap().count(), 1);
    }

    #[test]
    fn endpoints_expand_ports_and_print_back() {
        let a = parse("tcp:[::1]:80,443").unwrap();
        let shown: Vec<String> = a.endpoints().iter().map(|e| e.to_string()).collect();
        assert_eq!(shown, ["tcp:[::1]:80", "tcp:[::1]:443"]);
        let u = parse("unix:@abc").unwrap();
        assert_eq!(u.endpoints()[0].to_string(), "unix:@abc");
        let any = InetEndpoint { ip: None, port: 9 };
        assert_eq!(any.connect_addr(), "127.0.0.1:9".parse().unwrap());
        assert_eq!(any.listen_addrs()[0], "[::]:9".parse().unwrap());
    }

    #[test]
    fn bad_addresses_say_what_is_wrong() {
        use AddrProblem::*;
        let cases: Vec<(&str, AddrProblem)> = vec![
            ("sctp:1.2.3.4:80", UnknownProtocol("sctp".into())),
            ("127.0.0.1:80", UnknownProtocol("127.0.0.1".into())),
            ("", UnknownProtocol("".into())),
            ("tcp", MissingAddress(Protocol::Tcp)),
            ("tcp:", MissingAddress(Protocol::Tcp)),
            ("unix:", MissingAddress(Protocol::Unix)),
            ("tcp:127.0.0.1", MissingPort("127.0.0.1".into(), Protocol::Tcp)),
            ("udp:127.0.0.1:", MissingPort("127.0.0.1:".into(), Protocol::Udp)),
            ("tcp:[::1]", MissingPort("[::1]".into(), Protocol::Tcp)),
            ("tcp:::1:80", TooManyColons("::1:80".into())),
            ("tcp:localhost:80", NotAnIp("localhost".into())),
            ("tcp:[::1:80", NotAnIp("[::1:80".into())),
            ("tcp:1.2.3.4.5:80", NotAnIp("1.2.3.4.5".into())),
            ("tcp:1.2.3.4:http", BadPort("http".into())),
            ("tcp:1.2.3.4:0", BadPort("0".into())),
            ("tcp:1.2.3.4:65536", BadPort("65536".into())),
            ("tcp:1.2.3.4:+80", BadPort("+80".into())),
            ("tcp:1.2.3.4:80,", EmptyPort("80,".into())),
            ("tcp:1.2.3.4:1-2-3", RangeDashes("1-2-3".into())),
            ("tcp:1.2.3.4:90-80", RangeOrder("90-80".into())),
            ("tcp:1.2.3.4:80-80", RangeOrder("80-80".into())),
            ("tcp:1.2.3.4:80-", BadPort("".into())),
            ("unix:run/x.sock", RelativePath("run/x.sock".into())),
            ("unix:@", EmptyAbstract),
        ];
        for (input, problem) in cases {
            assert_eq!(parse(input), Err(problem), "{input:?}");
        }
        let long = format!("unix:/{}", "a".repeat(MAX_UNIX_NAME));
        assert!(matches!(parse(&long), Err(TooLong { len: 108, .. })));
    }

    #[test]
    fn messages_quote_the_input_and_the_accepted_forms() {
        let e = "tcp:localhost:80".parse::<ProxyAddr>().unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid proxy address \"tcp:localhost:80\": \"localhost\" is not an IP address (host names are not \
             accepted); the accepted forms are tcp:<addr>:<port>[-<port>][,<port>], \
             udp:<addr>:<port>[-<port>][,<port>], unix:<path> or unix:@<name>"
        );
        let e = "tcp:1.2.3.4:90-80".parse::<ProxyAddr>().unwrap_err().to_string();
        assert!(
            e.contains("end port should be higher than start port in port range \"90-80\""),
            "{e}"
        );
    }
}
