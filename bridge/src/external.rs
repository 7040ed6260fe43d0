//! The subscription on the external broker: QoS 1, persistent session, manual acks. One task owns
//! the rumqttc event loop and only polls it; messages go to the forwarder over a bounded channel.

use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;

use gito_runtime::mqtt::{self, Status};
use rumqttc::{AsyncClient, MqttOptions, Publish};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

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
    let (client, eventloop) = AsyncClient::new(options.clone(), CHANNEL);
    let (tx, messages) = mpsc::channel(CHANNEL);
    let subscriber = client.clone();
    let connection = Box::pin(async move {
        let broker = options.broker_address();
        let filters = topics.clone();
        let received = mqtt::receive(eventloop, subscriber, filters, tx, intake, |status| {
            match status {
                Status::Connected { session_present } => {
                    tracing::info!(?broker, session_present, "connected to the external broker");
                    // A broker that kept our session keeps our subscriptions too.
                    if session_present {
                        Metrics::set(&metrics.external_connected, true);
                    }
                }
                Status::Subscribed => {
                    tracing::info!(?topics, "subscribed on the external broker");
                    Metrics::set(&metrics.external_connected, true);
                }
                Status::SubscriptionRefused => {
                    tracing::error!(?topics, "the external broker refused a subscription");
                }
                Status::Received => Metrics::add(&metrics.received, 1),
                Status::Lost(e) => {
                    Metrics::set(&metrics.external_connected, false);
                    Metrics::add(&metrics.broker_errors, 1);
                    tracing::warn!(error = %e, "external broker connection lost; reconnecting");
                }
            }
            ControlFlow::Continue(())
        });
        // The observer never breaks: the loop only ends with the disconnect.
        let _ = received.await;
    });
    External {
        client,
        messages,
        connection,
    }
}
