//! Alert rules and the alerts they open: the rule's shape and what its operator means, shared
//! by the API that stores rules, the processor that evaluates metric rules and the connectivity
//! sweeper that evaluates `offline` and `stale` rules. The alert itself is part
//! of the wire contract (WebSocket clients receive it), so it lives in gito-wire.

use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use super::fields::FieldError;

pub use gito_wire::Alert;

/// The comparisons a rule may make between a value and its threshold.
pub const OPERATORS: [&str; 6] = [">", ">=", "<", "<=", "==", "!="];

/// What a rule watches: `metric` (a value against a threshold, evaluated by the processor),
/// `offline` (a device offline for `after_secs`) or `stale` (no telemetry of the whole tenant for
/// `after_secs`), the last two evaluated by the connectivity sweeper.
pub const KINDS: [&str; 3] = ["metric", "offline", "stale"];

/// Longest `after_secs` of a rule and inactivity timeout of a device type: 30 days.
pub const MAX_AFTER_SECS: i32 = 30 * 24 * 3600;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AlertRule {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    /// `metric`, `offline` or `stale`.
    pub kind: String,
    /// Kind `metric` only (else `null`).
    pub metric: Option<String>,
    pub operator: Option<String>,
    pub threshold: Option<f64>,
    /// Kinds `offline` and `stale`: seconds the condition must last before an alert opens.
    pub after_secs: Option<i32>,
    pub device_id: Option<Uuid>,
    pub device_type_id: Option<Uuid>,
    pub device_type: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl AlertRule {
    /// Whether `value` meets the rule's condition.
    pub fn holds(&self, value: f64) -> bool {
        let Some(threshold) = self.threshold else {
            return false;
        };
        match self.operator.as_deref().unwrap_or_default() {
            ">" => value > threshold,
            ">=" => value >= threshold,
            "<" => value < threshold,
            "<=" => value <= threshold,
            "==" => value == threshold,
            "!=" => value != threshold,
            _ => false,
        }
    }
}

/// `op` if it is one of `OPERATORS`.
pub fn operator(op: &str) -> Result<&str, FieldError> {
    if OPERATORS.contains(&op) {
        Ok(op)
    } else {
        Err(FieldError::new(
            "operator",
            "must be one of > >= < <= == !=",
        ))
    }
}

/// `kind` if it is one of `KINDS`.
pub fn kind(kind: &str) -> Result<&str, FieldError> {
    if KINDS.contains(&kind) {
        Ok(kind)
    } else {
        Err(FieldError::new(
            "kind",
            "must be one of metric, offline, stale",
        ))
    }
}

/// A number of seconds between 1 and `MAX_AFTER_SECS`, for field `field`.
pub fn seconds(field: &'static str, secs: i64) -> Result<i32, FieldError> {
    match i32::try_from(secs) {
        Ok(s) if (1..=MAX_AFTER_SECS).contains(&s) => Ok(s),
        _ => Err(FieldError::new(
            field,
            "must be a whole number of seconds from 1 to 2592000 (30 days)",
        )),
    }
}
