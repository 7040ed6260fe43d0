//! What each long-lived part of this process is doing right now, for `GET /status`: the tasks
//! report their own transitions (connected, lost, retrying) as they happen, so the answer is
//! what they saw last, not a guess. Shared by `http` and `processor`, which never import each
//! other. The same states are exported as `gito_component_up{component}` for Prometheus.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;

/// The components a process may run; `Health` lists those it was built with.
pub const DATABASE: &str = "database";
pub const BROKER: &str = "broker";
pub const PROCESSOR: &str = "processor";
pub const LIVE: &str = "live";
pub const TOKEN_LISTENER: &str = "token_listener";
pub const ROLLUPS: &str = "rollups";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Up,
    /// Working, but not as it should: retrying after errors.
    Degraded,
    Down,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Component {
    /// `database`, `broker`, `processor`, `live`, `rollups` or `token_listener`.
    pub name: &'static str,
    pub state: State,
    /// When it entered this state (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    /// The last error it reported, kept after it recovered; `null` if none yet.
    pub last_error: Option<String>,
}

/// The processor's progress: its last commit, and the end-to-end lag of that batch's oldest message.
#[derive(Debug, Clone, Copy, Default, Serialize, ToSchema)]
pub struct Progress {
    /// When the last batch was committed; `null` before the first.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_commit_at: Option<OffsetDateTime>,
    /// Envelope `ts` → commit, of the last batch's oldest message, in seconds.
    pub lag_seconds: Option<f64>,
}

#[derive(Debug, Default)]
struct Inner {
    components: BTreeMap<&'static str, Component>,
    progress: Progress,
}

/// The components' states, cheap to clone and to update (one short lock per transition).
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<Mutex<Inner>>);

impl Health {
    /// Tracks `names`, each `down` (without an error) until it reports otherwise.
    pub fn new(names: &[&'static str]) -> Health {
        let health = Health::default();
        for name in names {
            health.set(name, State::Down, None);
        }
        health
    }

    pub fn up(&self, name: &'static str) {
        self.set(name, State::Up, None);
    }

    pub fn down(&self, name: &'static str, error: impl Display) {
        self.set(name, State::Down, Some(error.to_string()));
    }

    pub fn degraded(&self, name: &'static str, error: impl Display) {
        self.set(name, State::Degraded, Some(error.to_string()));
    }

    /// A batch was committed; `lag`: its oldest message's envelope `ts` to now.
    pub fn committed(&self, lag_seconds: f64) {
        let mut inner = self.lock();
        inner.progress = Progress {
            last_commit_at: Some(OffsetDateTime::now_utc()),
            lag_seconds: Some(lag_seconds),
        };
    }

    pub fn components(&self) -> Vec<Component> {
        self.lock().components.values().cloned().collect()
    }

    pub fn progress(&self) -> Progress {
        self.lock().progress
    }

    fn set(&self, name: &'static str, state: State, error: Option<String>) {
        let mut inner = self.lock();
        let now = OffsetDateTime::now_utc();
        let entry = inner.components.entry(name).or_insert(Component {
            name,
            state,
            since: now,
            last_error: None,
        });
        if entry.state != state {
            entry.state = state;
            entry.since = now;
        }
        if error.is_some() {
            entry.last_error = error;
        }
        metrics::gauge!("gito_component_up", "component" => name).set(if state == State::Up {
            1.0
        } else {
            0.0
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_moves_only_on_a_change_of_state_and_the_last_error_stays() {
        let health = Health::new(&[BROKER]);
        health.up(BROKER);
        let first = health.components()[0].clone();
        assert_eq!(first.state, State::Up);
        assert_eq!(first.last_error, None);
        health.up(BROKER);
        assert_eq!(health.components()[0].since, first.since);
        health.down(BROKER, "connection refused");
        health.down(BROKER, "still refused");
        let down = health.components()[0].clone();
        assert_eq!(down.state, State::Down);
        assert_eq!(down.last_error.as_deref(), Some("still refused"));
        assert!(down.since >= first.since);
    }
}
