//! The drainer: republishes the spool, oldest first, whenever it has records, retrying the API
//! with backoff, and hands the bridge back to direct forwarding once the spool is empty.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::api::ResolveError;
use crate::forwarder::Context;
use crate::metrics::DropReason;
use gito_runtime::Backoff;

/// Records the drainer republishes per spool commit.
const DRAIN_BATCH: usize = 500;

/// Republishes the spool, oldest first, whenever it has records.
pub async fn drain(ctx: Arc<Context>, stop: CancellationToken) {
    let mut api_backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let (records, position) = match ctx.spool.read(DRAIN_BATCH).await {
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
            if ctx.spool.finish_if_empty() {
                tracing::info!("spool drained; forwarding directly again");
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = ctx.spool.appended() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        let mut deliveries = Vec::with_capacity(records.len());
        for record in &records {
            let device_id = loop {
                if let Some(id) = record.device_id {
                    break Some(id);
                }
                match ctx.resolver.resolve(&record.mapped(), &ctx.metrics).await {
                    Ok(id) => {
                        api_backoff.reset();
                        break Some(id);
                    }
                    Err(ResolveError::Rejected { status, body }) => {
                        ctx.metrics.dropped(DropReason::ApiRejected, 1);
                        tracing::error!(%status, body, external_id = record.external_id, "the API refused the device; spooled message dropped");
                        break None;
                    }
                    Err(ResolveError::OverBudget) => {
                        // Refills continuously: try again soon, without backing off.
                        if sleep_or_stop(&stop, Duration::from_millis(100)).await {
                            return;
                        }
                    }
                    Err(ResolveError::Unavailable(_)) => {
                        if sleep_or_stop(&stop, api_backoff.next_delay()).await {
                            return;
                        }
                    }
                }
            };
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
        if let Err(e) = ctx.spool.commit(position, records.len() as u64).await {
            tracing::error!(error = %e, "cannot commit the spool cursor; the batch will be republished");
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
