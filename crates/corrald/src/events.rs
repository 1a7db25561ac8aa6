//! `/1.0/events`: the stream of lifecycle, operation and logging events.
//!
//! Events are fanned out through a broadcast channel; a websocket client subscribes with an
//! optional `type=` filter (comma-separated). A client too slow to keep up skips what it
//! missed rather than holding up the daemon.

use axum::extract::ws::{Message, WebSocket};
use corral_api as api;
use tokio::sync::broadcast;

/// How many events a slow client may fall behind before it skips.
const BACKLOG: usize = 1024;

/// A lifecycle event to publish once its change has happened.
#[derive(Debug, Clone, Default)]
pub struct Lifecycle {
    pub action: String,
    pub source: String,
    pub context: std::collections::BTreeMap<String, serde_json::Value>,
}

impl Lifecycle {
    pub fn new(action: &str, source: &str) -> Lifecycle {
        Lifecycle {
            action: action.to_string(),
            source: source.to_string(),
            context: Default::default(),
        }
    }

    /// With one more context entry (`old_name`, `snapshot`...).
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Lifecycle {
        self.context.insert(key.to_string(), value.into());
        self
    }
}

#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<api::Event>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            tx: broadcast::channel(BACKLOG).0,
        }
    }
}

impl Events {
    /// Publishes an event of `kind` (`lifecycle`, `operation`, `logging`).
    pub fn send(&self, kind: &str, metadata: serde_json::Value) {
        let event = api::Event {
            kind: kind.to_string(),
            timestamp: api::Timestamp::now(),
            metadata,
            location: "none".into(),
            project: "default".into(),
        };
        // No subscriber is not an error.
        let _ = self.tx.send(event);
    }

    /// A lifecycle event: `action` (`instance-started`) on `source` (`/1.0/instances/c1`).
    pub fn lifecycle(&self, action: &str, source: &str) {
        self.publish(Lifecycle::new(action, source));
    }

    /// A lifecycle event with its context.
    pub fn publish(&self, event: Lifecycle) {
        let meta = api::EventLifecycle {
            action: event.action,
            source: event.source,
            context: event.context,
            requestor: Some(api::EventLifecycleRequestor {
                username: "root".into(),
                protocol: "unix".into(),
                address: "@".into(),
            }),
        };
        self.send("lifecycle", serde_json::to_value(meta).unwrap_or_default());
    }

    /// Whether anyone listens (so that work done only for listeners can be skipped).
    pub fn has_subscribers(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    pub fn subscribe(&self) -> broadcast::Receiver<api::Event> {
        self.tx.subscribe()
    }
}

/// Streams events of the `types` wanted (all if empty) to `ws` until it closes.
pub async fn stream(mut ws: WebSocket, mut rx: broadcast::Receiver<api::Event>, types: Vec<String>) {
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Ok(ev) => {
                    if !types.is_empty() && !types.contains(&ev.kind) {
                        continue;
                    }
                    let Ok(text) = serde_json::to_string(&ev) else { continue };
                    if ws.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            msg = ws.recv() => match msg {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                _ => {}
            },
        }
    }
}
