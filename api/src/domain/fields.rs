//! The rules of the text fields gito stores (names, external ids, descriptions), applied by the
//! API, the command line and, through gito-wire's limits, the bridge; and the OpenAPI schemas
//! that state exactly these rules.

use gito_wire::limits::check_text;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

pub use gito_wire::limits::{MAX_DESCRIPTION_CHARS, MAX_EXTERNAL_ID_CHARS, MAX_NAME_CHARS};

/// A field that breaks a rule: "`field` `problem`", e.g. "name must not be empty".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {problem}")]
pub struct FieldError {
    pub field: String,
    pub problem: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// `value` if it obeys gito-wire's text rules for at most `max` characters. Nothing is
/// silently trimmed: what is stored is what was sent.
pub fn text(field: &str, value: &str, max: usize) -> Result<String, FieldError> {
    check_text(value, max)
        .map(|()| value.to_owned())
        .map_err(|e| FieldError::new(field, e.to_string()))
}

pub fn optional_text(
    field: &str,
    value: Option<&str>,
    max: usize,
) -> Result<Option<String>, FieldError> {
    value.map(|v| text(field, v, max)).transpose()
}

/// Text fields as `text` accepts them: no control characters, no whitespace at either end.
pub const TEXT_PATTERN: &str =
    r"^[^\s\x00-\x1f\x7f-\x9f](?:[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f])?$";

/// Documentation-only types for text fields (`#[schema(value_type = Name)]` on a `String`): the
/// handlers validate with `text` and the same limits.
macro_rules! text_schemas {
    ($($name:ident = $max:expr, $doc:literal;)*) => {$(
        #[doc = $doc]
        pub struct $name;

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1))
                    .max_length(Some($max))
                    .pattern(Some(TEXT_PATTERN))
                    .description(Some($doc))
                    .into()
            }
        }

        impl ToSchema for $name {}
    )*};
}

text_schemas! {
    Name = MAX_NAME_CHARS, "A name: 1 to 200 characters, no control characters, no whitespace at either end.";
    ExternalId = MAX_EXTERNAL_ID_CHARS, "The device's path on the external broker (the bridge's key): 1 to 1024 characters, no control characters, no whitespace at either end.";
    Description = MAX_DESCRIPTION_CHARS, "Free text: 1 to 2000 characters, no control characters, no whitespace at either end.";
}
