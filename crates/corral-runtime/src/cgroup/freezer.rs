//! Freezing (v1 `freezer.state` or cgroup2 `cgroup.freeze`) and the portable kill loop.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::{debug, warn};

use super::fsutil::{keyed_u64, read_trimmed, write_value};
use super::{Cgroup, CgroupError, Layout, Result, FREEZE_TIMEOUT, POLL};

const KILL_FREEZE_TIMEOUT: Duration = Duration::from_millis(500);
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long, and how often, a freezer change is polled before the pace drops to `POLL`.
const FINE_POLL_FOR: Duration = Duration::from_millis(50);
const FINE_POLL: Duration = Duration::from_millis(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FreezeState {
    Thawed,
    Freezing,
    Frozen,
}

pub(super) enum Freezer {
    /// `freezer.state` of the v1 freezer controller.
    V1 { state: PathBuf },
    /// `cgroup.freeze` and `cgroup.events` of a cgroup2 directory.
    V2 { freeze: PathBuf, events: PathBuf },
}

impl Cgroup {
    pub(super) fn freezer(&self) -> Result<Freezer> {
        if let Some(mount) = self.v1_mount("freezer") {
            return Ok(Freezer::V1 {
                state: self.dir_in(mount).join("freezer.state"),
            });
        }
        if let Some(dir) = self.unified_dir() {
            let freeze = dir.join("cgroup.freeze");
            if matches!(self.root.layout(), Layout::V2 { .. }) || freeze.exists() {
                return Ok(Freezer::V2 {
                    freeze,
                    events: dir.join("cgroup.events"),
                });
            }
        }
        Err(CgroupError::NoFreezer {
            name: self.name.clone(),
        })
    }

    pub(super) fn set_frozen(&self, freezer: &Freezer, frozen: bool, timeout: Duration) -> Result<()> {
        let (file, value, report, expected) = match freezer {
            Freezer::V1 { state } => {
                let (value, expected) = if frozen {
                    ("FROZEN", "FROZEN")
                } else {
                    ("THAWED", "THAWED")
                };
                (state, value, state, expected)
            }
            Freezer::V2 { freeze, events } => {
                let (value, expected) = if frozen { ("1", "frozen 1") } else { ("0", "frozen 0") };
                (freeze, value, events, expected)
            }
        };
        // cgroup2 says when `frozen` changes: the wait is a poll(2) on cgroup.events, opened
        // before the write so that no change is missed.
        let mut watch = match freezer {
            Freezer::V2 { events, .. } => std::fs::File::open(events).ok(),
            Freezer::V1 { .. } => None,
        };
        write_value(file, value)?;
        if let Some(events) = watch.as_mut() {
            if wait_events(events, frozen, timeout)? {
                debug!(name = %self.name, frozen, "freezer settled");
                return Ok(());
            }
        }
        let want = if frozen {
            FreezeState::Frozen
        } else {
            FreezeState::Thawed
        };
        let start = Instant::now();
        loop {
            if freeze_state(freezer)? == want {
                debug!(name = %self.name, frozen, "freezer settled");
                return Ok(());
            }
            if start.elapsed() >= timeout {
                return Err(CgroupError::Timeout {
                    path: report.clone(),
                    expected,
                    waited: start.elapsed(),
                });
            }
            // A freeze usually settles within a few milliseconds (and a checkpoint's pause
            // counts each one): poll finely first, then at the usual pace.
            thread::sleep(if start.elapsed() < FINE_POLL_FOR {
                FINE_POLL
            } else {
                POLL
            });
        }
    }

    /// The portable kill: freeze, SIGKILL every pid of every hierarchy's subtree, thaw; until
    /// the subtree is empty or `KILL_TIMEOUT` after `start`.
    pub(super) fn kill_loop(&self, start: Instant) -> Result<()> {
        let freezer = self.freezer().ok();
        let own_pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        loop {
            let pids = self.collect_pids()?;
            if pids.is_empty() {
                debug!(name = %self.name, "cgroup empty");
                return Ok(());
            }
            if start.elapsed() >= KILL_TIMEOUT {
                return Err(CgroupError::NotEmpty {
                    name: self.name.clone(),
                    pids,
                    waited: start.elapsed(),
                });
            }
            if pids.contains(&own_pid) {
                return Err(CgroupError::KillSelf {
                    pid: own_pid,
                    name: self.name.clone(),
                });
            }
            // Frozen processes cannot fork or exit (so no pid is reused) while we signal.
            let frozen = match &freezer {
                Some(f) => match self.set_frozen(f, true, KILL_FREEZE_TIMEOUT) {
                    Ok(()) => true,
                    Err(e) => {
                        debug!(name = %self.name, "signalling without a complete freeze: {e}");
                        false
                    }
                },
                None => false,
            };
            let pids = if frozen { self.collect_pids()? } else { pids };
            debug!(name = %self.name, ?pids, "SIGKILL");
            let mut result = Ok(());
            for pid in pids.iter().copied().filter(|p| *p != own_pid) {
                match kill(Pid::from_raw(pid), Signal::SIGKILL) {
                    Ok(()) | Err(Errno::ESRCH) => {}
                    Err(source) => {
                        result = Err(CgroupError::Kill { pid, source });
                        break;
                    }
                }
            }
            // Killed processes only die once thawed; thaw even after a partial freeze.
            if let Some(f) = &freezer {
                if let Err(e) = self.set_frozen(f, false, FREEZE_TIMEOUT) {
                    warn!(name = %self.name, "cannot thaw while killing: {e}");
                }
            }
            result?;
            thread::sleep(POLL);
        }
    }
}

/// Waits (bounded) for `populated 0` in `dir`'s `cgroup.events`; false on timeout.
pub(super) fn wait_unpopulated(dir: &Path, timeout: Duration) -> Result<bool> {
    let events = dir.join("cgroup.events");
    let start = Instant::now();
    loop {
        if keyed_u64(&events, "populated")? == Some(0) {
            return Ok(true);
        }
        if start.elapsed() >= timeout {
            return Ok(false);
        }
        thread::sleep(POLL);
    }
}

/// Waits until `cgroup.events` (open as `events`) says `frozen` is as wanted, woken by the
/// kernel's notification of each change; false if it did not within `timeout` or the file
/// cannot be polled (the caller then polls by reading).
fn wait_events(events: &mut std::fs::File, frozen: bool, timeout: Duration) -> Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::fd::AsFd;

    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

    let want = if frozen { "frozen 1" } else { "frozen 0" };
    let start = Instant::now();
    let mut text = String::new();
    loop {
        text.clear();
        // Reading re-arms the notification: a change after this read wakes the poll below.
        if events.seek(SeekFrom::Start(0)).is_err() || events.read_to_string(&mut text).is_err() {
            return Ok(false);
        }
        if text.lines().any(|l| l.trim() == want) {
            return Ok(true);
        }
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Ok(false);
        }
        let ms = PollTimeout::try_from(left.as_millis().min(1000) as u32 + 1).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(events.as_fd(), PollFlags::POLLPRI)];
        match poll(&mut fds, ms) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return Ok(false),
        }
    }
}

pub(super) fn freeze_state(freezer: &Freezer) -> Result<FreezeState> {
    match freezer {
        Freezer::V1 { state } => {
            let value = read_trimmed(state)?;
            match value.as_str() {
                "THAWED" => Ok(FreezeState::Thawed),
                "FREEZING" => Ok(FreezeState::Freezing),
                "FROZEN" => Ok(FreezeState::Frozen),
                _ => Err(CgroupError::Parse {
                    path: state.clone(),
                    value,
                    expected: "THAWED, FREEZING or FROZEN",
                }),
            }
        }
        Freezer::V2 { freeze, events } => {
            let requested = read_trimmed(freeze)? == "1";
            let frozen = keyed_u64(events, "frozen")? == Some(1);
            Ok(match (requested, frozen) {
                (_, true) => FreezeState::Frozen,
                (true, false) => FreezeState::Freezing,
                (false, false) => FreezeState::Thawed,
            })
        }
    }
}
