//! One batch, start to finish, with failures isolated to what failed: parse each message, check
//! its device (and that the device belongs to the topic's tenant), then store the rows, touch the
//! devices and evaluate alert rules in one transaction.
//!
//! - A failure of the database or of the way to it (`failure::is_transient`) is retried with
//!   backoff, the messages unacknowledged meanwhile: an outage only delays.
//! - A failure the data causes splits the batch in halves, each stored in its own transaction,
//!   down to single messages: every message that can be stored is, and the one that cannot becomes
//!   a dead letter. One bad message costs about 2·log2(batch) small transactions, not a stall.
//! - Rows are copied (`store::Insert::Copy`) unless the batch holds a redelivery or a batch met
//!   rows stored before in the last `MERGE_AFTER_DUPLICATES`; a copy that meets one is rolled back
//!   and the same messages merged at once, which skips the rows stored before.
//! - A foreign-key violation first re-reads the batch's devices past the cache: a device deleted
//!   since it was looked up is then unknown, its messages dead letters, and the rest is retried.
//! - Invalid messages and unknown devices are dead letters too: nothing received is dropped.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gito_runtime::Backoff;
use gito_wire::{Envelope, Invalid, LiveEvent, TelemetryTopic};
use rumqttc::Publish;
use sqlx::PgPool;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::counters::Counters;
use super::dead_letters::{self, DeadLetter, Reason, UNKNOWN_DEVICE};
use super::devices::{DeviceCache, DeviceInfo, Known};
use super::failure::{self, is_foreign_key_violation, is_transient};
use super::heard;
use super::metrics_seen::MetricsSeen;
use super::store::{self, Checked, Insert, Stored};
use crate::status::{Health, PROCESSOR};

/// One valid message: its topic and its envelope.
#[derive(Debug)]
pub struct Telemetry {
    pub topic: TelemetryTopic,
    pub envelope: Envelope,
}

pub fn parse(topic: &str, payload: &[u8]) -> Result<Telemetry, Invalid> {
    let topic: TelemetryTopic = topic.parse()?;
    let envelope = Envelope::from_json(payload)?;
    Ok(Telemetry { topic, envelope })
}

/// A message as received, parsed when it was collected (a batch is bounded by its rows).
#[derive(Debug)]
pub struct Incoming {
    pub publish: Publish,
    pub parsed: Result<Telemetry, Invalid>,
}

impl Incoming {
    pub fn new(publish: Publish) -> Incoming {
        let parsed = parse(&publish.topic, &publish.payload);
        Incoming { publish, parsed }
    }

    /// The rows it becomes (one per metric; none if invalid).
    pub fn rows(&self) -> usize {
        self.parsed.as_ref().map_or(0, |t| t.envelope.metrics.len())
    }

    pub fn bytes(&self) -> usize {
        self.publish.topic.len() + self.publish.payload.len()
    }

    fn dead_letter(&self, reason: Reason, error: String) -> DeadLetter {
        DeadLetter {
            topic: self.publish.topic.clone(),
            payload: self.publish.payload.to_vec(),
            reason,
            error,
        }
    }
}

/// The device of `telemetry`, if it exists and belongs to the topic's tenant.
fn device_of<'a>(telemetry: &Telemetry, known: &'a Known) -> Option<&'a DeviceInfo> {
    known
        .get(&telemetry.topic.device_id)
        .and_then(Option::as_deref)
        .filter(|d| d.tenant_id == telemetry.topic.tenant_id)
}

/// After a batch met rows stored before, batches merge for this long: redeliveries come in bursts
/// (a reconnect, a bridge replaying its spool), and each copy that meets one is a wasted statement.
const MERGE_AFTER_DUPLICATES: Duration = Duration::from_secs(10);

/// What processing batches needs, kept across batches.
pub struct Batcher {
    pub pool: PgPool,
    pub cache: DeviceCache,
    pub counters: Arc<Counters>,
    pub shutdown: CancellationToken,
    pub health: Health,
    /// Reasons logged since the last counters line ("logged once": the rest is counted).
    logged: Vec<Reason>,
    isolation_logged: bool,
    metrics_seen: MetricsSeen,
    /// `ProcessorConfig::retention_days`: for tenants without their own.
    retention_days: Option<u32>,
    /// Until when batches merge instead of copying (`MERGE_AFTER_DUPLICATES`).
    merge_until: Option<Instant>,
}

