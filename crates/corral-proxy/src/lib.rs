//! The forwarding engine of LXD's `proxy` device (its non-NAT mode, LXD's `forkproxy`).
//!
//! A proxy listens on `listen` in one set of namespaces and, for each client, connects to
//! `connect` in another: with `bind=host`, the listener is the host's and connections are made
//! inside the container, so `127.0.0.1` on the connect side is the container's loopback and
//! `unix:/run/x.sock` is the container's file. Supported: tcp and udp with port lists and ranges,
//! unix paths and abstract names, tcp and unix mixed both ways, udp to udp, a PROXY protocol v2
//! header for tcp servers, the listening unix socket's owner and mode, and LXD's privilege drop.
//!
//! - [`addr`]: LXD's address forms, parsed with messages that say what is wrong.
//! - [`config`]: [`ProxyConfig`] (serde: what the daemon hands to a proxy process), its validation
//!   into routes, and its derivation from a device's keys ([`ProxyConfig::from_device`]).
//! - `ns`: a thread per side inside that side's network and mount namespaces; sockets are made
//!   there and used from the async runtime (a socket stays in the namespace it was made in).
//! - `engine`: [`Proxy`]: listeners, one task per connection, UDP sessions per client address.
//! - [`proxy_v2`]: the PROXY header.
//! - `sys`: the system calls, through nix's and std's safe wrappers (no `unsafe` in this crate).
//!
//! The daemon runs each proxy device as a process of its own (so that it keeps serving while the
//! daemon restarts), whose main calls [`run_process`] with the deserialized [`ProxyConfig`]. Such
//! a process holds the namespaces it was given open: the daemon stops it when the instance stops
//! (a held mount namespace keeps the container's mounts alive) and starts a new one when the
//! instance starts again (its namespaces are new ones).

pub mod addr;
pub mod config;
mod engine;
mod error;
mod ns;
pub mod proxy_v2;
mod sys;

use std::future::Future;

use tokio::signal::unix::{signal, SignalKind};
use tracing::info;

pub use addr::{AddrError, Endpoint, ProxyAddr};
pub use config::{ConfigError, IdKind, NsSpec, Plan, ProxyConfig, Route};
pub use engine::Proxy;
pub use error::ProxyError;
pub use proxy_v2::ProxyHeader;

/// Serves `config` until `shutdown` resolves: starts the [`Proxy`] (every socket listening), then
/// switches the process to `security_uid`/`security_gid` if given (the whole process: call this
/// with those only in a process of its own), calls `ready`, and stops the proxy when `shutdown`
/// resolves. Must run within a tokio runtime.
pub async fn run(
    config: ProxyConfig,
    ready: impl FnOnce(&Proxy),
    shutdown: impl Future<Output = ()>,
) -> Result<(), ProxyError> {
    let proxy = Proxy::start(&config).await?;
    if config.security_uid.is_some() || config.security_gid.is_some() {
        let (uid, gid) = (config.security_uid.unwrap_or(0), config.security_gid.unwrap_or(0));
        if let Err(source) = sys::drop_privileges(config.security_uid, config.security_gid) {
            proxy.stop().await;
            return Err(ProxyError::DropPrivileges { uid, gid, source });
        }
        info!("switched to uid {uid} and gid {gid}");
    }
    ready(&proxy);
    shutdown.await;
    proxy.stop().await;
    Ok(())
}

/// The body of a proxy process's main: builds a tokio runtime, serves `config` until SIGTERM or
/// SIGINT (SIGHUP is ignored: the process outlives the daemon that spawned it and its terminal),
/// then closes every socket and removes the listening unix socket. `ready` is called once every
/// socket listens (a process reports its start to its spawner there); an error before that is
/// returned instead.
pub fn run_process(config: ProxyConfig, ready: impl FnOnce(&Proxy)) -> Result<(), ProxyError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("proxy-io")
        .enable_all()
        .build()
        .map_err(ProxyError::Runtime)?;
    runtime.block_on(async move {
        let mut term = signal(SignalKind::terminate()).map_err(ProxyError::Signals)?;
        let mut int = signal(SignalKind::interrupt()).map_err(ProxyError::Signals)?;
        let mut hup = signal(SignalKind::hangup()).map_err(ProxyError::Signals)?;
        let shutdown = async move {
            loop {
                tokio::select! {
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                    _ = hup.recv() => continue,
                }
            }
            info!("stopping on a signal");
        };
        run(config, ready, shutdown).await
    })
}
