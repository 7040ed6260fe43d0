//! Liveness and readiness for orchestrators and load balancers.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use crate::migrate::Catalog;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
}

/// The process is up and answering.
async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The database answers and its schema is at this binary's head: 503 otherwise, so that a
/// replica is not sent traffic before (or while) it could serve it.
async fn ready(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let head = Catalog::embedded().head().map(|m| m.version);
    let current: Option<i64> =
        sqlx::query_scalar("SELECT max(version) FROM gito_schema_migrations")
            .fetch_one(&state.pool)
            .await
            .map_err(|e| {
                // The cause goes to the log; the answer says no more than a prober needs.
                tracing::warn!(error = %e, "not ready: the database does not answer");
                ApiError::Unavailable(
                    "the database does not answer, or the schema is missing".into(),
                )
            })?;
    if current != head {
        return Err(ApiError::Unavailable(format!(
            "schema at version {current:?}, this gito-api expects {head:?}"
        )));
    }
    Ok(Json(json!({ "status": "ready" })))
}
