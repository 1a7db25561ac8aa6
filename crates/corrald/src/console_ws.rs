//! `/1.0/instances/{name}/console`: the console log (GET); attaching comes next.

use axum::extract::{Path, State};
use axum::response::Response as HttpResponse;
use axum::routing::get;
use axum::Router;

use crate::api::{raw_bytes, ApiError, AppState};
use crate::instances::DEFAULT_PROJECT;

/// The console routes.
pub fn routes() -> Router<AppState> {
    Router::new().route("/1.0/instances/{name}/console", get(console_log))
}

/// `GET /1.0/instances/{name}/console`: the console log, from the monitor while the instance
/// runs, else as the last run left it.
async fn console_log(State(st): State<AppState>, Path(name): Path<String>) -> Result<HttpResponse, ApiError> {
    st.instances.get(DEFAULT_PROJECT, &name)?;
    let client = st.instances.client(&name);
    let run_dir = st.instances.paths.run_dir(&name);
    let log = tokio::task::spawn_blocking(move || match client.console_log() {
        Ok(log) => log,
        Err(_) => std::fs::read(run_dir.join("console.log")).unwrap_or_default(),
    })
    .await
    .map_err(|e| ApiError(500, e.to_string()))?;
    Ok(raw_bytes(log))
}
