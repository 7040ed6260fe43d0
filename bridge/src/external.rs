//! The subscription on the external broker: QoS 1, persistent session, manual acks. One task owns
//! the rumqttc event loop and only polls it; messages go to the forwarder over a bounded channel.

use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use gito_runtime::mqtt::{self, Resubscribe, Status};
use rumqttc::{AsyncClient, MqttOptions, Publish};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::identity::Receipts;
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
/// `receipts` learns which acknowledgements went out.
pub fn start(
    mut options: MqttOptions,
    topics: Vec<String>,
    metrics: Arc<Metrics>,
    receipts: Arc<Mutex<Receipts>>,
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
        // Since when we were away, once we had been connected: a broker that then answers
        // without our session dropped what it had queued for us meanwhile (if anything).
        let mut away_since: Option<OffsetDateTime> = None;
        let mut ever_connected = false;
        let mut session_lost = false;
        let received = mqtt::receive(
            eventloop,
            subscriber,
            filters,
            Resubscribe::IfSessionLost,
            tx,
            intake,
            |status| {
                match status {
                    Status::Connected { session_present } => {
                        tracing::info!(
                            ?broker,
                            session_present,
                            "connected to the external broker"
                        );
                        // Reported once subscribed again: until then, what is published for us
                        // is lost too.
                        session_lost = ever_connected && !session_present;
                        if !session_lost {
                            away_since = None;
                        }
                        ever_connected = true;
                        // A broker that kept our session keeps our subscriptions too.
                        if session_present {
                            Metrics::set(&metrics.external_connected, true);
                        }
                    }
                    Status::Subscribed => {
                        tracing::info!(?topics, "subscribed on the external broker");
                        if std::mem::take(&mut session_lost) {
                            Metrics::add(&metrics.upstream_sessions_lost, 1);
                            let from = away_since.take().map(|t| t.to_string()).unwrap_or_default();
                            let to = OffsetDateTime::now_utc().to_string();
                            tracing::error!(
                                %from,
                                %to,
                                "the external broker lost our session: messages published for us between these times may be lost upstream (check its persistence and session expiry)"
                            );
                        }
                        Metrics::set(&metrics.external_connected, true);
                    }
                    Status::SubscriptionRefused => {
                        tracing::error!(?topics, "the external broker refused a subscription");
                    }
                    Status::Received => Metrics::add(&metrics.received, 1),
                    Status::AckSent(pkid) => receipts.lock().expect("receipts lock").ack_sent(pkid),
                    Status::Lost(e) => {
                        if ever_connected {
                            away_since.get_or_insert_with(OffsetDateTime::now_utc);
                        }
                        Metrics::set(&metrics.external_connected, false);
                        Metrics::add(&metrics.broker_errors, 1);
                        tracing::warn!(error = %e, "external broker connection lost; reconnecting");
                    }
                }
                ControlFlow::Continue(())
            },
        );
        // The observer never breaks: the loop only ends with the disconnect.
        let _ = received.await;
    });
    External {
        client,
        messages,
        connection,
    }
}
