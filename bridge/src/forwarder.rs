//! The ordered path from the external broker to the local one.
//!
//! Direct mode: each message is mapped, its device found (cache or API), republished, and acked
//! to the external broker once the local broker acknowledged it. When that cannot proceed (the
//! API is down for a new device, the local broker is down), everything not yet acknowledged is
//! written to the spool in arrival order and acked, and every later message is appended behind
//! it: the external broker keeps delivering, order per device is kept, and nothing acked is only
//! in memory. The drainer republishes the spool, oldest first, and returns to direct mode when
//! the spool is empty.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gito_runtime::mqtt::Ack;
use gito_wire::{Envelope, TelemetryTopic};
use rumqttc::Publish;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::api::{DeviceResolver, ResolveError};
use crate::local::{Delivery, LocalPublisher};
use crate::mapping::{Mapping, Unmapped};
use crate::metrics::{DropReason, Metrics};
use crate::payload::{self, Rejected};
use crate::spool::{Record, SpoolHandle};

/// How long the local broker may be unreachable before waiting messages go to the spool.
const SPILL_AFTER: Duration = Duration::from_secs(1);
/// A message unacknowledged this long goes to the spool whatever the connection says.
const STUCK_AFTER: Duration = Duration::from_secs(10);
/// Messages appended to the spool with one fsync.
const SPOOL_BATCH: usize = 1000;

/// What the forwarder needs; shared with the drainer.
pub struct Context {
    pub tenant_id: Uuid,
    pub mapping: Mapping,
    pub max_payload_bytes: usize,
    pub resolver: DeviceResolver,
    pub publisher: LocalPublisher,
    pub spool: Arc<SpoolHandle>,
    /// To the acker task, in the order messages were received.
    pub acks: mpsc::UnboundedSender<Ack>,

    pub metrics: Arc<Metrics>,
}

/// A message republished and not yet acknowledged by the local broker.
struct Inflight {
    record: Record,
    ack: Ack,
    sent_at: Instant,
    delivery: Delivery,
}

impl Context {
    fn ack(&self, ack: Ack) {
        // Fails only once the acker is gone (shutdown); the broker then redelivers.
        let _ = self.acks.send(ack);
    }

    /// Maps and parses a message; `None` when it is skipped (counted and logged).
    fn prepare(&self, publish: &Publish) -> Option<Record> {
        let topic = publish.topic.as_str();
        let (mapped, _) = match self.mapping.map(topic) {
            Ok(found) => found,
            Err(unmapped) => {
                let reason = match unmapped {
                    Unmapped::NoRule => DropReason::NoRule,
                    Unmapped::InvalidTopic => DropReason::InvalidTopic,
                };
                self.skip(reason, topic);
                return None;
            }
        };
        let reading = match payload::parse(&publish.payload, &mapped.metric, self.max_payload_bytes)
        {
            Ok(reading) => reading,
            Err(rejected) => {
                self.skip(drop_reason(rejected), topic);
                return None;
            }
        };
        Some(Record {
            envelope: Envelope {
                ts: reading.ts.unwrap_or_else(OffsetDateTime::now_utc),
                source_topic: topic.to_owned(),
                metrics: reading.metrics,
            },
            external_id: mapped.external_id,
            name: mapped.name,
            device_type: mapped.device_type,
            device_id: None,
        })
    }

    fn skip(&self, reason: DropReason, topic: &str) {
        self.metrics.dropped(reason, 1);
        tracing::warn!(reason = reason.as_str(), topic, "message skipped");
    }

    pub(crate) async fn republish(&self, device_id: Uuid, record: &Record) -> Delivery {
        let topic = TelemetryTopic {
            tenant_id: self.tenant_id,
            device_id,
        };
        self.publisher
            .publish(topic.to_string(), Bytes::from(record.envelope.to_json()))
            .await
    }
}

fn drop_reason(rejected: Rejected) -> DropReason {
    match rejected {
        Rejected::TooLarge => DropReason::TooLarge,
        Rejected::InvalidUtf8 => DropReason::InvalidUtf8,
        Rejected::NonFinite => DropReason::NonFinite,
        Rejected::InvalidTimestamp => DropReason::InvalidTimestamp,
        Rejected::NoMetrics => DropReason::NoMetrics,
    }
}

