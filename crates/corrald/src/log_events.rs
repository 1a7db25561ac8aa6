//! The daemon's own log lines as `logging` events on /1.0/events (what `lxc monitor --type
//! logging` shows): a tracing layer that publishes each event that passes the log filter, only
//! while someone listens.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use corral_api as api;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

use crate::events::Events;

static SINK: OnceLock<Events> = OnceLock::new();

/// Where the layer publishes; set once the daemon has its event hub.
pub fn forward_to(events: Events) {
    let _ = SINK.set(events);
}

/// The layer to add to the daemon's subscriber.
pub struct EventsLayer;

#[derive(Default)]
struct Fields {
    message: String,
    context: BTreeMap<String, String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.context.insert(field.name().to_string(), value.to_string());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.context.insert(field.name().to_string(), format!("{value:?}"));
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for EventsLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let Some(events) = SINK.get().filter(|e| e.has_subscribers()) else {
            return;
        };
        let mut fields = Fields::default();
        event.record(&mut fields);
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => "error",
            tracing::Level::WARN => "warning",
            tracing::Level::INFO => "info",
            tracing::Level::DEBUG => "debug",
            tracing::Level::TRACE => "trace",
        };
        let meta = api::EventLogging {
            message: fields.message,
            level: level.into(),
            context: fields.context,
        };
        events.send("logging", serde_json::to_value(meta).unwrap_or_default());
    }
}
