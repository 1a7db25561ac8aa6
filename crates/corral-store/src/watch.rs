//! In-process watches: a registry of `(prefix, sender)` pairs fed after each commit.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

pub use std::sync::mpsc::{RecvTimeoutError, TryRecvError};

use crate::WatchEvent;

/// The receiving end of [`Store::watch`](crate::Store::watch).
///
/// Events arrive in commit order. Dropping the watcher unregisters it; the store prunes it on its next commit.
#[derive(Debug)]
pub struct Watcher {
    rx: Receiver<WatchEvent>,
    // The registry holds a `Weak` to this: once the watcher is dropped, its registration is dead.
    _alive: Arc<()>,
}

impl Watcher {
    /// Waits for the next event. Fails only if the store itself has been dropped.
    pub fn recv(&self) -> Result<WatchEvent, mpsc::RecvError> {
        self.rx.recv()
    }

    /// Waits up to `timeout` for the next event.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<WatchEvent, RecvTimeoutError> {
        self.rx.recv_timeout(timeout)
    }

    /// Returns the next event if one is already queued.
    pub fn try_recv(&self) -> Result<WatchEvent, TryRecvError> {
        self.rx.try_recv()
    }

    /// Drains the events already queued, without waiting.
    pub fn try_iter(&self) -> impl Iterator<Item = WatchEvent> + '_ {
        self.rx.try_iter()
    }
}

struct Registration {
    prefix: String,
    tx: Sender<WatchEvent>,
    alive: Weak<()>,
}

/// The set of live watchers of one store.
#[derive(Default)]
pub(crate) struct WatchRegistry {
    watchers: Mutex<Vec<Registration>>,
}

impl WatchRegistry {
    pub(crate) fn register(&self, prefix: &str) -> Watcher {
        let (tx, rx) = mpsc::channel();
        let alive = Arc::new(());
        let mut watchers = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        watchers.retain(|w| w.alive.strong_count() > 0);
        watchers.push(Registration {
            prefix: prefix.to_owned(),
            tx,
            alive: Arc::downgrade(&alive),
        });
        Watcher { rx, _alive: alive }
    }

    /// Delivers the events of one committed transaction to every matching watcher, pruning dead ones.
    pub(crate) fn dispatch(&self, events: &[WatchEvent]) {
        let mut watchers = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        watchers.retain(|w| {
            if w.alive.strong_count() == 0 {
                return false;
            }
            for event in events.iter().filter(|e| e.key().starts_with(&w.prefix)) {
                if w.tx.send(event.clone()).is_err() {
                    return false;
                }
            }
            true
        });
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.watchers.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}
