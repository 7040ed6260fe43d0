//! Tenants: the unit of isolation. Every other route lives under `/tenants/{tenant_id}`.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use super::extract::{Json, Path, Query};
use super::fields::{self, MAX_NAME_CHARS};
use super::openapi::{Name, TenantPath};
use super::page::{Keyed, Page, PageParams};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(read, update))
}

/// The longest retention a tenant may have: a hundred years.
pub const MAX_RETENTION_DAYS: i64 = 36_500;

#[derive(Debug, Serialize, ToSchema)]
pub struct Tenant {
    pub id: Uuid,
    pub name: String,
    /// Days of telemetry kept; `null`: the deployment's default (GITO_TELEMETRY_RETENTION_DAYS),
    /// forever when that is unset.
    pub retention_days: Option<i32>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Keyed for Tenant {
    fn key(&self) -> Uuid {
        self.id
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({ "name": "Acme Heating" }))]
struct NewTenant {
    #[schema(value_type = Name)]
    name: String,
}

/// Create a tenant
///
/// Admin token only (a tenant token gets 403). Answers 201 with the new tenant; its `id` is the
/// `{tenant_id}` of every route under it. Names need not be unique: each call creates another
/// tenant.
#[utoipa::path(post, path = "/tenants", tag = "tenants", request_body = NewTenant,
    responses((status = 201, description = "Created (admin token only)", body = Tenant)))]
async fn create(
    State(state): State<AppState>,
    Json(body): Json<NewTenant>,
) -> Result<(StatusCode, Json<Tenant>), ApiError> {
    let name = fields::text("name", &body.name, MAX_NAME_CHARS)?;
    let tenant = sqlx::query_as!(
        Tenant,
        "INSERT INTO tenants (id, name) VALUES ($1, $2)
         RETURNING id, name, retention_days, created_at, updated_at",
        Uuid::now_v7(),
        name
    )
    .fetch_one(&state.pool)
    .await?;
    Ok((StatusCode::CREATED, Json(tenant)))
}

/// List tenants
///
/// Admin token only (a tenant token gets 403). One page of tenants in creation order: pass `limit`
/// (1–1000, default 100) and the previous page's `next_cursor` as `cursor` for the next page.
#[utoipa::path(get, path = "/tenants", tag = "tenants", params(PageParams),
    responses((status = 200, description = "One page, oldest first (admin token only)", body = Page<Tenant>)))]
async fn list(
    State(state): State<AppState>,
    Query(page): Query<PageParams>,
) -> Result<Json<Page<Tenant>>, ApiError> {
    let limit = page.limit()?;
    let rows = sqlx::query_as!(
        Tenant,
        "SELECT id, name, retention_days, created_at, updated_at FROM tenants
         WHERE ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2",
        page.after()?,
        limit + 1
    )
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(Page::from_rows(rows, limit)))
}

/// Read a tenant
///
/// The admin token may read any tenant; a tenant token only its own, and any other id is 404, as
/// if it did not exist.
#[utoipa::path(get, path = "/tenants/{tenant_id}", tag = "tenants", params(TenantPath),
    responses((status = 200, description = "The tenant", body = Tenant)))]
async fn read(
    State(state): State<AppState>,
    Path(tenant_id): Path<Uuid>,
) -> Result<Json<Tenant>, ApiError> {
    sqlx::query_as!(
        Tenant,
        "SELECT id, name, retention_days, created_at, updated_at FROM tenants WHERE id = $1",
        tenant_id
    )
    .fetch_optional(&state.pool)
    .await?
    .map(Json)
    .ok_or(ApiError::NotFound("tenant"))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({ "retention_days": 30 }))]
struct TenantPatch {
    /// 1–36500 days; `null` clears it (back to the deployment's default). Absent: unchanged.
    #[serde(default, deserialize_with = "fields::patch")]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 36500)]
    retention_days: Option<Option<i64>>,
}

/// Change a tenant
///
/// Admin token only (a tenant token gets 403). `retention_days` (1–36500, else 422; `null`: the
/// deployment's default, GITO_TELEMETRY_RETENTION_DAYS, forever when unset) is how many days of
/// telemetry the tenant keeps: the partition maintainer deletes older rows within minutes.
#[utoipa::path(patch, path = "/tenants/{tenant_id}", tag = "tenants", params(TenantPath), request_body = TenantPatch,
    responses((status = 200, description = "The changed tenant (admin token only)", body = Tenant)))]
async fn update(
    State(state): State<AppState>,
    Path(tenant_id): Path<Uuid>,
    Json(body): Json<TenantPatch>,
) -> Result<Json<Tenant>, ApiError> {
    let retention = match body.retention_days {
        Some(Some(days)) if !(1..=MAX_RETENTION_DAYS).contains(&days) => {
            return Err(ApiError::unprocessable(
                "invalid_retention_days",
                format!(
                    "retention_days must be from 1 to {MAX_RETENTION_DAYS} (or null), got {days}"
                ),
            ));
        }
        Some(days) => Some(days.and_then(|d| i32::try_from(d).ok())),
        None => None,
    };
    sqlx::query_as!(
        Tenant,
        "UPDATE tenants
         SET retention_days = CASE WHEN $2 THEN $3 ELSE retention_days END,
             updated_at = CASE WHEN $2 THEN now() ELSE updated_at END
         WHERE id = $1
         RETURNING id, name, retention_days, created_at, updated_at",
        tenant_id,
        retention.is_some(),
        retention.flatten()
    )
    .fetch_optional(&state.pool)
    .await?
    .map(Json)
    .ok_or(ApiError::NotFound("tenant"))
}

/// The answer of a list under a tenant. An empty list may also mean that the tenant does not
/// exist; only in that (rare) case do we spend a query telling the two apart.
pub async fn page<T: Keyed>(
    db: &PgPool,
    tenant_id: Uuid,
    rows: Vec<T>,
    limit: i64,
) -> Result<Json<Page<T>>, ApiError> {
    if rows.is_empty() {
        ensure_exists(db, tenant_id).await?;
    }
    Ok(Json(Page::from_rows(rows, limit)))
}

/// 404 unless the tenant exists.
pub async fn ensure_exists(db: &PgPool, tenant_id: Uuid) -> Result<(), ApiError> {
    let exists = sqlx::query_scalar!(
        "SELECT EXISTS (SELECT 1 FROM tenants WHERE id = $1) AS \"exists!\"",
        tenant_id
    )
    .fetch_one(db)
    .await?;
    if exists {
        Ok(())
    } else {
        Err(ApiError::NotFound("tenant"))
    }
}
