//! What the spool keeps of a message: enough to find or create its device and republish it.
//! Stored as JSON, so its fields (and the envelope's) are an on-disk format: add, never rename.

use gito_wire::Envelope;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::mapping::Mapped;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub external_id: String,
    pub name: String,
    pub device_type: Option<String>,
    /// Known when the message was spooled because the local broker was down.
    pub device_id: Option<Uuid>,
    pub envelope: Envelope,
}

impl Record {
    pub fn mapped(&self) -> Mapped {
        Mapped {
            external_id: self.external_id.clone(),
            name: self.name.clone(),
            device_type: self.device_type.clone(),
            metric: String::new(),
        }
    }
}
