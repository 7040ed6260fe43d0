//! Finds the gito device of a topic's device path, creating it on first sight through the API's
//! idempotent `POST /tenants/{tenant_id}/devices`. Known ids are cached; after a restart the
//! cache refills through the same call, which returns the existing device.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

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
}

pub struct DeviceResolver {
    http: reqwest::Client,
    devices_url: Url,
    token: SecretString,
    cache: Mutex<HashMap<String, Uuid>>,
}

#[derive(Deserialize)]
struct Created {
    id: Uuid,
}

impl DeviceResolver {
    pub fn new(api_url: &Url, tenant_id: Uuid, token: SecretString) -> anyhow::Result<Self> {
        let devices_url = api_url.join(&format!("tenants/{tenant_id}/devices"))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(3))
            .build()?;
        Ok(DeviceResolver {
            http,
            devices_url,
            token,
            cache: Mutex::default(),
        })
    }

    pub fn cached(&self, external_id: &str) -> Option<Uuid> {
        self.cache
            .lock()
            .expect("cache lock")
            .get(external_id)
            .copied()
    }

    /// Forgets a deleted device, so that its path's next message creates a new one. `true` if
    /// it was cached.
    pub fn forget(&self, device_id: Uuid, external_id: Option<&str>) -> bool {
        let mut cache = self.cache.lock().expect("cache lock");
        match external_id {
            Some(external_id) if cache.get(external_id) == Some(&device_id) => {
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
        let result = self.create(mapped).await;
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
