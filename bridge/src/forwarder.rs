//! The ordered path from the external broker to the local one.
//!
//! Every message is first given its identity (`identity`: the stamp of its first receipt, kept
//! across redeliveries and restarts). A message of a path not known yet, or of a path with
//! messages waiting for their device already, goes to the waiting lane (`waiting`) and is acked
//! once it is on disk, so that the API (slow, down, or over the creation budget) never holds up
//! known devices. Direct mode: each message of a known device is mapped, republished, and acked
//! to the external broker once the local broker acknowledged it; the local broker's
//! acknowledgements of the last seconds stay in the replay window (`replay`), moved to the spool
//! when the connection to it is lost. When that cannot proceed (the local broker is down),
//! everything not yet acknowledged is written to the spool in arrival order and acked, and every
//! later message not bound for the waiting lane is appended behind it: the external broker keeps
//! delivering, order per device is kept, and nothing acked is only in memory. The drainer
//! republishes the spool, oldest first, and returns to direct mode when the spool is empty.
//! Acks go out in arrival order (after a spill, those of messages already in the waiting lane
//! follow those of the spilled ones).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gito_runtime::Backoff;
use gito_runtime::mqtt::Ack;
use gito_wire::{Envelope, TelemetryTopic};
use rumqttc::Publish;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::api::DeviceResolver;
use crate::identity::{Identity, Receipts, fingerprint};
use crate::local::{Delivery, LocalPublisher};
use crate::mapping::{Mapping, Unmapped};
use crate::metrics::{DropReason, Metrics};
use crate::payload::{self, Rejected};
use crate::replay::{Delivered, ReplayWindow};
use crate::spool::{Record, SpoolHandle};
use crate::waiting::Waiting;

/// How long the local broker may be unreachable before waiting messages go to the spool.
const SPILL_AFTER: Duration = Duration::from_secs(1);
/// A message unacknowledged this long goes to the spool whatever the connection says.
const STUCK_AFTER: Duration = Duration::from_secs(10);
/// After a reconnect to the local broker, the replay window is replayed again this much later:
/// longer than a processor takes to reconnect and renew its subscription (its backoff stops at
/// 10 s), shorter than the window (15 s by default), so that it covers the gap.
const REPLAY_AGAIN_AFTER: Duration = Duration::from_secs(12);
/// Messages appended to the spool with one fsync.
const SPOOL_BATCH: usize = 1000;
/// Replayed messages parsed and appended to the spool at once (a few MiB).
const REPLAY_CHUNK: usize = 10_000;

/// What the forwarder needs; shared with the drainer.
pub struct Context {
    pub tenant_id: Uuid,
    pub mapping: Mapping,
    pub max_payload_bytes: usize,
    pub resolver: DeviceResolver,
    pub publisher: LocalPublisher,
    pub spool: Arc<SpoolHandle>,
    /// Where messages of paths not known yet wait for their device.
    pub waiting: Waiting,
    /// To the acker task, in the order messages were received.
    pub acks: mpsc::UnboundedSender<Ack>,
    /// What the local broker acknowledged lately (the forwarder's and the drainer's).
    pub replay: Mutex<ReplayWindow>,

    pub metrics: Arc<Metrics>,
}

/// A message republished and not yet acknowledged by the local broker; or (`record: None`,
/// delivered already) one in the waiting lane whose ack waits for its turn behind them.
struct Inflight {
    record: Option<Record>,
    device_id: Uuid,
    payload: Bytes,
    ack: Ack,
    sent_at: Instant,
    delivery: Delivery,
}

impl Context {
    fn ack(&self, ack: Ack) {
        // Fails only once the acker is gone (shutdown); the broker then redelivers.
        let _ = self.acks.send(ack);
    }

