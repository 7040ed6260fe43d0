//! What gito-api announces on a [`DeviceEventsTopic`](crate::topic::DeviceEventsTopic) when a
//! device that another process may have cached changes for good. gito-bridge reads it to forget a
//! deleted device's path at once, so that the path's next message creates a new device instead of
//! being republished to an id that no longer exists.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DeviceEvent {
    /// The device is gone (an API DELETE, a `psql` DELETE, or its tenant's deletion).
    DeviceDeleted {
        tenant_id: Uuid,
        device_id: Uuid,
        external_id: Option<String>,
    },
}

impl DeviceEvent {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a device event serializes")
    }

    pub fn from_json(payload: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deletion_reads_back_as_written() {
        let event = DeviceEvent::DeviceDeleted {
            tenant_id: Uuid::nil(),
            device_id: Uuid::max(),
            external_id: Some("plant/boiler".into()),
        };
        let json = event.to_json();
        assert!(json.starts_with(r#"{"type":"device_deleted","#), "{json}");
        assert_eq!(
            DeviceEvent::from_json(json.as_bytes()).expect("parses"),
            event
        );
    }
}
