//! Background work nobody waits on (spare copies) that gives way to work somebody does wait on.
//!
//! SCHED_IDLE alone is not enough here: a copy mostly waits on the filesystem, not the CPU, and
//! on a slow disk its inode creations queue in the same journal as a starting container's
//! mounts and files. Measured with scripts/bench-api.sh (start timings at debug level): the
//! spawn of a busybox container took 43–52 ms with a spare copy running beside it, 9–45 ms
//! (median 25) with the copy stopped. So while a [`Hold`] lives, the background processes are stopped
//! (SIGSTOP takes effect on the way back to user space, so no kernel lock stays held), and
//! continued when the last hold goes.

use std::io;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[derive(Debug, Default, Clone)]
pub struct IdleWork {
    state: Arc<Mutex<State>>,
    /// Notified when the last hold goes (for work done in this process, see [`IdleWork::pause`]).
    unheld: Arc<Condvar>,
}

#[derive(Debug, Default)]
struct State {
    holds: usize,
    running: Vec<Pid>,
}

/// While alive, background processes are stopped.
#[must_use = "the background work resumes when the hold is dropped"]
pub struct Hold {
    state: Arc<Mutex<State>>,
    unheld: Arc<Condvar>,
}

impl IdleWork {
    /// Stops background processes until the returned hold is dropped.
    pub fn hold(&self) -> Hold {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.holds += 1;
        if s.holds == 1 {
            signal_all(&s.running, Signal::SIGSTOP);
        }
        Hold {
            state: self.state.clone(),
            unheld: self.unheld.clone(),
        }
    }

    /// For background work done in this process (an unpack): returns at once unless a hold lives,
    /// else when the last hold goes or `wanted()` says somebody waits on the work now.
    pub fn pause(&self, wanted: &dyn Fn() -> bool) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while s.holds > 0 && !wanted() {
            s = match self.unheld.wait_timeout(s, Duration::from_millis(50)) {
                Ok((s, _)) => s,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// Runs `cmd` to completion as background work (stdout and stderr captured).
    pub fn run(&self, mut cmd: Command) -> io::Result<Output> {
        let child = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            let pid = Pid::from_raw(child.id() as i32);
            if s.holds > 0 {
                let _ = kill(pid, Signal::SIGSTOP);
            }
            s.running.push(pid);
            child
        };
        let pid = Pid::from_raw(child.id() as i32);
        let out = child.wait_with_output();
        // Removed under the lock before the pid can be reused by anything we would signal.
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.running.retain(|p| *p != pid);
        out
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.holds -= 1;
        if s.holds == 0 {
            signal_all(&s.running, Signal::SIGCONT);
            self.unheld.notify_all();
        }
    }
}

fn signal_all(pids: &[Pid], sig: Signal) {
    for pid in pids {
        let _ = kill(*pid, sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn proc_state(pid: Pid) -> char {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .unwrap_or('?')
    }

    fn wait_for(what: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if what() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn a_hold_stops_background_work_and_its_end_resumes_it() {
        let work = IdleWork::default();
        let runner = work.clone();
        let job = std::thread::spawn(move || {
            let mut cmd = Command::new("sh");
            cmd.args(["-c", "sleep 0.3; echo done"]);
            runner.run(cmd)
        });
        assert!(wait_for(|| !work.state.lock().unwrap().running.is_empty()));
        let pid = work.state.lock().unwrap().running[0];
        let hold = work.hold();
        let second = work.hold();
        assert!(wait_for(|| proc_state(pid) == 'T'), "held work is stopped");
        drop(hold);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(proc_state(pid), 'T', "stays stopped while any hold lives");
        drop(second);
        let out = job.join().unwrap().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "done\n");
        assert!(work.state.lock().unwrap().running.is_empty());
    }

    #[test]
    fn work_started_during_a_hold_waits_for_its_end() {
        let work = IdleWork::default();
        let hold = work.hold();
        let runner = work.clone();
        let job = std::thread::spawn(move || {
            let mut cmd = Command::new("sleep");
            cmd.arg("0.05");
            runner.run(cmd)
        });
        std::thread::sleep(Duration::from_millis(200));
        assert!(!job.is_finished(), "a process started under a hold is stopped at once");
        drop(hold);
        assert!(job.join().unwrap().unwrap().status.success());
    }
}
