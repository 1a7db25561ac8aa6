//! The TLS trust store: the client certificates allowed in over HTTPS, and what each may do.
//!
//! Records live in the store under `certificates/<fingerprint>`; a copy in memory answers the
//! per-request lookup. Add tokens are token operations (as in LXD), see `certificates_api.rs`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use corral_api::Certificate;
use corral_store::Store;

use crate::instances::ServiceError;

type Result<T> = std::result::Result<T, ServiceError>;

pub const KINDS: &[&str] = &["client", "metrics"];

fn key(fingerprint: &str) -> String {
    format!("certificates/{fingerprint}")
}

pub struct Trust {
    store: Arc<dyn Store>,
    cache: RwLock<HashMap<String, Certificate>>,
}

impl Trust {
    pub fn open(store: Arc<dyn Store>) -> Result<Trust> {
        let t = Trust {
            store,
            cache: RwLock::new(HashMap::new()),
        };
        t.reload()?;
        Ok(t)
    }

    fn reload(&self) -> Result<()> {
        let mut map = HashMap::new();
        for kv in self.store.list("certificates/").map_err(internal)? {
            let cert: Certificate = serde_json::from_slice(&kv.value).map_err(internal)?;
            map.insert(cert.fingerprint.clone(), cert);
        }
        *self.cache.write().expect("trust lock poisoned") = map;
        Ok(())
    }

    /// The trusted certificate with this exact fingerprint.
    pub fn lookup(&self, fingerprint: &str) -> Option<Certificate> {
        self.cache
            .read()
            .expect("trust lock poisoned")
            .get(fingerprint)
            .cloned()
    }

    pub fn list(&self) -> Vec<Certificate> {
        let mut v: Vec<Certificate> = self
            .cache
            .read()
            .expect("trust lock poisoned")
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.fingerprint.cmp(&b.fingerprint)));
        v
    }

    /// The certificate a fingerprint or a unique prefix of one names, with its revision.
    pub fn get(&self, fingerprint: &str) -> Result<(Certificate, i64)> {
        let fp = self.resolve(fingerprint)?;
        let kv = self
            .store
            .get(&key(&fp))
            .map_err(internal)?
            .ok_or_else(|| not_found(fingerprint))?;
        let cert = serde_json::from_slice(&kv.value).map_err(internal)?;
        Ok((cert, kv.mod_revision))
    }

    fn resolve(&self, prefix: &str) -> Result<String> {
        let cache = self.cache.read().expect("trust lock poisoned");
        let matches: Vec<&String> = cache.keys().filter(|fp| fp.starts_with(prefix)).collect();
        match matches.as_slice() {
            [one] if !prefix.is_empty() => Ok((*one).clone()),
            [] | [_] => Err(not_found(prefix)),
            _ => Err(ServiceError::BadRequest(format!(
                "{prefix:?} matches {} certificates: give more of the fingerprint",
                matches.len()
            ))),
        }
    }

    /// Adds a certificate (already parsed and checked); 409 if it is there.
    pub fn add(&self, cert: Certificate) -> Result<()> {
        validate(&cert)?;
        let k = key(&cert.fingerprint);
        let value = serde_json::to_vec(&cert).map_err(internal)?;
        let done = self
            .store
            .txn(
                &[corral_store::Compare::Missing(k.clone())],
                &[corral_store::Op::Put(k, value)],
            )
            .map_err(internal)?;
        if !done.succeeded {
            return Err(ServiceError::Conflict("Certificate already in trust store".into()));
        }
        self.reload()
    }

    /// Replaces a certificate's record; `etag` is the revision the client read, if it sent one.
    pub fn update(&self, fingerprint: &str, cert: Certificate, etag: Option<i64>) -> Result<Certificate> {
        validate(&cert)?;
        let (old, rev) = self.get(fingerprint)?;
        if etag.is_some_and(|e| e != rev) {
            return Err(ServiceError::PreconditionFailed(
                "ETag doesn't match the current state".into(),
            ));
        }
        let k = key(&old.fingerprint);
        let value = serde_json::to_vec(&cert).map_err(internal)?;
        let ops = if cert.fingerprint == old.fingerprint {
            vec![corral_store::Op::Put(k.clone(), value)]
        } else {
            // The certificate itself was replaced: it moves to its new fingerprint.
            if self.lookup(&cert.fingerprint).is_some() {
                return Err(ServiceError::Conflict("Certificate already in trust store".into()));
            }
            vec![
                corral_store::Op::Delete(k.clone()),
                corral_store::Op::Put(key(&cert.fingerprint), value),
            ]
        };
        let done = self
            .store
            .txn(&[corral_store::Compare::ModRevision(k, rev)], &ops)
            .map_err(internal)?;
        if !done.succeeded {
            return Err(ServiceError::Conflict(
                "the certificate changed meanwhile: read it again".into(),
            ));
        }
        self.reload()?;
        Ok(cert)
    }

    pub fn delete(&self, fingerprint: &str) -> Result<Certificate> {
        let (cert, _) = self.get(fingerprint)?;
        self.store.delete(&key(&cert.fingerprint)).map_err(internal)?;
        self.reload()?;
        Ok(cert)
    }
}

