//! Liveness and readiness for orchestrators and load balancers.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::AppState;
use super::error::ApiError;
use crate::migrate::Catalog;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ready))
}

#[derive(Debug, Serialize, ToSchema)]
struct Status {
    /// `ok` (health) or `ready` (ready).
    status: &'static str,
}

/// Check that the process is alive
///
/// Answers 200 `{"status": "ok"}` as long as the process serves HTTP, without touching the
/// database: a liveness probe. Needs no token.
#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, description = "Up", body = Status)))]
async fn health() -> Json<Status> {
    Json(Status { status: "ok" })
}

/// Check that the service is ready for traffic
///
/// Answers 200 `{"status": "ready"}` when the database answers and its schema is at this binary's
/// head, and 503 otherwise (database unreachable, schema missing, older or newer), so that a
/// replica is not sent traffic before (or while) it could serve it. Needs no token.
#[utoipa::path(get, path = "/ready", tag = "health",
    responses((status = 200, description = "Ready for traffic", body = Status)))]
async fn ready(State(state): State<AppState>) -> Result<Json<Status>, ApiError> {
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
    Ok(Json(Status { status: "ready" }))
}