    /// Maps and parses a message stamped `received`; `None` when it is skipped (counted and
    /// logged).
    fn prepare(&self, publish: &Publish, received: OffsetDateTime) -> Option<Record> {
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
                ts: reading.ts.unwrap_or(received),
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

    /// Publishes to the local broker; the payload is kept for the replay window.
    pub(crate) async fn republish(&self, device_id: Uuid, record: &Record) -> (Delivery, Bytes) {
        let topic = TelemetryTopic {
            tenant_id: self.tenant_id,
            device_id,
        };
        let payload = Bytes::from(record.envelope.to_json());
        let delivery = self
            .publisher
            .publish(topic.to_string(), payload.clone())
            .await;
        (delivery, payload)
    }

    /// The local broker acknowledged this: keep it in the replay window.
    pub(crate) fn delivered(&self, device_id: Uuid, payload: Bytes) {
        self.replay
            .lock()
            .expect("replay lock")
            .delivered(device_id, &payload);
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
    receipts: Arc<Mutex<Receipts>>,
    drain_deadline: Duration,
) {
    let mut forwarder = Forwarder {
        losses_seen: ctx.publisher.losses(),
        replay_pending: false,
        replay_again_at: None,
        ctx,
        inflight: VecDeque::new(),
        receipts,
    };
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            delivered = head(&mut forwarder.inflight), if !forwarder.inflight.is_empty() => {
                forwarder.head_delivered(delivered.is_ok());
            }
            message = incoming.recv() => match message {
                Some(publish) => forwarder.handle(publish, &mut incoming).await,
                None => break,
            },
            _ = tick.tick() => forwarder.check_local(&incoming).await,
        }
    }
    let deadline = tokio::time::sleep(drain_deadline);
    tokio::pin!(deadline);
    while !forwarder.inflight.is_empty() {
        tokio::select! {
            delivered = head(&mut forwarder.inflight) => forwarder.head_delivered(delivered.is_ok()),
            () = &mut deadline => {
                tracing::warn!(unacked = forwarder.inflight.len(), "shutdown: leaving unacknowledged messages to the external broker's redelivery");
                break;
            }
        }
    }
    if let Err(e) = forwarder.receipts.lock().expect("receipts lock").flush() {
        tracing::warn!(error = %e, "cannot write the receipts journal at shutdown");
    }
}

async fn head(
    inflight: &mut VecDeque<Inflight>,
) -> Result<(), tokio::sync::oneshot::error::RecvError> {
    (&mut inflight.front_mut().expect("guarded by !is_empty").delivery).await
}

/// Where the forwarder sends a message (`Forwarder::route`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Waiting,
    Spool,
    Direct(Uuid),
}

/// The forwarder task's own state.
struct Forwarder {
    ctx: Arc<Context>,
    inflight: VecDeque<Inflight>,
    /// Shared with the external connection, which marks what its acks went out for.
    receipts: Arc<Mutex<Receipts>>,
    /// Local connection losses already answered by moving the replay window to the spool.
    losses_seen: u64,
    /// A loss was answered; the second replay is scheduled once the connection is back.
    replay_pending: bool,
    /// When the second replay after a reconnect is due.
    replay_again_at: Option<Instant>,
}

impl Forwarder {
    fn ack(&mut self, ack: Ack) {
        self.ctx.ack(ack);
    }

    fn head_delivered(&mut self, delivered: bool) {
        let done = self.inflight.pop_front().expect("head exists");
        if delivered {
            if done.record.is_some() {
                self.ctx.delivered(done.device_id, done.payload);
            }
            self.ack(done.ack);
        }
    }

    /// Gives the message its identity, then maps and parses it; skipped ones are acked here.
    fn prepare(&mut self, publish: &Publish) -> Option<(Record, Ack)> {
        let ack = Ack::of(publish);
        let print = fingerprint(&publish.topic, &publish.payload);
        let (received, identity) =
            self.receipts
                .lock()
                .expect("receipts lock")
                .stamp(publish.pkid, publish.dup, print);
        match identity {
            Identity::New => {}
            Identity::Recognized => Metrics::add(&self.ctx.metrics.redeliveries_recognized, 1),
            Identity::Ambiguous => {
                Metrics::add(&self.ctx.metrics.ambiguous_redeliveries, 1);
                tracing::info!(
                    topic = publish.topic,
                    pkid = publish.pkid,
                    "redelivered although our ack had gone out (the broker did not read it): it keeps its first identity"
                );
            }
        }
        let record = self.ctx.prepare(publish, received);
        if record.is_none() {
            self.ack(ack);
        }
        record.map(|r| (r, ack))
    }