/// Runs until `incoming` closes, then waits (up to `drain_deadline`) for what is in flight.
pub async fn forward(
    ctx: Arc<Context>,
    mut incoming: mpsc::Receiver<Publish>,
    drain_deadline: Duration,
) {
    let mut inflight: VecDeque<Inflight> = VecDeque::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            delivered = head(&mut inflight), if !inflight.is_empty() => {
                let done = inflight.pop_front().expect("head exists");
                if delivered.is_ok() {
                    ctx.ack(done.ack);
                }
            }
            message = incoming.recv() => match message {
                Some(publish) => handle(&ctx, publish, &mut incoming, &mut inflight).await,
                None => break,
            },
            _ = tick.tick() => {
                if stuck(&ctx, &inflight) {
                    spill(&ctx, &mut inflight, Vec::new(), "local broker unavailable").await;
                }
            }
        }
    }
    let deadline = tokio::time::sleep(drain_deadline);
    tokio::pin!(deadline);
    while !inflight.is_empty() {
        tokio::select! {
            delivered = head(&mut inflight) => {
                let done = inflight.pop_front().expect("head exists");
                if delivered.is_ok() {
                    ctx.ack(done.ack);
                }
            }
            () = &mut deadline => {
                tracing::warn!(unacked = inflight.len(), "shutdown: leaving unacknowledged messages to the external broker's redelivery");
                break;
            }
        }
    }
}

async fn head(
    inflight: &mut VecDeque<Inflight>,
) -> Result<(), tokio::sync::oneshot::error::RecvError> {
    (&mut inflight.front_mut().expect("guarded by !is_empty").delivery).await
}

fn stuck(ctx: &Context, inflight: &VecDeque<Inflight>) -> bool {
    inflight.front().is_some_and(|head| {
        let waited = head.sent_at.elapsed();
        (waited >= SPILL_AFTER && ctx.publisher.down_for() >= SPILL_AFTER) || waited >= STUCK_AFTER
    })
}

async fn handle(
    ctx: &Arc<Context>,
    publish: Publish,
    incoming: &mut mpsc::Receiver<Publish>,
    inflight: &mut VecDeque<Inflight>,
) {
    let ack = Ack::of(&publish);
    let Some(mut record) = ctx.prepare(&publish) else {
        ctx.ack(ack);
        return;
    };
    if ctx.spool.is_active() {
        // Behind the spool: append this one and whatever else is already waiting, with one fsync.
        let mut batch = vec![(record, ack)];
        while batch.len() < SPOOL_BATCH {
            let Ok(next) = incoming.try_recv() else { break };
            let next_ack = Ack::of(&next);
            match ctx.prepare(&next) {
                Some(r) => batch.push((r, next_ack)),
                None => ctx.ack(next_ack),
            }
        }
        spool_and_ack(ctx, batch).await;
        return;
    }
    let device_id = match ctx.resolver.resolve(&record.mapped(), &ctx.metrics).await {
        Ok(id) => id,
        Err(ResolveError::Rejected { status, body }) => {
            ctx.metrics.dropped(DropReason::ApiRejected, 1);
            tracing::error!(%status, body, external_id = record.external_id, "the API refused the device; message dropped");
            ctx.ack(ack);
            return;
        }
        Err(ResolveError::Unavailable(why)) => {
            let reason = format!("gito-api unavailable: {why}");
            spill(ctx, inflight, vec![(record, ack)], &reason).await;
            return;
        }
    };
    record.device_id = Some(device_id);
    if ctx.publisher.down_for() >= SPILL_AFTER {
        spill(
            ctx,
            inflight,
            vec![(record, ack)],
            "local broker unavailable",
        )
        .await;
        return;
    }
    match tokio::time::timeout(SPILL_AFTER, ctx.republish(device_id, &record)).await {
        Ok(delivery) => inflight.push_back(Inflight {
            record,
            ack,
            sent_at: Instant::now(),
            delivery,
        }),
        Err(_) => {
            spill(
                ctx,
                inflight,
                vec![(record, ack)],
                "local broker not keeping up",
            )
            .await
        }
    }
}

/// Moves everything unacknowledged, then `more`, into the spool and acks it all.
async fn spill(
    ctx: &Arc<Context>,
    inflight: &mut VecDeque<Inflight>,
    more: Vec<(Record, Ack)>,
    reason: &str,
) {
    // Acknowledged meanwhile: done, not spooled again.
    while let Some(head) = inflight.front_mut() {
        match head.delivery.try_recv() {
            Ok(()) => ctx.ack(inflight.pop_front().expect("head exists").ack),
            Err(_) => break,
        }
    }
    ctx.publisher.cancel_all();
    let mut batch: Vec<(Record, Ack)> = inflight.drain(..).map(|i| (i.record, i.ack)).collect();
    batch.extend(more);
    tracing::warn!(
        reason,
        messages = batch.len(),
        "spooling to disk until it recovers"
    );
    spool_and_ack(ctx, batch).await;
}

async fn spool_and_ack(ctx: &Arc<Context>, batch: Vec<(Record, Ack)>) {
    let (records, acks): (Vec<Record>, Vec<Ack>) = batch.into_iter().unzip();
    match ctx.spool.append(records).await {
        Ok(()) => acks.into_iter().for_each(|ack| ctx.ack(ack)),
        // Not acked: the external broker keeps them and redelivers after a restart.
        Err(e) => {
            tracing::error!(error = %e, messages = acks.len(), "cannot write the spool; messages left unacknowledged")
        }
    }
}
