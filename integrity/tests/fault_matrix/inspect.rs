//! What a scenario asks of the stack besides faults: the API as an operator uses it, and the
//! database read back — devices, what was stored, deleted and dead-lettered.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

use crate::ledger::{self, DeadLetter, Report};
use crate::publisher::Expected;
use crate::stack::{ADMIN_TOKEN, STORE_DEADLINE, Stack};
use gito_testkit::wait_for;

impl Stack {
    // --- the API, as an operator --------------------------------------------------------------

    /// A request with the admin token; the status and the JSON body (null if none).
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request =
            reqwest::Client::new().request(method, format!("{}{path}", self.api_url()));
        request = request.bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request to gito-api");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The id of the device with `external_id`, if there is one.
    pub async fn device_id(&self, external_id: &str) -> Option<Uuid> {
        sqlx::query_scalar("SELECT id FROM devices WHERE tenant_id = $1 AND external_id = $2")
            .bind(self.tenant)
            .bind(external_id)
            .fetch_optional(&self.pool)
            .await
            .expect("look the device up")
    }

    pub async fn device_count(&self, prefix: &str) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM devices WHERE tenant_id = $1 AND external_id LIKE $2",
        )
        .bind(self.tenant)
        .bind(format!("{prefix}/%"))
        .fetch_one(&self.pool)
        .await
        .expect("count devices")
    }

    /// Keeps a copy of every telemetry row deleted from now on (a device's cascade included) in
    /// `fm_deleted_telemetry`, so that rows an operator's deletion removed can still be counted.
    pub async fn keep_deleted_telemetry(&self) {
        sqlx::raw_sql(
            "CREATE TABLE fm_deleted_telemetry (device_id uuid, ts timestamptz, metric text, value double precision);
             CREATE FUNCTION fm_keep_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 INSERT INTO fm_deleted_telemetry VALUES (OLD.device_id, OLD.ts, OLD.metric, OLD.value);
                 RETURN OLD;
             END $$;
             CREATE TRIGGER fm_keep_deleted AFTER DELETE ON telemetry
                 FOR EACH ROW EXECUTE FUNCTION fm_keep_deleted();",
        )
        .execute(&self.pool)
        .await
        .expect("install the deletion audit");
    }

    /// Values of metric `v` deleted with device `device_id` (see `keep_deleted_telemetry`).
    pub async fn deleted_values(&self, device_id: Uuid) -> Vec<f64> {
        sqlx::query_scalar(
            "SELECT value FROM fm_deleted_telemetry WHERE device_id = $1 AND metric = 'v'",
        )
        .bind(device_id)
        .fetch_all(&self.pool)
        .await
        .expect("read the deletion audit")
    }

    /// Values of metric `v` stored for the devices with `external_id`, by device.
    pub async fn values_by_device(&self, external_id: &str) -> Vec<(Uuid, f64)> {
        sqlx::query_as(
            "SELECT d.id, t.value FROM telemetry t JOIN devices d ON d.id = t.device_id
              WHERE d.tenant_id = $1 AND d.external_id = $2 AND t.metric = 'v'",
        )
        .bind(self.tenant)
        .bind(external_id)
        .fetch_all(&self.pool)
        .await
        .expect("read a device's values")
    }

    pub async fn dead_letters(&self) -> Option<Vec<DeadLetter>> {
        ledger::dead_letters(&self.pool, self.tenant).await
    }

    // --- counting -------------------------------------------------------------------------

    /// Sent values stored at least once under `prefix`.
    pub async fn stored(&self, prefix: &str) -> u64 {
        ledger::progress(&self.pool, self.tenant, prefix).await.0 as u64
    }

    pub async fn wait_stored(&self, prefix: &str, at_least: u64) {
        let what = format!("{at_least} values stored under {prefix}/");
        wait_for(Duration::from_secs(30), &what, || async {
            self.stored(prefix).await >= at_least
        })
        .await;
    }

    /// Waits for `expected` to be stored (see `ledger::settle`) and counts.
    pub async fn settle(&self, prefix: &str, expected: &Expected) -> Report {
        ledger::settle(&self.pool, self.tenant, prefix, expected, STORE_DEADLINE).await
    }
}
