//! One dnsmasq per bridge: DHCP, DHCPv6/RA and DNS for the network's instances.
//!
//! Everything of one dnsmasq lives in a state directory the caller gives: its configuration
//! (`dnsmasq.conf`), static leases (`dnsmasq.hosts`), leases (`dnsmasq.leases`), pid file
//! (`dnsmasq.pid`) and log (`dnsmasq.log`).
//!
//! dnsmasq is left to daemonize itself: it reports a bad configuration or a socket it cannot
//! bind through its exit status before it detaches, writes its pid file, and then runs in a
//! session of its own whose parent is init. It outlives the daemon that started it; a restarted
//! daemon takes it back with [`Dnsmasq::adopt`]. It reads the leases file when it starts, so a
//! restart keeps every lease.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipnet::{Ipv4Net, Ipv6Net};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::mac::MacAddr;
use crate::subnet::{default_ipv4_range, AddressRange};

/// The dnsmasq binary (Debian's dnsmasq-base).
const DNSMASQ: &str = "dnsmasq";

/// How long a stop waits for SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DnsmasqError {
    #[error("invalid {what} {value:?}: {why}")]
    Invalid {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("running dnsmasq: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("dnsmasq for {bridge} did not start ({status}): {stderr}")]
    StartFailed {
        bridge: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("dnsmasq for {dir} already runs as pid {pid}")]
    AlreadyRunning { dir: PathBuf, pid: i32 },
    #[error("dnsmasq pid {0} is not running")]
    NotRunning(i32),
    #[error("{path}: not a pid: {content:?}")]
    BadPidFile { path: PathBuf, content: String },
    #[error("signalling dnsmasq pid {pid}: {source}")]
    Signal {
        pid: i32,
        #[source]
        source: nix::Error,
    },
    #[error("dnsmasq pid {0} did not exit, even after SIGKILL")]
    WouldNotStop(i32),
    #[error("leases file line {line}: {why}: {text:?}")]
    BadLease {
        line: usize,
        text: String,
        why: &'static str,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DnsmasqError + '_ {
    move |source| DnsmasqError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The files of one dnsmasq, all in its state directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsmasqPaths {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub hosts: PathBuf,
    pub leases: PathBuf,
    pub pid: PathBuf,
    pub log: PathBuf,
}

impl DnsmasqPaths {
    pub fn new(dir: impl Into<PathBuf>) -> DnsmasqPaths {
        let dir = dir.into();
        DnsmasqPaths {
            config: dir.join("dnsmasq.conf"),
            hosts: dir.join("dnsmasq.hosts"),
            leases: dir.join("dnsmasq.leases"),
            pid: dir.join("dnsmasq.pid"),
            log: dir.join("dnsmasq.log"),
            dir,
        }
    }

    /// Removes the state directory and everything in it (the network is being deleted).
    pub fn remove(&self) -> Result<(), DnsmasqError> {
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&self.dir)(e)),
            _ => Ok(()),
        }
    }
}

/// IPv4 DHCP on the bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv4Dhcp {
    /// The bridge's address and prefix (`ipv4.address`): dnsmasq listens there.
    pub address: Ipv4Net,
    /// `ipv4.dhcp`: false serves DNS only.
    pub dhcp: bool,
    /// `ipv4.dhcp.ranges`; empty: the whole subnet but the bridge's address.
    pub ranges: Vec<AddressRange<Ipv4Addr>>,
    /// `ipv4.dhcp.expiry` in dnsmasq's syntax (`1h`, `45m`, `3600`, `infinite`).
    pub lease_time: String,
}

/// IPv6 router advertisements and DHCPv6 on the bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv6Dhcp {
    /// `ipv6.address`.
    pub address: Ipv6Net,
    /// `ipv6.dhcp`: false sends router advertisements only (SLAAC, no DHCPv6).
    pub dhcp: bool,
    /// `ipv6.dhcp.stateful`: addresses from DHCPv6 rather than SLAAC.
    pub stateful: bool,
    /// `ipv6.dhcp.ranges` (stateful only); empty: the whole subnet.
    pub ranges: Vec<AddressRange<Ipv6Addr>>,
    pub lease_time: String,
}

