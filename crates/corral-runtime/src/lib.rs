//! corral-runtime: the life of one system container.
//!
//! A [`spec::ContainerSpec`] goes in; a running container, supervised by its own monitor
//! process, comes out. The runtime is synchronous (no tokio) and knows nothing of HTTP or of
//! the daemon's database: the daemon translates instance config into a spec and talks to the
//! monitor through [`monitor::Client`].
//!
//! Start reading at [`start`] (the fork sequence that builds the container), then [`monitor`]
//! (the process that owns a running container), then [`exec`].

pub mod cgroup;
pub mod seccomp;
pub mod spec;
