//! Keeps the device cache exact and hears of deleted devices: PostgreSQL announces every change
//! of a device or of a type's schema on `gito_devices` (triggers of migration 009), and the
//! processor listens on a connection of its own (never one of the pool's).
//!
//! Before each batch, `sync` makes one round trip on that connection: PostgreSQL sends a
//! notification to an idle listener as soon as the change commits, so every notification of a
//! change committed before the round trip began arrives before its answer. Applying them all
//! makes the cache exact as of the batch's start, not "within milliseconds": a device type
//! changed by a PATCH applies to the next message published after the answer. While the
//! listener is not connected the cache is empty and bypassed (the token cache's rule).
//! Between batches, `next` applies notifications as they come, so that deletions are announced
//! to gito-bridge at once even when no telemetry flows.

use std::time::Duration;

use gito_runtime::Backoff;
use serde::Deserialize;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgListener, PgNotification, PgPoolOptions};
use tokio::time::Instant;
use uuid::Uuid;

use super::devices::DeviceCache;

pub const CHANNEL: &str = "gito_devices";
pub const APPLICATION_NAME: &str = "gito-api device listener";
/// A round trip or a connection attempt that takes longer counts as a lost listener.
const TIMEOUT: Duration = Duration::from_secs(2);

/// A device deleted, as its row read when it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    pub tenant_id: Uuid,
    pub id: Uuid,
    pub external_id: Option<String>,
}

/// A notification's payload (see migrations/009_device_notify.up.sql).
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Change {
    Changed {
        id: Uuid,
    },
    Deleted {
        id: Uuid,
        tenant_id: Uuid,
        external_id: Option<String>,
    },
    Type {
        id: Uuid,
    },
}

pub struct DeviceWatch {
    /// The processor's pool's, under a name of its own.
    options: PgConnectOptions,
    listener: Option<PgListener>,
    retry_at: Instant,
    backoff: Backoff,
}

impl DeviceWatch {
    /// Connects lazily (the first `sync`), with the options of the processor's pool.
    pub fn new(pool: &PgPool) -> DeviceWatch {
        DeviceWatch {
            // Named, so that an operator (or a test) can find it in pg_stat_activity.
            options: (*pool.connect_options())
                .clone()
                .application_name(APPLICATION_NAME),
            listener: None,
            retry_at: Instant::now(),
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
        }
    }

    /// Applies every change committed before this call to `cache` (or disables it, if the listener
    /// cannot be reached); returns the deletions among them.
    pub async fn sync(&mut self, cache: &mut DeviceCache) -> Vec<Deleted> {
        if self.listener.is_none() {
            if Instant::now() < self.retry_at {
                return Vec::new();
            }
            self.connect(cache).await;
        }
        let Some(listener) = self.listener.as_mut() else {
            return Vec::new();
        };
        let round_trip = sqlx::query("SELECT 1").execute(&mut *listener);
        match tokio::time::timeout(TIMEOUT, round_trip).await {
            Ok(Ok(_)) => {
                let mut deleted = Vec::new();
                while let Some(notification) = listener.next_buffered() {
                    deleted.extend(apply(cache, &notification));
                }
                deleted
            }
            Ok(Err(e)) => {
                self.lost(cache, &e.to_string());
                Vec::new()
            }
            Err(_) => {
                self.lost(cache, "no answer within 2 s");
                Vec::new()
            }
        }
    }

    /// Waits for the next notification and applies it; while not listening, waits until a
    /// reconnection is due and makes it. Cancel-safe (a cancelled reconnection is made by the
    /// next `sync`).
    pub async fn next(&mut self, cache: &mut DeviceCache) -> Vec<Deleted> {
        let Some(listener) = self.listener.as_mut() else {
            tokio::time::sleep_until(self.retry_at).await;
            self.connect(cache).await;
            return Vec::new();
        };
        match listener.try_recv().await {
            Ok(Some(notification)) => apply(cache, &notification).into_iter().collect(),
            Ok(None) => {
                self.lost(cache, "connection closed");
                Vec::new()
            }
            Err(e) => {
                self.lost(cache, &e.to_string());
                Vec::new()
            }
        }
    }

    async fn connect(&mut self, cache: &mut DeviceCache) {
        // A pool of one connection per listener, never taken from the processor's pool; and a
        // new one each time, so that a lost connection still being closed cannot hold it.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(TIMEOUT)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with(self.options.clone());
        let connected = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.eager_reconnect(false);
            listener.listen(CHANNEL).await?;
            // A standalone processor may meet a schema not yet migrated: nothing would announce
            // changes, and a cache would never learn of them.
            let announced: bool =
                sqlx::query_scalar("SELECT to_regproc('devices_notify') IS NOT NULL")
                    .fetch_one(&mut listener)
                    .await?;
            Ok::<_, sqlx::Error>(announced.then_some(listener))
        };
        match tokio::time::timeout(TIMEOUT, connected).await {
            Ok(Ok(Some(listener))) => {
                self.listener = Some(listener);
                self.backoff.reset();
                cache.set_enabled(true);
                tracing::info!("device cache: listening for changes");
            }
            Ok(Ok(None)) => self.lost(
                cache,
                "the schema is older than 009_device_notify (nothing announces changes)",
            ),
            Ok(Err(e)) => self.lost(cache, &e.to_string()),
            Err(_) => self.lost(cache, "no connection within 2 s"),
        }
    }

    fn lost(&mut self, cache: &mut DeviceCache, error: &str) {
        let was_listening = self.listener.take().is_some();
        cache.set_enabled(false);
        self.retry_at = Instant::now() + self.backoff.next_delay();
        if was_listening {
            tracing::warn!(
                error,
                "device cache: lost the change listener; devices are looked up for every batch until it is back"
            );
        } else {
            tracing::warn!(error, "device cache: cannot listen for changes; retrying");
        }
    }
}

/// Applies one notification; a deletion is returned to be announced.
fn apply(cache: &mut DeviceCache, notification: &PgNotification) -> Option<Deleted> {
    if notification.payload() == "*" {
        cache.clear();
        return None;
    }
    match serde_json::from_str::<Change>(notification.payload()) {
        Ok(Change::Changed { id }) => cache.evict(id),
        Ok(Change::Type { id }) => cache.evict_type(id),
        Ok(Change::Deleted {
            id,
            tenant_id,
            external_id,
        }) => {
            cache.evict(id);
            return Some(Deleted {
                tenant_id,
                id,
                external_id,
            });
        }
        Err(e) => {
            // Not ours to understand (a newer schema?): forgetting everything is always right.
            tracing::warn!(error = %e, payload = notification.payload(), "device cache: unknown notification; emptied");
            cache.clear();
        }
    }
    None
}
