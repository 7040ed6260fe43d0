//! Dead letters: messages the processor received but cannot store as they are. Each is kept as
//! received (topic and payload bytes) with a reason code and the error, once however often it is
//! redelivered (keyed by a digest of topic and payload), so that nothing acknowledged is silently
//! gone. `replay` runs them through the storing path again: a dead letter that stores is deleted in
//! the same transaction as its rows are written (and rows are idempotent), so a replayed message is
//! stored exactly once; one that still fails stays, with its new reason.

use std::collections::HashSet;

use gito_wire::Invalid;
use sha2::{Digest as _, Sha256};
use sqlx::{Connection as _, PgConnection, PgPool};
use uuid::Uuid;

use super::batch::{self, Telemetry};
use super::devices;
use super::failure::{self, is_transient};
use super::store::{self, Checked, Insert};

/// Why a message became a dead letter; `as_str` is what the table, the API and the counters say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Not `{tenant_id}/devices/{device_id}/telemetry`.
    InvalidTopic,
    /// Not a JSON envelope.
    InvalidEnvelope,
    NoMetrics,
    /// A metric name or text value that cannot be stored.
    InvalidMetric,
    /// No such device, or a device of another tenant than the topic's.
    UnknownDevice,
    /// The database refused a row: a constraint (SQLSTATE class 23).
    Constraint,
    /// The database refused a value (class 22, data exception).
    InvalidValue,
    /// Any other error that retrying the message as it is cannot fix.
    StoreFailed,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::InvalidTopic,
        Reason::InvalidEnvelope,
        Reason::NoMetrics,
        Reason::InvalidMetric,
        Reason::UnknownDevice,
        Reason::Constraint,
        Reason::InvalidValue,
        Reason::StoreFailed,
    ];

    /// The outcome in `gito_processor_messages_total`: `dropped_<reason>` for what was refused
    /// before storing (invalid, an unknown device), `dead_lettered` for what the database refused.
    pub fn outcome(self) -> &'static str {
        match self {
            Reason::InvalidTopic => "dropped_invalid_topic",
            Reason::InvalidEnvelope => "dropped_invalid_envelope",
            Reason::NoMetrics => "dropped_no_metrics",
            Reason::InvalidMetric => "dropped_invalid_metric",
            Reason::UnknownDevice => "dropped_unknown_device",
            Reason::Constraint | Reason::InvalidValue | Reason::StoreFailed => "dead_lettered",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidTopic => "invalid_topic",
            Reason::InvalidEnvelope => "invalid_envelope",
            Reason::NoMetrics => "no_metrics",
            Reason::InvalidMetric => "invalid_metric",
            Reason::UnknownDevice => "unknown_device",
            Reason::Constraint => "constraint",
            Reason::InvalidValue => "invalid_value",
            Reason::StoreFailed => "store_failed",
        }
    }

    pub fn parse(code: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == code)
    }

    /// The reason for a database error caused by the data (see `failure::is_transient`).
    pub fn of_error(error: &sqlx::Error) -> Reason {
        let code = error.as_database_error().and_then(|e| e.code());
        match code.as_deref().map(|c| c.get(..2).unwrap_or(c)) {
            Some("23") => Reason::Constraint,
            Some("22") => Reason::InvalidValue,
            _ => Reason::StoreFailed,
        }
    }
}

impl From<Invalid> for Reason {
    fn from(invalid: Invalid) -> Reason {
        match invalid {
            Invalid::Topic => Reason::InvalidTopic,
            Invalid::Envelope => Reason::InvalidEnvelope,
            Invalid::NoMetrics => Reason::NoMetrics,
            Invalid::Metric => Reason::InvalidMetric,
        }
    }
}

pub const UNKNOWN_DEVICE: &str = "no such device in the topic's tenant";

/// A message to keep, as received.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub topic: String,
    pub payload: Vec<u8>,
    pub reason: Reason,
    pub error: String,
}

/// The tenant a topic names, if it starts with an id.
pub fn tenant_of(topic: &str) -> Option<Uuid> {
    topic
        .split('/')
        .next()
        .and_then(|s| Uuid::try_parse(s).ok())
}

fn digest(topic: &str, payload: &[u8]) -> Vec<u8> {
    // MQTT topics hold no NUL: topic, NUL, payload is unambiguous.
    let mut hasher = Sha256::new();
    hasher.update(topic.as_bytes());
    hasher.update([0]);
    hasher.update(payload);
    hasher.finalize().to_vec()
}

