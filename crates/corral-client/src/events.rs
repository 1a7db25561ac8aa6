//! `/1.0/events`: the websocket on which corrald sends each event as one JSON text message.

use serde_json::Value;
use tungstenite::Message;

use crate::{Client, ClientError, Result, WebSocket};

/// The event stream of one daemon.
pub struct EventStream {
    ws: WebSocket,
}

impl Client {
    /// Subscribes to the events of `types` (`lifecycle`, `operation`, `logging`; all when
    /// empty). A type the daemon doesn't know is its error.
    pub fn events(&self, types: &[&str]) -> Result<EventStream> {
        let path = if types.is_empty() {
            "/1.0/events".to_string()
        } else {
            format!("/1.0/events?type={}", types.join(","))
        };
        Ok(EventStream {
            ws: self.websocket_at(&path)?,
        })
    }
}

impl EventStream {
    /// The next event, as the JSON sent (whole: newer servers send fields `corral-api` doesn't
    /// have). `None` once corrald closes the stream, cleanly or not: it stopped.
    pub fn next_event(&mut self) -> Result<Option<Value>> {
        loop {
            let data = match self.ws.read() {
                Ok(Message::Text(t)) => t.as_bytes().to_vec(),
                Ok(Message::Binary(b)) => b.to_vec(),
                // Pings are answered by tungstenite; a close ends the next read.
                Ok(_) => continue,
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => return Ok(None),
                Err(tungstenite::Error::Io(_))
                | Err(tungstenite::Error::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake)) => {
                    return Ok(None)
                }
                Err(e) => return Err(ClientError::WebSocket(e.to_string())),
            };
            return serde_json::from_slice(&data)
                .map(Some)
                .map_err(|e| ClientError::Protocol(format!("an event that is not JSON: {e}")));
        }
    }
}
