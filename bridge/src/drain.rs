//! The drainers: each republishes its lane, oldest first, whenever it has records, asking the API
//! for the paths not known yet in batches, with backoff. The spool's drainer hands the bridge back
//! to direct forwarding once the spool is empty; the waiting lane's drainer (`waiting`) hands each
//! path back once its messages there are republished.

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
        let Some(devices) = resolve_all(&ctx, &records, &stop, &mut api_backoff).await else {
            return;
        };
        let mut deliveries = Vec::with_capacity(records.len());
        for (record, device_id) in records.iter().zip(devices) {
            if let Some(id) = device_id {
                tokio::select! {
                    () = stop.cancelled() => return,
                    (delivery, payload) = ctx.republish(id, record) => deliveries.push((id, delivery, payload)),
                }
            }
        }
        let mut delivered = true;
        for (id, delivery, payload) in deliveries {
            tokio::select! {
                () = stop.cancelled() => return,
                // Cancelled when the forwarder spilled meanwhile (the local connection was
                // lost): the batch is then simply republished again.
                result = delivery => {
                    if result.is_ok() {
                        ctx.delivered(id, payload);
                    }
                    delivered &= result.is_ok();
                }
            }
        }
        if !delivered {
            continue;
        }
        match spool.commit(position, records.len() as u64).await {
            Ok(()) if lane == Lane::Waiting => ctx.waiting.release(&records),
            Ok(()) => {}
            Err(e) => {
                tracing::error!(error = %e, "cannot commit the spool cursor; the batch will be republished")
            }
        }
    }
}

/// The device of each record (`None`: the API refused it, the record is dropped and counted),
/// the unknown ones asked for together, retried until each is answered; `None` at shutdown.
async fn resolve_all(
    ctx: &Context,
    records: &[Record],
    stop: &CancellationToken,
    api_backoff: &mut Backoff,
) -> Option<Vec<Option<Uuid>>> {
    let mut devices: Vec<Option<Uuid>> = records.iter().map(|r| r.device_id).collect();
    // The records still without an answer.
    let mut open: Vec<usize> = (0..records.len())
        .filter(|&i| devices[i].is_none())
        .collect();
    while !open.is_empty() {
        let mapped: Vec<Mapped> = open.iter().map(|&i| records[i].mapped()).collect();
        let answers = ctx.resolver.resolve_many(&mapped, &ctx.metrics).await;
        let (mut over_budget, mut unavailable) = (false, false);
        let mut still = Vec::new();
        for (i, answer) in open.into_iter().zip(answers) {
            match answer {
                Ok(id) => devices[i] = Some(id),
                Err(ResolveError::Rejected { status, body }) => {
                    let record = &records[i];
                    ctx.metrics.dropped(DropReason::ApiRejected, 1);
                    tracing::error!(%status, body, external_id = record.external_id, "the API refused the device; spooled message dropped");
                }
                Err(ResolveError::OverBudget) => {
                    over_budget = true;
                    still.push(i);
                }
                Err(ResolveError::Unavailable(_)) => {
                    unavailable = true;
                    still.push(i);
                }
            }
        }
        open = still;
        if unavailable {
            if sleep_or_stop(stop, api_backoff.next_delay()).await {
                return None;
            }
        } else {
            api_backoff.reset();
            // The budget refills continuously: try again soon, without backing off.
            if over_budget && sleep_or_stop(stop, Duration::from_millis(100)).await {
                return None;
            }
        }
    }
    Some(devices)
}

/// Sleeps; `true` when `stop` fired first.
async fn sleep_or_stop(stop: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        () = stop.cancelled() => true,
        () = tokio::time::sleep(delay) => false,
    }
}
