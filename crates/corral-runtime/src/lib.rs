//! corral-runtime: the life of one system container.
//!
//! A [`spec::ContainerSpec`] goes in; a running container, supervised by its own monitor
//! process, comes out. The runtime is synchronous (no tokio) and knows nothing of HTTP or of
//! the daemon's database: the daemon translates instance config into a spec, spawns a monitor
//! with [`client::spawn`] and talks to it through [`client::Client`].
//!
//! Start reading at [`start`] (the fork sequence that builds the container), then [`monitor`]
//! (the process that owns a running container), then [`exec`].

pub mod caps;
pub mod cgroup;
pub mod checkpoint;
pub mod client;
pub mod criu_stats;
pub mod exec;
pub mod hotplug;
pub mod idmap;
pub mod layout;
pub mod monitor;
pub mod netinfo;
mod packet;
pub mod proto;
pub mod seccomp;
pub mod shift;
pub mod spec;
pub mod start;
mod sys;