/// Where dnsmasq sends the queries it cannot answer from its leases.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Upstream {
    /// Nowhere: only the network's own names resolve.
    #[default]
    None,
    /// The servers of a resolv.conf (the host's, `/etc/resolv.conf`, when `None`).
    ResolvConf(Option<PathBuf>),
    Servers(Vec<IpAddr>),
}

/// A dnsmasq configuration for one bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsmasqConfig {
    pub bridge: String,
    pub state_dir: PathBuf,
    pub ipv4: Option<Ipv4Dhcp>,
    pub ipv6: Option<Ipv6Dhcp>,
    /// `dns.domain`: instances answer as `NAME.<domain>`; Corral's default is `corral`.
    pub dns_domain: String,
    pub upstream: Upstream,
    /// `raw.dnsmasq`, appended last (so it can override what comes before).
    pub raw: Option<String>,
}

impl DnsmasqConfig {
    /// DNS only on `bridge`, domain `corral`, no upstream; set `ipv4`/`ipv6` for DHCP.
    pub fn new(bridge: &str, state_dir: impl Into<PathBuf>) -> DnsmasqConfig {
        DnsmasqConfig {
            bridge: bridge.to_string(),
            state_dir: state_dir.into(),
            ipv4: None,
            ipv6: None,
            dns_domain: "corral".to_string(),
            upstream: Upstream::None,
            raw: None,
        }
    }

    pub fn paths(&self) -> DnsmasqPaths {
        DnsmasqPaths::new(&self.state_dir)
    }

    fn validate(&self) -> Result<(), DnsmasqError> {
        crate::link::validate_name(&self.bridge).map_err(|_| DnsmasqError::Invalid {
            what: "bridge name",
            value: self.bridge.clone(),
            why: "not an interface name",
        })?;
        validate_domain(&self.dns_domain)?;
        for t in self
            .ipv4
            .iter()
            .map(|c| &c.lease_time)
            .chain(self.ipv6.iter().map(|c| &c.lease_time))
        {
            validate_lease_time(t)?;
        }
        for path in [&self.state_dir] {
            if path.to_str().is_none_or(|p| p.contains(['\n', ','])) {
                return Err(DnsmasqError::Invalid {
                    what: "state directory",
                    value: path.display().to_string(),
                    why: "must be UTF-8 without newlines or commas",
                });
            }
        }
        Ok(())
    }

    /// The configuration file's text.
    pub fn render(&self) -> Result<String, DnsmasqError> {
        self.validate()?;
        let p = self.paths();
        let br = &self.bridge;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# Written by Corral for bridge {br}; rewritten whenever the network changes."
        );
        // Only the bridge: never the host's other interfaces, never loopback.
        let _ = writeln!(s, "interface={br}\nexcept-interface=lo\nbind-interfaces\nstrict-order");
        let _ = writeln!(s, "pid-file={}", p.pid.display());
        let _ = writeln!(s, "log-facility={}", p.log.display());
        let _ = writeln!(s, "dhcp-leasefile={}", p.leases.display());
        let _ = writeln!(s, "dhcp-hostsfile={}", p.hosts.display());
        // Names come from leases; the host's /etc/hosts is not the network's business.
        let _ = writeln!(s, "no-hosts");
        let _ = writeln!(s, "dhcp-no-override\ndhcp-authoritative\ndhcp-rapid-commit\nno-ping");
        let _ = writeln!(s, "quiet-dhcp\nquiet-dhcp6\nquiet-ra");
        // dnsmasq drops root once its sockets and files are open.
        let _ = writeln!(s, "user=nobody\ngroup=nogroup");

