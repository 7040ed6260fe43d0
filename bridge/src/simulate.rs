//! `gito-bridge simulate`: plant telemetry for demos, tests and benchmarks. Topics shaped like
//! `SDE11/JAX/UTILITIES/BOILER/OPT_G/CHIMNEY_TEMP` over several sites and systems; values drift
//! slowly around a base and spike now and then (enough to trip alert rules); every fifth device
//! sends JSON objects instead of bare numbers.

use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Packet, QoS};
use tokio_util::sync::CancellationToken;

use gito_runtime::mqtt::MqttUrl;

const SITES: [&str; 3] = ["SDE11", "SDE12", "NRT03"];
const PLANTS: [&str; 3] = ["JAX", "ORL", "TPA"];
const AREAS: [&str; 3] = ["UTILITIES", "PROCESS", "PACKAGING"];
/// System → its metrics with their typical value.
const SYSTEMS: [(&str, [(&str, f64); 2]); 4] = [
    ("BOILER", [("CHIMNEY_TEMP", 180.0), ("STEAM_PRESSURE", 9.5)]),
    ("CHILLER", [("SUPPLY_TEMP", 6.5), ("RETURN_TEMP", 12.0)]),
    (
        "COMPRESSOR",
        [("DISCHARGE_PRESSURE", 7.2), ("MOTOR_AMPS", 42.0)],
    ),
    ("PUMP", [("FLOW", 120.0), ("VIBRATION", 2.1)]),
];

pub struct Device {
    pub path: String,
    metrics: [(&'static str, f64); 2],
    drift: [f64; 2],
    json: bool,
}

/// `n` devices spread over sites, plants, areas and systems; the same `n` gives the same list.
pub fn devices(n: usize) -> Vec<Device> {
    (0..n)
        .map(|i| {
            let (system, metrics) = SYSTEMS[i % SYSTEMS.len()];
            let path = format!(
                "{}/{}/{}/{system}/OPT_{}",
                SITES[i % SITES.len()],
                PLANTS[(i / SITES.len()) % PLANTS.len()],
                AREAS[(i / 9) % AREAS.len()],
                i
            );
            Device {
                path,
                metrics,
                drift: [0.0; 2],
                json: i % 5 == 4,
            }
        })
        .collect()
}

impl Device {
    /// The next reading: a topic and payload per message (one for JSON devices, one per metric
    /// otherwise).
    pub fn next(&mut self, rng: &mut fastrand::Rng) -> Vec<(String, Vec<u8>)> {
        let mut values = [0.0; 2];
        for (k, (_, base)) in self.metrics.iter().enumerate() {
            self.drift[k] = (self.drift[k] + rng.f64() * 0.02 - 0.01).clamp(-0.1, 0.1);
            let spike = if rng.f64() < 0.01 { 1.5 } else { 1.0 };
            values[k] = ((base * (1.0 + self.drift[k]) * spike) * 100.0).round() / 100.0;
        }
        if self.json {
            let fields: serde_json::Map<String, serde_json::Value> = self
                .metrics
                .iter()
                .zip(values)
                .map(|((name, _), v)| (name.to_lowercase(), v.into()))
                .collect();
            let payload = serde_json::Value::Object(fields).to_string().into_bytes();
            vec![(format!("{}/READING", self.path), payload)]
        } else {
            self.metrics
                .iter()
                .zip(values)
                .map(|((name, _), v)| (format!("{}/{name}", self.path), v.to_string().into_bytes()))
                .collect()
        }
    }
}

/// Publishes about `rate` messages per second until `duration` passed or `stop` fired; returns
/// how many the broker acknowledged.
pub async fn run(
    broker: &MqttUrl,
    devices_n: usize,
    rate: u64,
    duration: Option<Duration>,
    stop: CancellationToken,
) -> anyhow::Result<u64> {
    let mut options = broker.options(&format!("gito-simulator-{}", uuid::Uuid::new_v4().simple()));
    options.set_inflight(1000);
    let (client, mut eventloop) = AsyncClient::new(options, 10_000);
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = acked.clone();
    let driver = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "simulator lost the broker; reconnecting");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    });
    let mut devices = devices(devices_n.max(1));
    let mut rng = fastrand::Rng::with_seed(7);
    let started = Instant::now();
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut next_device = 0;
    'run: loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        if duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        // Catch up to where the rate says we should be.
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            for (topic, payload) in devices[next_device].next(&mut rng) {
                client
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await?;
                sent += 1;
                if stop.is_cancelled() {
                    break 'run;
                }
            }
            next_device = (next_device + 1) % devices.len();
        }
    }
    // Give the broker a moment to acknowledge what is in flight.
    let settle = Instant::now();
    while acked.load(std::sync::atomic::Ordering::Relaxed) < sent
        && settle.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = client.disconnect().await;
    driver.abort();
    Ok(acked.load(std::sync::atomic::Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::Mapping;
    use crate::payload;

    #[test]
    fn simulated_topics_map_to_plant_devices_and_payloads_parse() {
        let mut rng = fastrand::Rng::with_seed(1);
        let mapping = Mapping::default();
        for mut device in devices(20) {
            for (topic, body) in device.next(&mut rng) {
                let (mapped, _) = mapping.map(&topic).expect("maps");
                assert_eq!(mapped.external_id, device.path);
                assert!(SITES.contains(&mapped.device_type.as_deref().unwrap_or_default()));
                let reading = payload::parse(&body, &mapped.metric, 1024).expect("parses");
                assert!(!reading.metrics.is_empty());
            }
        }
    }
}
