//! A poison backlog: while the processor is down, good readings interleaved with enormous
//! envelopes (thousands of metrics each) and readings of a device deleted meanwhile. When it
//! starts, every good reading is stored once, every enormous one is stored whole or
//! dead-lettered, and every reading of the deleted device is dead-lettered — exact counts.

use std::time::{Duration, Instant};

use crate::publisher::{Plan, Publisher};
use crate::stack::{Options, Stack};
use crate::turn;

const HUGE: u64 = 40;
const HUGE_METRICS: usize = 5000;
const DOOMED: u64 = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_backlog_stores_every_good_reading_and_dead_letters_the_rest() {
    let _turn = turn().await;
    let mut stack = Stack::start(Options::default()).await;
    let good = Plan::new("POISONGOOD", 10, 1000, 1000);
    let devices = Publisher::connect(&stack.external.url()).await;
    // Every device path known (and cached by the bridge) before the processor goes away: the
    // first good reading of each device, and one reading of the others.
    for seq in 0..good.devices {
        devices.publish(&good.topic(seq), seq.to_string()).await;
    }
    devices.publish("POISONDOOMED/D000/v", "0").await;
    devices.publish("POISONHUGE/H000/v", "0").await;
    stack.wait_stored(good.prefix, good.devices).await;
    stack.wait_stored("POISONDOOMED", 1).await;
    stack.wait_stored("POISONHUGE", 1).await;
    let doomed_id = stack
        .device_id("POISONDOOMED/D000")
        .await
        .expect("the doomed device");
    let republished = "gito_bridge_republished_total";
    let before = stack.bridge_metric(republished).await.unwrap_or(0);

    stack.stop_api().await;
    // Deleted behind everyone's back (psql): the bridge still has it cached.
    sqlx::query("DELETE FROM devices WHERE id = $1")
        .bind(doomed_id)
        .execute(&stack.pool)
        .await
        .expect("delete the doomed device");

    let (mut huge_sent, mut doomed_sent) = (0, 0);
    for seq in good.devices..good.count {
        devices.publish(&good.topic(seq), seq.to_string()).await;
        if seq % (good.count / DOOMED) == good.devices {
            devices
                .publish("POISONDOOMED/D000/v", (1 + seq).to_string())
                .await;
            doomed_sent += 1;
        }
        if seq % (good.count / HUGE) == good.devices {
            let metrics: Vec<String> = (0..HUGE_METRICS)
                .map(|m| format!("\"m{m:05}\":{seq}"))
                .collect();
            devices
                .publish("POISONHUGE/H000/x", format!("{{{}}}", metrics.join(",")))
                .await;
            huge_sent += 1;
        }
    }
    let total = good.count - good.devices + doomed_sent + huge_sent;
    // All of it republished to the local broker, where it waits for the processor.
    stack
        .wait_bridge_metric(republished, before + total, Duration::from_secs(60))
        .await;

    let started = Instant::now();
    stack.start_api().await;
    devices.finish().await;
    let report = stack.settle(good.prefix, &good.all()).await;
    let took = started.elapsed();

    // The enormous ones: stored whole (HUGE_METRICS rows each) or dead-lettered.
    let huge_rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM telemetry t JOIN devices d ON d.id = t.device_id
          WHERE d.tenant_id = $1 AND d.external_id = 'POISONHUGE/H000' AND t.metric LIKE 'm%'",
    )
    .bind(stack.tenant)
    .fetch_one(&stack.pool)
    .await
    .expect("count the enormous rows");
    let dead = stack.dead_letters().await;
    let dead_huge = dead
        .iter()
        .flatten()
        .filter(|d| d.metrics >= HUGE_METRICS)
        .count();
    let dead_doomed = dead
        .iter()
        .flatten()
        .filter(|d| d.source_topic.as_deref() == Some("POISONDOOMED/D000/v"))
        // Reading 0 was stored before the deletion; if the processor's ack of it had not
        // reached the broker when it stopped, it comes back (at least once) and is dead-lettered
        // then, rightly: its device is gone. The readings counted are those sent after it.
        .filter(|d| d.value != Some(0.0))
        .count();
    let mut reasons = std::collections::BTreeMap::<&str, usize>::new();
    for letter in dead.iter().flatten() {
        *reasons.entry(letter.reason.as_str()).or_default() += 1;
    }
    let stored_huge = huge_rows as usize / HUGE_METRICS;
    let scenario = format!(
        "poison backlog ({:.1} s to store; enormous envelopes: {huge_sent} sent, {stored_huge} stored \
         whole ({huge_rows} rows), {dead_huge} dead-lettered; deleted device: {doomed_sent} sent, \
         {} dead-lettered; dead letters by reason {reasons:?})",
        took.as_secs_f64(),
        if dead.is_some() {
            dead_doomed.to_string()
        } else {
            "no dead_letters table:".to_owned() + " 0"
        }
    );
    report.print(&scenario);
    report.assert_exact(&scenario);
    assert_eq!(
        huge_rows as usize % HUGE_METRICS,
        0,
        "an enormous envelope stored in part: {scenario}"
    );
    assert_eq!(
        stored_huge + dead_huge,
        huge_sent as usize,
        "every enormous envelope stored or dead-lettered: {scenario}"
    );
    assert_eq!(
        dead_doomed as u64, doomed_sent,
        "every reading of the deleted device dead-lettered: {scenario}"
    );
}
