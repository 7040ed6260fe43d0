//! Validation of the text and optional fields that request bodies carry.

use serde::{Deserialize, Deserializer};

use super::error::ApiError;

/// Names of tenants, hierarchy rows, device types and devices.
pub const MAX_NAME_CHARS: usize = 200;
/// External ids are MQTT device paths; topics can be long but not unbounded.
pub const MAX_EXTERNAL_ID_CHARS: usize = 1024;
pub const MAX_DESCRIPTION_CHARS: usize = 2000;

/// Checks that `value` is non-empty, at most `max` characters, free of control characters
/// (PostgreSQL cannot store NUL; the others are never intended in a name) and does not begin or
/// end with whitespace. Nothing is silently trimmed: what is stored is what was sent, and the
/// OpenAPI document states exactly these rules (see `openapi::TEXT_PATTERN`).
pub fn text(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    let trimmed = value;
    if trimmed.is_empty() {
        return Err(ApiError::unprocessable(
            "invalid_field",
            format!("{field} must not be empty"),
        ));
    }
    if trimmed.trim() != trimmed {
        return Err(ApiError::unprocessable(
            "invalid_field",
            format!("{field} must not begin or end with whitespace"),
        ));
    }
    if trimmed.chars().count() > max {
        return Err(ApiError::unprocessable(
            "invalid_field",
            format!("{field} must be at most {max} characters"),
        ));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(ApiError::unprocessable(
            "invalid_field",
            format!("{field} must not contain control characters"),
        ));
    }
    Ok(trimmed.to_owned())
}

pub fn optional_text(
    field: &str,
    value: Option<&str>,
    max: usize,
) -> Result<Option<String>, ApiError> {
    value.map(|v| text(field, v, max)).transpose()
}

/// For PATCH bodies: tells a missing field (`None`, keep) from an explicit `null`
/// (`Some(None)`, clear). Use with `#[serde(default, deserialize_with = "patch")]`.
pub fn patch<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}
