//! `/1.0/certificates`: the trust store, and add tokens.
//!
//! As LXD: a trusted client (or root on the local socket) adds a certificate, or asks for a
//! token (`token: true`), which is a token operation holding a secret, the server's fingerprint
//! and addresses. A client not yet trusted sends the token (`password` in LXD 5.0, `trust_token`
//! in Incus) and the certificate it connected with is added under the token's name. A token is
//! used once; it expires after `core.remote_token_expiry` when that is set.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::routing::get;
use axum::{Extension, Router};
use corral_api as api;

use crate::api::{envelope, if_match, operation, parse, sync, ApiError, ApiResult, AppState, ListQuery};
use crate::auth::Caller;
use crate::operations::{OpClass, OpStatus};

pub fn routes() -> Router<AppState> {
    Router::new().route("/1.0/certificates", get(list).post(create)).route(
        "/1.0/certificates/{fingerprint}",
        get(get_one).put(put).patch(patch).delete(delete),
    )
}

fn url(fp: &str) -> String {
    format!("/1.0/certificates/{fp}")
}

async fn list(State(st): State<AppState>, Query(q): Query<ListQuery>) -> ApiResult {
    let certs = st.trust.list();
    if q.recursion.unwrap_or(0) == 0 {
        return sync(certs.iter().map(|c| url(&c.fingerprint)).collect::<Vec<_>>());
    }
    sync(certs)
}

async fn get_one(State(st): State<AppState>, Path(fp): Path<String>) -> ApiResult {
    let (cert, rev) = st.trust.get(&fp)?;
    Ok(envelope(api::Response::sync(cert), Some(rev.to_string())))
}

fn created(url: &str) -> ApiResult {
    let mut resp = envelope(api::Response::sync_empty(), None);
    *resp.status_mut() = StatusCode::CREATED;
    if let Ok(loc) = HeaderValue::from_str(url) {
        resp.headers_mut().insert("Location", loc);
    }
    Ok(resp)
}

async fn create(State(st): State<AppState>, caller: Option<Extension<Caller>>, body: axum::body::Bytes) -> ApiResult {
    let req: api::CertificatesPost = parse(&body)?;
    let caller = caller.map(|Extension(c)| c);
    let kind = if req.kind.is_empty() {
        "client".to_string()
    } else {
        req.kind.clone()
    };
    if req.token && !req.certificate.is_empty() {
        return Err(ApiError(
            400,
            "give either a certificate or token: true, not both".into(),
        ));
    }
    let trusted = caller.as_ref().is_none_or(|c| c.is_trusted());
    if req.token {
        if let Some(c) = &caller {
            c.may_administer()?;
        }
        return issue_token(&st, req, &kind);
    }
    if !trusted {
        return join_with_token(&st, req, caller.as_ref().expect("untrusted means HTTPS"));
    }
    if let Some(c) = &caller {
        c.may_administer()?;
    }
    // A trusted caller adds a certificate it gives (or, over HTTPS, the one it connected with
    // if it gave none, which LXD refuses as "already trusted").
    if req.certificate.is_empty() {
        return Err(ApiError(
            400,
            match caller {
                Some(_) => "Client is already trusted".to_string(),
                None => "give the certificate to trust (PEM or base64 DER in \"certificate\"), or ask for a token \
                         with \"token\": true"
                    .to_string(),
            },
        ));
    }
    let parsed = crate::tls::parse_certificate(&req.certificate).map_err(|e| ApiError(400, e.to_string()))?;
    let cert = record(&parsed, req.name, &kind, req.restricted, req.projects, req.description);
    let fp = cert.fingerprint.clone();
    st.trust.add(cert)?;
    st.events.lifecycle("certificate-created", &url(&fp));
    created(&url(&fp))
}