        if let Some(v4) = &self.ipv4 {
            let _ = writeln!(s, "listen-address={}", v4.address.addr());
            if v4.dhcp {
                let ranges = if v4.ranges.is_empty() {
                    vec![default_ipv4_range(v4.address)]
                } else {
                    v4.ranges.clone()
                };
                for r in ranges {
                    let _ = writeln!(
                        s,
                        "dhcp-range={},{},{},{}",
                        r.start,
                        r.end,
                        v4.address.netmask(),
                        v4.lease_time
                    );
                }
            }
        }
        if let Some(v6) = &self.ipv6 {
            let _ = writeln!(s, "listen-address={}", v6.address.addr());
            let _ = writeln!(s, "enable-ra");
            let lease = &v6.lease_time;
            let prefix = v6.address.prefix_len();
            if !v6.dhcp {
                let _ = writeln!(s, "dhcp-range=::,constructor:{br},ra-only");
            } else if v6.stateful {
                if v6.ranges.is_empty() {
                    let _ = writeln!(s, "dhcp-range=::2,::ffff:ffff,constructor:{br},{prefix},{lease}");
                }
                for r in &v6.ranges {
                    let _ = writeln!(s, "dhcp-range={},{},{prefix},{lease}", r.start, r.end);
                }
            } else {
                let _ = writeln!(s, "dhcp-range=::,constructor:{br},ra-stateless,ra-names");
            }
        }

        let domain = &self.dns_domain;
        // Answer for the domain from leases only; never forward its names upstream.
        let _ = writeln!(s, "domain={domain}\nlocal=/{domain}/");
        let _ = writeln!(s, "interface-name=_gateway.{domain},{br}");
        match &self.upstream {
            Upstream::None => {
                let _ = writeln!(s, "no-resolv");
            }
            Upstream::ResolvConf(path) => {
                let path = path.as_deref().unwrap_or(Path::new("/etc/resolv.conf"));
                let _ = writeln!(s, "resolv-file={}", path.display());
            }
            Upstream::Servers(servers) => {
                let _ = writeln!(s, "no-resolv");
                for server in servers {
                    let _ = writeln!(s, "server={server}");
                }
            }
        }
        if let Some(raw) = self.raw.as_deref().filter(|r| !r.trim().is_empty()) {
            let _ = writeln!(s, "# raw.dnsmasq\n{}", raw.trim_end());
        }
        Ok(s)
    }
}

fn validate_domain(domain: &str) -> Result<(), DnsmasqError> {
    let bad = |why| {
        Err(DnsmasqError::Invalid {
            what: "DNS domain",
            value: domain.to_string(),
            why,
        })
    };
    if domain.is_empty() || domain.len() > 253 {
        return bad("must be 1 to 253 characters");
    }
    for label in domain.split('.') {
        if !valid_label(label) {
            return bad("each label: letters, digits and '-', not starting or ending with '-'");
        }
    }
    Ok(())
}

fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

fn validate_lease_time(t: &str) -> Result<(), DnsmasqError> {
    let digits = t.strip_suffix(['s', 'm', 'h', 'd', 'w']).unwrap_or(t);
    if t == "infinite" || (!digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())) {
        return Ok(());
    }
    Err(DnsmasqError::Invalid {
        what: "DHCP lease time",
        value: t.to_string(),
        why: "expected a number of seconds, optionally with s, m, h, d or w, or 'infinite'",
    })
}

/// An address fixed for one MAC (an instance NIC's `ipv4.address`/`ipv6.address`), and the
/// name DNS answers for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticLease {
    pub mac: MacAddr,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub hostname: Option<String>,
}

/// The dhcp-hostsfile text for `leases`: `mac,ipv4,[ipv6],name` per line.
pub fn render_static_leases(leases: &[StaticLease]) -> Result<String, DnsmasqError> {
    let mut s = String::new();
    for lease in leases {
        let _ = write!(s, "{}", lease.mac);
        if let Some(v4) = lease.ipv4 {
            let _ = write!(s, ",{v4}");
        }
        if let Some(v6) = lease.ipv6 {
            let _ = write!(s, ",[{v6}]");
        }
        if let Some(name) = &lease.hostname {
            if !valid_label(name) {
                return Err(DnsmasqError::Invalid {
                    what: "host name",
                    value: name.clone(),
                    why: "letters, digits and '-', at most 63, not starting or ending with '-'",
                });
            }
            let _ = write!(s, ",{name}");
        }
        s.push('\n');
    }
    Ok(s)
}