    async fn handle(&mut self, publish: Publish, incoming: &mut mpsc::Receiver<Publish>) {
        let Some(first) = self.prepare(&publish) else {
            return;
        };
        let mut batch = vec![first];
        if !matches!(self.route(&batch[0].0), Route::Direct(_)) {
            // Going to disk: with whatever else is already waiting, with one fsync per lane.
            while batch.len() < SPOOL_BATCH {
                let Ok(next) = incoming.try_recv() else { break };
                if let Some(prepared) = self.prepare(&next) {
                    batch.push(prepared);
                }
            }
        }
        let mut routed = Vec::with_capacity(batch.len());
        let mut waiting = Vec::new();
        for (record, ack) in batch {
            let route = self.route(&record);
            if route == Route::Waiting {
                // Held from now on: the path's later messages go behind this one.
                self.ctx.waiting.hold(std::slice::from_ref(&record));
                waiting.push(record.clone());
            }
            routed.push((record, ack, route));
        }
        if !waiting.is_empty() {
            let lane = self.ctx.waiting.lane.clone();
            if !self
                .spool_and_ack(&lane, waiting, Vec::new(), incoming)
                .await
            {
                // Shutdown: nothing of this batch is acked, the broker redelivers it.
                return;
            }
        }
        // In arrival order; the acks of those in the waiting lane in their turn.
        let mut routed = routed.into_iter();
        while let Some((record, ack, route)) = routed.next() {
            match route {
                Route::Waiting => self.waited(ack),
                Route::Direct(device_id) if !self.ctx.spool.is_active() => {
                    self.forward_one(record, ack, device_id, incoming).await
                }
                Route::Direct(_) | Route::Spool => {
                    // Behind the spool: this one and the rest not in the waiting lane, in
                    // order; the acks of those in the waiting lane follow.
                    let (waited, behind): (Vec<_>, Vec<_>) = std::iter::once((record, ack, route))
                        .chain(routed)
                        .partition(|(_, _, route)| *route == Route::Waiting);
                    let behind = behind
                        .into_iter()
                        .map(|(record, ack, _)| (record, ack))
                        .collect();
                    let spool = self.ctx.spool.clone();
                    self.spool_and_ack(&spool, Vec::new(), behind, incoming)
                        .await;
                    waited.into_iter().for_each(|(_, ack, _)| self.waited(ack));
                    return;
                }
            }
        }
    }

    /// Where a message goes: the waiting lane if its path is not known or has messages waiting
    /// there already; else behind the spool while it is in use (new paths too: everything behind
    /// a failure keeps its arrival order), else directly to its device.
    fn route(&self, record: &Record) -> Route {
        if self.ctx.waiting.holds(&record.external_id) {
            return Route::Waiting;
        }
        if self.ctx.spool.is_active() {
            return Route::Spool;
        }
        match self.ctx.resolver.cached(&record.external_id) {
            Some(device_id) => Route::Direct(device_id),
            None => Route::Waiting,
        }
    }

    /// The ack of a message now in the waiting lane, in its turn behind those still in flight.
    fn waited(&mut self, ack: Ack) {
        if self.inflight.is_empty() {
            self.ack(ack);
            return;
        }
        let (done, delivery) = tokio::sync::oneshot::channel();
        let _ = done.send(());
        self.inflight.push_back(Inflight {
            record: None,
            device_id: Uuid::nil(),
            payload: Bytes::new(),
            ack,
            sent_at: Instant::now(),
            delivery,
        });
    }

    /// Republishes one message of a known device, or spools it.
    async fn forward_one(
        &mut self,
        mut record: Record,
        ack: Ack,
        device_id: Uuid,
        incoming: &mut mpsc::Receiver<Publish>,
    ) {
        let ctx = self.ctx.clone();
        record.device_id = Some(device_id);
        if ctx.publisher.down_for() >= SPILL_AFTER {
            self.spill(
                Vec::new(),
                vec![(record, ack)],
                "local broker unavailable",
                incoming,
            )
            .await;
            return;
        }
        // Its identity is journaled before it can reach the local broker.
        if !self.journal(incoming).await {
            return;
        }
        match tokio::time::timeout(SPILL_AFTER, ctx.republish(device_id, &record)).await {
            Ok((delivery, payload)) => self.inflight.push_back(Inflight {
                record: Some(record),
                device_id,
                payload,
                ack,
                sent_at: Instant::now(),
                delivery,
            }),
            Err(_) => {
                self.spill(
                    Vec::new(),
                    vec![(record, ack)],
                    "local broker not keeping up",
                    incoming,
                )
                .await
            }
        }
    }