fn record(
    parsed: &crate::tls::ParsedCert,
    name: String,
    kind: &str,
    restricted: bool,
    projects: Vec<String>,
    description: String,
) -> api::Certificate {
    let name = if name.is_empty() {
        parsed.common_name.clone()
    } else {
        name
    };
    api::Certificate {
        name: if name.is_empty() { "unnamed".into() } else { name },
        kind: kind.to_string(),
        restricted,
        projects,
        certificate: crate::tls::der_to_pem(&parsed.der),
        fingerprint: crate::tls::fingerprint(&parsed.der),
        description,
    }
}

/// A token operation: it waits, holding the token's data, until used, revoked (cancelled) or
/// expired.
fn issue_token(st: &AppState, req: api::CertificatesPost, kind: &str) -> ApiResult {
    if kind != "client" {
        return Err(ApiError(
            400,
            "tokens can only be issued for client certificates".into(),
        ));
    }
    if req.name.is_empty() {
        return Err(ApiError(400, "a token needs the name the new client will have".into()));
    }
    let addresses = st.server.addresses();
    if addresses.is_empty() {
        return Err(ApiError(
            400,
            "cannot issue a token while the server does not listen on the network: set core.https_address first \
             (`corral config set core.https_address :8443`)"
                .into(),
        ));
    }
    let expiry = st
        .server
        .config()
        .get("core.remote_token_expiry")
        .and_then(|v| crate::trust::parse_expiry(v).ok().flatten());
    let expires_at = expiry.and_then(|d| chrono::Utc::now().checked_add_signed(chrono::TimeDelta::from_std(d).ok()?));
    let secret = crate::exec_ws::secret();
    let mut meta = serde_json::json!({
        "secret": secret,
        "fingerprint": st.server.identity.fingerprint,
        "addresses": addresses,
        "request": {
            "name": req.name,
            "type": "client",
            "restricted": req.restricted,
            "projects": req.projects,
            "certificate": "",
            "password": "",
            "token": true,
        },
    });
    if let Some(at) = expires_at {
        meta["expiresAt"] = serde_json::json!(at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true));
    }
    let op = st.ops.spawn(
        OpClass::Token,
        "Certificate add token",
        BTreeMap::new(),
        true,
        move |_| async move {
            match expiry {
                Some(d) => {
                    tokio::time::sleep(d).await;
                    Err("token expired".to_string())
                }
                None => std::future::pending().await,
            }
        },
    );
    st.ops.set_metadata(&op.id, meta);
    let op = st.ops.get(&op.id).unwrap_or(op);
    operation(op)
}

/// An untrusted client presents a token: its TLS certificate joins the trust store under the
/// token's name, and the token is spent.
fn join_with_token(st: &AppState, req: api::CertificatesPost, caller: &Caller) -> ApiResult {
    let given = if req.trust_token.is_empty() {
        &req.password
    } else {
        &req.trust_token
    };
    if given.is_empty() {
        return Err(ApiError(
            403,
            "not authorized: present a trust token (from `corral config trust add NAME` on the server)".into(),
        ));
    }
    let token = api::CertificateAddToken::decode(given).ok_or_else(|| {
        ApiError(
            403,
            "this is not a trust token (trust passwords are not supported: use a token)".into(),
        )
    })?;
    let found = st
        .ops
        .list()
        .into_iter()
        .filter(|op| op.class == OpClass::Token)
        .find(|op| op.metadata["secret"].as_str() == Some(token.secret.as_str()));
    let op = match found {
        Some(op) if op.status == OpStatus::Running => op,
        Some(op) if op.err.contains("expired") => {
            return Err(ApiError(403, "the trust token has expired: ask for a new one".into()))
        }
        _ => {
            return Err(ApiError(
                403,
                "no matching trust token: it was already used, revoked or has expired; ask for a new one".into(),
            ))
        }
    };
    let expired = op.metadata["expiresAt"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .is_some_and(|t| t < chrono::Utc::now());
    // Single use: spent whatever happens next.
    let _ = st.ops.cancel(&op.id);
    if expired {
        return Err(ApiError(403, "the trust token has expired: ask for a new one".into()));
    }
    let der = caller.peer().cert.as_deref().cloned().ok_or_else(|| {
        ApiError(
            400,
            "No client certificate provided: connect with a TLS client certificate".into(),
        )
    })?;
    let parsed = crate::tls::ParsedCert::from_der(der).map_err(|e| ApiError(400, e.to_string()))?;
    let request = &op.metadata["request"];
    let projects = request["projects"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p.as_str().map(String::from)).collect())
        .unwrap_or_default();
    let cert = record(
        &parsed,
        request["name"].as_str().unwrap_or_default().to_string(),
        "client",
        request["restricted"].as_bool().unwrap_or(false),
        projects,
        String::new(),
    );
    let fp = cert.fingerprint.clone();
    st.trust.add(cert)?;
    tracing::info!(fingerprint = %fp, peer = %caller.peer().addr, "client trusted by token");
    st.events.lifecycle("certificate-created", &url(&fp));
    created(&url(&fp))
}

