//! Shared by the root-only network tests: skips, unique names, throwaway network namespaces.
//!
//! Every test works inside network namespaces it creates (`ip netns add corraltest-...`): its
//! bridges, veths, nft tables and dnsmasq exist only there, none of them has a route out, and
//! deleting the namespace on drop removes whatever a failing test left.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use corral_network::link::Netns;

/// Stops the test with a SKIP line, or fails it where every test is required.
pub fn skip(test: &str, need: &str) -> bool {
    if std::env::var("CORRAL_REQUIRED_TESTS").is_ok_and(|v| v == "1") {
        panic!("{test}: required but cannot run: {need}");
    }
    eprintln!("SKIP {test}: {need}");
    true
}

/// Root and the tools a test needs, or a skip.
pub fn require(test: &str, tools: &[&str]) -> bool {
    if !nix::unistd::geteuid().is_root() {
        skip(test, "needs root");
        return false;
    }
    for tool in ["ip"].iter().chain(tools) {
        let found =
            std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()));
        if !found {
            skip(test, &format!("needs {tool}"));
            return false;
        }
    }
    true
}

/// A name unique to this test process and call: tests run in parallel.
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{}-{}-{tag}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace of the test's own, deleted on drop with every process still in it.
pub struct TestNetns {
    pub name: String,
    pub netns: Netns,
}

impl TestNetns {
    pub fn new(tag: &str) -> TestNetns {
        let name = format!("corraltest-{}", unique(tag));
        run(Command::new("ip").args(["netns", "add", &name]));
        let netns = Netns::open(format!("/run/netns/{name}")).expect("open the test netns");
        let ns = TestNetns { name, netns };
        // Loopback up, as in any container: nothing else.
        ns.sh("ip link set lo up");
        ns
    }

    /// Runs `work` on a thread inside the namespace.
    pub fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        self.netns.run(work).expect("enter the test netns")
    }

    /// Runs a command inside the namespace (its child inherits the thread's namespace).
    pub fn cmd(&self, program: &str, args: &[&str]) -> Output {
        self.run(|| {
            Command::new(program)
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("{program}: {e}"))
        })
    }

    /// Runs a shell command inside the namespace and returns its stdout; panics on failure.
    pub fn sh(&self, script: &str) -> String {
        let out = self.cmd("sh", &["-c", script]);
        assert!(
            out.status.success(),
            "{script} in {}: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The pids of the processes in the namespace.
    pub fn pids(&self) -> Vec<i32> {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .expect("ip netns pids");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        // Only processes inside this test's own namespace: ones the test started.
        for pid in self.pids() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("corraltest-{}", unique(tag)));
        std::fs::create_dir_all(&dir).expect("create a test directory");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A dnsmasq stopped on drop if the test did not stop it itself.
pub struct DnsmasqGuard(pub Option<corral_network::dnsmasq::Dnsmasq>);

impl DnsmasqGuard {
    pub fn get(&self) -> &corral_network::dnsmasq::Dnsmasq {
        self.0.as_ref().expect("dnsmasq running")
    }

    pub fn take(&mut self) -> corral_network::dnsmasq::Dnsmasq {
        self.0.take().expect("dnsmasq running")
    }
}

impl Drop for DnsmasqGuard {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            let _ = d.stop();
        }
    }
}
