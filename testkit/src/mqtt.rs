//! Publishing like a fleet of devices would: many messages, QoS 1, acknowledged by the broker.

use std::time::Duration;

use gito_runtime::mqtt::MqttUrl;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use uuid::Uuid;

/// Publishes `messages` at QoS 1 as fast as the broker takes them; returns once every one was
/// acknowledged by the broker.
pub async fn publish_all(broker_url: &str, messages: Vec<(String, Vec<u8>)>) {
    let url: MqttUrl = broker_url.parse().expect("broker URL");
    let mut options = url.options(&format!("test-publisher-{}", Uuid::new_v4().simple()));
    options.set_inflight(1000);
    let (client, mut eventloop) = AsyncClient::new(options, 10_000);
    let total = messages.len();
    let driver = tokio::spawn(async move {
        let mut acked = 0;
        while acked < total {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("publisher lost the broker: {e}"),
            }
        }
    });
    for (topic, payload) in messages {
        client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish");
    }
    tokio::time::timeout(Duration::from_secs(120), driver)
        .await
        .expect("every publish acknowledged in time")
        .expect("publisher task");
    let _ = client.disconnect().await;
}