impl Batcher {
    pub fn new(
        pool: PgPool,
        counters: Arc<Counters>,
        shutdown: CancellationToken,
        health: Health,
        retention_days: Option<u32>,
    ) -> Batcher {
        Batcher {
            pool,
            cache: DeviceCache::default(),
            counters,
            shutdown,
            health,
            logged: Vec::new(),
            isolation_logged: false,
            metrics_seen: MetricsSeen::default(),
            retention_days,
            merge_until: None,
        }
    }

    /// The counters were just logged: the next dead letter of each reason is logged again.
    pub fn new_interval(&mut self) {
        self.logged.clear();
        self.isolation_logged = false;
    }

    /// Stores every message of `batch` that can be stored and keeps the others as dead letters;
    /// returns the alert and connectivity changes. `None` if shutdown came first (nothing may be acknowledged).
    pub async fn process(&mut self, batch: &[Incoming]) -> Option<Vec<LiveEvent>> {
        Counters::add(&self.counters.messages, batch.len() as u64);
        metrics::histogram!("gito_processor_batch_size").record(batch.len() as f64);
        let redelivered = batch.iter().filter(|m| m.publish.dup).count();
        metrics::counter!("gito_processor_redeliveries_total").increment(redelivered as u64);
        let mut dead = Vec::new();
        let mut valid = Vec::new();
        for message in batch {
            match &message.parsed {
                Ok(telemetry) => valid.push((message, telemetry)),
                Err(invalid) => {
                    dead.push(message.dead_letter((*invalid).into(), invalid.to_string()))
                }
            }
        }
        let ids: Vec<Uuid> = valid.iter().map(|(_, t)| t.topic.device_id).collect();
        let known = self.lookup(&ids).await?;
        let mut good = Vec::with_capacity(valid.len());
        for (message, telemetry) in &valid {
            match device_of(telemetry, &known) {
                Some(device) => good.push((
                    *message,
                    Checked {
                        device_id: telemetry.topic.device_id,
                        envelope: &telemetry.envelope,
                        device,
                    },
                )),
                // Unknown, or a device of another tenant: a publisher may never write there.
                None => {
                    dead.push(message.dead_letter(Reason::UnknownDevice, UNKNOWN_DEVICE.to_owned()))
                }
            }
        }
        let events = self.store_isolated(&good, &mut dead).await?;
        let checked: Vec<Checked<'_>> = good.iter().map(|(_, c)| *c).collect();
        self.metrics_seen.record(&self.pool, &checked).await;
        if !dead.is_empty() {
            self.keep(&dead).await?;
        }
        Some(events)
    }