/// Replaces the static leases file in `paths` (atomically: dnsmasq may read it at any time).
/// A running dnsmasq sees the change after [`Dnsmasq::reload`].
pub fn write_static_leases(paths: &DnsmasqPaths, leases: &[StaticLease]) -> Result<(), DnsmasqError> {
    let text = render_static_leases(leases)?;
    fs::create_dir_all(&paths.dir).map_err(io_err(&paths.dir))?;
    write_atomic(&paths.hosts, &text)
}

/// Writes `path` through a temporary file and a rename, world-readable: dnsmasq rereads the
/// hosts file as `nobody`.
fn write_atomic(path: &Path, text: &str) -> Result<(), DnsmasqError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(text.as_bytes()).map_err(io_err(&tmp))?;
    f.set_permissions(fs::Permissions::from_mode(0o644))
        .map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// One line of dnsmasq's leases file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Seconds since the epoch; 0 for a lease that never expires.
    pub expiry: u64,
    /// The client's MAC (IPv4 leases).
    pub mac: Option<MacAddr>,
    /// The identity association of a DHCPv6 lease.
    pub iaid: Option<u32>,
    pub address: IpAddr,
    pub hostname: Option<String>,
    /// The DHCP client id (IPv4) or DUID (IPv6).
    pub client_id: Option<String>,
}

/// Parses dnsmasq's leases file: `expiry mac ip name client-id` for IPv4,
/// `expiry iaid ip name duid` for IPv6 after a `duid` line, `*` for a missing field.
pub fn parse_leases(text: &str) -> Result<Vec<Lease>, DnsmasqError> {
    let mut leases = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let bad = |why| DnsmasqError::BadLease {
            line: i + 1,
            text: line.to_string(),
            why,
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() || fields[0] == "duid" {
            continue;
        }
        if fields.len() < 4 {
            return Err(bad("fewer than four fields"));
        }
        let expiry: u64 = fields[0].parse().map_err(|_| bad("expiry is not a number"))?;
        let address: IpAddr = fields[2].parse().map_err(|_| bad("not an IP address"))?;
        let optional = |f: Option<&&str>| f.filter(|v| **v != "*").map(|v| v.to_string());
        let (mac, iaid) = match address {
            // Not an Ethernet address (InfiniBand, or a client id only): no MAC, still a lease.
            IpAddr::V4(_) => (fields[1].parse::<MacAddr>().ok(), None),
            IpAddr::V6(_) => {
                let iaid = fields[1]
                    .trim_start_matches('T')
                    .parse()
                    .map_err(|_| bad("IAID is not a number"))?;
                (None, Some(iaid))
            }
        };
        leases.push(Lease {
            expiry,
            mac,
            iaid,
            address,
            hostname: optional(fields.get(3)),
            client_id: optional(fields.get(4)),
        });
    }
    Ok(leases)
}

/// Reads and parses the leases file; none if dnsmasq has not written one yet.
pub fn read_leases(paths: &DnsmasqPaths) -> Result<Vec<Lease>, DnsmasqError> {
    match fs::read_to_string(&paths.leases) {
        Ok(text) => parse_leases(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err(&paths.leases)(e)),
    }
}

/// A running dnsmasq, started or adopted. Dropping it leaves dnsmasq running.
#[derive(Debug)]
pub struct Dnsmasq {
    pid: i32,
    paths: DnsmasqPaths,
    bridge: String,
}

