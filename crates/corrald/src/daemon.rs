//! Daemon start-up: directories, state, defaults, reconciliation, the API socket.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use corral_store::{cas_json, SqliteStore, Store};

use crate::api::{self, AppState};
use crate::images::Images;
use crate::instances::{profile_key, Instances, ProfileRecord, DEFAULT_PROJECT};
use crate::operations::Operations;
use crate::paths::Paths;

/// The name of the pool `corrald` creates on first start.
pub const DEFAULT_POOL: &str = "default";

/// Everything the daemon holds, ready to serve.
pub struct Daemon {
    pub paths: Paths,
    pub state: AppState,
}

impl Daemon {
    /// Opens (or creates) the daemon's state under `paths`.
    pub fn open(paths: Paths, monitor_exe: PathBuf) -> Result<Daemon> {
        for d in paths.all_dirs() {
            std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        std::fs::set_permissions(&paths.dir, std::fs::Permissions::from_mode(0o711))?;
        favor_cgroup_migrations();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&paths.global_db())?);
        let pools = Arc::new(crate::pools::Pools::open(store.clone(), paths.clone())?);
        let pool = pools.get(DEFAULT_POOL)?;
        ensure_default_profile(&*store)?;
        let networks = Arc::new(crate::networks::Networks::new(store.clone(), paths.networks()));
        let volumes = Arc::new(crate::volumes::Volumes {
            store: store.clone(),
            pools: pools.clone(),
        });
        volumes
            .reconcile()
            .context("cannot reconcile interrupted volume imports")?;
        let instances = Arc::new(Instances {
            networks: networks.clone(),
            store: store.clone(),
            paths: paths.clone(),
            pools,
            monitor_exe,
            running: Default::default(),
        });
        instances
            .reconcile()
            .context("cannot reconcile interrupted operations")?;
        let images = Arc::new(Images {
            store: store.clone(),
            paths: paths.clone(),
            pool,
            held: Default::default(),
        });
        images
            .resume_unpacks()
            .context("cannot start the interrupted image unpacks again")?;
        let events = crate::events::Events::default();
        crate::log_events::forward_to(events.clone());
        let publisher = events.clone();
        let ops = Operations::with_listener(std::sync::Arc::new(move |op| {
            publisher.send(
                "operation",
                serde_json::to_value(api::to_api_op(op)).unwrap_or_default(),
            )
        }));
        let server = Arc::new(crate::server::Server::open(store.clone(), &paths.dir)?);
        let trust = Arc::new(crate::trust::Trust::open(store.clone())?);
        let state = AppState {
            instances,
            images,
            networks,
            volumes,
            events,
            ops,
            sockets: crate::exec_ws::PendingSockets::default(),
            server,
            trust,
            shutdown: Arc::new(tokio::sync::Notify::new()),
        };
        Ok(Daemon { paths, state })
    }

    /// Serves the API on the unix socket until SIGTERM or SIGINT. Containers keep running.
    pub async fn serve(self) -> Result<()> {
        let socket = self.paths.socket();
        if socket.exists() {
            if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                bail!("another corrald is already serving {}", socket.display());
            }
            std::fs::remove_file(&socket)?;
        }
        let listener = tokio::net::UnixListener::bind(&socket)
            .with_context(|| format!("cannot listen on {}", socket.display()))?;
        // Root only, like LXD's socket without its group.
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o660))?;
        tracing::info!(socket = %socket.display(), "corrald ready");
        // Watch every monitor, those of an earlier daemon's containers first, before starting
        // anything.
        let (instances, events) = (self.state.instances.clone(), self.state.events.clone());
        let watch = crate::running::start_watcher(move |name, pid| {
            if instances.monitor_exited(DEFAULT_PROJECT, name, pid) {
                events.lifecycle("instance-stopped", &format!("/1.0/instances/{name}"));
            }
        })
        .context("cannot watch the containers' monitors")?;
        self.state.instances.running.watch_with(watch);
        self.state
            .instances
            .adopt_running(DEFAULT_PROJECT)
            .context("cannot take in the running containers")?;
        // Networks before autostart: instances' NICs need their bridges.
        let instances = self.state.instances.clone();
        tokio::task::spawn_blocking(move || {
            instances
                .networks
                .restore_all(|n| instances.static_leases(DEFAULT_PROJECT, n))
        })
        .await?;
        tokio::task::spawn_blocking(crate::nics::sweep_stale_limits).await?;
        tokio::spawn(supervise_networks(self.state.instances.clone()));
        crate::snapshot_schedule::spawn(self.state.instances.clone(), self.state.events.clone());
        tokio::spawn(crate::remote_images::auto_update_task(self.state.clone()));
        tokio::spawn(autostart(self.state.instances.clone(), self.state.events.clone()));
        // LXD 5.0 still serves /1.0/containers as /1.0/instances, and pylxd 2.2 uses only it:
        // rewrite before routing.
        let asked = self.state.shutdown.clone();
        let server = self.state.server.clone();
        let router = api::router(self.state.clone());
        // HTTPS: the same routes behind the trust check (after the path rewrite, so that
        // /1.0/containers is checked as /1.0/instances).
        let checked = tower::Layer::layer(
            &axum::middleware::from_fn_with_state(self.state.trust.clone(), crate::auth::authorize),
            router.clone(),
        );
        let https_app = axum::Router::new()
            .fallback_service(tower::Layer::layer(&axum::middleware::map_request(api::admit), checked));
        server.https.set_app(https_app);
        server.start().await;
        let app = tower::Layer::layer(&axum::middleware::map_request(api::admit), router);
        axum::serve(
            listener,
            axum::ServiceExt::<axum::extract::Request>::into_make_service(app),
        )
        .with_graceful_shutdown(shutdown_signal(asked))
        .await?;
        let _ = std::fs::remove_file(&socket);
        tracing::info!("corrald stopped; running containers keep running");
        Ok(())
    }
}

