//! `/1.0/networks`: managed networks (CRUD, rename, state, leases, forwards) and the host's
//! other interfaces, listed as unmanaged, as LXD does.
//!
//! Handlers only translate: the work is in [`crate::networks`] (the host side) and
//! [`crate::instances`] (who uses a network, its static leases).

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::routing::get;
use axum::Router;
use corral_api as api;

use crate::api::{blocking, envelope, if_match, parse, sync, ApiError, ApiResult, AppState, ListQuery};
use crate::instances::{ServiceError, DEFAULT_PROJECT};
use crate::networks::NetworkRecord;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/1.0/networks", get(list_networks).post(create_network))
        .route(
            "/1.0/networks/{name}",
            get(get_network)
                .put(put_network)
                .patch(patch_network)
                .post(rename_network)
                .delete(delete_network),
        )
        .route("/1.0/networks/{name}/state", get(network_state))
        .route("/1.0/networks/{name}/leases", get(network_leases))
        .route("/1.0/networks/{name}/forwards", get(list_forwards).post(create_forward))
        .route(
            "/1.0/networks/{name}/forwards/{address}",
            get(get_forward)
                .put(put_forward)
                .patch(patch_forward)
                .delete(delete_forward),
        )
}

fn network_url(name: &str) -> String {
    format!("/1.0/networks/{name}")
}

fn created(url: &str) -> ApiResult {
    // LXD's SyncResponseLocation: 201 Created with the new object's Location.
    let mut resp = envelope(api::Response::sync_empty(), None);
    *resp.status_mut() = StatusCode::CREATED;
    if let Ok(loc) = HeaderValue::from_str(url) {
        resp.headers_mut().insert("Location", loc);
    }
    Ok(resp)
}

fn to_api(rec: NetworkRecord, used_by: Vec<String>) -> api::Network {
    api::Network {
        name: rec.name,
        description: rec.description,
        kind: rec.kind,
        managed: true,
        status: "Created".into(),
        config: rec.config,
        used_by,
        locations: vec!["none".into()],
    }
}

fn unmanaged(name: &str, kind: &str) -> api::Network {
    api::Network {
        name: name.to_string(),
        kind: kind.to_string(),
        managed: false,
        status: String::new(),
        locations: vec!["none".into()],
        ..Default::default()
    }
}

async fn list_networks(State(st): State<AppState>, Query(q): Query<ListQuery>) -> ApiResult {
    let recursion = q.recursion.unwrap_or(0);
    let list = blocking(move || {
        let managed = st.networks.list()?;
        let host = st.networks.host_interfaces()?;
        let mut out = Vec::new();
        for rec in managed {
            let users = st.instances.network_users(DEFAULT_PROJECT, &rec.name)?;
            out.push(to_api(rec, users));
        }
        out.extend(host.iter().map(|(n, k)| unmanaged(n, k)));
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    })
    .await?;
    if recursion == 0 {
        return sync(list.iter().map(|n| network_url(&n.name)).collect::<Vec<_>>());
    }
    sync(list)
}

async fn get_network(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult {
    let (net, rev) = blocking(move || match st.networks.get(&name) {
        Ok((rec, rev)) => {
            let users = st.instances.network_users(DEFAULT_PROJECT, &rec.name)?;
            Ok((to_api(rec, users), Some(rev)))
        }
        Err(ServiceError::NotFound(m)) => match st.networks.host_interfaces()?.into_iter().find(|(n, _)| *n == name) {
            Some((n, k)) => Ok((unmanaged(&n, k), None)),
            None => Err(ServiceError::NotFound(m)),
        },
        Err(e) => Err(e),
    })
    .await?;
    Ok(envelope(api::Response::sync(net), rev.map(|r| r.to_string())))
}

async fn create_network(State(st): State<AppState>, body: axum::body::Bytes) -> ApiResult {
    let req: api::NetworksPost = parse(&body)?;
    if req.name.is_empty() {
        return Err(ApiError(400, "No name provided: give the network a name".into()));
    }
    let networks = st.networks.clone();
    let rec = blocking(move || networks.create(&req.name, &req.kind, &req.description, req.config)).await?;
    let url = network_url(&rec.name);
    st.events.lifecycle("network-created", &url);
    created(&url)
}

async fn put_network(
    State(st): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let put: api::NetworkPut = parse(&body)?;
    let etag = if_match(&headers)?;
    update(st, name, etag, move |_| (put.description, put.config)).await
}

/// A PATCH body: named keys are merged (a value "" unsets the key).
#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct NetworkPatch {
    config: Option<BTreeMap<String, Option<String>>>,
    description: Option<String>,
}