fn put_body(req: api::CertificatePut, old: &api::Certificate) -> Result<api::Certificate, ApiError> {
    let (der, pem) = if req.certificate.is_empty() {
        (None, old.certificate.clone())
    } else {
        let p = crate::tls::parse_certificate(&req.certificate).map_err(|e| ApiError(400, e.to_string()))?;
        let pem = crate::tls::der_to_pem(&p.der);
        (Some(p.der), pem)
    };
    Ok(api::Certificate {
        name: req.name,
        kind: if req.kind.is_empty() {
            old.kind.clone()
        } else {
            req.kind
        },
        restricted: req.restricted,
        projects: req.projects,
        certificate: pem,
        fingerprint: der
            .map(|d| crate::tls::fingerprint(&d))
            .unwrap_or_else(|| old.fingerprint.clone()),
        description: req.description,
    })
}

async fn put(
    State(st): State<AppState>,
    Path(fp): Path<String>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    if let Some(Extension(c)) = &caller {
        c.may_administer()?;
    }
    let req: api::CertificatePut = parse(&body)?;
    let (old, _) = st.trust.get(&fp)?;
    let new = put_body(req, &old)?;
    let done = st.trust.update(&old.fingerprint, new, if_match(&headers)?)?;
    st.events.lifecycle("certificate-updated", &url(&done.fingerprint));
    sync(serde_json::json!({}))
}

async fn patch(
    State(st): State<AppState>,
    Path(fp): Path<String>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    if let Some(Extension(c)) = &caller {
        c.may_administer()?;
    }
    let patch: serde_json::Value = parse(&body)?;
    let (old, _) = st.trust.get(&fp)?;
    let mut merged = serde_json::to_value(&old).map_err(|e| ApiError(500, e.to_string()))?;
    if let (Some(m), Some(p)) = (merged.as_object_mut(), patch.as_object()) {
        for (k, v) in p {
            m.insert(k.clone(), v.clone());
        }
    }
    let req: api::CertificatePut = serde_json::from_value(merged).map_err(|e| ApiError(400, e.to_string()))?;
    let new = put_body(req, &old)?;
    let done = st.trust.update(&old.fingerprint, new, if_match(&headers)?)?;
    st.events.lifecycle("certificate-updated", &url(&done.fingerprint));
    sync(serde_json::json!({}))
}

async fn delete(State(st): State<AppState>, Path(fp): Path<String>, caller: Option<Extension<Caller>>) -> ApiResult {
    if let Some(Extension(c)) = &caller {
        // A restricted client may remove its own certificate, nothing else.
        let own = c.peer().fingerprint.as_deref().is_some_and(|own| own.starts_with(&fp));
        if !own {
            c.may_administer()?;
        }
    }
    let cert = st.trust.delete(&fp)?;
    st.events.lifecycle("certificate-deleted", &url(&cert.fingerprint));
    sync(serde_json::json!({}))
}