/// Restarts any dnsmasq that died, every two seconds.
async fn supervise_networks(instances: Arc<Instances>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let inst = instances.clone();
        let _ =
            tokio::task::spawn_blocking(move || inst.networks.supervise(|n| inst.static_leases(DEFAULT_PROJECT, n)))
                .await;
    }
}

/// Starts the stopped instances that want it ([`crate::instances::wants_autostart`]), highest
/// `boot.autostart.priority` first, waiting `boot.autostart.delay` seconds after each.
async fn autostart(instances: Arc<Instances>, events: crate::events::Events) {
    let Ok(list) = instances.list(DEFAULT_PROJECT) else {
        return;
    };
    let boot = crate::instances::boot_id();
    let mut due = Vec::new();
    for rec in list {
        let Ok((config, _)) = instances.expand(&rec) else {
            continue;
        };
        if !crate::instances::wants_autostart(&config, &boot) || instances.status(&rec.name).0 != "Stopped" {
            continue;
        }
        let num = |k: &str| config.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        due.push((num("boot.autostart.priority"), num("boot.autostart.delay"), rec.name));
    }
    sort_autostart(&mut due);
    for (_, delay, name) in due {
        let inst = instances.clone();
        let n = name.clone();
        match tokio::task::spawn_blocking(move || inst.start(DEFAULT_PROJECT, &n)).await {
            Ok(Ok(())) => {
                tracing::info!(instance = %name, "autostarted");
                events.lifecycle("instance-started", &format!("/1.0/instances/{name}"));
            }
            Ok(Err(e)) => tracing::warn!(instance = %name, error = %e, "autostart failed"),
            Err(e) => tracing::warn!(instance = %name, error = %e, "autostart failed"),
        }
        if delay > 0 {
            tokio::time::sleep(std::time::Duration::from_secs(delay as u64)).await;
        }
    }
}

/// `(priority, delay, name)` in start order: highest `boot.autostart.priority` first, then by
/// name so that the order is the same at every boot.
fn sort_autostart(due: &mut [(i64, i64, String)]) {
    due.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.2.cmp(&b.2)));
}

async fn shutdown_signal(asked: Arc<tokio::sync::Notify>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler cannot fail");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler cannot fail");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = asked.notified() => {}
    }
}

/// The NIC `init --auto` puts in the default profile.
fn default_nic() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("type".to_string(), "nic".to_string()),
        ("network".to_string(), crate::networks::DEFAULT_BRIDGE.to_string()),
        ("name".to_string(), "eth0".to_string()),
    ])
}

