//! The HTTP API: the router, its middleware stack, and serving it until shutdown.

mod alert_rules;
mod alerts;
mod auth;
mod classification_rules;
mod classify;
mod console;
mod dead_letters;
mod device_batch;
mod device_groups;
mod device_shapes;
mod device_types;
mod devices;
mod discovered_metrics;
mod error;
mod extract;
pub(crate) mod fields;
mod health;
mod live;
mod observe;
mod openapi;
mod organizations;
mod page;
mod sites;
mod storage;
mod telemetry;
mod tenants;
pub mod token_cache;
mod tokens;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderName, Request, StatusCode, header};
use axum::middleware;
use axum::routing::get;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

use crate::auth::AdminToken;
use crate::status::Health;
pub use token_cache::TokenCache;

pub use auth::Principal;
pub use error::ApiError;
pub use live::Live;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    /// The WebSocket fan-out; `None` when disabled.
    pub live: Option<Live>,
    pub admin: AdminToken,
    pub tokens: Arc<TokenCache>,
    /// The components' states, for `/status`.
    pub health: Health,
    /// `GITO_TELEMETRY_RETENTION_DAYS`: a replayed dead letter is held to it as the processor is.
    pub retention_days: Option<u32>,
}

/// Limits applied to every request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub fn app(state: AppState, limits: Limits) -> Router {
    let layers = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request<_>| {
                    let id = request
                        .headers()
                        .get(REQUEST_ID)
                        .and_then(|v| v.to_str().ok());
                    tracing::info_span!(
                        "request",
                        method = %request.method(),
                        // The path only: a WebSocket's query may carry a token.
                        path = %request.uri().path(),
                        request_id = id.unwrap_or_default(),
                    )
                })
                // The access log: one line per response, with status and latency, at INFO.
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(middleware::from_fn(error::json_errors))
        .layer(CatchPanicLayer::new())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            limits.request_timeout,
        ))
        .layer(RequestBodyLimitLayer::new(limits.max_body_bytes));
    let protected = OpenApiRouter::new()
        .merge(tenants::router())
        .merge(tokens::router())
        .merge(organizations::router())
        .merge(sites::router())
        .merge(device_groups::router())
        .merge(device_types::router())
        .merge(devices::router())
        .merge(device_batch::router())
        .merge(classification_rules::router())
        .merge(classify::router())
        .merge(device_shapes::router())
        .merge(discovered_metrics::router())
        .merge(telemetry::router())
        .merge(storage::router())
        .merge(alert_rules::router())
        .merge(alerts::router())
        .merge(dead_letters::router())
        .merge(live::router())
        .merge(observe::router())
        .merge(console::api_router())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    let (router, doc) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(health::router())
        .merge(protected)
        .split_for_parts();
    let doc = Bytes::from(
        serde_json::to_vec(&openapi::finish(doc)).expect("the OpenAPI document serializes"),
    );
    router
        .route(
            "/openapi.json",
            get(move || async move { ([(header::CONTENT_TYPE, "application/json")], doc.clone()) }),
        )
        .merge(console::router())
        .fallback(|| async { ApiError::NotFound("route") })
        .with_state(state)
        .layer(layers)
        // Outermost, so that every answer is counted, the middleware's own included.
        .layer(middleware::from_fn(observe::track))
}

/// Serves `app` on `listener` until `shutdown` fires, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
