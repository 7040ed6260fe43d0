//! Tenant tokens seen recently, so that authenticating a request costs no database round trip
//! (it halved the throughput of the cheapest routes). Revocation stays immediate:
//!
//! - deleting (or changing) a token fires `NOTIFY gito_api_tokens` from a trigger (migration 007),
//!   whoever deletes it: the API, `psql`, a tenant's cascade;
//! - every replica listens on its own connection and evicts the key;
//! - the replica that revokes evicts before it answers, so its own next request is refused;
//! - while the listener is not connected, the cache is empty and bypassed: a missed notification
//!   can never leave a revoked token usable. A connection that died without a word (half-open
//!   TCP) is found by a heartbeat (`SELECT 1` every 5 s, answered within 3 s).
//!
//! An entry is only added if no eviction happened since the database was read, so a lookup that
//! raced with a revocation cannot put the revoked token back.
//!
//! Open WebSockets are told too (`watch`): of every eviction of their key, and, while the listener
//! is down (and once when it is back, for what it may have missed), of the tokens a sweep of the
//! database found gone, every second.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use gito_runtime::Backoff;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::{Notify, broadcast};
use tokio::time::{Instant, MissedTickBehavior, timeout};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::auth::Sha256Digest;
use crate::status::{Health, TOKEN_LISTENER};

pub const CHANNEL: &str = "gito_api_tokens";
/// The listener connection's `application_name` (unless DATABASE_URL names one).
pub const APPLICATION_NAME: &str = "gito-api token-listener";
/// Past this many entries the cache starts over (a bound, not an eviction policy: tokens are few).
const MAX_ENTRIES: usize = 100_000;
/// How often the listener's connection must prove it is alive, and how long it may take.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);
/// Connecting and subscribing, at most.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// While not listening: how often the tokens of open WebSockets are looked up, and for how long.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);
const SWEEP_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
pub struct Cached {
    pub tenant_id: Uuid,
    pub secret_sha256: Sha256Digest,
}

/// What an open WebSocket hears about tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// This key was evicted (deleted, or changed): look it up again.
    Evicted(Arc<str>),
    /// A sweep of the database did not find this key: it is revoked.
    Gone(Arc<str>),
    /// The listener is down and the database did not answer a sweep: no token can be vouched for.
    Unverifiable,
}

#[derive(Debug)]
pub struct TokenCache {
    entries: RwLock<HashMap<String, Cached>>,
    listening: AtomicBool,
    /// Bumped by every eviction and clear.
    generation: AtomicU64,
    revocations: broadcast::Sender<Revocation>,
    /// Keys of open WebSockets, and how many sockets hold each.
    watched: Mutex<HashMap<Arc<str>, usize>>,
    sweep_now: Notify,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache {
            entries: RwLock::default(),
            listening: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            revocations: broadcast::channel(1024).0,
            watched: Mutex::default(),
            sweep_now: Notify::new(),
        }
    }
}

/// A WebSocket's registration for news of its token; unregisters when dropped.
#[derive(Debug)]
pub struct Watch {
    cache: Arc<TokenCache>,
    key_id: Arc<str>,
    pub revocations: broadcast::Receiver<Revocation>,
}

impl Watch {
    pub fn key_id(&self) -> &str {
        &self.key_id
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut watched = self.cache.watched.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = watched.get_mut(&self.key_id) {
            *count -= 1;
            if *count == 0 {
                watched.remove(&self.key_id);
            }
        }
    }
}

