//! Tenant API tokens, managed by the admin: created with the secret shown once, listed without
//! it, revoked by deletion (the next request with the token is refused).

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::error::{ApiError, deletion};
use super::extract::{Json, Path, Query};
use super::fields::{self, MAX_NAME_CHARS};
use super::openapi::{ItemPath, Name, TenantPath};
use super::page::{Keyed, Page, PageParams};
use super::{AppState, tenants};
use crate::auth::{NewToken, TOKEN_PREFIX};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(revoke))
}

/// A token as listed: never its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct Token {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    /// The token's public beginning (`gito_<key_id>`), to recognise it without the secret.
    pub prefix: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl Keyed for Token {
    fn key(&self) -> Uuid {
        self.id
    }
}

/// The answer of a creation: the only time the secret is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub info: Token,
    /// Send as `Authorization: Bearer <token>`. Store it now: it cannot be shown again.
    pub token: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({ "name": "mqtt-bridge" }))]
struct NewTokenRequest {
    #[schema(value_type = Name)]
    name: String,
}

/// Create an API token for a tenant
///
/// Admin token only (a tenant token gets 403). Answers 201 with the token's details and, in
/// `token`, its secret: shown this once and never again, so store it now. The token works only
/// under `/tenants/{tenant_id}/...` and cannot manage tokens or tenants.
#[utoipa::path(post, path = "/tenants/{tenant_id}/tokens", tag = "tenants", params(TenantPath), request_body = NewTokenRequest,
    responses((status = 201, description = "Created (admin token only); `token` is shown this once", body = CreatedToken)))]
async fn create(
    State(state): State<AppState>,
    Path(tenant_id): Path<Uuid>,
    Json(body): Json<NewTokenRequest>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let name = fields::text("name", &body.name, MAX_NAME_CHARS)?;
    let new = NewToken::generate();
    let info = sqlx::query_as!(
        Token,
        r#"INSERT INTO api_tokens (id, tenant_id, name, key_id, secret_sha256)
           VALUES ($1, $2, $3, $4, $5)
           RETURNING id, tenant_id, name, $6 || key_id AS "prefix!", created_at"#,
        Uuid::now_v7(),
        tenant_id,
        name,
        new.key_id,
        &new.secret_sha256[..],
        TOKEN_PREFIX
    )
    .fetch_one(&state.pool)
    .await?;
    tracing::info!(token_id = %info.id, %tenant_id, prefix = %info.prefix, "token created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            info,
            token: new.token,
        }),
    ))
}

/// List a tenant's API tokens
///
/// Admin token only (a tenant token gets 403). One page of tokens in creation order, each with its
/// public `prefix` but never its secret; pass `limit` (1–1000, default 100) and the previous
/// page's `next_cursor` as `cursor` for the next page.
#[utoipa::path(get, path = "/tenants/{tenant_id}/tokens", tag = "tenants", params(TenantPath, PageParams),
    responses((status = 200, description = "One page, oldest first, without secrets (admin token only)", body = Page<Token>)))]
async fn list(
    State(state): State<AppState>,
    Path(tenant_id): Path<Uuid>,
    Query(page): Query<PageParams>,
) -> Result<Json<Page<Token>>, ApiError> {
    let limit = page.limit()?;
    let rows = sqlx::query_as!(
        Token,
        r#"SELECT id, tenant_id, name, $4 || key_id AS "prefix!", created_at FROM api_tokens
           WHERE tenant_id = $1 AND ($2::uuid IS NULL OR id > $2) ORDER BY id LIMIT $3"#,
        tenant_id,
        page.after()?,
        limit + 1,
        TOKEN_PREFIX
    )
    .fetch_all(&state.pool)
    .await?;
    tenants::page(&state.pool, tenant_id, rows, limit).await
}

/// Revoke an API token
///
/// Admin token only (a tenant token gets 403). Deletes the token and answers 204; from then on
/// requests made with it get 401 (this replica forgets it before answering, the others as soon as
/// the database notifies them). An unknown token, or one of another tenant, is 404.
#[utoipa::path(delete, path = "/tenants/{tenant_id}/tokens/{id}", tag = "tenants", params(ItemPath),
    responses((status = 204, description = "Revoked: the next request with the token gets 401 (admin token only)")))]
async fn revoke(
    State(state): State<AppState>,
    Path((tenant_id, id)): Path<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    let deleted = sqlx::query_scalar!(
        "DELETE FROM api_tokens WHERE tenant_id = $1 AND id = $2 RETURNING key_id",
        tenant_id,
        id
    )
    .fetch_optional(&state.pool)
    .await?;
    // The other replicas hear of it from the database; this one forgets it before answering.
    if let Some(key_id) = &deleted {
        state.tokens.evict(key_id);
        tracing::info!(token_id = %id, %tenant_id, "token revoked");
    }
    deletion(u64::from(deleted.is_some()), "token")
}
