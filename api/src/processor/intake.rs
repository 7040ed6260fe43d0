//! The processor's MQTT connection: one task owns the event loop and only polls it, handing
//! messages to the batcher over a bounded channel. A refusal that no retry can fix (bad
//! credentials, a subscription the broker's ACL denies) ends the task with an error, so the
//! supervisor stops the process instead of leaving an API up that stores nothing.

use std::time::Duration;

use anyhow::anyhow;
use gito_runtime::Backoff;
use gito_wire::topic::PROCESSOR_SUBSCRIPTION;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, Outgoing, Packet, Publish,
    QoS, SubscribeReasonCode,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Polls until `stop`, or the disconnect went out. `intake` stops handing messages over (they
/// stay unacknowledged at the broker) while acks still flow.
pub async fn poll(
    mut eventloop: EventLoop,
    client: AsyncClient,
    tx: mpsc::Sender<Publish>,
    intake: CancellationToken,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut tx = Some(tx);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = intake.cancelled(), if tx.is_some() => {
                tx = None;
                continue;
            }
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff.reset();
                tracing::info!(
                    session_present = ack.session_present,
                    "processor connected to the broker"
                );
                if !ack.session_present
                    && let Err(e) = client.try_subscribe(PROCESSOR_SUBSCRIPTION, QoS::AtLeastOnce)
                {
                    tracing::error!(error = %e, "cannot subscribe");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    return Err(anyhow!(
                        "the broker refused the subscription to {PROCESSOR_SUBSCRIPTION} (check its ACL for the processor's user)"
                    ));
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if let Some(sender) = &tx {
                    let _ = sender.send(publish).await;
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return Ok(()),
            Ok(_) => {}
            Err(ConnectionError::ConnectionRefused(
                code @ (ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized),
            )) => {
                return Err(anyhow!(
                    "the broker refused the processor's credentials ({code:?}; check the user and password in GITO_MQTT_URL)"
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "processor lost the broker; reconnecting");
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
}
