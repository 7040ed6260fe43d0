//! A device type's telemetry schema: the metrics its devices report and what is expected of
//! them. Operators write it through the API; the processor flags values it does not expect.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::fields::{self, FieldError, MAX_NAME_CHARS, Name};

/// Metric name → what is expected of it, e.g. `{"CHIMNEY_TEMP": {"unit": "°C", "max": 600}}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(transparent)]
pub struct TelemetrySchema(pub BTreeMap<String, MetricSpec>);

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Name>)]
    pub unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

impl TelemetrySchema {
    pub fn validate(&self) -> Result<(), FieldError> {
        for (metric, spec) in &self.0 {
            fields::text("telemetry_schema metric name", metric, MAX_NAME_CHARS)?;
            fields::optional_text(
                "telemetry_schema unit",
                spec.unit.as_deref(),
                MAX_NAME_CHARS,
            )?;
            if let (Some(min), Some(max)) = (spec.min, spec.max)
                && min > max
            {
                return Err(FieldError::new(
                    format!("telemetry_schema.{metric}:"),
                    "min must not exceed max",
                ));
            }
        }
        Ok(())
    }

    /// A value the schema does not expect: an unlisted metric, or one outside min/max.
    pub fn is_unexpected(&self, metric: &str, value: Option<f64>) -> bool {
        match self.0.get(metric) {
            None => true,
            Some(spec) => value.is_some_and(|v| {
                spec.min.is_some_and(|min| v < min) || spec.max.is_some_and(|max| v > max)
            }),
        }
    }
}
