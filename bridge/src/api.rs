//! Finds the gito devices of device paths, creating them on first sight through the API's
//! idempotent `POST /tenants/{tenant_id}/devices/batch`: every path not yet known among the
//! messages at hand is asked for at once, up to 1000 per call and `CALLS_IN_FLIGHT` calls at a
//! time, each path once per call. Known ids are kept in `KnownDevices` (on disk beside the spool,
//! so a restart asks for none of them again; least recently used go first past
//! `GITO_BRIDGE_DEVICE_CACHE_MAX`). Creations are bounded by a budget per minute
//! (`GITO_BRIDGE_MAX_NEW_DEVICES_PER_MINUTE`, counted from the answer's `created`): a new path over
//! it waits in the waiting lane (`waiting`) until the budget refills — so a flood of garbage topics
//! cannot flood the device table, and no message is dropped for it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::json;
use url::Url;
use uuid::Uuid;

use crate::known::KnownDevices;
use crate::mapping::Mapped;
use crate::metrics::Metrics;
use gito_runtime::{ExposeSecret as _, SecretString};

/// The most devices the API takes in one batch.
pub const MAX_BATCH: usize = 1000;
/// Batch calls in flight at once.
const CALLS_IN_FLIGHT: usize = 4;
/// A batch's body stays under about this at first (the API's default `GITO_MAX_BODY_BYTES` is
/// 1 MiB); an API that refuses one as too large gets halves from then on.
const BATCH_BYTES: usize = 512 * 1024;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ResolveError {
    /// Worth retrying: the API is down or overloaded, or refuses our token or our tenant (a
    /// configuration error an operator fixes: until then messages are spooled, not dropped).
    #[error("gito-api unavailable: {0}")]
    Unavailable(String),
    /// The API will never accept this device (e.g. a name it considers invalid).
    #[error("gito-api refused the device ({status}): {body}")]
    Rejected { status: StatusCode, body: String },
    /// The budget of new devices per minute is spent: retry when it refilled.
    #[error("the budget of new devices per minute is spent")]
    OverBudget,
}

pub struct DeviceResolver {
    http: reqwest::Client,
    batch_url: Url,
    token: SecretString,
    known: Mutex<KnownDevices>,
    budget: Option<Mutex<Budget>>,
    /// Paths whose batch call is in flight.
    waiting: AtomicI64,
    /// Batches are cut to about this many bytes of body.
    batch_bytes: AtomicUsize,
}

/// A token bucket of device creations: `per_minute` at once at most, refilled continuously.
struct Budget {
    per_minute: f64,
    tokens: f64,
    refilled: Instant,
    /// Over-budget waits since the last log line, and when that was.
    waits: u64,
    logged: Option<Instant>,
}

impl Budget {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.refilled).as_secs_f64() * self.per_minute / 60.0;
        self.tokens = (self.tokens + refill).min(self.per_minute);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return true;
        }
        self.waits += 1;
        if self
            .logged
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(60))
        {
            tracing::warn!(
                per_minute = self.per_minute,
                waits = self.waits,
                "new devices over GITO_BRIDGE_MAX_NEW_DEVICES_PER_MINUTE: their messages wait in the waiting lane"
            );
            self.logged = Some(now);
            self.waits = 0;
        }
        false
    }

    /// The call found an existing device: it created nothing.
    fn refund(&mut self) {
        self.tokens = (self.tokens + 1.0).min(self.per_minute);
    }
}

/// The batch call's answer: one device per item, in request order.
#[derive(Deserialize)]
struct Answer {
    devices: Vec<Answered>,
}

#[derive(Deserialize)]
struct Answered {
    id: Uuid,
    created: bool,
}