impl TokenCache {
    /// The token behind `key_id`, if cached while the listener is connected.
    pub fn get(&self, key_id: &str) -> Option<Cached> {
        if !self.is_listening() {
            return None;
        }
        let found = self
            .entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key_id)
            .copied();
        crate::metrics::cache_lookups(
            "token",
            usize::from(found.is_some()),
            usize::from(found.is_none()),
        );
        found
    }

    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    /// Call before reading the database; pass the value to `insert`.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn insert(&self, key_id: &str, token: Cached, read_at: u64) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        // Under the write lock: an eviction either happened before (generation moved: skip) or
        // waits for us and removes what we insert.
        if !self.is_listening() || self.generation() != read_at {
            return;
        }
        if entries.len() >= MAX_ENTRIES {
            crate::metrics::cache_evicted("token", entries.len());
            entries.clear();
        }
        entries.insert(key_id.to_owned(), token);
    }

    pub fn evict(&self, key_id: &str) {
        {
            let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
            self.generation.fetch_add(1, Ordering::AcqRel);
            if entries.remove(key_id).is_some() {
                crate::metrics::cache_evicted("token", 1);
            }
        }
        // Told after the eviction, so a socket that looks its token up again reads the database.
        if let Some(key_id) = self.watched_key(key_id) {
            let _ = self.revocations.send(Revocation::Evicted(key_id));
        }
    }

    /// Registers a WebSocket opened with `key_id`. Subscribe before checking the token once
    /// more, so that no revocation can fall between the check and the subscription.
    pub fn watch(self: &Arc<Self>, key_id: &str) -> Watch {
        let revocations = self.revocations.subscribe();
        let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        let key_id = match watched.get_key_value(key_id) {
            Some((key, _)) => key.clone(),
            None => Arc::from(key_id),
        };
        *watched.entry(key_id.clone()).or_default() += 1;
        Watch {
            cache: self.clone(),
            key_id,
            revocations,
        }
    }

    fn watched_key(&self, key_id: &str) -> Option<Arc<str>> {
        let watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        watched.get_key_value(key_id).map(|(key, _)| key.clone())
    }

    fn watched_keys(&self) -> Vec<Arc<str>> {
        let watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        watched.keys().cloned().collect()
    }

    fn reset(&self, listening: bool) {
        {
            let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
            self.generation.fetch_add(1, Ordering::AcqRel);
            entries.clear();
            self.listening.store(listening, Ordering::Release);
        }
        // Listening again, or told to forget everything, or deaf from now on: whatever was
        // revoked meanwhile is only in the database.
        self.sweep_now.notify_one();
    }
}

/// Keeps `cache` in step with the database until `shutdown` (run it as a supervised task):
/// without it the cache stays empty and every request reads the database. The listener has a
/// connection of its own (`options`); sweeps use `pool`.
pub async fn listen(
    cache: Arc<TokenCache>,
    options: PgConnectOptions,
    pool: PgPool,
    health: Health,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    tokio::select! {
        () = shutdown.cancelled() => Ok(()),
        () = keep_listening(&cache, options, &health) => Ok(()),
        () = sweep(&cache, &pool) => Ok(()),
    }
}

async fn keep_listening(cache: &TokenCache, options: PgConnectOptions, health: &Health) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        // A pool of one, for this listener alone: when it is abandoned, the pool is closed first,
        // so its connection is closed rather than pinged (which a dead peer would never answer).
        let own = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(CONNECT_TIMEOUT)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with(options.clone());
        let subscribed = timeout(CONNECT_TIMEOUT, async {
            let mut listener = PgListener::connect_with(&own).await?;
            // Report a lost connection at once rather than reconnect behind our back.
            listener.eager_reconnect(false);
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        })
        .await;
        match subscribed {
            Ok(Ok(mut listener)) => {
                backoff.reset();
                cache.reset(true);
                health.up(TOKEN_LISTENER);
                let lost = relay(cache, &mut listener).await;
                cache.reset(false);
                health.down(TOKEN_LISTENER, &lost);
                tracing::warn!(reason = %lost, "token cache: lost the revocation listener; tokens are looked up on every request until it is back");
                abandon(&own);
                drop(listener);
            }
            Ok(Err(e)) => {
                health.down(TOKEN_LISTENER, &e);
                tracing::warn!(error = %e, "token cache: cannot listen for revocations; tokens are looked up on every request");
            }
            Err(_) => {
                health.down(TOKEN_LISTENER, "connecting timed out");
                tracing::warn!(
                    timeout_s = CONNECT_TIMEOUT.as_secs(),
                    "token cache: connecting the revocation listener timed out; tokens are looked up on every request"
                );
            }
        }
        abandon(&own);
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Marks the listener's pool closed, at once: its connection is then closed when returned, not
/// pinged first. Nothing to wait for (the returned future only waits for that to be done).
fn abandon(pool: &PgPool) {
    drop(pool.close());
}

