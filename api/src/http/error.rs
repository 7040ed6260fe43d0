//! The one error type of the HTTP API and its JSON shape `{"error": {"code", "message"}}`.
//! Client mistakes get a precise 4xx; anything else is logged with its cause and answered with a
//! generic 500 that leaks nothing.

use axum::Json;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sqlx::postgres::PgDatabaseError;

use crate::db_error::{self, DbError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request itself is unreadable: malformed JSON, a bad id in the path, a bad query.
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// No token, or one that is not (or no longer) valid. Answered with `WWW-Authenticate`.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// A valid token that may not do this (a tenant token on an admin-only route).
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    /// Well-formed but not acceptable: a field out of range, an id of another tenant.
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    /// A framework-level refusal (body too large, wrong content type, ...) with its own status.
    #[error("{message}")]
    Rejected {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
    #[error("service unavailable: {0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<crate::domain::fields::FieldError> for ApiError {
    fn from(e: crate::domain::fields::FieldError) -> Self {
        ApiError::unprocessable("invalid_field", e.to_string())
    }
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Unprocessable {
            code,
            message: message.into(),
        }
    }

    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Rejected { status, .. } => *status,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. }
            | ApiError::Unprocessable { code, .. }
            | ApiError::Rejected { code, .. } => code,
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(cause) = &self {
            tracing::error!(error = %error_chain(cause.as_ref()), "request failed");
        }
        let body = json!({ "error": { "code": self.code(), "message": self.to_string() } });
        let mut response = (self.status_code(), Json(body)).into_response();
        match self {
            ApiError::Unauthorized(_) => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // Worth a retry, and soon: what makes a 503 here passes in a moment or is retried
            // by the client's own backoff anyway.
            ApiError::Unavailable(_) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Database errors caused by the request's content map to 4xx by constraint name or SQLSTATE
/// class, never by message text; a failure of the database or of the way to it
/// (`db_error::is_transient`: a pooled connection that died, a server restarting, the pool
/// exhausted) to 503, which a client may retry. Everything else is internal.
impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        if db_error::is_transient(&error) {
            tracing::warn!(error = %DbError(error), "request failed on the database; answering 503");
            return ApiError::Unavailable("the database is unavailable for a moment; retry".into());
        }
        let Some(db) = error.as_database_error() else {
            return ApiError::Internal(error.into());
        };
        if let Some(found) = db.constraint().and_then(constraint_error) {
            return found;
        }
        let sqlstate = db
            .try_downcast_ref::<PgDatabaseError>()
            .map(|e| e.code().to_owned());
        match sqlstate.as_deref() {
            // Class 22, data exception: a value PostgreSQL cannot store (e.g. a NUL character).
            Some(code) if code.starts_with("22") => {
                ApiError::unprocessable("invalid_value", "a value in the request cannot be stored")
            }
            _ => ApiError::Internal(error.into()),
        }
    }
}

fn constraint_error(constraint: &str) -> Option<ApiError> {
    let foreign = |field: &str, what: &str| {
        ApiError::unprocessable(
            "invalid_reference",
            format!("{field} does not name {what} of this tenant"),
        )
    };
    Some(match constraint {
        c if c.ends_with("_tenant_id_fkey") => ApiError::NotFound("tenant"),
        "devices_organization_fk" | "sites_organization_fk" => {
            foreign("organization_id", "an organization")
        }
        "devices_site_fk" | "device_groups_site_fk" => foreign("site_id", "a site"),
        "devices_device_group_fk" => foreign("device_group_id", "a device group"),
        "classification_rules_organization_fk" => foreign("organization_id", "an organization"),
        "classification_rules_site_fk" => foreign("site_id", "a site"),
        "classification_rules_device_group_fk" => foreign("device_group_id", "a device group"),
        "classification_rules_target_check" => ApiError::unprocessable(
            "invalid_field",
            "give at least one of device_type_id, organization_id, site_id, device_group_id",
        ),
        "devices_device_type_fk"
        | "alert_rules_device_type_fk"
        | "classification_rules_device_type_fk" => foreign("device_type_id", "a device type"),
        "alert_rules_device_fk" => foreign("device_id", "a device"),
        "alert_rules_operator_check" => {
            ApiError::unprocessable("invalid_field", "operator must be one of > >= < <= == !=")
        }
        "alert_rules_one_scope_check" => ApiError::unprocessable(
            "invalid_field",
            "give at most one of device_id, device_type_id, device_type",
        ),
        "device_types_tenant_id_name_key" => {
            ApiError::Conflict("a device type with this name already exists in the tenant".into())
        }
        "devices_tenant_id_external_id_key" => {
            ApiError::Conflict("a device with this external_id already exists in the tenant".into())
        }
        "devices_status_check" => ApiError::unprocessable(
            "invalid_status",
            "status must be one of active, inactive, maintenance",
        ),
        _ => return None,
    })
}

/// What a DELETE answers: 204, or 404 when nothing (of this tenant) was there.
pub fn deletion(rows: u64, what: &'static str) -> Result<StatusCode, ApiError> {
    if rows == 0 {
        Err(ApiError::NotFound(what))
    } else {
        Ok(StatusCode::NO_CONTENT)
    }
}

/// For DELETE: a foreign key violation means other rows still point at this one.
pub fn in_use(what: &'static str) -> impl FnOnce(sqlx::Error) -> ApiError {
    move |error| {
        let is_fk = error
            .as_database_error()
            .is_some_and(|db| db.kind() == sqlx::error::ErrorKind::ForeignKeyViolation);
        if is_fk {
            ApiError::Conflict(format!(
                "{what} is still in use; reassign or delete what uses it first"
            ))
        } else {
            ApiError::from(error)
        }
    }
}

/// Gives responses produced outside our handlers (404 for unknown routes, 405, 408, 413, 415,
/// timeouts, panics) the same JSON error shape as ours.
pub async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let reason = status.canonical_reason().unwrap_or("error");
    let code = reason.to_ascii_lowercase().replace([' ', '-'], "_");
    let mut replaced = (
        status,
        Json(json!({ "error": { "code": code, "message": reason } })),
    )
        .into_response();
    if let Some(allow) = response.headers().get(header::ALLOW) {
        replaced.headers_mut().insert(header::ALLOW, allow.clone());
    }
    replaced
}