impl DeviceResolver {
    /// `known` holds the paths known so far; `new_per_minute` devices at most are created per
    /// minute (0: unbounded).
    pub fn new(
        api_url: &Url,
        tenant_id: Uuid,
        token: SecretString,
        known: KnownDevices,
        new_per_minute: u32,
    ) -> anyhow::Result<Self> {
        let batch_url = api_url.join(&format!("tenants/{tenant_id}/devices/batch"))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(3))
            .build()?;
        Ok(DeviceResolver {
            http,
            batch_url,
            token,
            known: Mutex::new(known),
            budget: (new_per_minute > 0).then(|| {
                Mutex::new(Budget {
                    per_minute: f64::from(new_per_minute),
                    tokens: f64::from(new_per_minute),
                    refilled: Instant::now(),
                    waits: 0,
                    logged: None,
                })
            }),
            waiting: AtomicI64::new(0),
            batch_bytes: AtomicUsize::new(BATCH_BYTES),
        })
    }

    pub fn cached(&self, external_id: &str) -> Option<Uuid> {
        self.known.lock().expect("known lock").get(external_id)
    }

    /// The device map is kept up to date by the device events until now.
    pub fn alive(&self) {
        if let Err(e) = self.known.lock().expect("known lock").alive() {
            tracing::warn!(error = %e, "cannot mark the devices journal alive");
        }
    }

    pub fn cached_len(&self) -> usize {
        self.known.lock().expect("known lock").len()
    }

    /// Forgets a deleted device, so that its path's next message creates a new one. `true` if
    /// it was known.
    pub fn forget(&self, device_id: Uuid, external_id: Option<&str>) -> bool {
        let mut known = self.known.lock().expect("known lock");
        match known.forget(device_id, external_id) {
            Ok(forgotten) => forgotten,
            Err(e) => {
                tracing::error!(error = %e, %device_id, "cannot write the devices journal: a restart may bring the deleted device back");
                true
            }
        }
    }

    /// The device id of each of `mapped` (one answer per item, in order): from the map, else
    /// from batch calls, each new path asked for once.
    pub async fn resolve_many(
        &self,
        mapped: &[Mapped],
        metrics: &Metrics,
    ) -> Vec<Result<Uuid, ResolveError>> {
        let mut answers: Vec<Option<Result<Uuid, ResolveError>>> = vec![None; mapped.len()];
        // Each unknown path once, with the items waiting for it.
        let mut unknown: Vec<&Mapped> = Vec::new();
        let mut items: HashMap<&str, Vec<usize>> = HashMap::new();
        {
            let mut known = self.known.lock().expect("known lock");
            for (i, m) in mapped.iter().enumerate() {
                if let Some(id) = known.get(&m.external_id) {
                    answers[i] = Some(Ok(id));
                    continue;
                }
                items
                    .entry(m.external_id.as_str())
                    .or_insert_with(|| {
                        unknown.push(m);
                        Vec::new()
                    })
                    .push(i);
            }
        }
        let mut found: HashMap<&str, Result<Uuid, ResolveError>> = HashMap::new();
        let mut asked: Vec<&Mapped> = Vec::with_capacity(unknown.len());
        for m in unknown {
            match &self.budget {
                Some(budget) if !budget.lock().expect("budget lock").take() => {
                    Metrics::add(&metrics.device_budget_waits, 1);
                    found.insert(&m.external_id, Err(ResolveError::OverBudget));
                }
                _ => asked.push(m),
            }
        }
        self.waiting_by(asked.len() as i64);
        // Made first, polled `CALLS_IN_FLIGHT` at a time (a future does nothing until polled).
        let calls: Vec<_> = chunks(&asked, self.batch_bytes.load(Ordering::Relaxed))
            .into_iter()
            .map(|chunk| self.ask(chunk, metrics))
            .collect();
        let calls = futures::stream::iter(calls)
            .buffer_unordered(CALLS_IN_FLIGHT)
            .collect::<Vec<_>>()
            .await;
        self.waiting_by(-(asked.len() as i64));
        let mut created = 0u64;
        for (path, result) in calls.into_iter().flatten() {
            let was_created = matches!(result, Ok((_, true)));
            if was_created {
                created += 1;
            } else if let Some(budget) = &self.budget {
                budget.lock().expect("budget lock").refund();
            }
            found.insert(path, result.map(|(id, _)| id));
        }
        Metrics::add(&metrics.devices_created, created);
        {
            let mut known = self.known.lock().expect("known lock");
            for (path, result) in &found {
                if let Ok(id) = result {
                    known.insert(path, *id);
                }
            }
            if let Err(e) = known.flush() {
                tracing::warn!(error = %e, "cannot write the devices journal: a restart will ask for these devices again");
            }
        }
        for (path, indexes) in items {
            let result = found.get(path).cloned().unwrap_or_else(|| {
                Err(ResolveError::Unavailable(
                    "no answer for this device".into(),
                ))
            });
            for i in indexes {
                answers[i] = Some(result.clone());
            }
        }
        answers
            .into_iter()
            .map(|a| a.expect("every item answered"))
            .collect()
    }

    /// One device, as `resolve_many`.
    pub async fn resolve(&self, mapped: &Mapped, metrics: &Metrics) -> Result<Uuid, ResolveError> {
        self.resolve_many(std::slice::from_ref(mapped), metrics)
            .await
            .pop()
            .expect("one answer")
    }

    fn waiting_by(&self, n: i64) {
        if n != 0 {
            let now = self.waiting.fetch_add(n, Ordering::Relaxed) + n;
            metrics::gauge!("gito_bridge_paths_waiting").set(now as f64);
        }
    }

    /// Batch calls for `chunk` (distinct paths): each path with its id and whether this call
    /// created it. A batch the API refuses as too large is asked for again in halves (and later
    /// batches are cut smaller); one it refuses otherwise (one bad item refuses all) is asked for
    /// again one path per call, so that only the bad one is refused.
    async fn ask<'a>(
        &self,
        chunk: &[&'a Mapped],
        metrics: &Metrics,
    ) -> Vec<(&'a str, Result<(Uuid, bool), ResolveError>)> {
        let mut answers = Vec::with_capacity(chunk.len());
        let mut parts = vec![chunk];
        while let Some(part) = parts.pop() {
            match self.batch(part, metrics).await {
                Ok(devices) => answers.extend(
                    part.iter()
                        .zip(devices)
                        .map(|(m, d)| (m.external_id.as_str(), Ok(d))),
                ),
                Err(ResolveError::Rejected { status, .. })
                    if status == StatusCode::PAYLOAD_TOO_LARGE && part.len() > 1 =>
                {
                    let bytes: usize = part.iter().map(|m| item_bytes(m)).sum();
                    self.batch_bytes.fetch_min(bytes / 2, Ordering::Relaxed);
                    let (left, right) = part.split_at(part.len() / 2);
                    parts.extend([right, left]);
                }
                Err(ResolveError::Rejected { .. }) if part.len() > 1 => {
                    parts.extend(part.chunks(1).rev());
                }
                Err(e) => answers.extend(
                    part.iter()
                        .map(|m| (m.external_id.as_str(), Err(e.clone()))),
                ),
            }
        }
        answers
    }

    async fn batch(
        &self,
        chunk: &[&Mapped],
        metrics: &Metrics,
    ) -> Result<Vec<(Uuid, bool)>, ResolveError> {
        let started = Instant::now();
        let result = self.post(chunk).await;
        metrics::histogram!("gito_bridge_api_request_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        match &result {
            Ok(devices) => {
                Metrics::add(&metrics.batch_calls, 1);
                metrics::histogram!("gito_bridge_batch_devices").record(devices.len() as f64);
                let created = devices.iter().filter(|(_, created)| *created).count();
                if created > 0 {
                    tracing::info!(created, asked = chunk.len(), "devices created");
                }
            }
            Err(e) => {
                Metrics::add(&metrics.api_errors, 1);
                tracing::warn!(devices = chunk.len(), first = %chunk[0].external_id, error = %e, "device lookup failed");
            }
        }
        result
    }

    async fn post(&self, chunk: &[&Mapped]) -> Result<Vec<(Uuid, bool)>, ResolveError> {
        let devices: Vec<_> = chunk
            .iter()
            .map(|m| {
                // The API names a device by its external_id when no name is given.
                let name = (m.name != m.external_id).then_some(&m.name);
                json!({
                    "external_id": m.external_id,
                    "name": name,
                    "device_type": m.device_type,
                })
            })
            .collect();
        let response = self
            .http
            .post(self.batch_url.clone())
            .bearer_auth(self.token.expose_secret())
            .json(&json!({ "devices": devices }))
            .send()
            .await
            .map_err(|e| ResolveError::Unavailable(e.to_string()))?;
        let status = response.status();
        if status.is_success() {
            let answer: Answer = response
                .json()
                .await
                .map_err(|e| ResolveError::Unavailable(e.to_string()))?;
            if answer.devices.len() != chunk.len() {
                return Err(ResolveError::Unavailable(format!(
                    "{} devices answered for {} asked",
                    answer.devices.len(),
                    chunk.len()
                )));
            }
            return Ok(answer
                .devices
                .into_iter()
                .map(|d| (d.id, d.created))
                .collect());
        }
        let body = response.text().await.unwrap_or_default();
        let transient = status.is_server_error()
            || matches!(
                status,
                StatusCode::UNAUTHORIZED
                    | StatusCode::FORBIDDEN
                    // The devices route exists: 404 is our tenant, unknown or not our token's.
                    | StatusCode::NOT_FOUND
                    | StatusCode::REQUEST_TIMEOUT
                    | StatusCode::TOO_MANY_REQUESTS
            );
        if transient {
            Err(ResolveError::Unavailable(format!("{status}: {body}")))
        } else {
            Err(ResolveError::Rejected { status, body })
        }
    }
}

