//! Who is asking, and may they. Every route but health, readiness and the docs requires
//! `Authorization: Bearer <token>` (the WebSocket also takes `?token=`, since browsers cannot set
//! headers there). The admin token may do everything; a tenant token only works under its own
//! `/tenants/{tenant_id}/...`, and anything of another tenant is "not found", exactly as if it
//! did not exist. The rules live here, in one layer over every protected route, so that a new
//! route cannot forget them.

use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;
use serde::Deserialize;
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use super::token_cache::Cached;
use crate::auth;

/// The authenticated caller, available to handlers as a request extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    Admin,
    Tenant(Uuid),
}

pub async fn require_token(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = presented(&request)?;
    let principal = resolve(&state, &token).await?;
    authorize(principal, request.method(), request.uri().path())?;
    request.extensions_mut().insert(principal);
    if let Principal::Tenant(_) = principal {
        request.extensions_mut().insert(Credential(token.into()));
    }
    Ok(next.run(request).await)
}

/// The tenant token a request was made with: a WebSocket keeps it to check it again while open.
#[derive(Clone)]
pub struct Credential(Arc<str>);

impl Credential {
    pub fn key_id(&self) -> Option<&str> {
        auth::parse(&self.0).map(|parts| parts.key_id)
    }

    /// Whom the token stands for now (the cache, else the database).
    pub async fn resolve(&self, state: &AppState) -> Result<Principal, ApiError> {
        resolve(state, &self.0).await
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(..)")
    }
}

fn presented(request: &Request) -> Result<String, ApiError> {
    if let Some(value) = request.headers().get(header::AUTHORIZATION) {
        return value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim().to_owned())
            .filter(|token| !token.is_empty())
            .ok_or(ApiError::Unauthorized(
                "expected `Authorization: Bearer <token>`",
            ));
    }
    #[derive(Deserialize)]
    struct TokenParam {
        token: Option<String>,
    }
    if request.uri().path().ends_with("/ws")
        && let Ok(Query(TokenParam { token: Some(token) })) = Query::try_from_uri(request.uri())
    {
        return Ok(token);
    }
    Err(ApiError::Unauthorized(
        "missing `Authorization: Bearer <token>`",
    ))
}

async fn resolve(state: &AppState, token: &str) -> Result<Principal, ApiError> {
    const INVALID: ApiError = ApiError::Unauthorized("invalid or revoked token");
    if state.admin.matches(token) {
        return Ok(Principal::Admin);
    }
    let Some(parts) = auth::parse(token) else {
        return Err(INVALID);
    };
    let stored = match state.tokens.get(parts.key_id) {
        Some(cached) => Some(cached),
        None => {
            let read_at = state.tokens.generation();
            let row = sqlx::query!(
                "SELECT tenant_id, secret_sha256 FROM api_tokens WHERE key_id = $1",
                parts.key_id
            )
            .fetch_optional(&state.pool)
            .await?;
            row.and_then(|row| {
                let cached = Cached {
                    tenant_id: row.tenant_id,
                    secret_sha256: row.secret_sha256.try_into().ok()?,
                };
                state.tokens.insert(parts.key_id, cached, read_at);
                Some(cached)
            })
        }
    };
    match stored {
        Some(token) if auth::secret_matches(parts.secret, &token.secret_sha256) => {
            Ok(Principal::Tenant(token.tenant_id))
        }
        _ => Err(INVALID),
    }
}

/// Tenant tokens: their own tenant only; tenants, tokens, metrics, status and the storage
/// partitions are the admin's.
fn authorize(principal: Principal, method: &Method, path: &str) -> Result<(), ApiError> {
    let Principal::Tenant(own) = principal else {
        return Ok(());
    };
    let mut segments = path.trim_start_matches('/').split('/');
    match (segments.next(), segments.next(), segments.next()) {
        (Some("metrics" | "status"), None, _) => Err(ApiError::Forbidden(
            "only the admin token may read metrics and status",
        )),
        (Some("storage"), _, _) => Err(ApiError::Forbidden(
            "only the admin token may read the storage partitions",
        )),
        (Some("tenants"), None, _) => Err(ApiError::Forbidden(
            "only the admin token may list or create tenants",
        )),
        (Some("tenants"), Some(id), rest) => {
            // Compared as parsed ids, so any spelling the router accepts is judged the same.
            if Uuid::try_parse(id).ok() != Some(own) {
                return Err(ApiError::NotFound("tenant"));
            }
            match rest {
                Some("tokens") => Err(ApiError::Forbidden(
                    "only the admin token may manage tokens",
                )),
                None if method != Method::GET => Err(ApiError::Forbidden(
                    "only the admin token may change a tenant",
                )),
                _ => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_tokens_stay_in_their_tenant() {
        let own = Uuid::now_v7();
        let other = Uuid::now_v7();
        let me = Principal::Tenant(own);
        let get = &Method::GET;
        assert!(authorize(me, get, &format!("/tenants/{own}/devices")).is_ok());
        assert!(authorize(me, get, &format!("/tenants/{own}")).is_ok());
        assert!(authorize(me, get, &format!("/tenants/{}/devices", own.simple())).is_ok());
        for path in [
            format!("/tenants/{other}/devices"),
            format!("/tenants/{other}"),
            "/tenants/not-a-uuid/devices".to_owned(),
            format!("/tenants/{}/devices", own.to_string().replace('-', "%2D")),
        ] {
            let refused = authorize(me, get, &path).unwrap_err();
            assert!(matches!(refused, ApiError::NotFound("tenant")), "{path}");
        }
        for (method, path) in [
            (Method::GET, "/tenants".to_owned()),
            (Method::POST, "/tenants".to_owned()),
            (Method::POST, format!("/tenants/{own}/tokens")),
            (Method::DELETE, format!("/tenants/{own}/tokens/{other}")),
        ] {
            let refused = authorize(me, &method, &path).unwrap_err();
            assert!(matches!(refused, ApiError::Forbidden(_)), "{method} {path}");
        }
        assert!(authorize(Principal::Admin, get, "/tenants").is_ok());
    }
}