async fn patch_network(
    State(st): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let patch: NetworkPatch = parse(&body)?;
    let etag = if_match(&headers)?;
    update(st, name, etag, move |old| {
        let mut config = old.config.clone();
        for (k, v) in patch.config.into_iter().flatten() {
            match v.unwrap_or_default() {
                v if v.is_empty() => {
                    config.remove(&k);
                }
                v => {
                    config.insert(k, v);
                }
            }
        }
        (patch.description.unwrap_or_else(|| old.description.clone()), config)
    })
    .await
}

async fn update(
    st: AppState,
    name: String,
    etag: Option<i64>,
    change: impl FnOnce(&NetworkRecord) -> (String, BTreeMap<String, String>) + Send + 'static,
) -> ApiResult {
    let events = st.events.clone();
    let url = network_url(&name);
    blocking(move || {
        let (old, _) = st.networks.get(&name).map_err(|e| match e {
            ServiceError::NotFound(_) => ServiceError::BadRequest(format!(
                "{name} is not a managed network: only managed networks can be changed"
            )),
            e => e,
        })?;
        let (description, config) = change(&old);
        let leases = st.instances.static_leases(DEFAULT_PROJECT, &name);
        st.networks.update(&name, &description, config, etag, &leases)
    })
    .await?;
    events.lifecycle("network-updated", &url);
    sync(serde_json::json!({}))
}

async fn rename_network(State(st): State<AppState>, Path(name): Path<String>, body: axum::body::Bytes) -> ApiResult {
    let req: api::NetworkPost = parse(&body)?;
    let (old, new) = (name.clone(), req.name.clone());
    let inner = st.clone();
    blocking(move || {
        let users = inner.instances.network_users(DEFAULT_PROJECT, &old)?;
        if !users.is_empty() {
            return Err(ServiceError::BadRequest(format!(
                "Cannot rename network {old:?} while it is in use by {}: detach it first",
                users.join(", ")
            )));
        }
        inner.networks.rename(&old, &new)
    })
    .await?;
    let url = network_url(&req.name);
    st.events.lifecycle("network-renamed", &url);
    created(&url)
}

