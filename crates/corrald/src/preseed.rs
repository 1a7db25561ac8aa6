//! `corrald init --preseed`: LXD's preseed YAML (what `lxd init --dump` prints), applied
//! through the running daemon's API as `lxd init` does, so that every change goes through the
//! same validation and reaches running instances.
//!
//! Everything the file asks for is checked before anything is changed; what Corral cannot do
//! yet (networks, more pools, server keys, clustering) is refused by name. Profiles are then
//! created or replaced one by one, and if one is refused, those already changed are put back.

use std::collections::BTreeMap;

use corral_client::{encode_segment, Client, ClientError};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum PreseedError {
    #[error("invalid preseed: {0}")]
    Invalid(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("profile {name:?}: {source}{undo}")]
    Profile {
        name: String,
        source: ClientError,
        /// What happened to the changes made before.
        undo: String,
    },
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// The preseed document (LXD's `initDataNode` plus `cluster`).
#[derive(Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Preseed {
    pub config: BTreeMap<String, Value>,
    pub networks: Vec<Value>,
    pub storage_pools: Vec<PoolSeed>,
    pub storage_volumes: Vec<Value>,
    pub profiles: Vec<ProfileSeed>,
    pub projects: Vec<ProjectSeed>,
    pub cluster: Option<Value>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct PoolSeed {
    pub name: String,
    pub driver: String,
    pub description: String,
    pub config: BTreeMap<String, Value>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ProfileSeed {
    pub name: String,
    pub description: String,
    pub config: BTreeMap<String, Value>,
    pub devices: BTreeMap<String, BTreeMap<String, Value>>,
    pub project: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ProjectSeed {
    pub name: String,
    pub description: String,
    pub config: BTreeMap<String, Value>,
}

/// A YAML scalar as the string LXD stores (`limits.cpu: 2` is "2").
fn scalar(key: &str, v: &Value) -> Result<String, PreseedError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Null => Ok(String::new()),
        _ => Err(PreseedError::Invalid(format!(
            "{key} must be a single value, not a list or map"
        ))),
    }
}

fn strings(what: &str, map: &BTreeMap<String, Value>) -> Result<BTreeMap<String, String>, PreseedError> {
    map.iter()
        .map(|(k, v)| Ok((k.clone(), scalar(&format!("{what}.{k}"), v)?)))
        .collect()
}

impl Preseed {
    pub fn from_yaml(text: &str) -> Result<Preseed, PreseedError> {
        if text.trim().is_empty() {
            return Err(PreseedError::Invalid(
                "the preseed is empty: give YAML on standard input (see `lxd init --dump`)".into(),
            ));
        }
        serde_saphyr::from_str(text).map_err(|e| PreseedError::Invalid(e.to_string()))
    }

    /// Refuses, by name, what this Corral cannot do; `pool_source` is the default pool's path.
    pub fn check(&self, pool_source: &str) -> Result<(), PreseedError> {
        if let Some(key) = self.config.keys().next() {
            return Err(PreseedError::Unsupported(format!(
                "server configuration key {key:?} is not supported yet: remove it from `config`"
            )));
        }
        if !self.networks.is_empty() {
            return Err(PreseedError::Unsupported(
                "networks are not supported yet: remove `networks` (instances get no network device)".into(),
            ));
        }
        if !self.storage_volumes.is_empty() {
            return Err(PreseedError::Unsupported(
                "custom storage volumes are not supported yet: remove `storage_volumes`".into(),
            ));
        }
        if self.cluster.as_ref().is_some_and(|c| !c.is_null()) {
            return Err(PreseedError::Unsupported(
                "clustering is not supported yet: remove `cluster`".into(),
            ));
        }
        for pool in &self.storage_pools {
            if pool.name != "default" || !matches!(pool.driver.as_str(), "dir" | "") {
                return Err(PreseedError::Unsupported(format!(
                    "storage pool {:?} (driver {:?}): only the `default` pool with driver `dir` exists so far",
                    pool.name, pool.driver
                )));
            }
            for (k, v) in &pool.config {
                let same_source = k == "source" && scalar(k, v)? == pool_source;
                if !same_source {
                    return Err(PreseedError::Unsupported(format!(
                        "storage pool default: key {k:?} cannot be set (the pool lives at {pool_source})"
                    )));
                }
            }
        }
        for project in &self.projects {
            if project.name != "default" || !project.config.is_empty() {
                return Err(PreseedError::Unsupported(format!(
                    "project {:?}: only the `default` project exists so far, without config",
                    project.name
                )));
            }
        }
        for p in &self.profiles {
            if p.name.is_empty() {
                return Err(PreseedError::Invalid("a profile without a name".into()));
            }
            if !matches!(p.project.as_str(), "" | "default") {
                return Err(PreseedError::Unsupported(format!(
                    "profile {:?}: only the `default` project exists so far",
                    p.name
                )));
            }
            strings(&format!("profiles.{}.config", p.name), &p.config)?;
            for (dev, conf) in &p.devices {
                strings(&format!("profiles.{}.devices.{dev}", p.name), conf)?;
            }
        }
        Ok(())
    }

    /// Creates or replaces the profiles through `client`; on a refusal, puts back those
    /// already changed.
    pub fn apply(&self, client: &Client) -> Result<Vec<String>, PreseedError> {
        // (name, its previous body or None if it was created)
        let mut done: Vec<(String, Option<Value>)> = Vec::new();
        let mut report = Vec::new();
        for p in &self.profiles {
            let body = serde_json::json!({
                "name": p.name,
                "description": p.description,
                "config": strings("config", &p.config)?,
                "devices": p.devices.iter()
                    .map(|(d, c)| Ok((d.clone(), strings(d, c)?)))
                    .collect::<Result<BTreeMap<_, _>, PreseedError>>()?,
            });
            let url = format!("/1.0/profiles/{}", encode_segment(&p.name));
            let previous: Option<Value> = match client.get::<Value>(&url) {
                Ok(v) => Some(v),
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(e.into()),
            };
            let result = match &previous {
                Some(_) => client.put(&url, &body).map(|_| format!("profile {} updated", p.name)),
                None => client
                    .post("/1.0/profiles", &body)
                    .map(|_| format!("profile {} created", p.name)),
            };
            match result {
                Ok(line) => {
                    report.push(line);
                    done.push((p.name.clone(), previous));
                }
                Err(source) => {
                    let undo = undo(client, &done);
                    return Err(PreseedError::Profile {
                        name: p.name.clone(),
                        source,
                        undo,
                    });
                }
            }
        }
        Ok(report)
    }
}

/// Puts back the profiles changed so far, newest first; what it did, for the error message.
fn undo(client: &Client, done: &[(String, Option<Value>)]) -> String {
    if done.is_empty() {
        return String::new();
    }
    let mut failed = Vec::new();
    for (name, previous) in done.iter().rev() {
        let url = format!("/1.0/profiles/{}", encode_segment(name));
        let r = match previous {
            Some(old) => client.put(&url, old),
            None => client.delete(&url),
        };
        if let Err(e) = r {
            failed.push(format!("{name}: {e}"));
        }
    }
    if failed.is_empty() {
        "; the profiles changed before it were put back".into()
    } else {
        format!(
            "; putting back the profiles changed before it failed: {}",
            failed.join("; ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_lxd_dumps_and_refuses_what_is_missing_by_name() {
        let dump = "config: {}\nnetworks: []\nstorage_pools:\n- config:\n    source: /var/lib/corral/storage-pools/default\n  description: \"\"\n  name: default\n  driver: dir\nprofiles:\n- config:\n    limits.cpu: 2\n    security.nesting: true\n  description: Default\n  devices:\n    root:\n      path: /\n      pool: default\n      type: disk\n  name: default\nprojects: []\ncluster: null\n";
        let p = Preseed::from_yaml(dump).unwrap();
        p.check("/var/lib/corral/storage-pools/default").unwrap();
        assert_eq!(p.profiles[0].config["limits.cpu"], serde_json::json!(2));
        assert_eq!(strings("c", &p.profiles[0].config).unwrap()["security.nesting"], "true");
        let err = |y: &str| {
            Preseed::from_yaml(y)
                .and_then(|p| p.check("/x"))
                .unwrap_err()
                .to_string()
        };
        assert!(err("networks:\n- name: br0\n").contains("networks are not supported yet"));
        assert!(err("config:\n  core.https_address: :8443\n").contains("\"core.https_address\""));
        assert!(err("storage_pools:\n- name: fast\n  driver: btrfs\n").contains("\"fast\""));
        assert!(
            err("storage_pools:\n- name: default\n  driver: dir\n  config:\n    source: /y\n").contains("\"source\"")
        );
        assert!(err("profile:\n- name: x\n").contains("unknown field"));
        assert!(err("   \n").contains("empty"));
        assert!(err("profiles:\n- name: x\n  config:\n    a: [1]\n").contains("profiles.x.config.a"));
    }
}