impl Daemon {
    /// What `corrald init --auto` adds to the pool and profile every start makes: the
    /// `corralbr0` bridge (a free IPv4 /24 and an IPv6 ULA, NAT on both) and an `eth0` on it in
    /// the default profile, as `lxd init --auto` does with lxdbr0. Nothing when the default
    /// profile already has a NIC; an existing corralbr0 is kept. Returns what it did.
    pub fn ensure_default_network(&self) -> Result<Option<String>> {
        let instances = &self.state.instances;
        let profile = instances.profile(DEFAULT_PROJECT, "default")?;
        if profile
            .devices
            .values()
            .any(|d| d.get("type").map(String::as_str) == Some("nic"))
        {
            return Ok(None);
        }
        let bridge = crate::networks::DEFAULT_BRIDGE;
        if instances.networks.get(bridge).is_err() {
            instances
                .networks
                .create(bridge, "bridge", "", BTreeMap::new())
                .with_context(|| format!("cannot create the {bridge} network"))?;
        }
        instances.modify_profile(DEFAULT_PROJECT, "default", None, |p| {
            let mut p = p.clone();
            p.devices.entry("eth0".into()).or_insert_with(default_nic);
            Ok(p)
        })?;
        Ok(Some(format!(
            "network {bridge} ready; the default profile has eth0 on it"
        )))
    }
}

/// [`Daemon::ensure_default_network`] through a running daemon's API.
pub fn default_network_via_api(client: &corral_client::Client) -> Result<Option<String>> {
    let (profile, etag): (corral_api::Profile, _) = client.get_with_etag("/1.0/profiles/default")?;
    if profile
        .devices
        .values()
        .any(|d| d.get("type").map(String::as_str) == Some("nic"))
    {
        return Ok(None);
    }
    let bridge = crate::networks::DEFAULT_BRIDGE;
    if client
        .get::<corral_api::Network>(&format!("/1.0/networks/{bridge}"))
        .is_err()
    {
        client
            .post("/1.0/networks", &serde_json::json!({"name": bridge, "type": "bridge"}))
            .with_context(|| format!("cannot create the {bridge} network"))?;
    }
    let mut put = corral_api::ProfilePut {
        config: profile.config,
        description: profile.description,
        devices: profile.devices,
    };
    put.devices.entry("eth0".into()).or_insert_with(default_nic);
    client.put_if_match("/1.0/profiles/default", &put, etag.as_deref())?;
    Ok(Some(format!(
        "network {bridge} ready; the default profile has eth0 on it"
    )))
}

/// The `default` profile with a root disk on the default pool, as `lxd init --auto` makes.
fn ensure_default_profile(store: &dyn Store) -> Result<()> {
    let profile = ProfileRecord {
        name: "default".into(),
        description: "Default Corral profile".into(),
        config: BTreeMap::new(),
        devices: BTreeMap::from([(
            "root".to_string(),
            BTreeMap::from([
                ("path".to_string(), "/".to_string()),
                ("pool".to_string(), DEFAULT_POOL.to_string()),
                ("type".to_string(), "disk".to_string()),
            ]),
        )]),
    };
    // Only if absent: an edited default profile stays as the user left it.
    let _ = cas_json(store, &profile_key(DEFAULT_PROJECT, "default"), None, &profile)?;
    Ok(())
}

/// Container starts and execs move a process into the container's cgroups; without
/// `favordynmods` each such move waits for an RCU grace period (see
/// [`corral_runtime::cgroup::CgroupRoot::favor_dynamic_changes`]). A failure only costs speed.
fn favor_cgroup_migrations() {
    use corral_runtime::cgroup::{CgroupRoot, FavorDynmods};
    match CgroupRoot::detect().and_then(|root| root.favor_dynamic_changes()) {
        Ok(FavorDynmods::TurnedOn(path)) => {
            tracing::info!(mount = %path.display(), "cgroup2 remounted with favordynmods: cgroup moves no longer wait for RCU")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("{e}; container starts and execs will be slower"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn autostart_goes_by_priority_then_name() {
        let mut due = vec![
            (0, 0, "b".to_string()),
            (10, 5, "z".to_string()),
            (0, 0, "a".to_string()),
            (-1, 0, "first-by-name".to_string()),
            (10, 0, "y".to_string()),
        ];
        super::sort_autostart(&mut due);
        let names: Vec<&str> = due.iter().map(|d| d.2.as_str()).collect();
        assert_eq!(names, ["y", "z", "a", "b", "first-by-name"]);
    }
}
