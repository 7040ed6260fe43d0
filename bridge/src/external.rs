//! The subscription on the external broker: QoS 1, persistent session, manual acks. One task owns
//! the rumqttc event loop and only polls it; messages go to the forwarder over a bounded channel.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, MqttOptions, Outgoing, Packet, Publish, QoS, SubscribeFilter,
    SubscribeReasonCode,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use gito_runtime::Backoff;

/// Larger than any broker's in-flight window towards us, so sending never blocks the loop.
const CHANNEL: usize = 4096;

pub struct External {
    pub client: AsyncClient,
    pub messages: mpsc::Receiver<Publish>,
    /// Polls the connection until the disconnect went out; dropping it drops the connection.
    pub connection: Pin<Box<dyn Future<Output = ()> + Send>>,
}

/// `intake` stops handing messages over (they stay unacked at the broker).
pub fn start(
    mut options: MqttOptions,
    topics: Vec<String>,
    metrics: Arc<Metrics>,
    intake: CancellationToken,
) -> External {
    options.set_clean_session(false);
    options.set_manual_acks(true);
    let (client, mut eventloop) = AsyncClient::new(options.clone(), CHANNEL);
    let (tx, messages) = mpsc::channel(CHANNEL);
    let subscriber = client.clone();
    let connection = Box::pin(async move {
        let mut tx = Some(tx);
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            let event = tokio::select! {
                () = intake.cancelled(), if tx.is_some() => {
                    tx = None;
                    continue;
                }
                event = eventloop.poll() => event,
            };

            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    backoff.reset();
                    tracing::info!(broker = ?options.broker_address(), session_present = ack.session_present, "connected to the external broker");
                    // A broker that kept our session keeps our subscriptions too.
                    if ack.session_present {
                        Metrics::set(&metrics.external_connected, true);
                    } else {
                        let filters = topics
                            .iter()
                            .map(|t| SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
                        if let Err(e) = subscriber.try_subscribe_many(filters) {
                            tracing::error!(?topics, error = %e, "cannot subscribe");
                        }
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, SubscribeReasonCode::Failure))
                    {
                        tracing::error!(?ack, "the external broker refused a subscription");
                    } else {
                        tracing::info!(?topics, "subscribed on the external broker");
                        Metrics::set(&metrics.external_connected, true);
                    }
                }

                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    Metrics::add(&metrics.received, 1);
                    if let Some(sender) = &tx {
                        // Only fails when the forwarder is gone (shutting down): the message
                        // stays unacked and is redelivered.
                        let _ = sender.send(publish).await;
                    }
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                Ok(other) => tracing::trace!(event = ?other, "external event"),
                Err(e) => {
                    Metrics::set(&metrics.external_connected, false);
                    Metrics::add(&metrics.broker_errors, 1);
                    tracing::warn!(error = %e, "external broker connection lost; reconnecting");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    });
    External {
        client,
        messages,
        connection,
    }
}
