//! Axum's extractors with our error shape: a bad body, path or query string is answered like
//! every other error instead of with axum's plain-text default.
//!
//! `Json` also refuses, before deserializing, what serde would otherwise accept or choke on:
//! bodies nested deeper than `MAX_JSON_DEPTH` (serde_json would recurse up to 128 levels) and
//! bodies that are not a JSON object (serde reads a struct from an array too: `[null, null]`
//! would be a PATCH that changes nothing).

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::{DeserializeOwned, IgnoredAny};

use super::error::ApiError;

/// Objects and arrays nested deeper than this are refused. Our deepest body is a device type's
/// `telemetry_schema` (3 levels).
pub const MAX_JSON_DEPTH: usize = 32;

pub struct Json<T>(pub T);

/// The answer to a body sent without `Content-Type: application/json`.
pub fn not_json() -> ApiError {
    ApiError::Rejected {
        status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
        code: "unsupported_media_type",
        message: "expected a body with `Content-Type: application/json`".into(),
    }
}

/// A body that could not be read: too large, or cut off.
impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        ApiError::Rejected {
            status: rejection.status(),
            code: if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                "payload_too_large"
            } else {
                "invalid_body"
            },
            message: rejection.body_text(),
        }
    }
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(request.headers()) {
            return Err(not_json());
        }
        let bytes = Bytes::from_request(request, state).await?;
        check_shape(&bytes)?;
        axum::Json::<T>::from_bytes(&bytes)
            .map(|axum::Json(value)| Json(value))
            .map_err(ApiError::from)
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(essence) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
    else {
        return false;
    };
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Depth and top-level type, in one pass over the bytes, without building anything.
fn check_shape(bytes: &[u8]) -> Result<(), ApiError> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(ApiError::bad_request(
                        "json_too_deep",
                        format!("JSON nested deeper than {MAX_JSON_DEPTH} levels"),
                    ));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        // Not even JSON is 400, like any syntax error; JSON of another type is 422.
        serde_json::from_slice::<IgnoredAny>(bytes).map_err(|e| {
            ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}"))
        })?;
        return Err(ApiError::unprocessable(
            "invalid_body",
            "the body must be a JSON object",
        ));
    }
    Ok(())
}

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let (status, code) = match &rejection {
            JsonRejection::JsonSyntaxError(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            JsonRejection::JsonDataError(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
            _ => (rejection.status(), "invalid_body"),
        };
        ApiError::Rejected {
            status,
            code,
            message: rejection.body_text(),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::bad_request("invalid_path", rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::bad_request("invalid_query", rejection.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(body: &str) -> Option<(StatusCode, &'static str)> {
        check_shape(body.as_bytes()).err().map(|e| {
            let status = e.status_code();
            let code = match e {
                ApiError::BadRequest { code, .. } | ApiError::Unprocessable { code, .. } => code,
                _ => "other",
            };
            (status, code)
        })
    }

    #[test]
    fn objects_within_the_depth_limit_pass() {
        assert_eq!(refused(r#" {"a": {"b": [1, {"c": "[[[[{{{{"}]}} "#), None);
        let deep = "[".repeat(MAX_JSON_DEPTH - 1) + &"]".repeat(MAX_JSON_DEPTH - 1);
        assert_eq!(refused(&format!(r#"{{"a": {deep}}}"#)), None);
    }

    #[test]
    fn deep_nesting_and_non_objects_are_refused() {
        let deep = "[".repeat(MAX_JSON_DEPTH) + &"]".repeat(MAX_JSON_DEPTH);
        assert_eq!(
            refused(&format!(r#"{{"a": {deep}}}"#)),
            Some((StatusCode::BAD_REQUEST, "json_too_deep"))
        );
        assert_eq!(
            refused("[null, null]"),
            Some((StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"))
        );
        assert_eq!(
            refused("\"x\""),
            Some((StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"))
        );
        assert_eq!(
            refused("nul"),
            Some((StatusCode::BAD_REQUEST, "invalid_json"))
        );
        assert_eq!(refused(""), Some((StatusCode::BAD_REQUEST, "invalid_json")));
        // Escaped quotes do not end a string.
        assert_eq!(refused(r#"{"a": "\"[[[[", "b": 1}"#), None);
    }
}
