//! gito-wire: the contract between gito's processes, in one place so that a change on one side
//! breaks the other's build instead of its data. gito-bridge writes what gito-api's processor
//! reads (the [`Envelope`] on a [`TelemetryTopic`]); the processor writes what the live fan-out
//! reads and WebSocket clients receive ([`LiveEvent`] on an [`AlertsTopic`]); both apply the same
//! [`limits`] to names and ids. docs/ARCHITECTURE.md quotes the golden examples in `golden/`.

pub mod device_events;
pub mod envelope;
pub mod events;
pub mod limits;
pub mod topic;

pub use device_events::DeviceEvent;
pub use envelope::{Envelope, Invalid, MetricValue};
pub use events::{
    Alert, AlertChange, AlertEvent, Connectivity, ConnectivityEvent, LiveEvent, TelemetryEvent,
};
pub use limits::TextError;
pub use topic::{AlertsTopic, DeviceEventsTopic, TelemetryTopic};
