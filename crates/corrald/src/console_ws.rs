//! Placeholder: routes added by the console_ws work.

use axum::Router;

use crate::api::AppState;

/// The routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new()
}
