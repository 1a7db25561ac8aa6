//! One thread per side of a proxy, living in that side's namespaces for the proxy's lifetime.
//!
//! `setns` changes only the calling thread, so each side (listen, connect) gets a dedicated thread
//! that has entered its network namespace and, if given, its mount namespace (after
//! `unshare(CLONE_FS)`, which that requires); the async tasks hand it the small jobs that must
//! run there (create a socket, bind, connect a unix path) and use the resulting sockets from any
//! thread. A long-lived thread rather than corral-network's `Netns::run` (a new thread per
//! call): a connection should not pay for a thread spawn, and the mount namespace is entered too.
//!
//! Why a mount namespace rather than `/proc/PID/root/<path>`: a path under `/proc/PID/root` is
//! resolved by the host with the host's root, so an absolute symlink the container planted would
//! lead outside it; inside the container's mount namespace the path resolves exactly as the
//! container's own programs see it.

use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc;

use crate::config::NsSpec;
use crate::error::ProxyError;
use crate::sys;

type Job = Box<dyn FnOnce() + Send>;

pub(crate) struct SideThread {
    side: &'static str,
    jobs: mpsc::Sender<Job>,
}

impl SideThread {
    /// Opens the namespace files and starts the thread; returns once it is inside them.
    pub(crate) fn spawn(side: &'static str, spec: &NsSpec) -> Result<SideThread, ProxyError> {
        let open = |p: &Option<PathBuf>| -> Result<Option<File>, ProxyError> {
            p.as_ref()
                .map(|path| {
                    File::open(path).map_err(|source| ProxyError::OpenNamespace {
                        path: path.clone(),
                        source,
                    })
                })
                .transpose()
        };
        let (net, mnt) = (open(&spec.net)?, open(&spec.mnt)?);
        let (jobs, queue) = mpsc::channel::<Job>();
        let (entered_tx, entered_rx) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name(format!("proxy-{side}"))
            .spawn(move || {
                let entered = sys::enter(net.as_ref(), mnt.as_ref());
                drop((net, mnt));
                let ok = entered.is_ok();
                let _ = entered_tx.send(entered);
                if ok {
                    // Ends when the last sender (the SideThread) is dropped.
                    for job in queue {
                        job();
                    }
                }
            })
            .map_err(|source| ProxyError::Thread { side, source })?;
        match entered_rx.recv() {
            Ok(Ok(())) => Ok(SideThread { side, jobs }),
            Ok(Err((what, source))) => Err(ProxyError::EnterNamespace { side, what, source }),
            Err(_) => Err(ProxyError::SideGone(side)),
        }
    }

    /// Runs `work` on the side's thread and waits for it without blocking the async runtime.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ProxyError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(work());
            }))
            .map_err(|_| ProxyError::SideGone(self.side))?;
        rx.await.map_err(|_| ProxyError::SideGone(self.side))
    }

    /// [`SideThread::run`] for a caller that may block (a `Drop`).
    pub(crate) fn run_blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ProxyError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(work());
            }))
            .map_err(|_| ProxyError::SideGone(self.side))?;
        rx.recv().map_err(|_| ProxyError::SideGone(self.side))
    }
}
