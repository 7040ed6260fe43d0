//! A QoS 1 subscriber for the benchmarks that counts (and timestamps) what arrives; publishing is
//! gito-testkit's `publish_all`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

fn options(port: u16, id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(
        format!("{id}-{}", uuid::Uuid::new_v4().simple()),
        "127.0.0.1",
        port,
    );
    options.set_max_packet_size(1 << 20, 1 << 20);
    options.set_inflight(1000);
    options.set_keep_alive(Duration::from_secs(30));
    options
}

/// Counts QoS 1 messages on a filter.
pub struct Counter {
    count: Arc<AtomicU64>,
    _task: tokio::task::JoinHandle<()>,
}

impl Counter {
    pub async fn subscribe(port: u16, filter: &str) -> anyhow::Result<Counter> {
        let (client, mut eventloop) = AsyncClient::new(options(port, "bench-sub"), 100);
        client.subscribe(filter, QoS::AtLeastOnce).await?;
        let count = Arc::new(AtomicU64::new(0));
        let counted = count.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(ready) = ready.take() {
                            let _ = ready.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(_))) => {
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx).await??;
        Ok(Counter { count, _task: task })
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Waits until `n` messages arrived, or `deadline` passes; returns the count.
    pub async fn wait_for(&self, n: u64, deadline: Duration) -> u64 {
        let until = Instant::now() + deadline;
        while self.count() < n && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.count()
    }
}