    /// Every tick: a lost local connection moves the replay window (and everything in flight)
    /// to the spool, and once the connection is back, the window is replayed a second time
    /// `REPLAY_AGAIN_AFTER` later; a message stuck unacknowledged goes to the spool too.
    async fn check_local(&mut self, incoming: &mpsc::Receiver<Publish>) {
        let losses = self.ctx.publisher.losses();
        if losses != self.losses_seen {
            self.losses_seen = losses;
            self.replay_again_at = None;
            self.replay_pending = true;
            let window = self.take_window();
            if !window.is_empty() || !self.inflight.is_empty() {
                tracing::warn!(
                    replayed = window.len(),
                    "local broker connection lost: replaying what it acknowledged lately, in case it crashed"
                );
                Metrics::add(&self.ctx.metrics.replayed, window.len() as u64);
                self.spill(window, Vec::new(), "local broker connection lost", incoming)
                    .await;
            }
            return;
        }
        if self.replay_pending && self.ctx.publisher.down_for().is_zero() {
            self.replay_pending = false;
            self.replay_again_at = Some(Instant::now() + REPLAY_AGAIN_AFTER);
        }
        if self.replay_again_at.is_some_and(|at| at <= Instant::now()) {
            // What a restarted broker acknowledged before the processor had renewed its shared
            // subscription went to nobody: replay it (what did arrive is absorbed downstream).
            self.replay_again_at = None;
            let window = self.take_window();
            if !window.is_empty() {
                tracing::info!(
                    replayed = window.len(),
                    "replaying what the local broker acknowledged since it came back"
                );
                Metrics::add(&self.ctx.metrics.replayed, window.len() as u64);
                self.spool_window(window, incoming).await;
            }
            return;
        }
        if self.stuck() {
            self.spill(Vec::new(), Vec::new(), "local broker unavailable", incoming)
                .await;
        }
    }

    /// The replay window, oldest first (the window is empty afterwards).
    fn take_window(&self) -> Vec<Delivered> {
        let mut replay = self.ctx.replay.lock().expect("replay lock");
        if replay.truncated > 0 {
            tracing::warn!(
                truncated = replay.truncated,
                "the replay window was cut short by GITO_BRIDGE_REPLAY_MAX_BYTES"
            );
            replay.truncated = 0;
        }
        replay.take()
    }

    fn stuck(&self) -> bool {
        self.inflight.front().is_some_and(|head| {
            let waited = head.sent_at.elapsed();
            (waited >= SPILL_AFTER && self.ctx.publisher.down_for() >= SPILL_AFTER)
                || waited >= STUCK_AFTER
        })
    }

    /// Moves `replay` (already acknowledged upstream), everything unacknowledged, then `more`
    /// into the spool, in that order, and acks what was not acked yet.
    async fn spill(
        &mut self,
        replay: Vec<Delivered>,
        more: Vec<(Record, Ack)>,
        reason: &str,
        incoming: &mpsc::Receiver<Publish>,
    ) {
        // Acknowledged meanwhile: done, not spooled again.
        while let Some(head) = self.inflight.front_mut() {
            match head.delivery.try_recv() {
                Ok(()) => self.head_delivered(true),
                Err(_) => break,
            }
        }
        self.ctx.publisher.cancel_all();
        // Those in the waiting lane are durable already: only their acks wait, behind the rest.
        let mut waited = Vec::new();
        let mut batch = Vec::new();
        for inflight in self.inflight.drain(..) {
            match inflight.record {
                Some(record) => batch.push((record, inflight.ack)),
                None => waited.push(inflight.ack),
            }
        }
        batch.extend(more);
        tracing::warn!(
            reason,
            messages = batch.len() + replay.len(),
            "spooling to disk until it recovers"
        );
        if self.spool_window(replay, incoming).await {
            let spool = self.ctx.spool.clone();
            self.spool_and_ack(&spool, Vec::new(), batch, incoming)
                .await;
        }
        waited.into_iter().for_each(|ack| self.ack(ack));
    }

