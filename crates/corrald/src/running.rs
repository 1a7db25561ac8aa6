//! The instances running now, as the daemon knows them: each one's monitor state, kept in
//! memory so that listing many instances reads no files, and a watch on each monitor so
//! that the daemon learns when a container stops on its own (a `poweroff` inside) rather
//! than finding out at the next request.
//!
//! Entries are added when the daemon starts an instance or, at start-up, adopts one started
//! by an earlier daemon; removed when the monitor exits. A stop the daemon asked for is
//! marked first, so that its exit is told apart from one the container chose.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};

use corral_runtime::proto::{MonitorState, Status};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

/// How a watched monitor's exit came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The daemon stopped it.
    Asked,
    /// The container stopped by itself.
    OnItsOwn,
    /// A later run replaced the one watched (restart): nothing to do.
    Stale,
}

#[derive(Default)]
pub struct RunningSet {
    states: Mutex<HashMap<String, MonitorState>>,
    stopping: Mutex<HashSet<String>>,
    /// Where new monitors are sent to be watched (set once the daemon serves).
    watch: Mutex<Option<Watch>>,
}

/// The way to the thread that waits on the monitors' pidfds.
pub struct Watch {
    tx: Sender<(String, i32)>,
    wake: Arc<EventFd>,
}

impl Watch {
    fn send(&self, name: &str, monitor_pid: i32) {
        let _ = self.tx.send((name.to_string(), monitor_pid));
        let _ = self.wake.write(1);
    }
}

/// Starts the thread that waits (with epoll, on pidfds) for monitors to exit, calling
/// `on_exit(name, monitor_pid)` for each; one thread for all containers.
pub fn start_watcher(on_exit: impl Fn(&str, i32) + Send + 'static) -> std::io::Result<Watch> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    let wake = Arc::new(EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC)?);
    epoll.add(wake.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, 0))?;
    let (tx, rx) = channel::<(String, i32)>();
    let woken = wake.clone();
    std::thread::Builder::new()
        .name("monitor-watch".into())
        .spawn(move || {
            let mut watched: HashMap<u64, (String, i32, OwnedFd)> = HashMap::new();
            let mut next = 1u64;
            let mut events = [EpollEvent::empty(); 32];
            loop {
                let n = match epoll.wait(&mut events, EpollTimeout::NONE) {
                    Ok(n) => n,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        tracing::error!(error = %e, "the monitor watch stopped");
                        return;
                    }
                };
                for ev in &events[..n] {
                    if ev.data() == 0 {
                        let _ = woken.read();
                        while let Ok((name, pid)) = rx.try_recv() {
                            let added = corral_runtime::client::monitor_pidfd(pid).and_then(|fd| {
                                epoll.add(fd.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, next))?;
                                Ok(fd)
                            });
                            match added {
                                Ok(fd) => {
                                    watched.insert(next, (name, pid, fd));
                                    next += 1;
                                }
                                // Already gone.
                                Err(_) => on_exit(&name, pid),
                            }
                        }
                    } else if let Some((name, pid, fd)) = watched.remove(&ev.data()) {
                        let _ = epoll.delete(fd.as_fd());
                        on_exit(&name, pid);
                    }
                }
            }
        })?;
    Ok(Watch { tx, wake })
}

impl RunningSet {
    /// Watches every instance added from now on (and those already known) through `watch`.
    pub fn watch_with(&self, watch: Watch) {
        for (name, s) in self.states.lock().expect("running lock poisoned").iter() {
            watch.send(name, s.monitor_pid);
        }
        *self.watch.lock().expect("running lock poisoned") = Some(watch);
    }

    pub fn insert(&self, name: &str, state: MonitorState) {
        let pid = state.monitor_pid;
        self.states
            .lock()
            .expect("running lock poisoned")
            .insert(name.to_string(), state);
        if let Some(watch) = self.watch.lock().expect("running lock poisoned").as_ref() {
            watch.send(name, pid);
        }
    }

    pub fn get(&self, name: &str) -> Option<MonitorState> {
        self.states.lock().expect("running lock poisoned").get(name).cloned()
    }

    pub fn set_status(&self, name: &str, status: Status) {
        if let Some(s) = self.states.lock().expect("running lock poisoned").get_mut(name) {
            s.status = status;
        }
    }

    /// Marks a stop the daemon is about to make.
    pub fn expect_stop(&self, name: &str) {
        self.stopping
            .lock()
            .expect("running lock poisoned")
            .insert(name.to_string());
    }

    /// The daemon's stop is over (done or failed): an exit seen from now on was not asked.
    pub fn stop_done(&self, name: &str, stopped: bool) {
        if stopped {
            self.states.lock().expect("running lock poisoned").remove(name);
        }
        self.stopping.lock().expect("running lock poisoned").remove(name);
    }

    /// The monitor `monitor_pid` of `name` exited.
    pub fn exited(&self, name: &str, monitor_pid: i32) -> Exit {
        let mut states = self.states.lock().expect("running lock poisoned");
        match states.get(name) {
            Some(s) if s.monitor_pid == monitor_pid => {
                states.remove(name);
                if self.stopping.lock().expect("running lock poisoned").contains(name) {
                    Exit::Asked
                } else {
                    Exit::OnItsOwn
                }
            }
            // Already removed by the daemon's own stop, or replaced by a new run.
            _ => Exit::Stale,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(pid: i32) -> MonitorState {
        MonitorState {
            status: Status::Running,
            monitor_pid: pid,
            init_pid: pid + 1,
            started_at: 0,
            idmapped: true,
            memory_bytes: 0,
            memory_peak_bytes: 0,
            cpu_ns: 0,
            processes: 1,
            hotplugged: Vec::new(),
            disks: Vec::new(),
        }
    }

    #[test]
    fn exits_are_told_apart() {
        let set = RunningSet::default();
        set.insert("a", state(10));
        assert_eq!(set.exited("a", 10), Exit::OnItsOwn);
        assert!(set.get("a").is_none());

        set.insert("a", state(11));
        set.expect_stop("a");
        assert_eq!(set.exited("a", 11), Exit::Asked);
        set.stop_done("a", true);

        set.insert("a", state(12));
        set.insert("a", state(13));
        assert_eq!(set.exited("a", 12), Exit::Stale, "a restart replaced it");
        assert!(set.get("a").is_some());
        set.expect_stop("a");
        set.stop_done("a", true);
        assert_eq!(set.exited("a", 13), Exit::Stale, "the stop already removed it");
    }
}
