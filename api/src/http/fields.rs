//! Field rules as request bodies meet them: the domain's rules (a broken one is a 422
//! `invalid_field`, see `ApiError: From<FieldError>`) and PATCH's missing-versus-null.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

pub use crate::domain::fields::{
    MAX_DESCRIPTION_CHARS, MAX_EXTERNAL_ID_CHARS, MAX_NAME_CHARS, optional_text, text,
};

/// For PATCH bodies: tells a missing field (`None`, keep) from an explicit `null`
/// (`Some(None)`, clear). Use with `#[serde(default, deserialize_with = "patch")]`.
pub fn patch<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// For PATCH bodies' fields that cannot be cleared: missing is `None` (keep), and an explicit
/// `null` is refused rather than silently read as "keep". Use with
/// `#[serde(default, deserialize_with = "not_null")]`.
pub fn not_null<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    match Option::<T>::deserialize(deserializer)? {
        Some(value) => Ok(Some(value)),
        None => Err(D::Error::custom(
            "null is not allowed here: leave the field out to keep its value",
        )),
    }
}