async fn delete_network(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult {
    let n = name.clone();
    let inner = st.clone();
    blocking(move || {
        let users = inner.instances.network_users(DEFAULT_PROJECT, &n)?;
        inner.networks.get(&n)?;
        if !users.is_empty() {
            return Err(ServiceError::BadRequest(format!(
                "The network is currently in use by {}: remove their NIC devices (`corral network detach {n} INSTANCE`) first",
                users.join(", ")
            )));
        }
        inner.networks.delete(&n)
    })
    .await?;
    st.events.lifecycle("network-deleted", &network_url(&name));
    sync(serde_json::json!({}))
}

async fn network_state(Path(name): Path<String>) -> ApiResult {
    let state = blocking(move || {
        let nl = corral_network::link::Netlink::new().map_err(|e| ServiceError::Internal(e.to_string()))?;
        let link = nl
            .link(&name)
            .map_err(|e| ServiceError::Internal(e.to_string()))?
            .ok_or_else(|| ServiceError::NotFound(format!("Network interface not found: {name}")))?;
        let addresses = nl
            .addresses(&name)
            .map_err(|e| ServiceError::Internal(e.to_string()))?
            .into_iter()
            .map(|a| api::NetworkStateAddress {
                family: if a.addr().is_ipv4() { "inet" } else { "inet6" }.into(),
                address: a.addr().to_string(),
                netmask: a.prefix_len().to_string(),
                scope: if a.addr().is_loopback() {
                    "local"
                } else if matches!(a.addr(), std::net::IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80) {
                    "link"
                } else {
                    "global"
                }
                .into(),
            })
            .collect();
        let bridge = (link.kind == corral_network::link::LinkKind::Bridge).then(|| {
            let ports = nl
                .list_links()
                .unwrap_or_default()
                .into_iter()
                .filter(|l| l.controller == Some(link.index))
                .map(|l| l.name)
                .collect();
            api::NetworkStateBridge {
                id: link
                    .mac
                    .map(|m| format!("8000.{}", m.to_string().replace(':', "")))
                    .unwrap_or_default(),
                forward_delay: 1500,
                vlan_default: 1,
                upper_devices: ports,
                ..Default::default()
            }
        });
        Ok(api::NetworkState {
            addresses,
            counters: counters(&name),
            hwaddr: link.mac.map(|m| m.to_string()).unwrap_or_default(),
            mtu: i64::from(link.mtu),
            state: if link.up { "up" } else { "down" }.into(),
            kind: if link.kind == corral_network::link::LinkKind::Loopback {
                "loopback"
            } else {
                "broadcast"
            }
            .into(),
            bridge,
        })
    })
    .await?;
    sync(state)
}

/// Byte and packet counters from /proc/net/dev, which shows the reader's network namespace.
fn counters(name: &str) -> api::NetworkStateCounters {
    let text = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    for line in text.lines() {
        let Some((iface, rest)) = line.split_once(':') else {
            continue;
        };
        if iface.trim() != name {
            continue;
        }
        let n: Vec<i64> = rest.split_whitespace().filter_map(|v| v.parse().ok()).collect();
        if n.len() >= 10 {
            return api::NetworkStateCounters {
                bytes_received: n[0],
                packets_received: n[1],
                bytes_sent: n[8],
                packets_sent: n[9],
            };
        }
    }
    api::NetworkStateCounters::default()
}

async fn network_leases(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult {
    let leases = blocking(move || {
        let (rec, _) = st.networks.get(&name)?;
        let mut out = Vec::new();
        for (key, suffix) in [("ipv4.address", "gateway"), ("ipv6.address", "gateway")] {
            if let Some(addr) = rec
                .config
                .get(key)
                .and_then(|a| a.split_once('/'))
                .map(|(a, _)| a.to_string())
            {
                out.push(api::NetworkLease {
                    hostname: format!("{name}.{suffix}"),
                    address: addr,
                    kind: "gateway".into(),
                    location: "none".into(),
                    ..Default::default()
                });
            }
        }
        let statics = st.instances.static_leases(DEFAULT_PROJECT, &name);
        for s in &statics {
            for addr in s
                .ipv4
                .map(std::net::IpAddr::V4)
                .into_iter()
                .chain(s.ipv6.map(std::net::IpAddr::V6))
            {
                out.push(api::NetworkLease {
                    hostname: s.hostname.clone().unwrap_or_default(),
                    hwaddr: s.mac.to_string(),
                    address: addr.to_string(),
                    kind: "static".into(),
                    location: "none".into(),
                    project: DEFAULT_PROJECT.into(),
                });
            }
        }
        for l in st.networks.dynamic_leases(&name)? {
            let mac = l.mac.map(|m| m.to_string()).unwrap_or_default();
            if out.iter().any(|o| o.address == l.address.to_string()) {
                continue;
            }
            // The instance's name, when the MAC is one of ours.
            let owner = statics
                .iter()
                .find(|s| s.mac.to_string() == mac)
                .and_then(|s| s.hostname.clone());
            out.push(api::NetworkLease {
                hostname: owner.or(l.hostname).unwrap_or_default(),
                hwaddr: mac,
                address: l.address.to_string(),
                kind: "dynamic".into(),
                location: "none".into(),
                project: DEFAULT_PROJECT.into(),
            });
        }
        Ok(out)
    })
    .await?;
    sync(leases)
}

fn forward_url(network: &str, address: &str) -> String {
    format!("/1.0/networks/{network}/forwards/{address}")
}

async fn list_forwards(State(st): State<AppState>, Path(name): Path<String>, Query(q): Query<ListQuery>) -> ApiResult {
    let (rec, _) = st.networks.get(&name)?;
    if q.recursion.unwrap_or(0) == 0 {
        return sync(
            rec.forwards
                .iter()
                .map(|f| forward_url(&name, &f.listen_address))
                .collect::<Vec<_>>(),
        );
    }
    sync(rec.forwards)
}

async fn get_forward(State(st): State<AppState>, Path((name, address)): Path<(String, String)>) -> ApiResult {
    let (rec, rev) = st.networks.get(&name)?;
    let f = rec
        .forwards
        .into_iter()
        .find(|f| f.listen_address == address)
        .ok_or_else(|| ApiError(404, format!("Network forward not found: {address}")))?;
    Ok(envelope(api::Response::sync(f), Some(rev.to_string())))
}

/// Changes a network's forwards through `change`, which sees them all.
async fn change_forwards(
    st: &AppState,
    name: String,
    change: impl FnOnce(&mut Vec<api::NetworkForward>) -> Result<(), ServiceError> + Send + 'static,
) -> Result<(), ApiError> {
    let st = st.clone();
    blocking(move || {
        let (rec, _) = st.networks.get(&name)?;
        let mut forwards = rec.forwards;
        change(&mut forwards)?;
        let leases = st.instances.static_leases(DEFAULT_PROJECT, &name);
        st.networks.set_forwards(&name, forwards, &leases)
    })
    .await
}

async fn create_forward(State(st): State<AppState>, Path(name): Path<String>, body: axum::body::Bytes) -> ApiResult {
    let f: api::NetworkForward = parse(&body)?;
    let address = f.listen_address.clone();
    change_forwards(&st, name.clone(), move |all| {
        if all.iter().any(|o| o.listen_address == f.listen_address) {
            return Err(ServiceError::Conflict(format!(
                "A forward for {} already exists: edit it or delete it first",
                f.listen_address
            )));
        }
        all.push(api::NetworkForward {
            location: String::new(),
            ..f
        });
        Ok(())
    })
    .await?;
    let url = forward_url(&name, &address);
    st.events.lifecycle("network-forward-created", &url);
    created(&url)
}

async fn put_forward(
    State(st): State<AppState>,
    Path((name, address)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let put: api::NetworkForwardPut = parse(&body)?;
    let etag = if_match(&headers)?;
    let (_, rev) = st.networks.get(&name)?;
    if etag.is_some_and(|e| e != rev) {
        return Err(ApiError(412, "ETag doesn't match the current state".into()));
    }
    let a = address.clone();
    change_forwards(&st, name.clone(), move |all| {
        let f = all
            .iter_mut()
            .find(|f| f.listen_address == a)
            .ok_or_else(|| ServiceError::NotFound(format!("Network forward not found: {a}")))?;
        f.description = put.description;
        f.config = put.config;
        f.ports = put.ports;
        Ok(())
    })
    .await?;
    st.events
        .lifecycle("network-forward-updated", &forward_url(&name, &address));
    sync(serde_json::json!({}))
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct ForwardPatch {
    description: Option<String>,
    config: Option<BTreeMap<String, String>>,
    ports: Option<Vec<api::NetworkForwardPort>>,
}

async fn patch_forward(
    State(st): State<AppState>,
    Path((name, address)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult {
    let patch: ForwardPatch = parse(&body)?;
    let a = address.clone();
    change_forwards(&st, name.clone(), move |all| {
        let f = all
            .iter_mut()
            .find(|f| f.listen_address == a)
            .ok_or_else(|| ServiceError::NotFound(format!("Network forward not found: {a}")))?;
        if let Some(d) = patch.description {
            f.description = d;
        }
        if let Some(c) = patch.config {
            f.config.extend(c);
            f.config.retain(|_, v| !v.is_empty());
        }
        if let Some(p) = patch.ports {
            f.ports = p;
        }
        Ok(())
    })
    .await?;
    st.events
        .lifecycle("network-forward-updated", &forward_url(&name, &address));
    sync(serde_json::json!({}))
}

async fn delete_forward(State(st): State<AppState>, Path((name, address)): Path<(String, String)>) -> ApiResult {
    let a = address.clone();
    change_forwards(&st, name.clone(), move |all| {
        let before = all.len();
        all.retain(|f| f.listen_address != a);
        if all.len() == before {
            return Err(ServiceError::NotFound(format!("Network forward not found: {a}")));
        }
        Ok(())
    })
    .await?;
    st.events
        .lifecycle("network-forward-deleted", &forward_url(&name, &address));
    sync(serde_json::json!({}))
}
