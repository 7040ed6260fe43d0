//! The series gito-api records, described once (HELP lines, units) and the few helpers that more
//! than one layer calls. Labels are bounded by construction: route templates, outcomes and
//! reasons from fixed lists, cache names; never a tenant, device or topic. The call sites record
//! with the `metrics` macros, one line per event; docs/OPERATIONS.md lists every series.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// HELP and unit of every series, so a scrape explains itself. Idempotent.
pub fn describe() {
    describe_counter!(
        "gito_http_requests_total",
        "HTTP requests answered, by route template, method and status"
    );
    describe_histogram!(
        "gito_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency, by route template and method"
    );
    describe_gauge!(
        "gito_http_requests_in_flight",
        "HTTP requests being answered"
    );
    describe_counter!(
        "gito_processor_messages_total",
        "Messages the processor finished, by outcome: stored, duplicate, dropped_<reason> (invalid or of an unknown device), dead_lettered (refused by the database)"
    );
    describe_gauge!(
        "gito_telemetry_default_partition_rows",
        "Telemetry rows in the default partition: event times no partition covers (far future or past)"
    );
    describe_counter!(
        "gito_retention_rows_deleted_total",
        "Expired telemetry rows deleted in batches (tenants keeping less than the longest retention)"
    );
    describe_counter!(
        "gito_retention_partitions_dropped_total",
        "Telemetry partitions dropped because every tenant's data in them expired"
    );
    describe_gauge!(
        "gito_rollup_behind_seconds",
        Unit::Seconds,
        "How far behind now the rollup follower's minute edge was after its last step (GITO_ROLLUP_LAG plus up to a minute when it keeps up)"
    );
    describe_counter!(
        "gito_rollup_minutes_total",
        "Minutes of raw telemetry the rollup follower rolled up"
    );
    describe_counter!(
        "gito_rollup_late_minutes_total",
        "Minutes the rollup follower recomputed because late samples arrived in them"
    );
    describe_counter!(
        "gito_processor_rows_stored_total",
        "Telemetry rows inserted"
    );
    describe_counter!(
        "gito_processor_rows_duplicate_total",
        "Telemetry rows already stored (redeliveries, replays)"
    );
    describe_counter!(
        "gito_processor_rows_expired_total",
        "Telemetry rows not stored: older than their tenant's retention when they arrived"
    );
    describe_counter!(
        "gito_processor_dead_letters_total",
        "Messages kept as dead letters, by reason"
    );
    describe_histogram!("gito_processor_batch_size", "Messages per batch");
    describe_histogram!(
        "gito_processor_commit_duration_seconds",
        Unit::Seconds,
        "Time to store one batch's transaction"
    );
    describe_histogram!(
        "gito_processor_lag_seconds",
        Unit::Seconds,
        "End-to-end lag: envelope ts to commit, per message"
    );
    describe_counter!(
        "gito_processor_db_errors_total",
        "Database failures retried by the processor"
    );
    describe_gauge!(
        "gito_processor_broker_connected",
        "1 while the processor is connected to the local broker"
    );
    describe_counter!(
        "gito_processor_broker_reconnects_total",
        "Times the processor lost the local broker"
    );
    describe_counter!(
        "gito_processor_redeliveries_total",
        "Messages the broker delivered again (MQTT DUP flag)"
    );
    describe_gauge!("gito_live_clients", "Open WebSocket clients");
    describe_counter!(
        "gito_live_events_sent_total",
        "Events sent to WebSocket clients"
    );
    describe_counter!(
        "gito_live_events_dropped_total",
        "Live events (alerts, connectivity) not announced: the broker connection's queue was full"
    );
    describe_counter!(
        "gito_live_clients_dropped_total",
        "WebSocket clients disconnected by the server, by reason: lagged, stalled, revoked"
    );
    describe_counter!(
        "gito_cache_hits_total",
        "Cache lookups answered from memory, by cache (token, device)"
    );
    describe_counter!(
        "gito_cache_misses_total",
        "Cache lookups that read the database, by cache"
    );
    describe_counter!(
        "gito_cache_evictions_total",
        "Cache entries dropped, by cache"
    );
    describe_gauge!(
        "gito_component_up",
        "1 while the component is up (see GET /status), by component"
    );
}

pub fn cache_lookups(cache: &'static str, hits: usize, misses: usize) {
    metrics::counter!("gito_cache_hits_total", "cache" => cache).increment(hits as u64);
    metrics::counter!("gito_cache_misses_total", "cache" => cache).increment(misses as u64);
}

pub fn cache_evicted(cache: &'static str, entries: usize) {
    metrics::counter!("gito_cache_evictions_total", "cache" => cache).increment(entries as u64);
}