/// About what `m` adds to a batch's body.
fn item_bytes(m: &Mapped) -> usize {
    let name = if m.name == m.external_id {
        0
    } else {
        m.name.len()
    };
    48 + m.external_id.len() + name + m.device_type.as_ref().map_or(0, String::len)
}

/// `asked` cut into batches of `MAX_BATCH` paths and about `max_bytes` at most.
fn chunks<'a, 'm>(asked: &'a [&'m Mapped], max_bytes: usize) -> Vec<&'a [&'m Mapped]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, m) in asked.iter().enumerate() {
        let size = item_bytes(m);
        if i > start && (i - start == MAX_BATCH || bytes + size > max_bytes) {
            chunks.push(&asked[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < asked.len() {
        chunks.push(&asked[start..]);
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(i: usize) -> Mapped {
        let external_id = format!("plant/{i:04}");
        Mapped {
            name: external_id.clone(),
            external_id,
            device_type: None,
            metric: "v".into(),
        }
    }

    #[test]
    fn batches_hold_a_thousand_paths_or_fewer_bytes() {
        let paths: Vec<Mapped> = (0..2500).map(path).collect();
        let asked: Vec<&Mapped> = paths.iter().collect();
        let sizes = |max| -> Vec<usize> { chunks(&asked, max).iter().map(|c| c.len()).collect() };
        assert_eq!(sizes(BATCH_BYTES), [1000, 1000, 500]);
        let per_item = item_bytes(&paths[0]);
        assert_eq!(sizes(per_item * 600), [600, 600, 600, 600, 100]);
        assert_eq!(sizes(1), vec![1; 2500], "one path per batch at least");
    }
}
