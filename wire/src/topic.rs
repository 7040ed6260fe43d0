//! The topics of the local broker, as types: formatting and parsing live together, so the bridge,
//! the processor and the live fan-out cannot disagree about a level.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

use crate::envelope::Invalid;

/// Every tenant's telemetry (the live fan-out subscribes to it).
pub const TELEMETRY_FILTER: &str = "+/devices/+/telemetry";
/// The shared subscription every processor joins, so that processors split the stream.
pub const PROCESSOR_SUBSCRIPTION: &str = "$share/gito-processor/+/devices/+/telemetry";
/// Every tenant's alert events.
pub const ALERTS_FILTER: &str = "+/alerts";

/// `{tenant_id}/devices/{device_id}/telemetry`: where the bridge publishes a device's envelopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TelemetryTopic {
    pub tenant_id: Uuid,
    pub device_id: Uuid,
}

impl fmt::Display for TelemetryTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/devices/{}/telemetry", self.tenant_id, self.device_id)
    }
}

impl FromStr for TelemetryTopic {
    type Err = Invalid;

    fn from_str(topic: &str) -> Result<Self, Self::Err> {
        let mut levels = topic.split('/');
        match (
            levels.next(),
            levels.next(),
            levels.next(),
            levels.next(),
            levels.next(),
        ) {
            (Some(tenant), Some("devices"), Some(device), Some("telemetry"), None) => {
                Ok(TelemetryTopic {
                    tenant_id: Uuid::try_parse(tenant).map_err(|_| Invalid::Topic)?,
                    device_id: Uuid::try_parse(device).map_err(|_| Invalid::Topic)?,
                })
            }
            _ => Err(Invalid::Topic),
        }
    }
}

/// `{tenant_id}/alerts`: where the processor announces alerts it opened or resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AlertsTopic {
    pub tenant_id: Uuid,
}

impl fmt::Display for AlertsTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/alerts", self.tenant_id)
    }
}

impl FromStr for AlertsTopic {
    type Err = Invalid;

    fn from_str(topic: &str) -> Result<Self, Self::Err> {
        let tenant_id = tenant_before(topic, "/alerts")?;
        Ok(AlertsTopic { tenant_id })
    }
}

/// `{tenant_id}/device-events`: where gito-api announces changes of a tenant's devices that
/// other processes cache (today: deletions, so that the bridge forgets the path at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceEventsTopic {
    pub tenant_id: Uuid,
}

impl fmt::Display for DeviceEventsTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/device-events", self.tenant_id)
    }
}

impl FromStr for DeviceEventsTopic {
    type Err = Invalid;

    fn from_str(topic: &str) -> Result<Self, Self::Err> {
        let tenant_id = tenant_before(topic, "/device-events")?;
        Ok(DeviceEventsTopic { tenant_id })
    }
}

/// The tenant id of a `{tenant_id}{suffix}` topic.
fn tenant_before(topic: &str, suffix: &str) -> Result<Uuid, Invalid> {
    let tenant = topic.strip_suffix(suffix).ok_or(Invalid::Topic)?;
    Uuid::try_parse(tenant).map_err(|_| Invalid::Topic)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TENANT: &str = "0192f0c4-0000-7000-8000-000000000001";
    const DEVICE: &str = "0192f0c4-0000-7000-8000-000000000002";

    #[test]
    fn topics_format_and_parse_back() {
        let telemetry = format!("{TENANT}/devices/{DEVICE}/telemetry");
        let parsed: TelemetryTopic = telemetry.parse().expect("valid");
        assert_eq!(parsed.tenant_id.to_string(), TENANT);
        assert_eq!(parsed.to_string(), telemetry);
        let alerts: AlertsTopic = format!("{TENANT}/alerts").parse().expect("valid");
        assert_eq!(alerts.to_string(), format!("{TENANT}/alerts"));
        let events: DeviceEventsTopic = format!("{TENANT}/device-events").parse().expect("valid");
        assert_eq!(events.to_string(), format!("{TENANT}/device-events"));
    }

    #[test]
    fn other_topics_are_refused() {
        for topic in [
            "a/devices/b/telemetry".to_owned(),
            format!("{TENANT}/devices/{DEVICE}/other"),
            format!("{TENANT}/devices/{DEVICE}/telemetry/x"),
            format!("{TENANT}/things/{DEVICE}/telemetry"),
        ] {
            assert_eq!(
                topic.parse::<TelemetryTopic>(),
                Err(Invalid::Topic),
                "{topic}"
            );
        }
        assert_eq!("x/alerts".parse::<AlertsTopic>(), Err(Invalid::Topic));
        assert_eq!(
            format!("{TENANT}/alert").parse::<AlertsTopic>(),
            Err(Invalid::Topic)
        );
    }
}
