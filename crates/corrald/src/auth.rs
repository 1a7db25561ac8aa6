//! Who may do what over HTTPS. Requests on the unix socket carry no [`Caller`]: they come from
//! root on this host and may do everything. An HTTPS request is let through only if its client
//! certificate is in the trust store, except the few things an untrusted client may do: read
//! `GET /1.0` (public view), add its own certificate with a token, and join an operation's
//! websocket with that operation's secret (how the other end of a migration connects).

use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use corral_api::Certificate;

use crate::api::ApiError;
use crate::https::TlsPeer;
use crate::trust::Trust;

#[derive(Clone, Debug)]
pub enum Caller {
    Trusted { cert: Certificate, peer: TlsPeer },
    Untrusted { peer: TlsPeer },
}

impl Caller {
    pub fn is_trusted(&self) -> bool {
        matches!(self, Caller::Trusted { .. })
    }

    pub fn peer(&self) -> &TlsPeer {
        match self {
            Caller::Trusted { peer, .. } | Caller::Untrusted { peer } => peer,
        }
    }

    /// Server-wide changes (server configuration, the trust store, pools) need an unrestricted
    /// client certificate.
    pub fn may_administer(&self) -> Result<(), ApiError> {
        match self {
            Caller::Trusted { cert, .. } if !cert.restricted => Ok(()),
            Caller::Trusted { cert, .. } => Err(ApiError(
                403,
                format!(
                    "certificate {:?} is restricted to projects {:?}: server-wide changes need an unrestricted one",
                    cert.name, cert.projects
                ),
            )),
            Caller::Untrusted { .. } => Err(untrusted()),
        }
    }
}

fn untrusted() -> ApiError {
    ApiError(
        403,
        "not authorized: this client's certificate is not trusted by the server; add it with a token \
         (`corral remote add NAME TOKEN`, the token from `corral config trust add NAME` on the server)"
            .into(),
    )
}

/// What an untrusted client may ask.
fn open_to_untrusted(method: &Method, path: &str) -> bool {
    let path = path.trim_end_matches('/');
    match *method {
        Method::GET => {
            path.is_empty()
                || path == "/1.0"
                || (path.starts_with("/1.0/operations/") && path.ends_with("/websocket"))
                // Public images (the image handlers hide the others from untrusted callers).
                || path == "/1.0/images"
                || path.starts_with("/1.0/images/")
                // The simplestreams view of the public images (simplestreams_api.rs).
                || path.starts_with("/streams/")
        }
        Method::POST => path == "/1.0/certificates",
        _ => false,
    }
}

/// Paths that change the whole server rather than a project's things.
fn server_wide(method: &Method, path: &str) -> bool {
    if *method == Method::GET {
        return false;
    }
    path == "/1.0"
        || path.starts_with("/1.0/certificates")
        || path.starts_with("/1.0/storage-pools") && !path.contains("/volumes")
}

/// The HTTPS side's gatekeeper: finds the caller's certificate in the trust store and refuses
/// what that caller may not do, before any handler runs.
pub async fn authorize(
    State(trust): State<Arc<Trust>>,
    ConnectInfo(peer): ConnectInfo<TlsPeer>,
    mut req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_string();
    if path.starts_with("/internal") {
        return ApiError(403, "internal endpoints are served on the local socket only".into()).into_response();
    }
    let cert = peer.fingerprint.as_deref().and_then(|fp| trust.lookup(fp));
    let caller = match cert {
        Some(cert) => {
            if cert.kind == "metrics" && !path.starts_with("/1.0/metrics") && path != "/1.0" {
                return ApiError(403, "a metrics certificate may only read /1.0/metrics".into()).into_response();
            }
            let outside = cert.restricted && !cert.projects.iter().any(|p| p == crate::instances::DEFAULT_PROJECT);
            if outside && !open_to_untrusted(req.method(), &path) && !path.starts_with("/1.0/certificates") {
                return ApiError(
                    403,
                    format!(
                        "certificate {:?} is restricted to projects {:?}, which do not include \"default\"",
                        cert.name, cert.projects
                    ),
                )
                .into_response();
            }
            if cert.restricted && server_wide(req.method(), &path) && path != "/1.0/certificates" {
                return ApiError(
                    403,
                    format!(
                        "certificate {:?} is restricted: server-wide changes need an unrestricted one",
                        cert.name
                    ),
                )
                .into_response();
            }
            Caller::Trusted { cert, peer }
        }
        None => {
            if !open_to_untrusted(req.method(), &path) {
                tracing::debug!(peer = %peer.addr, path, "untrusted request refused");
                return untrusted().into_response();
            }
            Caller::Untrusted { peer }
        }
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_clients_reach_only_the_public_endpoints() {
        assert!(open_to_untrusted(&Method::GET, "/"));
        assert!(open_to_untrusted(&Method::GET, "/1.0"));
        assert!(open_to_untrusted(&Method::GET, "/1.0/"));
        assert!(open_to_untrusted(&Method::POST, "/1.0/certificates"));
        assert!(open_to_untrusted(&Method::GET, "/1.0/operations/abc/websocket"));
        assert!(!open_to_untrusted(&Method::GET, "/1.0/instances"));
        assert!(!open_to_untrusted(&Method::GET, "/1.0/certificates"));
        assert!(!open_to_untrusted(&Method::PUT, "/1.0"));
        assert!(!open_to_untrusted(&Method::GET, "/1.0/operations/abc"));
        assert!(open_to_untrusted(&Method::GET, "/1.0/images"));
        assert!(open_to_untrusted(&Method::GET, "/1.0/images/abcd/export"));
        assert!(open_to_untrusted(&Method::GET, "/1.0/images/aliases/busybox"));
        assert!(!open_to_untrusted(&Method::DELETE, "/1.0/images/abcd"));
        assert!(!open_to_untrusted(&Method::POST, "/1.0/images"));
        assert!(!open_to_untrusted(&Method::GET, "/1.0/imagesx"));
        assert!(open_to_untrusted(&Method::GET, "/streams/v1/index.json"));
        assert!(!open_to_untrusted(&Method::POST, "/streams/v1/index.json"));
    }

    #[test]
    fn server_wide_changes_are_told_apart() {
        assert!(server_wide(&Method::PUT, "/1.0"));
        assert!(server_wide(&Method::DELETE, "/1.0/certificates/ab"));
        assert!(server_wide(&Method::POST, "/1.0/storage-pools"));
        assert!(!server_wide(&Method::POST, "/1.0/storage-pools/default/volumes/custom"));
        assert!(!server_wide(&Method::GET, "/1.0/certificates"));
        assert!(!server_wide(&Method::POST, "/1.0/instances"));
    }
}
