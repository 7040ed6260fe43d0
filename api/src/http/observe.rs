//! What operators scrape and poll: `GET /metrics` (Prometheus text, every series this process
//! records) and `GET /status` (each component's state as it last reported it), both for the admin
//! token only; and the middleware that counts and times every HTTP request by route template.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::AppState;
use crate::status::{self, Component, Progress};

/// How long `/status` waits for the database to answer before it reports it down.
const DATABASE_TIMEOUT: Duration = Duration::from_secs(2);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(metrics))
        .routes(routes!(status))
}

/// Read the Prometheus metrics (admin)
///
/// Every series of this process in the Prometheus text format (`gito_http_*`, `gito_processor_*`,
/// `gito_live_*`, `gito_cache_*`, `gito_component_up`, ...; docs/OPERATIONS.md lists them). For
/// Prometheus' `authorization` setting with the admin token; 403 for a tenant token.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, gito_runtime::metrics::CONTENT_TYPE)],
        gito_runtime::metrics::handle().render(),
    )
        .into_response()
}

#[derive(Debug, Serialize, ToSchema)]
struct StatusReport {
    /// The components this process runs (one that is switched off is not listed).
    components: Vec<Component>,
    /// The processor's last commit and lag (`null` fields before the first commit, or with the
    /// processor off).
    processor: Progress,
}

/// Read the state of every component (admin)
///
/// `database` (asked now, with a 2 s limit), `broker` (the processor's connection, or the live
/// fan-out's when the processor is off), `processor`, `live` and `token_listener`, each `up`,
/// `degraded` (working but retrying errors) or `down`, since when, and the last error it
/// reported; plus the processor's last commit time and lag. Always 200: the states are the
/// answer (`/ready` is what a load balancer asks). 403 for a tenant token.
#[utoipa::path(get, path = "/status", tag = "health",
    responses((status = 200, description = "The components' states", body = StatusReport)))]
async fn status(State(state): State<AppState>) -> Json<StatusReport> {
    let ping = tokio::time::timeout(
        DATABASE_TIMEOUT,
        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.pool),
    )
    .await;
    match ping {
        Ok(Ok(_)) => state.health.up(status::DATABASE),
        Ok(Err(e)) => state.health.down(status::DATABASE, e),
        Err(_) => state.health.down(status::DATABASE, "no answer within 2 s"),
    }
    Json(StatusReport {
        components: state.health.components(),
        processor: state.health.progress(),
    })
}

/// Counts and times each request by method, route template (never the path itself: its ids
/// would make a series per device) and status; `unmatched` for paths no route knows.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = match *request.method() {
        Method::GET
        | Method::POST
        | Method::PUT
        | Method::PATCH
        | Method::DELETE
        | Method::HEAD
        | Method::OPTIONS => request.method().as_str().to_owned(),
        _ => "other".to_owned(),
    };
    let _in_flight = InFlight::start();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!("gito_http_request_duration_seconds", "route" => route.clone(), "method" => method.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("gito_http_requests_total", "route" => route, "method" => method, "status" => status)
        .increment(1);
    response
}

/// One request in `gito_http_requests_in_flight`, until it is answered or its client is gone
/// (then the request's future is dropped, not finished).
struct InFlight;

impl InFlight {
    fn start() -> InFlight {
        metrics::gauge!("gito_http_requests_in_flight").increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("gito_http_requests_in_flight").decrement(1.0);
    }
}