    /// Stores `good`, splitting it on failures caused by the data; adds what cannot be stored to
    /// `dead`.
    async fn store_isolated(
        &mut self,
        good: &[(&Incoming, Checked<'_>)],
        dead: &mut Vec<DeadLetter>,
    ) -> Option<Vec<LiveEvent>> {
        let mut events = Vec::new();
        let mut alive = vec![true; good.len()];
        let mut isolating = false;
        // Ranges still to store, the next on top; `true` once retried after a foreign-key
        // violation that no deleted device explains (a race with a deleted alert rule, say).
        let mut pending: Vec<(Range<usize>, bool)> = vec![(0..good.len(), false)];
        while let Some((range, retried)) = pending.pop() {
            let group: Vec<Checked<'_>> = range
                .clone()
                .filter(|i| alive[*i])
                .map(|i| good[i].1)
                .collect();
            if group.is_empty() {
                continue;
            }
            let redelivered = range.clone().any(|i| alive[i] && good[i].0.publish.dup);
            // In id order, each with its tenant; those that may have no connectivity row yet.
            let devices: BTreeMap<Uuid, Uuid> = group
                .iter()
                .map(|c| (c.device_id, c.device.tenant_id))
                .collect();
            let unheard = self.cache.unheard(devices.keys().copied());
            let mut retry = Retry::new(self);
            let error = loop {
                let started = Instant::now();
                let how = self.insert(redelivered);
                let stored = store_in_transaction(
                    &self.pool,
                    &group,
                    self.retention_days,
                    how,
                    &devices,
                    &unheard,
                );
                match stored.await {
                    Ok(stored) => {
                        self.cache.mark_heard(&unheard);
                        metrics::histogram!("gito_processor_commit_duration_seconds")
                            .record(started.elapsed().as_secs_f64());
                        self.committed(&group, &stored);
                        self.count(&stored);
                        events.extend(stored.events);
                        break None;
                    }
                    Err(e) if how == Insert::Copy && store::is_stored_before(&e) => {
                        self.merge_until = Some(Instant::now() + MERGE_AFTER_DUPLICATES);
                    }
                    Err(e) if is_transient(&e) => {
                        if !retry.wait("storing a batch", &e).await {
                            return None;
                        }
                    }
                    Err(e) => break Some(e),
                }
            };
            let Some(error) = error else { continue };
            if !self.isolation_logged {
                self.isolation_logged = true;
                tracing::warn!(error = %failure::describe(&error), messages = group.len(),
                    "storing a batch failed on its data; isolating the messages that fail (further ones until the next counters line are counted, not logged)");
            }
            if !isolating {
                isolating = true;
                Counters::add(&self.counters.isolations, 1);
            }
            if is_foreign_key_violation(&error) {
                if self.recheck(good, range.clone(), &mut alive, dead).await? {
                    pending.push((range, retried));
                    continue;
                }
                if !retried {
                    pending.push((range, true));
                    continue;
                }
            }
            if group.len() == 1 {
                let index = range.clone().find(|i| alive[*i]).expect("one message left");
                alive[index] = false;
                let reason = Reason::of_error(&error);
                dead.push(good[index].0.dead_letter(reason, failure::describe(&error)));
                continue;
            }
            let middle = range.start + range.len() / 2;
            pending.push((middle..range.end, false));
            pending.push((range.start..middle, false));
        }
        Some(events)
    }

    /// How to insert a group: merge if it holds a redelivery or a batch met rows stored before
    /// lately, copy otherwise.
    fn insert(&self, redelivered: bool) -> Insert {
        let merging = self.merge_until.is_some_and(|until| Instant::now() < until);
        if redelivered || merging {
            Insert::Merge
        } else {
            Insert::Copy
        }
    }

    /// Re-reads the devices of `range` from the database; the messages of those that no longer
    /// exist (or moved to another tenant) become dead letters. True if there were any.
    async fn recheck(
        &mut self,
        good: &[(&Incoming, Checked<'_>)],
        range: Range<usize>,
        alive: &mut [bool],
        dead: &mut Vec<DeadLetter>,
    ) -> Option<bool> {
        let ids: Vec<Uuid> = range
            .clone()
            .filter(|i| alive[*i])
            .map(|i| good[i].1.device_id)
            .collect();
        for id in &ids {
            self.cache.evict(*id);
        }
        let fresh = self.lookup(&ids).await?;
        let mut found = false;
        for i in range {
            if !alive[i] {
                continue;
            }
            let (message, checked) = &good[i];
            let still = fresh
                .get(&checked.device_id)
                .and_then(Option::as_deref)
                .is_some_and(|d| d.tenant_id == checked.device.tenant_id);
            if !still {
                alive[i] = false;
                found = true;
                dead.push(message.dead_letter(Reason::UnknownDevice, UNKNOWN_DEVICE.to_owned()));
            }
        }
        Some(found)
    }

    /// Retried until it succeeds (`None`: shutdown came first).
    async fn lookup(&mut self, ids: &[Uuid]) -> Option<Known> {
        let mut retry = Retry::new(self);
        loop {
            match self.cache.lookup(&self.pool, ids).await {
                Ok(known) => return Some(known),
                Err(e) => {
                    if !retry.wait("looking up devices", &e).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Writes the dead letters, retrying until they are kept: they are acknowledged after.
    async fn keep(&mut self, dead: &[DeadLetter]) -> Option<()> {
        let mut retry = Retry::new(self);
        loop {
            match keep_in_one_statement(&self.pool, dead).await {
                Ok(()) => {
                    self.health.up(PROCESSOR);
                    break;
                }
                Err(e) => {
                    if !retry.wait("keeping dead letters", &e).await {
                        return None;
                    }
                }
            }
        }
        for letter in dead {
            self.counters.dead_letter(letter.reason);
            metrics::counter!("gito_processor_messages_total", "outcome" => letter.reason.outcome())
                .increment(1);
            metrics::counter!("gito_processor_dead_letters_total", "reason" => letter.reason.as_str())
                .increment(1);
            if !self.logged.contains(&letter.reason) {
                self.logged.push(letter.reason);
                tracing::warn!(reason = letter.reason.as_str(), topic = %letter.topic, error = %letter.error,
                    "message kept as a dead letter (further ones of this reason until the next counters line are counted, not logged)");
            }
        }
        Some(())
    }

    /// Metrics and health of a committed group: a group whose every row was stored before is a
    /// redelivery (`duplicate`), any other `stored`; the lag of each message, envelope `ts` to now.
    fn committed(&self, group: &[Checked<'_>], stored: &Stored) {
        let outcome = if stored.inserted == 0 && stored.rows > 0 {
            "duplicate"
        } else {
            "stored"
        };
        metrics::counter!("gito_processor_messages_total", "outcome" => outcome)
            .increment(group.len() as u64);
        metrics::counter!("gito_processor_rows_stored_total").increment(stored.inserted);
        metrics::counter!("gito_processor_rows_duplicate_total")
            .increment(stored.rows - stored.inserted);
        if stored.expired > 0 {
            metrics::counter!("gito_processor_rows_expired_total").increment(stored.expired);
            tracing::info!(
                rows = stored.expired,
                messages = group.len(),
                "samples older than their tenant's retention were not stored"
            );
        }
        let now = OffsetDateTime::now_utc();
        let lag = metrics::histogram!("gito_processor_lag_seconds");
        let mut oldest = 0.0_f64;
        for message in group {
            let seconds = (now - message.envelope.ts).as_seconds_f64().max(0.0);
            lag.record(seconds);
            oldest = oldest.max(seconds);
        }
        self.health.committed(oldest);
        self.health.up(PROCESSOR);
    }

    fn count(&self, stored: &Stored) {
        Counters::add(&self.counters.rows, stored.inserted);
        Counters::add(&self.counters.duplicate_rows, stored.rows - stored.inserted);
        Counters::add(&self.counters.flagged, stored.flagged);
        Counters::add(&self.counters.expired_rows, stored.expired);
    }
}

/// Waits between attempts after transient failures, with backoff, counting and logging each.
struct Retry {
    backoff: Backoff,
    shutdown: CancellationToken,
    counters: Arc<Counters>,
    health: Health,
}

impl Retry {
    fn new(batcher: &Batcher) -> Retry {
        Retry {
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
            shutdown: batcher.shutdown.clone(),
            counters: batcher.counters.clone(),
            health: batcher.health.clone(),
        }
    }

    /// False if shutdown came first.
    async fn wait(&mut self, what: &str, error: &sqlx::Error) -> bool {
        Counters::add(&self.counters.db_errors, 1);
        metrics::counter!("gito_processor_db_errors_total").increment(1);
        self.health.degraded(PROCESSOR, format!("{what}: {error}"));
        tracing::warn!(error = %error, "{what} failed; retrying");
        tokio::select! {
            () = self.shutdown.cancelled() => false,
            () = tokio::time::sleep(self.backoff.next_delay()) => true,
        }
    }
}

async fn store_in_transaction(
    pool: &PgPool,
    group: &[Checked<'_>],
    retention_days: Option<u32>,
    how: Insert,
    devices: &BTreeMap<Uuid, Uuid>,
    unheard: &[Uuid],
) -> Result<Stored, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut stored = store::store(&mut tx, group, retention_days, how).await?;
    let events = heard::heard(&mut tx, devices, unheard).await?;
    stored.events.extend(events);
    tx.commit().await?;
    Ok(stored)
}

async fn keep_in_one_statement(pool: &PgPool, dead: &[DeadLetter]) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    dead_letters::write(&mut conn, dead).await
}
