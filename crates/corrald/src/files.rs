//! `/1.0/instances/{name}/files`: reading and writing files inside an instance.

use axum::Router;

use crate::api::AppState;

/// The file routes.
pub fn routes() -> Router<AppState> {
    Router::new()
}
