//! Image secrets, as LXD has them: `POST /1.0/images/{fp}/secret` makes a token operation whose
//! metadata holds a secret; while it runs, an untrusted caller who gives that secret
//! (`?secret=`) may read the private image (`GET /1.0/images/{fp}`) and download it once
//! (`GET /1.0/images/{fp}/export`, which ends the operation). Cancelling the operation
//! (`DELETE /1.0/operations/{id}`) revokes the secret. This is how one server copies another's
//! private image: the client asks the source for a secret and hands it to the target.

use std::collections::BTreeMap;

use crate::operations::{OpClass, OpState, OpStatus, Operations};

/// The resource an image's secret operation names (LXD's: the image's URL).
fn resource(fingerprint: &str) -> String {
    format!("/1.0/images/{fingerprint}")
}

/// Starts the token operation holding a new secret for the image `fingerprint` (full).
pub fn create(ops: &Operations, fingerprint: &str) -> OpState {
    let resources = BTreeMap::from([("images".to_string(), vec![resource(fingerprint)])]);
    let op = ops.spawn(OpClass::Token, "Downloading image", resources, true, |_| {
        std::future::pending::<Result<(), String>>()
    });
    let secret = crate::exec_ws::secret();
    ops.set_metadata(&op.id, serde_json::json!({ "secret": secret }));
    ops.get(&op.id).unwrap_or(op)
}

/// Compares without stopping at the first difference (a secret is not guessed byte by byte).
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The running secret operation of image `fingerprint` whose secret is `secret`, if any.
pub fn find(ops: &Operations, fingerprint: &str, secret: &str) -> Option<OpState> {
    if secret.is_empty() {
        return None;
    }
    let url = resource(fingerprint);
    ops.list().into_iter().find(|op| {
        op.class == OpClass::Token
            && op.status == OpStatus::Running
            && op.resources.get("images").is_some_and(|r| r.contains(&url))
            && op.metadata["secret"].as_str().is_some_and(|s| same(s, secret))
    })
}

/// Ends a secret once its image has been handed out.
pub fn spend(ops: &Operations, op: &OpState) {
    if let Err(e) = ops.cancel(&op.id) {
        tracing::debug!(op = %op.id, "the image secret's operation had already ended: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_secret_opens_its_image_until_it_is_spent() {
        let ops = Operations::default();
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let op = create(&ops, &a);
        assert_eq!(op.class, OpClass::Token);
        assert_eq!(op.status, OpStatus::Running);
        let secret = op.metadata["secret"].as_str().unwrap().to_string();
        assert!(secret.len() >= 32, "{secret}");
        assert_eq!(find(&ops, &a, &secret).map(|o| o.id), Some(op.id.clone()));
        assert!(find(&ops, &b, &secret).is_none(), "another image");
        assert!(find(&ops, &a, "").is_none());
        assert!(find(&ops, &a, &secret[1..]).is_none());
        spend(&ops, &op);
        let ended = (0..100).find(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            find(&ops, &a, &secret).is_none()
        });
        assert!(
            ended.is_some(),
            "the secret still opens the image after its operation ended"
        );
    }
}