fn validate(cert: &Certificate) -> Result<()> {
    if !KINDS.contains(&cert.kind.as_str()) {
        return Err(ServiceError::BadRequest(format!(
            "invalid certificate type {:?}: use \"client\" or \"metrics\"",
            cert.kind
        )));
    }
    if cert.name.is_empty() {
        return Err(ServiceError::BadRequest("a certificate needs a name".into()));
    }
    if let Some(p) = cert
        .projects
        .iter()
        .find(|p| p.as_str() != crate::instances::DEFAULT_PROJECT)
    {
        return Err(ServiceError::BadRequest(format!(
            "project {p:?} does not exist: Corral has only the \"default\" project"
        )));
    }
    Ok(())
}

fn not_found(fp: &str) -> ServiceError {
    ServiceError::NotFound(format!("Certificate not found: {fp}"))
}

fn internal(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Internal(e.to_string())
}

/// `core.remote_token_expiry` and the like: space-separated `<n><unit>` with units S, M
/// (minutes), H, d, w, m (30 days) and y (365 days), as LXD writes them. `None` for empty.
pub fn parse_expiry(value: &str) -> std::result::Result<Option<std::time::Duration>, String> {
    let mut total = 0u64;
    let mut any = false;
    for part in value.split_whitespace() {
        let split = part.find(|c: char| !c.is_ascii_digit()).unwrap_or(part.len());
        let (n, unit) = part.split_at(split);
        let n: u64 = n
            .parse()
            .map_err(|_| format!("invalid expiry {part:?}: use <number><unit> such as 30M, 1H or 2d"))?;
        let secs = match unit {
            "S" => 1,
            "M" => 60,
            "H" => 3600,
            "d" => 86400,
            "w" => 7 * 86400,
            "m" => 30 * 86400,
            "y" => 365 * 86400,
            _ => {
                return Err(format!(
                    "invalid expiry unit in {part:?}: use S, M (minutes), H, d, w, m (months) or y"
                ))
            }
        };
        total = total.saturating_add(n.saturating_mul(secs));
        any = true;
    }
    Ok(any.then(|| std::time::Duration::from_secs(total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_takes_lxd_units() {
        assert_eq!(parse_expiry("").unwrap(), None);
        assert_eq!(parse_expiry("30S").unwrap().unwrap().as_secs(), 30);
        assert_eq!(parse_expiry("1H 30M").unwrap().unwrap().as_secs(), 5400);
        assert_eq!(parse_expiry("2d").unwrap().unwrap().as_secs(), 172800);
        assert!(parse_expiry("5x").unwrap_err().contains("unit"));
        assert!(parse_expiry("H").unwrap_err().contains("<number><unit>"));
    }
}
