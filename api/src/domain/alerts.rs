//! Alert rules and the alerts they open: the rule's shape and what its operator means, shared
//! by the API that stores rules and the processor that evaluates them. The alert itself is part
//! of the wire contract (WebSocket clients receive it), so it lives in gito-wire.

use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use super::fields::FieldError;

pub use gito_wire::Alert;

/// The comparisons a rule may make between a value and its threshold.
pub const OPERATORS: [&str; 6] = [">", ">=", "<", "<=", "==", "!="];

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AlertRule {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub metric: String,
    pub operator: String,
    pub threshold: f64,
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
        match self.operator.as_str() {
            ">" => value > self.threshold,
            ">=" => value >= self.threshold,
            "<" => value < self.threshold,
            "<=" => value <= self.threshold,
            "==" => value == self.threshold,
            "!=" => value != self.threshold,
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
