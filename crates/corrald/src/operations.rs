//! Background operations: the `async` half of the API.
//!
//! A request that takes time (create, start, stop, exec, image import) returns 202 with an
//! operation at once; the work runs as a tokio task that updates the operation, and clients
//! poll `GET /1.0/operations/{id}` or long-poll `/wait`. Operations live in memory: after a
//! daemon restart the intents recorded in the store, not the operations, say what was left
//! half-done.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

/// How long a finished operation stays visible.
const KEEP_FINISHED: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpStatus {
    Pending,
    Running,
    Cancelling,
    Success,
    Failure,
    Cancelled,
}

impl OpStatus {
    pub fn is_final(self) -> bool {
        matches!(self, OpStatus::Success | OpStatus::Failure | OpStatus::Cancelled)
    }

    /// LXD's status code and name.
    pub fn code(self) -> (u16, &'static str) {
        match self {
            OpStatus::Pending => (105, "Pending"),
            OpStatus::Running => (103, "Running"),
            OpStatus::Cancelling => (104, "Cancelling"),
            OpStatus::Success => (200, "Success"),
            OpStatus::Failure => (400, "Failure"),
            OpStatus::Cancelled => (401, "Cancelled"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpClass {
    Task,
    Websocket,
    Token,
}

impl OpClass {
    pub fn name(self) -> &'static str {
        match self {
            OpClass::Task => "task",
            OpClass::Websocket => "websocket",
            OpClass::Token => "token",
        }
    }
}

/// A snapshot of one operation.
#[derive(Debug, Clone)]
pub struct OpState {
    pub id: String,
    pub class: OpClass,
    pub description: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub status: OpStatus,
    pub resources: BTreeMap<String, Vec<String>>,
    pub metadata: serde_json::Value,
    pub may_cancel: bool,
    pub err: String,
}

struct Entry {
    state: watch::Sender<OpState>,
    cancel: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Called with every new state of every operation (the daemon publishes them as events).
pub type Listener = Arc<dyn Fn(&OpState) + Send + Sync>;

/// All operations of this daemon.
#[derive(Clone, Default)]
pub struct Operations {
    inner: Arc<Mutex<HashMap<String, Entry>>>,
    listener: Option<Listener>,
}

/// Handle given to the task doing an operation's work.
#[derive(Clone)]
pub struct OpHandle {
    id: String,
    ops: Operations,
}

impl OpHandle {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Replaces the operation's metadata (progress, exec fds, return code).
    pub fn set_metadata(&self, metadata: serde_json::Value) {
        self.ops.update(&self.id, |s| s.metadata = metadata);
    }

    /// Merges `key: value` into the operation's metadata object.
    pub fn set_metadata_key(&self, key: &str, value: serde_json::Value) {
        self.ops.update(&self.id, |s| {
            if !s.metadata.is_object() {
                s.metadata = serde_json::json!({});
            }
            if let Some(m) = s.metadata.as_object_mut() {
                m.insert(key.to_string(), value);
            }
        });
    }
}

impl Operations {
    /// Operations whose every change is also handed to `listener`.
    pub fn with_listener(listener: Listener) -> Operations {
        Operations {
            inner: Arc::default(),
            listener: Some(listener),
        }
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut OpState)) {
        let map = self.inner.lock().expect("operations lock poisoned");
        if let Some(e) = map.get(id) {
            e.state.send_modify(|s| {
                f(s);
                s.updated_at = Utc::now();
            });
            if let Some(l) = &self.listener {
                l(&e.state.borrow());
            }
        }
    }

    /// Starts `work` as a new operation; returns its state right after creation. `cancel`, when
    /// given, makes the operation cancellable: the work's future is dropped when it fires.
    pub fn spawn<F, Fut>(
        &self,
        class: OpClass,
        description: &str,
        resources: BTreeMap<String, Vec<String>>,
        cancellable: bool,
        work: F,
    ) -> OpState
    where
        F: FnOnce(OpHandle) -> Fut,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let id = uuid::Uuid::new_v4().to_string();
        let now = Utc::now();
        let state = OpState {
            id: id.clone(),
            class,
            description: description.to_string(),
            created_at: now,
            updated_at: now,
            status: OpStatus::Running,
            resources,
            metadata: serde_json::Value::Null,
            may_cancel: cancellable,
            err: String::new(),
        };
        let (tx, _) = watch::channel(state.clone());
        let (cancel_tx, cancel_rx) = tokio::sync::oneshot::channel();
        self.inner.lock().expect("operations lock poisoned").insert(
            id.clone(),
            Entry {
                state: tx,
                cancel: cancellable.then_some(cancel_tx),
            },
        );
        if let Some(l) = &self.listener {
            l(&state);
        }
        let handle = OpHandle {
            id: id.clone(),
            ops: self.clone(),
        };
        let fut = work(handle);
        let ops = self.clone();
        tokio::spawn(async move {
            let outcome = tokio::select! {
                r = fut => Some(r),
                _ = cancel_rx, if cancellable => None,
            };
            ops.update(&id, |s| match outcome {
                Some(Ok(())) => s.status = OpStatus::Success,
                Some(Err(e)) => {
                    s.status = OpStatus::Failure;
                    s.err = e;
                }
                None => {
                    s.status = OpStatus::Cancelled;
                    s.err = "operation cancelled".into();
                }
            });
            tokio::time::sleep(KEEP_FINISHED).await;
            ops.inner.lock().expect("operations lock poisoned").remove(&id);
        });
        state
    }

    /// Sets an operation's metadata from outside its task (e.g. the websocket secrets).
    pub fn set_metadata(&self, id: &str, metadata: serde_json::Value) {
        self.update(id, |s| s.metadata = metadata);
    }

    pub fn get(&self, id: &str) -> Option<OpState> {
        self.inner
            .lock()
            .expect("operations lock poisoned")
            .get(id)
            .map(|e| e.state.borrow().clone())
    }

    pub fn list(&self) -> Vec<OpState> {
        let mut v: Vec<OpState> = self
            .inner
            .lock()
            .expect("operations lock poisoned")
            .values()
            .map(|e| e.state.borrow().clone())
            .collect();
        v.sort_by_key(|s| s.created_at);
        v
    }

    /// Waits until the operation is final or `timeout` passes (None: no limit).
    pub async fn wait(&self, id: &str, timeout: Option<Duration>) -> Option<OpState> {
        let mut rx = self
            .inner
            .lock()
            .expect("operations lock poisoned")
            .get(id)
            .map(|e| e.state.subscribe())?;
        let done = async {
            loop {
                if rx.borrow_and_update().status.is_final() {
                    break;
                }
                if rx.changed().await.is_err() {
                    break;
                }
            }
        };
        match timeout {
            Some(t) => {
                let _ = tokio::time::timeout(t, done).await;
            }
            None => done.await,
        }
        let state = rx.borrow().clone();
        Some(state)
    }

    /// Asks a cancellable operation to stop. Err with a reason if it cannot be.
    pub fn cancel(&self, id: &str) -> Result<(), CancelError> {
        let mut map = self.inner.lock().expect("operations lock poisoned");
        let entry = map.get_mut(id).ok_or(CancelError::NotFound)?;
        if entry.state.borrow().status.is_final() {
            return Err(CancelError::Finished);
        }
        let sender = entry.cancel.take().ok_or(CancelError::NotCancellable)?;
        entry.state.send_modify(|s| s.status = OpStatus::Cancelling);
        let _ = sender.send(());
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CancelError {
    #[error("operation not found")]
    NotFound,
    #[error("this operation cannot be cancelled")]
    NotCancellable,
    #[error("the operation has already finished")]
    Finished,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn operations_run_report_and_cancel() {
        let ops = Operations::default();
        let op = ops.spawn(OpClass::Task, "Working", BTreeMap::new(), false, |h| async move {
            h.set_metadata_key("progress", serde_json::json!("50%"));
            Ok(())
        });
        let done = ops.wait(&op.id, Some(Duration::from_secs(5))).await.unwrap();
        assert_eq!(done.status, OpStatus::Success);
        assert_eq!(done.metadata["progress"], "50%");

        let failing = ops.spawn(OpClass::Task, "Failing", BTreeMap::new(), false, |_| async {
            Err("broken".to_string())
        });
        let done = ops.wait(&failing.id, None).await.unwrap();
        assert_eq!((done.status, done.err.as_str()), (OpStatus::Failure, "broken"));
        assert_eq!(ops.cancel(&failing.id), Err(CancelError::Finished));

        let slow = ops.spawn(OpClass::Task, "Slow", BTreeMap::new(), true, |_| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        });
        let early = ops.wait(&slow.id, Some(Duration::from_millis(50))).await.unwrap();
        assert_eq!(early.status, OpStatus::Running, "wait must return at its timeout");
        ops.cancel(&slow.id).unwrap();
        let done = ops.wait(&slow.id, Some(Duration::from_secs(5))).await.unwrap();
        assert_eq!(done.status, OpStatus::Cancelled);
        assert_eq!(ops.list().len(), 3);
        assert_eq!(ops.cancel("nope"), Err(CancelError::NotFound));
    }
}
