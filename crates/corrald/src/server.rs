//! The server itself: its configuration keys (`PUT`/`PATCH /1.0`), its TLS identity, the HTTPS
//! listener they drive, and the `GET /1.0` answers (trusted and public) made once per change.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use axum::body::Bytes;
use axum::http::HeaderValue;
use corral_store::Store;

use crate::https::Https;
use crate::instances::ServiceError;
use crate::tls::Identity;

type Result<T> = std::result::Result<T, ServiceError>;

const CONFIG_KEY: &str = "server/config";

/// A server configuration key.
pub struct ServerKey {
    pub name: &'static str,
    pub help: &'static str,
    validate: fn(&str) -> std::result::Result<(), String>,
}

/// Every server key Corral has.
pub const KEYS: &[ServerKey] = &[
    ServerKey {
        name: "core.https_address",
        help: "address the HTTPS API listens on (\":8443\" for every address)",
        validate: |v| crate::https::parse_address(v).map(drop),
    },
    ServerKey {
        name: "core.remote_token_expiry",
        help: "how long a trust token stays valid (\"1H\", \"2d\"; empty: until used)",
        validate: |v| crate::trust::parse_expiry(v).map(drop),
    },
    ServerKey {
        name: "images.auto_update_interval",
        help: "hours between refreshes of images with auto_update from their source (default 6; 0: never)",
        validate: whole_number,
    },
    ServerKey {
        name: "images.remote_cache_expiry",
        help: "days after which a cached remote image no instance was made from is deleted (default 10; 0: never)",
        validate: whole_number,
    },
    ServerKey {
        name: "images.compression_algorithm",
        help: "compression of published images: zstd (default), xz, gzip or none",
        validate: |v| {
            crate::publish::compression_of(v, None)
                .map(drop)
                .map_err(|e| e.to_string())
        },
    },
];

fn whole_number(v: &str) -> std::result::Result<(), String> {
    v.trim()
        .parse::<u64>()
        .map(drop)
        .map_err(|_| format!("{v:?} is not a whole number"))
}

struct Views {
    trusted: Bytes,
    public: Bytes,
    etag: HeaderValue,
}

pub struct Server {
    store: Arc<dyn Store>,
    pub identity: Identity,
    pub https: Https,
    config: RwLock<BTreeMap<String, String>>,
    views: RwLock<Views>,
}

impl Server {
    /// Loads the server's configuration and identity (making the certificate on first start).
    pub fn open(store: Arc<dyn Store>, dir: &std::path::Path) -> anyhow::Result<Server> {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default();
        let identity = Identity::load_or_create(dir, "server", &format!("root@{host}"))?;
        let config: BTreeMap<String, String> = match store.get(CONFIG_KEY)? {
            Some(kv) => serde_json::from_slice(&kv.value)?,
            None => BTreeMap::new(),
        };
        let https = Https::new(crate::tls::server_config(&identity)?);
        let server = Server {
            store,
            https,
            views: RwLock::new(Views {
                trusted: Bytes::new(),
                public: Bytes::new(),
                etag: HeaderValue::from_static("\"\""),
            }),
            identity,
            config: RwLock::new(config),
        };
        server.refresh_views();
        Ok(server)
    }

    pub fn config(&self) -> BTreeMap<String, String> {
        self.config.read().expect("server config lock poisoned").clone()
    }

    /// Starts listening where the configuration says; a failure is logged, not fatal, so that
    /// the local socket still works to fix it.
    pub async fn start(&self) {
        let Some(addr) = self.config().get("core.https_address").cloned() else {
            return;
        };
        match crate::https::parse_address(&addr) {
            Ok(a) => {
                if let Err(e) = self.https.listen(Some(a)).await {
                    tracing::error!(error = %e, "HTTPS API not started; fix core.https_address");
                }
            }
            Err(e) => tracing::error!(error = %e, "invalid core.https_address"),
        }
        self.refresh_views();
    }

    /// Replaces the configuration (`PUT /1.0`; `PATCH` merges first). Nothing changes unless
    /// every key is valid and the new listener could be bound.
    pub async fn update(&self, new: BTreeMap<String, String>, etag: Option<String>) -> Result<()> {
        if let Some(e) = etag {
            if e != self.etag_value() {
                return Err(ServiceError::PreconditionFailed(
                    "ETag doesn't match the current state".into(),
                ));
            }
        }
        let new: BTreeMap<String, String> = new.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        for (k, v) in &new {
            let key = KEYS.iter().find(|s| s.name == k).ok_or_else(|| {
                let known: Vec<&str> = KEYS.iter().map(|k| k.name).collect();
                let hint = if k == "core.trust_password" {
                    " (trust passwords are not supported: add clients with a token, `corral config trust add NAME`)"
                        .to_string()
                } else {
                    format!(" (server keys: {})", known.join(", "))
                };
                ServiceError::BadRequest(format!("unknown server configuration key {k:?}{hint}"))
            })?;
            (key.validate)(v).map_err(|e| ServiceError::BadRequest(format!("invalid value for {k:?}: {e}")))?;
        }
        let old = self.config();
        if old.get("core.https_address") != new.get("core.https_address") {
            let addr = match new.get("core.https_address") {
                Some(v) => Some(crate::https::parse_address(v).map_err(ServiceError::BadRequest)?),
                None => None,
            };
            self.https
                .listen(addr)
                .await
                .map_err(|e| ServiceError::BadRequest(format!("core.https_address: {e}")))?;
        }
        let value = serde_json::to_vec(&new).map_err(|e| ServiceError::Internal(e.to_string()))?;
        if let Err(e) = self.store.put(CONFIG_KEY, &value) {
            // Put the listener back as it was: what runs must match what is saved.
            let back = old
                .get("core.https_address")
                .and_then(|v| crate::https::parse_address(v).ok());
            let _ = self.https.listen(back).await;
            return Err(e.into());
        }
        *self.config.write().expect("server config lock poisoned") = new;
        self.refresh_views();
        Ok(())
    }

    /// Where clients can reach the HTTPS API (empty when it is off).
    pub fn addresses(&self) -> Vec<String> {
        self.https
            .listening()
            .map(crate::https::reachable_addresses)
            .unwrap_or_default()
    }

    /// `GET /1.0` for a trusted client (or the local socket).
    pub fn trusted_view(&self) -> (Bytes, HeaderValue) {
        let v = self.views.read().expect("server views lock poisoned");
        (v.trusted.clone(), v.etag.clone())
    }

    /// `GET /1.0` for an untrusted client.
    pub fn public_view(&self) -> Bytes {
        self.views.read().expect("server views lock poisoned").public.clone()
    }

    fn etag_value(&self) -> String {
        let v = self.views.read().expect("server views lock poisoned");
        v.etag.to_str().unwrap_or_default().trim_matches('"').to_string()
    }

    fn refresh_views(&self) {
        let config = self.config();
        let trusted = crate::api::server_json(crate::api::ServerView {
            config: &config,
            addresses: self.addresses(),
            identity: &self.identity,
            trusted: true,
        });
        let public = crate::api::server_json(crate::api::ServerView {
            config: &config,
            addresses: Vec::new(),
            identity: &self.identity,
            trusted: false,
        });
        let etag = HeaderValue::from_str(&format!("\"{}\"", crate::etag::of_bytes(&trusted)))
            .expect("hex digits make a header value");
        *self.views.write().expect("server views lock poisoned") = Views { trusted, public, etag };
    }
}
