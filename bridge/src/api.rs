//! Finds the gito device of a topic's device path, creating it on first sight through the API's
//! idempotent `POST /tenants/{tenant_id}/devices`. Known ids are cached (least recently used go
//! first past `GITO_BRIDGE_DEVICE_CACHE_MAX`); after a restart or an eviction the cache refills
//! through the same call, which returns the existing device. Creations are bounded by a budget
//! per minute (`GITO_BRIDGE_MAX_NEW_DEVICES_PER_MINUTE`): a new path over it waits, spooled,
//! until the budget refills — so a flood of garbage topics cannot flood the device table, and no
//! message is dropped for it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hashlink::LruCache;

use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::json;
use url::Url;
use uuid::Uuid;

use crate::mapping::Mapped;
use crate::metrics::Metrics;
use gito_runtime::{ExposeSecret as _, SecretString};

#[derive(Debug, thiserror::Error)]
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
    devices_url: Url,
    token: SecretString,
    cache: Mutex<LruCache<String, Uuid>>,
    budget: Option<Mutex<Budget>>,
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
                "new devices over GITO_BRIDGE_MAX_NEW_DEVICES_PER_MINUTE: their messages wait in the spool"
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

#[derive(Deserialize)]
struct Created {
    id: Uuid,
}

impl DeviceResolver {
    /// `cache_max` ids at most are cached; `new_per_minute` devices at most are created per
    /// minute (0: unbounded).
    pub fn new(
        api_url: &Url,
        tenant_id: Uuid,
        token: SecretString,
        cache_max: usize,
        new_per_minute: u32,
    ) -> anyhow::Result<Self> {
        let devices_url = api_url.join(&format!("tenants/{tenant_id}/devices"))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(3))
            .build()?;
        Ok(DeviceResolver {
            http,
            devices_url,
            token,
            cache: Mutex::new(LruCache::new(cache_max.max(1))),
            budget: (new_per_minute > 0).then(|| {
                Mutex::new(Budget {
                    per_minute: f64::from(new_per_minute),
                    tokens: f64::from(new_per_minute),
                    refilled: Instant::now(),
                    waits: 0,
                    logged: None,
                })
            }),
        })
    }

    pub fn cached(&self, external_id: &str) -> Option<Uuid> {
        self.cache
            .lock()
            .expect("cache lock")
            .get(external_id)
            .copied()
    }

    pub fn cached_len(&self) -> usize {
        self.cache.lock().expect("cache lock").len()
    }

    /// Forgets a deleted device, so that its path's next message creates a new one. `true` if
    /// it was cached.
    pub fn forget(&self, device_id: Uuid, external_id: Option<&str>) -> bool {
        let mut cache = self.cache.lock().expect("cache lock");
        match external_id {
            Some(external_id) if cache.peek(external_id) == Some(&device_id) => {
                cache.remove(external_id);
                true
            }
            _ => {
                let before = cache.len();
                cache.retain(|_, id| *id != device_id);
                cache.len() < before
            }
        }
    }

    /// The device id for `mapped`, from the cache or the API.
    pub async fn resolve(&self, mapped: &Mapped, metrics: &Metrics) -> Result<Uuid, ResolveError> {
        if let Some(id) = self.cached(&mapped.external_id) {
            return Ok(id);
        }
        if let Some(budget) = &self.budget
            && !budget.lock().expect("budget lock").take()
        {
            Metrics::add(&metrics.device_budget_waits, 1);
            return Err(ResolveError::OverBudget);
        }
        let started = std::time::Instant::now();
        let result = self.create(mapped).await;
        metrics::histogram!("gito_bridge_api_request_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        if !matches!(result, Ok((_, true)))
            && let Some(budget) = &self.budget
        {
            budget.lock().expect("budget lock").refund();
        }
        match &result {
            Ok((id, created)) => {
                if *created {
                    Metrics::add(&metrics.devices_created, 1);
                    tracing::info!(device_id = %id, external_id = %mapped.external_id, "device created");
                }
                self.cache
                    .lock()
                    .expect("cache lock")
                    .insert(mapped.external_id.clone(), *id);
            }
            Err(e) => {
                Metrics::add(&metrics.api_errors, 1);
                tracing::warn!(external_id = %mapped.external_id, error = %e, "device lookup failed");
            }
        }
        result.map(|(id, _)| id)
    }

    async fn create(&self, mapped: &Mapped) -> Result<(Uuid, bool), ResolveError> {
        let request = self
            .http
            .post(self.devices_url.clone())
            .bearer_auth(self.token.expose_secret())
            .json(&json!({
                "name": mapped.name,
                "external_id": mapped.external_id,
                "device_type": mapped.device_type,
            }));
        let response = request
            .send()
            .await
            .map_err(|e| ResolveError::Unavailable(e.to_string()))?;
        let status = response.status();
        if status.is_success() {
            let created: Created = response
                .json()
                .await
                .map_err(|e| ResolveError::Unavailable(e.to_string()))?;
            return Ok((created.id, status == StatusCode::CREATED));
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
