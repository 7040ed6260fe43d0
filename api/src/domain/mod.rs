//! What the HTTP API and the processor share: the rules of fields, telemetry schemas, alert rules
//! and topic patterns. Both layers import from here and never from each other.

pub mod alerts;
pub mod fields;
pub mod telemetry_schema;
pub mod topic_pattern;
