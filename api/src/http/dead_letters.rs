//! Dead letters: messages of the tenant that the processor received but could not store (not an
//! envelope, an unknown device, a row the database refused), kept as received. Operators read
//! them and, once the cause is fixed, replay them through the processor's storing path
//! (`processor::dead_letters::replay`, the one place where HTTP calls into the processor).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::header;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{Json, Path, Query, not_json};
use super::openapi::TenantPath;
use super::page::{self, Keyed, Page};
use super::{AppState, tenants};
use crate::processor::dead_letters::{self as processor, Reason};

/// Replayed per request at most (the default); more takes more requests.
const MAX_REPLAY: i64 = 10_000;
const DEFAULT_REPLAY: i64 = 1000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(replay))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetter {
    pub id: Uuid,
    pub tenant_id: Uuid,
    /// The MQTT topic it arrived on.
    pub topic: String,
    /// The payload as text when it is UTF-8 (envelopes are), else `null`.
    pub payload: Option<String>,
    /// The payload's exact bytes, hex-encoded.
    pub payload_hex: String,
    /// Why it could not be stored: `invalid_topic`, `invalid_envelope`, `no_metrics`,
    /// `invalid_metric`, `unknown_device`, `constraint`, `invalid_value` or `store_failed`.
    pub reason: String,
    /// The error as the processor saw it.
    pub error: String,
    /// How often it failed: received again, or replayed without success.
    pub failures: i32,
    #[serde(with = "time::serde::rfc3339")]
    pub first_failed_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_failed_at: OffsetDateTime,
}

impl Keyed for DeadLetter {
    fn key(&self) -> Uuid {
        self.id
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct DeadLetterFilter {
    /// Only dead letters of this reason.
    reason: Option<String>,
    /// Items per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// The reason `code` names; one that names none is a bad query, or a bad field `in_body`.
fn reason(code: Option<&str>, in_body: bool) -> Result<Option<Reason>, ApiError> {
    let Some(code) = code else { return Ok(None) };
    if let Some(reason) = Reason::parse(code) {
        return Ok(Some(reason));
    }
    let known: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    let message = format!("reason must be one of {}", known.join(", "));
    Err(if in_body {
        ApiError::unprocessable("invalid_field", message)
    } else {
        ApiError::bad_request("invalid_query", message)
    })
}

/// List dead letters
///
/// One page of the tenant's dead letters, oldest first: messages the processor received for this
/// tenant but could not store, each kept once with its topic, its payload (as text when it is
/// UTF-8, and as hex), the `reason` and the error. Filter by `reason` (an unknown one is 400);
/// pass `limit` (1–1000, default 100) and the previous page's `next_cursor` as `cursor` for the
/// next page.
#[utoipa::path(get, path = "/tenants/{tenant_id}/dead-letters", tag = "dead letters", params(TenantPath, DeadLetterFilter),
    responses((status = 200, description = "One page, oldest first", body = Page<DeadLetter>)))]
async fn list(
    State(state): State<AppState>,
    Path(tenant_id): Path<Uuid>,
    Query(filter): Query<DeadLetterFilter>,
) -> Result<Json<Page<DeadLetter>>, ApiError> {
    let reason = reason(filter.reason.as_deref(), false)?;
    let limit = page::limit(filter.limit)?;
    let rows = sqlx::query!(
        r#"SELECT id, tenant_id AS "tenant_id!", topic, payload, reason, error, failures,
                  first_failed_at, last_failed_at
           FROM dead_letters
           WHERE tenant_id = $1 AND ($2::text IS NULL OR reason = $2) AND ($3::uuid IS NULL OR id > $3)
           ORDER BY id LIMIT $4"#,
        tenant_id,
        reason.map(Reason::as_str),
        page::cursor(filter.cursor.as_deref())?,
        limit + 1
    )
    .fetch_all(&state.pool)
    .await?;
    let rows = rows
        .into_iter()
        .map(|r| DeadLetter {
            id: r.id,
            tenant_id: r.tenant_id,
            topic: r.topic,
            payload_hex: hex::encode(&r.payload),
            payload: String::from_utf8(r.payload).ok(),
            reason: r.reason,
            error: r.error,
            failures: r.failures,
            first_failed_at: r.first_failed_at,
            last_failed_at: r.last_failed_at,
        })
        .collect();
    tenants::page(&state.pool, tenant_id, rows, limit).await
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({ "reason": "unknown_device" }))]
struct ReplayFilter {
    /// Only dead letters of this reason (default: all).
    reason: Option<String>,
    /// Dead letters to replay at most, oldest first: 1 to 10000 (default 1000).
    #[schema(minimum = 1, maximum = 10000)]
    limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
struct Replayed {
    /// Dead letters tried: `stored + still_failing`.
    replayed: i64,
    /// Stored (exactly once) and no longer dead letters.
    stored: i64,
    /// Failed again; kept, with the reason of this attempt.
    still_failing: i64,
}

/// Replay dead letters
///
/// Runs the tenant's dead letters (those of `reason`, if given; at most `limit`, default 1000,
/// oldest first) through the processor's storing path again, e.g. after re-creating a device or
/// dropping a constraint. Each that stores is deleted in the same transaction as its rows are
/// written, so it is stored exactly once, also when two replays run at once; each that still
/// fails stays, with the new reason and one more failure. Alert rules are evaluated for what is
/// stored, but their changes are not pushed live. The body is optional (`{}`: every reason).
#[utoipa::path(post, path = "/tenants/{tenant_id}/dead-letters/replay", tag = "dead letters", params(TenantPath), request_body(content = Option<ReplayFilter>, description = "Optional: without a body, every reason", example = json!({ "reason": "unknown_device" })),
    responses((status = 200, description = "What the replay did", body = Replayed)))]
async fn replay(
    State(state): State<AppState>,
    Path(tenant_id): Path<Uuid>,
    request: Request,
) -> Result<Json<Replayed>, ApiError> {
    let filter = optional_body(request, &state).await?;
    let reason = reason(filter.reason.as_deref(), true)?;
    let limit = match filter.limit.unwrap_or(DEFAULT_REPLAY) {
        n @ 1..=MAX_REPLAY => n,
        _ => {
            return Err(ApiError::unprocessable(
                "invalid_field",
                format!("limit must be between 1 and {MAX_REPLAY}"),
            ));
        }
    };
    tenants::ensure_exists(&state.pool, tenant_id).await?;
    let done =
        processor::replay(&state.pool, tenant_id, reason, limit, state.retention_days).await?;
    Ok(Json(Replayed {
        replayed: done.replayed,
        stored: done.stored,
        still_failing: done.still_failing,
    }))
}

/// No body at all is the default filter; a body is read as every JSON body is.
async fn optional_body(request: Request, state: &AppState) -> Result<ReplayFilter, ApiError> {
    if request.headers().contains_key(header::CONTENT_TYPE) {
        return Ok(Json::<ReplayFilter>::from_request(request, state).await?.0);
    }
    let body = Bytes::from_request(request, state).await?;
    if body.is_empty() {
        Ok(ReplayFilter::default())
    } else {
        Err(not_json())
    }
}
