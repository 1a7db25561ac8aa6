//! `corral monitor`: the daemon's events (`/1.0/events`) as they happen, like `lxc monitor`:
//! one YAML document per event, one JSON object per line, or one line for a human.
//!
//! It runs until interrupted (ctrl+c ends it as any command), until its output is closed
//! (`corral monitor | head` ends quietly), or until corrald goes away (an error).

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use corral_api::{Event, EventLifecycle, EventLogging, Operation};
use corral_client::Client;
use serde_json::Value;

use crate::output::yaml;
use crate::remotes::check_remote_arg;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EventType {
    /// Something happened to an instance, image, profile...
    Lifecycle,
    /// A background operation changed
    Operation,
    /// A log line of the daemon
    Logging,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Lifecycle => corral_api::event::event_type::LIFECYCLE,
            EventType::Operation => corral_api::event::event_type::OPERATION,
            EventType::Logging => corral_api::event::event_type::LOGGING,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MonitorFormat {
    /// One YAML document per event, each opened by `---`
    Yaml,
    /// One JSON object per line
    Json,
    /// One line per event, for a human
    Pretty,
}

#[derive(Args)]
pub struct MonitorArgs {
    /// The server ("local:", the only one for now)
    #[arg(value_name = "REMOTE:")]
    pub remote: Option<String>,
    /// Event type to listen for (repeatable, or comma-separated; default: all)
    #[arg(long = "type", value_enum, value_delimiter = ',', value_name = "TYPE")]
    pub types: Vec<EventType>,
    /// Output format
    #[arg(short = 'f', long = "format", value_enum, default_value_t = MonitorFormat::Yaml)]
    pub format: MonitorFormat,
    /// Pretty rendering (short for --format=pretty)
    #[arg(long)]
    pub pretty: bool,
}

pub fn monitor(c: &Client, a: MonitorArgs) -> Result<()> {
    if let Some(r) = &a.remote {
        check_remote_arg(r)?;
    }
    let format = if a.pretty { MonitorFormat::Pretty } else { a.format };
    let mut types: Vec<&str> = a.types.iter().map(|t| t.as_str()).collect();
    types.dedup();
    let mut events = c.events(&types)?;
    loop {
        let Some(event) = events.next_event().context("cannot read the events")? else {
            bail!(
                "corrald closed the event stream at {}: it stopped or restarted",
                c.url()
            );
        };
        match format {
            MonitorFormat::Yaml => out!("---\n{}", yaml(&event)?),
            MonitorFormat::Json => outln!("{}", serde_json::to_string(&event)?),
            MonitorFormat::Pretty => outln!("{}", pretty(&event)),
        }
    }
}

/// One line: the time, the type, and what matters for that type.
fn pretty(raw: &Value) -> String {
    let event: Event = serde_json::from_value(raw.clone()).unwrap_or_default();
    let time = event.timestamp.0.format("%Y-%m-%dT%H:%M:%S%.3fZ");
    let what = match event.kind.as_str() {
        corral_api::event::event_type::LIFECYCLE => {
            let e: EventLifecycle = serde_json::from_value(event.metadata.clone()).unwrap_or_default();
            let mut s = format!("{} {}", e.action, e.source);
            for (k, v) in &e.context {
                s.push_str(&format!(" {k}={}", plain(v)));
            }
            if let Some(r) = e.requestor.as_ref().filter(|r| !r.username.is_empty()) {
                s.push_str(&format!(" (by {} over {})", r.username, r.protocol));
            }
            s
        }
        corral_api::event::event_type::LOGGING => {
            let e: EventLogging = serde_json::from_value(event.metadata.clone()).unwrap_or_default();
            let mut s = format!("{} {}", e.level.to_uppercase(), e.message);
            for (k, v) in &e.context {
                s.push_str(&format!(" {k}={v}"));
            }
            s
        }
        corral_api::event::event_type::OPERATION => {
            let op: Operation = serde_json::from_value(event.metadata.clone()).unwrap_or_default();
            let mut s = format!("{}: {} ({})", op.description, op.status, op.id);
            if !op.err.is_empty() {
                s.push_str(&format!(": {}", op.err));
            }
            s
        }
        _ => event.metadata.to_string(),
    };
    format!("{time} {:<9} {what}", event.kind)
}

/// A JSON value without the quotes of a string.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_lines() {
        let life = serde_json::json!({"type": "lifecycle", "timestamp": "2024-01-31T10:00:00.123456Z",
            "metadata": {"action": "instance-started", "source": "/1.0/instances/c1",
                         "requestor": {"username": "root", "protocol": "unix", "address": "@"}},
            "location": "none", "project": "default"});
        assert_eq!(
            pretty(&life),
            "2024-01-31T10:00:00.123Z lifecycle instance-started /1.0/instances/c1 (by root over unix)"
        );
        let log = serde_json::json!({"type": "logging", "timestamp": "2024-01-31T10:00:01Z",
            "metadata": {"level": "info", "message": "Started instance", "context": {"instance": "c1"}}});
        assert_eq!(
            pretty(&log),
            "2024-01-31T10:00:01.000Z logging   INFO Started instance instance=c1"
        );
        let op = serde_json::json!({"type": "operation", "timestamp": "2024-01-31T10:00:02Z",
            "metadata": {"id": "abc", "description": "Starting instance", "status": "Failure",
                         "status_code": 400, "err": "no init"}});
        assert_eq!(
            pretty(&op),
            "2024-01-31T10:00:02.000Z operation Starting instance: Failure (abc): no init"
        );
    }
}