impl Dnsmasq {
    /// Writes the configuration and starts dnsmasq in the calling thread's network namespace.
    /// Returns once dnsmasq has bound its sockets and detached, or with its error message.
    pub fn start(config: &DnsmasqConfig) -> Result<Dnsmasq, DnsmasqError> {
        let text = config.render()?;
        let paths = config.paths();
        if let Some(running) = Dnsmasq::adopt(&paths.pid)? {
            return Err(DnsmasqError::AlreadyRunning {
                dir: paths.dir.clone(),
                pid: running.pid,
            });
        }
        fs::create_dir_all(&paths.dir).map_err(io_err(&paths.dir))?;
        // dnsmasq, as nobody, rereads the hosts file in here on SIGHUP.
        let mut perms = fs::metadata(&paths.dir).map_err(io_err(&paths.dir))?.permissions();
        if perms.mode() & 0o005 != 0o005 {
            perms.set_mode(perms.mode() | 0o005);
            fs::set_permissions(&paths.dir, perms).map_err(io_err(&paths.dir))?;
        }
        write_atomic(&paths.config, &text)?;
        if !paths.hosts.exists() {
            write_atomic(&paths.hosts, "")?;
        }
        let _ = fs::remove_file(&paths.pid);
        let out = Command::new(DNSMASQ)
            .arg(format!("--conf-file={}", paths.config.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(DnsmasqError::Spawn)?;
        if !out.status.success() {
            return Err(DnsmasqError::StartFailed {
                bridge: config.bridge.clone(),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        let pid = read_pid(&paths.pid)?.ok_or_else(|| DnsmasqError::Io {
            path: paths.pid.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "dnsmasq started but wrote no pid file"),
        })?;
        let dnsmasq = Dnsmasq {
            pid,
            paths,
            bridge: config.bridge.clone(),
        };
        tracing::debug!(pid, bridge = %dnsmasq.bridge, "dnsmasq started");
        Ok(dnsmasq)
    }

    /// Takes back the dnsmasq whose pid file is `pid_file` (in a state directory laid out as
    /// [`DnsmasqPaths`]), if it still runs: the pid must be a dnsmasq started with that
    /// directory's configuration, so a pid reused by another process is not mistaken for it.
    pub fn adopt(pid_file: &Path) -> Result<Option<Dnsmasq>, DnsmasqError> {
        let Some(pid) = read_pid(pid_file)? else {
            return Ok(None);
        };
        let dir = pid_file.parent().unwrap_or(Path::new("/"));
        let paths = DnsmasqPaths::new(dir);
        let bridge = fs::read_to_string(&paths.config)
            .ok()
            .and_then(|c| c.lines().find_map(|l| l.strip_prefix("interface=").map(str::to_string)))
            .unwrap_or_default();
        let dnsmasq = Dnsmasq { pid, paths, bridge };
        Ok(dnsmasq.is_alive().then_some(dnsmasq))
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn paths(&self) -> &DnsmasqPaths {
        &self.paths
    }

    /// Whether our dnsmasq still runs: the pid is alive (not a zombie) and is still a dnsmasq
    /// with our configuration.
    pub fn is_alive(&self) -> bool {
        let Ok(stat) = fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        // The state follows the parenthesised command name, which may itself hold ')'.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        if matches!(state, Some("Z" | "X" | "x") | None) {
            return false;
        }
        let Ok(cmdline) = fs::read(format!("/proc/{}/cmdline", self.pid)) else {
            return false;
        };
        let want = format!("--conf-file={}", self.paths.config.display());
        let mut args = cmdline.split(|b| *b == 0).map(String::from_utf8_lossy);
        let is_dnsmasq = args.next().is_some_and(|a| a.rsplit('/').next() == Some(DNSMASQ));
        is_dnsmasq && args.any(|a| a == want)
    }

    fn signal(&self, signal: Signal) -> Result<(), DnsmasqError> {
        if !self.is_alive() {
            return Err(DnsmasqError::NotRunning(self.pid));
        }
        kill(Pid::from_raw(self.pid), signal).map_err(|source| DnsmasqError::Signal { pid: self.pid, source })
    }

    /// SIGHUP: dnsmasq rereads the static leases file and clears its cache.
    pub fn reload(&self) -> Result<(), DnsmasqError> {
        self.signal(Signal::SIGHUP)
    }

    /// Writes the static leases and makes dnsmasq read them.
    pub fn set_static_leases(&self, leases: &[StaticLease]) -> Result<(), DnsmasqError> {
        write_static_leases(&self.paths, leases)?;
        self.reload()
    }

    /// SIGTERM, then SIGKILL if dnsmasq is still there after a few seconds. The leases file
    /// stays for the next start; the pid file goes.
    pub fn stop(self) -> Result<(), DnsmasqError> {
        for (signal, wait) in [(Signal::SIGTERM, STOP_GRACE), (Signal::SIGKILL, Duration::from_secs(2))] {
            match self.signal(signal) {
                Ok(()) => {}
                Err(DnsmasqError::NotRunning(_)) => break,
                Err(e) => return Err(e),
            }
            let deadline = Instant::now() + wait;
            while self.is_alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if !self.is_alive() {
                break;
            }
        }
        if self.is_alive() {
            return Err(DnsmasqError::WouldNotStop(self.pid));
        }
        match fs::remove_file(&self.paths.pid) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&self.paths.pid)(e)),
            _ => Ok(()),
        }
    }

    /// Stops this dnsmasq and starts one with `config` (the same state directory: same leases).
    pub fn restart(self, config: &DnsmasqConfig) -> Result<Dnsmasq, DnsmasqError> {
        self.stop()?;
        Dnsmasq::start(config)
    }
}

fn read_pid(path: &Path) -> Result<Option<i32>, DnsmasqError> {
    let content = match fs::read_to_string(path) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    match content.trim().parse::<i32>() {
        Ok(pid) if pid > 1 => Ok(Some(pid)),
        _ => Err(DnsmasqError::BadPidFile {
            path: path.to_path_buf(),
            content,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> DnsmasqConfig {
        let mut c = DnsmasqConfig::new("corralbr0", "/var/lib/corral/networks/corralbr0/dnsmasq");
        c.ipv4 = Some(Ipv4Dhcp {
            address: "10.1.2.1/24".parse().unwrap(),
            dhcp: true,
            ranges: Vec::new(),
            lease_time: "1h".into(),
        });
        c.ipv6 = Some(Ipv6Dhcp {
            address: "fd42:1:2:3::1/64".parse().unwrap(),
            dhcp: true,
            stateful: false,
            ranges: Vec::new(),
            lease_time: "1h".into(),
        });
        c
    }

    fn lines(s: &str) -> Vec<&str> {
        s.lines().collect()
    }

    #[test]
    fn renders_a_bridge_only_config() {
        let s = config().render().unwrap();
        let l = lines(&s);
        for want in [
            "interface=corralbr0",
            "except-interface=lo",
            "bind-interfaces",
            "listen-address=10.1.2.1",
            "listen-address=fd42:1:2:3::1",
            "dhcp-range=10.1.2.2,10.1.2.254,255.255.255.0,1h",
            "enable-ra",
            "dhcp-range=::,constructor:corralbr0,ra-stateless,ra-names",
            "domain=corral",
            "local=/corral/",
            "no-resolv",
            "no-hosts",
            "pid-file=/var/lib/corral/networks/corralbr0/dnsmasq/dnsmasq.pid",
            "dhcp-leasefile=/var/lib/corral/networks/corralbr0/dnsmasq/dnsmasq.leases",
            "dhcp-hostsfile=/var/lib/corral/networks/corralbr0/dnsmasq/dnsmasq.hosts",
        ] {
            assert!(l.contains(&want), "missing {want:?} in\n{s}");
        }
        assert!(!s.contains("resolv-file"));
    }

    #[test]
    fn ranges_stateful_dhcpv6_upstream_and_raw() {
        let mut c = config();
        let v4 = c.ipv4.as_mut().unwrap();
        v4.ranges =
            crate::subnet::parse_ipv4_ranges("10.1.2.100-10.1.2.150,10.1.2.200-10.1.2.210", v4.address).unwrap();
        v4.lease_time = "30m".into();
        let v6 = c.ipv6.as_mut().unwrap();
        v6.stateful = true;
        v6.ranges = crate::subnet::parse_ipv6_ranges("fd42:1:2:3::100-fd42:1:2:3::1ff", v6.address).unwrap();
        c.upstream = Upstream::Servers(vec!["192.0.2.53".parse().unwrap()]);
        c.raw = Some("dhcp-option=option:ntp-server,10.1.2.1\n".into());
        c.dns_domain = "lab.example".into();
        let s = c.render().unwrap();
        let l = lines(&s);
        assert!(l.contains(&"dhcp-range=10.1.2.100,10.1.2.150,255.255.255.0,30m"), "{s}");
        assert!(l.contains(&"dhcp-range=10.1.2.200,10.1.2.210,255.255.255.0,30m"));
        assert!(l.contains(&"dhcp-range=fd42:1:2:3::100,fd42:1:2:3::1ff,64,1h"));
        assert!(l.contains(&"server=192.0.2.53"));
        assert!(l.contains(&"local=/lab.example/"));
        assert_eq!(l.last(), Some(&"dhcp-option=option:ntp-server,10.1.2.1"));
        c.upstream = Upstream::ResolvConf(None);
        let s = c.render().unwrap();
        assert!(s.contains("resolv-file=/etc/resolv.conf") && !s.contains("no-resolv"));
        c.ipv6.as_mut().unwrap().dhcp = false;
        assert!(c
            .render()
            .unwrap()
            .contains("dhcp-range=::,constructor:corralbr0,ra-only"));
        c.ipv4.as_mut().unwrap().dhcp = false;
        assert!(!c.render().unwrap().contains("dhcp-range=10."));
    }

    #[test]
    fn bad_values_are_refused() {
        let mut c = config();
        c.dns_domain = "bad domain".into();
        assert!(c.render().unwrap_err().to_string().contains("DNS domain"));
        let mut c = config();
        c.ipv4.as_mut().unwrap().lease_time = "1 hour".into();
        assert!(c.render().unwrap_err().to_string().contains("lease time"));
        let mut c = config();
        c.bridge = "this-name-is-too-long".into();
        assert!(c.render().is_err());
        for ok in ["3600", "1h", "infinite", "2d"] {
            assert!(validate_lease_time(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn static_leases_file() {
        let leases = vec![
            StaticLease {
                mac: "00:16:3e:00:00:01".parse().unwrap(),
                ipv4: Some("10.1.2.10".parse().unwrap()),
                ipv6: Some("fd42:1:2:3::10".parse().unwrap()),
                hostname: Some("web".into()),
            },
            StaticLease {
                mac: "00:16:3e:00:00:02".parse().unwrap(),
                ipv4: None,
                ipv6: None,
                hostname: Some("db".into()),
            },
        ];
        assert_eq!(
            render_static_leases(&leases).unwrap(),
            "00:16:3e:00:00:01,10.1.2.10,[fd42:1:2:3::10],web\n00:16:3e:00:00:02,db\n"
        );
        let bad = StaticLease {
            hostname: Some("no_underscores".into()),
            ..leases[1].clone()
        };
        assert!(render_static_leases(&[bad]).is_err());
    }

    #[test]
    fn leases_file_parses() {
        let text = "1700003600 00:16:3e:aa:bb:cc 10.1.2.50 web 01:00:16:3e:aa:bb:cc\n\
                    0 00:16:3e:aa:bb:cd 10.1.2.51 * *\n\
                    duid 00:01:00:01:2c:00:00:00:00:16:3e:aa:bb:cc\n\
                    1700003600 1234 fd42:1:2:3::50 web 00:01:00:01:2c:00:00:00:00:16:3e:aa:bb:cc\n";
        let leases = parse_leases(text).unwrap();
        assert_eq!(leases.len(), 3);
        assert_eq!(leases[0].expiry, 1_700_003_600);
        assert_eq!(leases[0].mac, Some("00:16:3e:aa:bb:cc".parse().unwrap()));
        assert_eq!(leases[0].address, "10.1.2.50".parse::<IpAddr>().unwrap());
        assert_eq!(leases[0].hostname.as_deref(), Some("web"));
        assert_eq!(leases[0].client_id.as_deref(), Some("01:00:16:3e:aa:bb:cc"));
        assert_eq!(
            (
                leases[1].expiry,
                leases[1].hostname.as_deref(),
                leases[1].client_id.as_deref()
            ),
            (0, None, None)
        );
        assert_eq!((leases[2].mac, leases[2].iaid), (None, Some(1234)));
        assert!(parse_leases("").unwrap().is_empty());
        let err = parse_leases("12 00:16:3e:aa:bb:cc notanip x\n").unwrap_err();
        assert!(err.to_string().contains("line 1: not an IP address"), "{err}");
        assert!(parse_leases("xx 00:16:3e:aa:bb:cc 10.0.0.1 x\n").is_err());
    }
}