/// PostgreSQL text holds no NUL.
fn text(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

/// Keeps `letters`; one already kept (a redelivery) gets the new reason and error and counts one
/// more failure. The tenant is recorded if it exists.
pub async fn write(conn: &mut PgConnection, letters: &[DeadLetter]) -> Result<(), sqlx::Error> {
    let mut seen = HashSet::new();
    let (mut ids, mut tenants, mut topics, mut payloads, mut digests, mut reasons, mut errors) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for letter in letters {
        let digest = digest(&letter.topic, &letter.payload);
        // One statement may not update a row twice.
        if !seen.insert(digest.clone()) {
            continue;
        }
        ids.push(Uuid::now_v7());
        tenants.push(tenant_of(&letter.topic));
        topics.push(text(&letter.topic));
        payloads.push(letter.payload.clone());
        digests.push(digest);
        reasons.push(letter.reason.as_str().to_owned());
        errors.push(text(&letter.error));
    }
    sqlx::query!(
        "INSERT INTO dead_letters (id, tenant_id, topic, payload, digest, reason, error)
         SELECT v.id, t.id, v.topic, v.payload, v.digest, v.reason, v.error
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::bytea[], $5::bytea[], $6::text[], $7::text[])
              AS v(id, tenant_id, topic, payload, digest, reason, error)
         LEFT JOIN tenants t ON t.id = v.tenant_id
         ON CONFLICT (digest) DO UPDATE
             SET reason = EXCLUDED.reason, error = EXCLUDED.error,
                 failures = dead_letters.failures + 1, last_failed_at = now()",
        &ids,
        &tenants as &[Option<Uuid>],
        &topics,
        &payloads,
        &digests,
        &reasons,
        &errors
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// What a replay did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    /// Dead letters tried: `stored + still_failing`.
    pub replayed: i64,
    /// Stored, and so no longer dead letters.
    pub stored: i64,
    /// Failed again; kept, with the reason of this attempt.
    pub still_failing: i64,
}

/// Dead letters locked and replayed per transaction.
const CHUNK: i64 = 100;

/// Replays up to `limit` of the tenant's dead letters (those of `reason` only, if given), oldest
/// first. Alert rules are evaluated for what is stored, but the changes are not announced live
/// (this runs in the API, which does not publish). An error only for a database that cannot be
/// reached: the chunk at hand is then left as it was.
pub async fn replay(
    pool: &PgPool,
    tenant_id: Uuid,
    reason: Option<Reason>,
    limit: i64,
    retention_days: Option<u32>,
) -> Result<Replayed, sqlx::Error> {
    let mut done = Replayed::default();
    let mut after: Option<Uuid> = None;
    while done.replayed < limit {
        let mut tx = pool.begin().await?;
        // SKIP LOCKED: two replays at once share the work instead of storing anything twice.
        let letters = sqlx::query!(
            "SELECT id, topic, payload FROM dead_letters
             WHERE tenant_id = $1 AND ($2::text IS NULL OR reason = $2) AND ($3::uuid IS NULL OR id > $3)
             ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED",
            tenant_id,
            reason.map(Reason::as_str),
            after,
            CHUNK.min(limit - done.replayed)
        )
        .fetch_all(&mut *tx)
        .await?;
        let Some(last) = letters.last() else { break };
        after = Some(last.id);
        let parsed: Vec<Result<Telemetry, Invalid>> = letters
            .iter()
            .map(|l| batch::parse(&l.topic, &l.payload))
            .collect();
        let ids: Vec<Uuid> = parsed.iter().flatten().map(|t| t.topic.device_id).collect();
        let known = devices::fetch(&mut *tx, &ids).await?;
        for (letter, parsed) in letters.iter().zip(&parsed) {
            let failed = match parsed {
                Err(invalid) => Some((Reason::from(*invalid), invalid.to_string())),
                Ok(t) => match known
                    .get(&t.topic.device_id)
                    .filter(|d| d.tenant_id == t.topic.tenant_id)
                {
                    None => Some((Reason::UnknownDevice, UNKNOWN_DEVICE.to_owned())),
                    Some(device) => {
                        let checked = Checked {
                            device_id: t.topic.device_id,
                            envelope: &t.envelope,
                            device,
                        };
                        // A savepoint: a failing message leaves the others' work in place.
                        let mut savepoint = tx.begin().await?;
                        match store::store(
                            &mut savepoint,
                            &[checked],
                            retention_days,
                            Insert::Merge,
                        )
                        .await
                        {
                            Ok(_) => {
                                savepoint.commit().await?;
                                None
                            }
                            Err(e) if is_transient(&e) => return Err(e),
                            Err(e) => {
                                savepoint.rollback().await?;
                                Some((Reason::of_error(&e), failure::describe(&e)))
                            }
                        }
                    }
                },
            };
            done.replayed += 1;
            match failed {
                None => {
                    sqlx::query!("DELETE FROM dead_letters WHERE id = $1", letter.id)
                        .execute(&mut *tx)
                        .await?;
                    done.stored += 1;
                }
                Some((reason, error)) => {
                    sqlx::query!(
                        "UPDATE dead_letters SET reason = $2, error = $3, failures = failures + 1,
                                last_failed_at = now()
                         WHERE id = $1",
                        letter.id,
                        reason.as_str(),
                        text(&error)
                    )
                    .execute(&mut *tx)
                    .await?;
                    done.still_failing += 1;
                }
            }
        }
        tx.commit().await?;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_read_back_and_name_the_wire_reasons() {
        for reason in Reason::ALL {
            assert_eq!(Reason::parse(reason.as_str()), Some(reason));
        }
        for invalid in [
            Invalid::Topic,
            Invalid::Envelope,
            Invalid::NoMetrics,
            Invalid::Metric,
        ] {
            assert_eq!(Reason::from(invalid).as_str(), invalid.as_str());
        }
        assert_eq!(Reason::parse("nonsense"), None);
    }

    #[test]
    fn the_tenant_is_the_topics_first_level_when_it_is_an_id() {
        let tenant = Uuid::now_v7();
        assert_eq!(
            tenant_of(&format!("{tenant}/devices/x/telemetry")),
            Some(tenant)
        );
        assert_eq!(tenant_of(&format!("{tenant}")), Some(tenant));
        assert_eq!(tenant_of("plant/boiler"), None);
    }

    #[test]
    fn the_digest_tells_topic_and_payload_apart() {
        assert_ne!(digest("a/b", b"c"), digest("a/", b"bc"));
        assert_eq!(digest("a", b"x").len(), 32);
    }
}
