//! The processor's MQTT intake: gito-runtime's subscriber loop on the shared subscription, with
//! the processor's verdicts. A refusal that no retry can fix (bad credentials, a subscription the
//! broker's ACL denies) ends it with an error, so the supervisor stops the process instead of
//! leaving an API up that stores nothing; anything else is retried.

use std::ops::ControlFlow;

use anyhow::anyhow;
use gito_runtime::mqtt::{self, Resubscribe, Status};
use gito_wire::topic::PROCESSOR_SUBSCRIPTION;
use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, EventLoop, Publish};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::status::{BROKER, Health};

/// Receives until the disconnect went out; `intake` stops handing messages over.
pub async fn receive(
    eventloop: EventLoop,
    client: AsyncClient,
    tx: mpsc::Sender<Publish>,
    intake: CancellationToken,
    health: Health,
) -> anyhow::Result<()> {
    let filters = vec![PROCESSOR_SUBSCRIPTION.to_owned()];
    // Shared: renewed on every connection (a restarted Mosquitto restores the session without it).
    mqtt::receive(eventloop, client, filters, Resubscribe::Always, tx, intake, |status| {
        match status {
            Status::Connected { session_present } => {
                metrics::gauge!("gito_processor_broker_connected").set(1.0);
                health.up(BROKER);
                tracing::info!(session_present, "processor connected to the broker");
            }
            Status::SubscriptionRefused => {
                return ControlFlow::Break(anyhow!(
                    "the broker refused the subscription to {PROCESSOR_SUBSCRIPTION} (check its ACL for the processor's user)"
                ));
            }
            Status::Lost(ConnectionError::ConnectionRefused(
                code @ (ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized),
            )) => {
                return ControlFlow::Break(anyhow!(
                    "the broker refused the processor's credentials ({code:?}; check the user and password in GITO_MQTT_URL)"
                ));
            }
            Status::Lost(e) => {
                lost(&health, e);
                tracing::warn!(error = %e, "processor lost the broker; reconnecting");
            }
            Status::Subscribed | Status::Received | Status::AckSent(_) => {}
        }
        ControlFlow::Continue(())
    })
    .await
}

/// Records the loss: a reconnect counted once per lost connection (later failed attempts only
/// update the error).
fn lost(health: &Health, error: &ConnectionError) {
    let was_up = health
        .components()
        .iter()
        .any(|c| c.name == BROKER && c.state == crate::status::State::Up);
    if was_up {
        metrics::counter!("gito_processor_broker_reconnects_total").increment(1);
    }
    metrics::gauge!("gito_processor_broker_connected").set(0.0);
    health.down(BROKER, error);
}
