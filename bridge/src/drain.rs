//! The drainers: each republishes its lane, oldest first, whenever it has records, asking the API
//! for the paths not known yet in batches, with backoff. The spool's drainer hands the bridge back
//! to direct forwarding once the spool is empty; the waiting lane's drainer (`waiting`) hands each
//! path back once its messages there are republished.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use uuid::Uuid;

use crate::api::ResolveError;
use crate::forwarder::Context;
use crate::mapping::Mapped;
use crate::metrics::DropReason;
use crate::spool::Record;
use gito_runtime::Backoff;

/// Records the drainer republishes per spool commit: as many new paths as one batch call takes.
const DRAIN_BATCH: usize = crate::api::MAX_BATCH;

/// Which of the two lanes a drainer empties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// `Context::spool`: everything behind a failure, in arrival order.
    Spool,
    /// `Context::waiting`: the messages of paths not known yet.
    Waiting,
}

/// Republishes `lane`, oldest first, whenever it has records.
pub async fn drain(ctx: Arc<Context>, lane: Lane, stop: CancellationToken) {
    let spool = match lane {
        Lane::Spool => ctx.spool.clone(),
        Lane::Waiting => ctx.waiting.lane.clone(),
    };
    let mut api_backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let (records, position) = match spool.read(DRAIN_BATCH).await {
            Ok(read) => read,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the spool");
                if sleep_or_stop(&stop, Duration::from_secs(1)).await {
                    return;
                }
                continue;
            }
        };
        if records.is_empty() {
            if spool.finish_if_empty() && lane == Lane::Spool {
                tracing::info!("spool drained; forwarding directly again");
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = spool.appended() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        if !republish(&ctx, lane, &records, &stop, &mut api_backoff).await {
            return;
        }
        // Retried rather than read again: what was republished is counted out of `waiting` once.
        while let Err(e) = spool.commit(position, records.len() as u64).await {
            tracing::error!(error = %e, "cannot commit the spool cursor; retrying");
            if sleep_or_stop(&stop, Duration::from_secs(1)).await {
                return;
            }
        }
    }
}

/// Republishes one read, oldest first: each record as soon as its device is known (the unknown
/// ones asked for together, retried until each is answered), never ahead of an earlier record of
/// its path — so a path the API answers is not held up by one over the budget or refused. A
/// record the API refuses is dropped and counted. A round the local broker does not acknowledge
/// whole is republished again. `false` at shutdown.
async fn republish(
    ctx: &Context,
    lane: Lane,
    records: &[Record],
    stop: &CancellationToken,
    api_backoff: &mut Backoff,
) -> bool {
    let mut devices: Vec<Option<Uuid>> = records.iter().map(|r| r.device_id).collect();
    let mut refused = vec![false; records.len()];
    let mut done = vec![false; records.len()];
    loop {
        let open: Vec<usize> = (0..records.len())
            .filter(|&i| !done[i] && !refused[i] && devices[i].is_none())
            .collect();
        let (mut over_budget, mut unavailable) = (false, false);
        if !open.is_empty() {
            let mapped: Vec<Mapped> = open.iter().map(|&i| records[i].mapped()).collect();
            let answers = ctx.resolver.resolve_many(&mapped, &ctx.metrics).await;
            for (i, answer) in open.into_iter().zip(answers) {
                match answer {
                    Ok(id) => devices[i] = Some(id),
                    Err(ResolveError::Rejected { status, body }) => {
                        refused[i] = true;
                        ctx.metrics.dropped(DropReason::ApiRejected, 1);
                        tracing::error!(%status, body, external_id = records[i].external_id, "the API refused the device; spooled message dropped");
                    }
                    Err(ResolveError::OverBudget) => over_budget = true,
                    Err(ResolveError::Unavailable(_)) => unavailable = true,
                }
            }
        }

        // This round: every record not done whose device is known (or refused), in order, none
        // behind an unanswered record of its path.
        let mut blocked: HashSet<&str> = HashSet::new();
        let mut round = Vec::new();
        let mut deliveries = Vec::new();
        for (i, record) in records.iter().enumerate() {
            let path = record.external_id.as_str();
            if done[i] || blocked.contains(path) {
                continue;
            }
            if refused[i] {
                round.push(i);
                continue;
            }
            let Some(id) = devices[i] else {
                blocked.insert(path);
                continue;
            };
            tokio::select! {
                () = stop.cancelled() => return false,
                (delivery, payload) = ctx.republish(id, record) => deliveries.push((id, delivery, payload)),
            }
            round.push(i);
        }
        let mut delivered = true;
        for (id, delivery, payload) in deliveries {
            tokio::select! {
                () = stop.cancelled() => return false,
                // Cancelled when the forwarder spilled meanwhile (the local connection was
                // lost): the round is then simply republished again.
                result = delivery => {
                    if result.is_ok() {
                        ctx.delivered(id, payload);
                    }
                    delivered &= result.is_ok();
                }
            }
        }
        if delivered {
            round.iter().for_each(|&i| done[i] = true);
            if lane == Lane::Waiting {
                ctx.waiting
                    .release(round.iter().map(|&i| records[i].external_id.as_str()));
            }
        }
        if done.iter().all(|d| *d) {
            return true;
        }
        if unavailable {
            if sleep_or_stop(stop, api_backoff.next_delay()).await {
                return false;
            }
        } else if delivered {
            api_backoff.reset();
            // The budget refills continuously: try again soon, without backing off.
            if over_budget && sleep_or_stop(stop, Duration::from_millis(100)).await {
                return false;
            }
        }
    }
}

/// Sleeps; `true` when `stop` fired first.
async fn sleep_or_stop(stop: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        () = stop.cancelled() => true,
        () = tokio::time::sleep(delay) => false,
    }
}
