//! The operator console (`/console/`, and `/` redirecting there) and Swagger UI (`/docs`),
//! served from files compiled into the binary: both work in a plant with no internet, and the
//! build needs no Node (the console is plain ES modules and CSS; Swagger UI is a pinned,
//! vendored `swagger-ui-dist`, see `api/swagger-ui/README.md`).
//!
//! Device names and topics come from outside, so every response here carries a strict
//! Content-Security-Policy (no inline script, connections only to this origin), `nosniff` and
//! `frame-ancestors 'none'`; the console itself renders data only as text.
//!
//! Also `GET /whoami`: which tenant a token belongs to, so that signing in takes a token alone.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use rust_embed::{EmbeddedFile, RustEmbed};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::AppState;
use super::auth::Principal;
use super::error::ApiError;

/// The console: `index.html`, its CSS and ES modules.
#[derive(RustEmbed)]
#[folder = "console/"]
struct Console;

/// Swagger UI: the vendored `swagger-ui-dist` files and the page that starts it.
#[derive(RustEmbed)]
#[folder = "swagger-ui/"]
struct Docs;

/// `/`, `/console/...` and `/docs/...`, each answer with the security headers.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console/") }))
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route(
            "/console/",
            get(|headers: HeaderMap| async move { asset::<Console>("index.html", &headers) }),
        )
        .route(
            "/console/{*path}",
            get(
                |axum::extract::Path(path): axum::extract::Path<String>, headers: HeaderMap| async move {
                    asset::<Console>(&path, &headers)
                },
            ),
        )
        .route(
            "/docs",
            get(|headers: HeaderMap| async move { asset::<Docs>("index.html", &headers) }),
        )
        .route(
            "/docs/{*path}",
            get(
                |axum::extract::Path(path): axum::extract::Path<String>, headers: HeaderMap| async move {
                    asset::<Docs>(&path, &headers)
                },
            ),
        )
        .layer(middleware::from_fn(security_headers))
}

/// The documented, authenticated route the console needs beside the resources' own.
pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(whoami))
}

/// Whom a token stands for.
#[derive(Debug, Serialize, ToSchema)]
struct WhoAmI {
    /// The admin token: every tenant (list them with `GET /tenants`).
    admin: bool,
    /// A tenant token's tenant; `null` for the admin token.
    tenant_id: Option<Uuid>,
}

/// Whom the token stands for
///
/// The admin token answers `{"admin": true, "tenant_id": null}`, a tenant token
/// `{"admin": false, "tenant_id": "<its tenant>"}`: the console signs in with a token alone.
#[utoipa::path(get, path = "/whoami", tag = "tenants",
    responses((status = 200, description = "The token's role and tenant", body = WhoAmI)))]
async fn whoami(Extension(principal): Extension<Principal>) -> Json<WhoAmI> {
    Json(match principal {
        Principal::Admin => WhoAmI {
            admin: true,
            tenant_id: None,
        },
        Principal::Tenant(tenant_id) => WhoAmI {
            admin: false,
            tenant_id: Some(tenant_id),
        },
    })
}

/// One embedded file, revalidated by its hash (`ETag`) so a new binary's files are fetched again.
fn asset<A: RustEmbed>(path: &str, headers: &HeaderMap) -> Response {
    let Some(EmbeddedFile { data, metadata }) = A::get(path) else {
        return ApiError::NotFound("file").into_response();
    };
    let etag = format!("\"{}\"", hex::encode(&metadata.sha256_hash()[..16]));
    let cached = headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
    let mut response = if cached {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        Response::new(Body::from(data.into_owned()))
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(path)),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, etag);
    }
    response
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("png") => "image/png",
        Some("svg") => "image/svg+xml",
        Some("json") => "application/json",
        _ => "text/plain; charset=utf-8",
    }
}

/// The policy: scripts, styles and images from this origin only (Swagger UI's CSS draws its
/// icons from `data:` URLs), requests to this origin only, the WebSocket included.
fn policy(host: Option<&str>) -> String {
    // 'self' covers ws:/wss: to this origin in CSP 3 browsers; older ones need it spelled out.
    let sockets = host
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .map(|h| format!(" ws://{h} wss://{h}"))
        .unwrap_or_default();
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         font-src 'self'; connect-src 'self'{sockets}; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    )
}

async fn security_headers(request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if let Ok(csp) = HeaderValue::from_str(&policy(host.as_deref())) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_that_could_break_out_of_the_policy_is_left_out() {
        assert!(
            policy(Some("gito.local:8000")).contains("ws://gito.local:8000 wss://gito.local:8000")
        );
        assert!(policy(Some("[::1]:8000")).contains("ws://[::1]:8000"));
        for hostile in ["a; script-src *", "a b", "x'", ""] {
            let csp = policy(Some(hostile));
            assert!(!csp.contains("ws://"), "{hostile}: {csp}");
        }
    }

    #[test]
    fn every_asset_has_its_content_type() {
        for path in Console::iter().chain(Docs::iter()) {
            let ext = path.rsplit_once('.').map(|(_, e)| e);
            assert!(
                matches!(ext, Some("html" | "js" | "css" | "png" | "txt" | "md"))
                    || path.ends_with("LICENSE")
                    || path.ends_with("NOTICE"),
                "{path}"
            );
        }
        assert!(Console::get("index.html").is_some());
        assert!(Docs::get("index.html").is_some());
    }
}