    /// Appends replayed messages to the spool, parsed a chunk at a time: the window of a fast
    /// bridge holds a few hundred thousand, and parsing them all at once doubled its memory at
    /// the worst moment (measured: 98 MiB more for 124,000). `false` at shutdown.
    async fn spool_window(
        &mut self,
        window: Vec<Delivered>,
        incoming: &mpsc::Receiver<Publish>,
    ) -> bool {
        let spool = self.ctx.spool.clone();
        for chunk in window.chunks(REPLAY_CHUNK) {
            let records = chunk
                .iter()
                .filter_map(|d| replayed(d.device_id, &d.payload))
                .collect();
            if !self
                .spool_and_ack(&spool, records, Vec::new(), incoming)
                .await
            {
                return false;
            }
        }
        true
    }

    /// Appends `replay` and `batch` to `spool` (the spool or the waiting lane), then acks
    /// `batch`. A write that fails (a full disk, an I/O error) was rolled back by the spool; it is
    /// retried until it succeeds, with the messages unacknowledged meanwhile — the external broker
    /// holds back the rest, nothing overtakes them — or until shutdown, which leaves them to the
    /// broker's redelivery (`false`).
    async fn spool_and_ack(
        &mut self,
        spool: &Arc<SpoolHandle>,
        replay: Vec<Record>,
        batch: Vec<(Record, Ack)>,
        incoming: &mpsc::Receiver<Publish>,
    ) -> bool {
        // Each record with the ack it releases (none for the replayed ones).
        let acks: Vec<Option<Ack>> = replay
            .iter()
            .map(|_| None)
            .chain(batch.iter().map(|(_, ack)| Some(*ack)))
            .collect();
        let records: Vec<Record> = replay
            .into_iter()
            .chain(batch.into_iter().map(|(record, _)| record))
            .collect();
        if !self.journal(incoming).await {
            return false;
        }
        // Written whole if it fits; on a failure in halves, down to one record, each part acked
        // as soon as it is on disk — a batch larger than what a nearly full disk has left must
        // not wait for space that only draining *it* would make.
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut failures = 0u64;
        let (mut start, mut chunk) = (0, records.len());
        let mut whole = Some(Arc::new(records));
        let all = whole.clone().expect("just set");
        while start < all.len() {
            let end = (start + chunk).min(all.len());
            let part = match whole.take() {
                Some(records) => records,
                None => Arc::new(all[start..end].to_vec()),
            };
            match spool.append(part).await {
                Ok(()) => {
                    acks[start..end]
                        .iter()
                        .flatten()
                        .for_each(|ack| self.ack(*ack));
                    start = end;
                }
                Err(e) => {
                    if failures == 0 {
                        tracing::error!(error = %e, messages = all.len() - start, "cannot write the spool; holding the messages unacknowledged and retrying");
                    }
                    failures += 1;
                    if incoming.is_closed() {
                        return false;
                    }
                    if chunk > 1 {
                        chunk = chunk.div_ceil(2);
                    } else {
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                }
            }
        }
        if failures > 0 {
            tracing::info!(failures, "the spool is writable again");
        }
        true
    }

    /// Writes the identities handed out so far to the receipts journal, retrying like the spool;
    /// `false` at shutdown.
    async fn journal(&mut self, incoming: &mpsc::Receiver<Publish>) -> bool {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut failures = 0u64;
        loop {
            let flushed = self.receipts.lock().expect("receipts lock").flush();
            let Err(e) = flushed else { break };
            if failures == 0 {
                tracing::error!(error = %e, "cannot write the receipts journal; holding messages until it can");
            }
            failures += 1;
            if incoming.is_closed() {
                return false;
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
        true
    }
}

/// A replayed message as a spool record: its device is known, its envelope is the one published.
fn replayed(device_id: Uuid, payload: &[u8]) -> Option<Record> {
    let envelope = Envelope::from_json(payload).ok()?;
    Some(Record {
        external_id: String::new(),
        name: String::new(),
        device_type: None,
        device_id: Some(device_id),
        envelope,
    })
}