/// Relays notifications to the cache until the connection is lost or fails its heartbeat;
/// returns why it stopped.
async fn relay(cache: &TokenCache, listener: &mut PgListener) -> String {
    let mut heartbeat = tokio::time::interval_at(Instant::now() + HEARTBEAT_EVERY, HEARTBEAT_EVERY);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            received = listener.try_recv() => match received {
                Ok(Some(notification)) if notification.payload() == "*" => cache.reset(true),
                Ok(Some(notification)) => cache.evict(notification.payload()),
                // The connection was lost: notifications may have been missed meanwhile.
                Ok(None) => return "the connection was closed".to_owned(),
                Err(e) => return e.to_string(),
            },
            _ = heartbeat.tick() => {
                // On the listener's own connection: only an answer there proves it still hears.
                let alive = timeout(HEARTBEAT_TIMEOUT, sqlx::query!("SELECT 1 AS alive").fetch_one(&mut *listener)).await;
                match alive {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return format!("heartbeat failed: {e}"),
                    Err(_) => return format!("no answer to the heartbeat within {}s", HEARTBEAT_TIMEOUT.as_secs()),
                }
            }
        }
    }
}

/// While not listening (and once whenever the cache is reset), looks up the keys of open
/// WebSockets and announces those that are gone; if the database does not answer, announces that
/// nothing can be vouched for.
async fn sweep(cache: &TokenCache, pool: &PgPool) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => if cache.is_listening() { continue },
            () = cache.sweep_now.notified() => {}
        }
        let keys = cache.watched_keys();
        if keys.is_empty() {
            continue;
        }
        let names: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        let present = timeout(
            SWEEP_TIMEOUT,
            sqlx::query_scalar!(
                "SELECT key_id FROM api_tokens WHERE key_id = ANY($1)",
                &names
            )
            .fetch_all(pool),
        )
        .await;
        match present {
            Ok(Ok(present)) => {
                let present: HashSet<String> = present.into_iter().collect();
                for key in keys.into_iter().filter(|k| !present.contains(&**k)) {
                    let _ = cache.revocations.send(Revocation::Gone(key));
                }
                if std::mem::take(&mut failing) {
                    tracing::info!("token cache: the database answers the token sweep again");
                }
            }
            failed => {
                let _ = cache.revocations.send(Revocation::Unverifiable);
                if !std::mem::replace(&mut failing, true) {
                    let error = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer within {}s", SWEEP_TIMEOUT.as_secs()),
                    };
                    tracing::warn!(%error, "token cache: cannot look up the tokens of open WebSockets; closing them");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> Cached {
        Cached {
            tenant_id: Uuid::now_v7(),
            secret_sha256: [7; 32],
        }
    }

    #[test]
    fn nothing_is_cached_unless_listening() {
        let cache = TokenCache::default();
        cache.insert("k", token(), cache.generation());
        assert!(cache.get("k").is_none());
        cache.reset(true);
        cache.insert("k", token(), cache.generation());
        assert!(cache.get("k").is_some());
        cache.reset(false);
        assert!(cache.get("k").is_none());
    }

    #[test]
    fn a_lookup_that_raced_with_an_eviction_is_not_cached() {
        let cache = TokenCache::default();
        cache.reset(true);
        let read_at = cache.generation();
        cache.evict("k");
        cache.insert("k", token(), read_at);
        assert!(cache.get("k").is_none());
        cache.insert("k", token(), cache.generation());
        cache.evict("k");
        assert!(cache.get("k").is_none());
    }

    #[tokio::test]
    async fn watchers_hear_of_their_evictions_and_unregister_when_dropped() {
        let cache = Arc::new(TokenCache::default());
        let mut first = cache.watch("k");
        let second = cache.watch("k");
        cache.evict("other");
        cache.evict("k");
        assert_eq!(
            first.revocations.try_recv(),
            Ok(Revocation::Evicted("k".into()))
        );
        assert!(first.revocations.try_recv().is_err());
        drop(second);
        assert_eq!(cache.watched_keys(), [Arc::<str>::from("k")]);
        drop(first);
        assert!(cache.watched_keys().is_empty());
    }
}
