//! What the bridge did: counted per instance (for the periodic log line and the tests) and
//! recorded through the `metrics` facade into the process's Prometheus recorder, which the
//! metrics address serves (`gito_runtime::metrics`). Each counter is named once, here; the call
//! sites stay one line (`Metrics::add(&metrics.received, 1)`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Why a message was not republished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    TooLarge,
    InvalidUtf8,
    NonFinite,
    InvalidTimestamp,
    NoMetrics,
    InvalidTopic,
    NoRule,
    /// The API refused the device for good (4xx other than auth or rate limiting).
    ApiRejected,
    /// The spool was full: the oldest spooled messages were dropped.
    SpoolFull,
}

impl DropReason {
    pub const ALL: [DropReason; 9] = [
        DropReason::TooLarge,
        DropReason::InvalidUtf8,
        DropReason::NonFinite,
        DropReason::InvalidTimestamp,
        DropReason::NoMetrics,
        DropReason::InvalidTopic,
        DropReason::NoRule,
        DropReason::ApiRejected,
        DropReason::SpoolFull,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::TooLarge => "too_large",
            DropReason::InvalidUtf8 => "invalid_utf8",
            DropReason::NonFinite => "non_finite",
            DropReason::InvalidTimestamp => "invalid_timestamp",
            DropReason::NoMetrics => "no_metrics",
            DropReason::InvalidTopic => "invalid_topic",
            DropReason::NoRule => "no_rule",
            DropReason::ApiRejected => "api_rejected",
            DropReason::SpoolFull => "spool_full",
        }
    }

    /// Its outcome in `gito_bridge_messages_total`.
    pub fn outcome(self) -> &'static str {
        match self {
            DropReason::TooLarge => "dropped_too_large",
            DropReason::InvalidUtf8 => "dropped_invalid_utf8",
            DropReason::NonFinite => "dropped_non_finite",
            DropReason::InvalidTimestamp => "dropped_invalid_timestamp",
            DropReason::NoMetrics => "dropped_no_metrics",
            DropReason::InvalidTopic => "dropped_invalid_topic",
            DropReason::NoRule => "dropped_no_rule",
            DropReason::ApiRejected => "dropped_api_rejected",
            DropReason::SpoolFull => "dropped_spool_full",
        }
    }
}

/// A counter: this instance's count, and the series `gito_bridge_<name>_total`.
#[derive(Debug)]
pub struct Count {
    value: AtomicU64,
    name: &'static str,
    help: &'static str,
    /// Also counted in `gito_bridge_messages_total` with this outcome.
    outcome: Option<&'static str>,
}

impl Count {
    const fn new(name: &'static str, help: &'static str) -> Count {
        Count {
            value: AtomicU64::new(0),
            name,
            help,
            outcome: None,
        }
    }

    const fn outcome(mut self, outcome: &'static str) -> Count {
        self.outcome = Some(outcome);
        self
    }

    /// This instance's count.
    pub fn load(&self, order: Ordering) -> u64 {
        self.value.load(order)
    }

    fn series(&self) -> String {
        format!("gito_bridge_{}_total", self.name)
    }
}

/// A connection's state: the gauge `gito_bridge_<name>` (1 connected, 0 not), and its
/// reconnects in `gito_bridge_reconnects_total{broker}`.
#[derive(Debug)]
pub struct Flag {
    value: AtomicBool,
    /// Connected at least once (a later connection is a reconnect).
    ever: AtomicBool,
    name: &'static str,
    broker: &'static str,
}

impl Flag {
    const fn new(name: &'static str, broker: &'static str) -> Flag {
        Flag {
            value: AtomicBool::new(false),
            ever: AtomicBool::new(false),
            name,
            broker,
        }
    }

    fn series(&self) -> String {
        format!("gito_bridge_{}", self.name)
    }
}

#[derive(Debug)]
pub struct Metrics {
    pub received: Count,
    pub republished: Count,
    pub devices_created: Count,
    /// Batch calls to gito-api answered (each finds or creates up to 1000 devices).
    pub batch_calls: Count,
    pub spooled: Count,
    pub api_errors: Count,
    pub broker_errors: Count,
    /// Messages moved from the replay window back into the spool after a local connection loss.
    pub replayed: Count,
    /// Times the external broker answered without our session after an absence.
    pub upstream_sessions_lost: Count,
    /// Deleted devices whose path the bridge forgot on the API's word.
    pub devices_forgotten: Count,
    /// Acknowledgements of the local broker saying nobody subscribed (the message is retried).
    pub no_subscribers: Count,
    /// Device lookups that waited because the budget of new devices per minute was spent.
    pub device_budget_waits: Count,
    /// Redeliveries recognized as such (they keep their first identity).
    pub redeliveries_recognized: Count,
    /// Redeliveries after our ack had gone out, taken for redeliveries (docs/BRIDGE.md).
    pub ambiguous_redeliveries: Count,
    /// Connected to the external broker with our subscriptions in place.
    pub external_connected: Flag,
    pub local_connected: Flag,
    dropped: [AtomicU64; DropReason::ALL.len()],
}

impl Default for Metrics {
    /// Installs the process's recorder if need be and registers every series at zero, so a
    /// scrape shows them all from the start.
    fn default() -> Self {
        let metrics = Metrics {
            received: Count::new("received", "Messages received from the external broker"),
            republished: Count::new("republished", "Messages the local broker acknowledged")
                .outcome("republished"),
            devices_created: Count::new(
                "devices_created",
                "Devices the API created for new topics",
            ),
            batch_calls: Count::new(
                "batch_calls",
                "Batch calls to gito-api answered (each finds or creates up to 1000 devices)",
            ),
            spooled: Count::new(
                "spooled",
                "Messages written to disk to wait: in the spool, or in the lane for new devices",
            ),
            api_errors: Count::new("api_errors", "Failed calls to gito-api"),
            broker_errors: Count::new("broker_errors", "Connection errors with either broker"),
            replayed: Count::new(
                "replayed",
                "Messages replayed from the replay window after a local connection loss",
            ),
            upstream_sessions_lost: Count::new(
                "upstream_sessions_lost",
                "Reconnects where the external broker no longer had our session",
            ),
            devices_forgotten: Count::new(
                "devices_forgotten",
                "Deleted devices whose path the bridge forgot",
            ),
            no_subscribers: Count::new(
                "no_subscribers",
                "Publishes the local broker had no subscriber for (held and retried)",
            ),
            device_budget_waits: Count::new(
                "device_budget_waits",
                "New device paths that waited for the budget of new devices per minute",
            ),
            redeliveries_recognized: Count::new(
                "redeliveries_recognized",
                "Redelivered messages that kept the identity of their first receipt",
            ),
            ambiguous_redeliveries: Count::new(
                "ambiguous_redeliveries",
                "Redeliveries after our ack had gone out, taken for redeliveries (docs/BRIDGE.md)",
            ),
            external_connected: Flag::new("external_connected", "external"),
            local_connected: Flag::new("local_connected", "local"),
            dropped: Default::default(),
        };
        metrics.register();
        metrics
    }
}

impl Metrics {
    pub fn add(counter: &Count, n: u64) {
        counter.value.fetch_add(n, Ordering::Relaxed);
        metrics::counter!(counter.series()).increment(n);
        if let Some(outcome) = counter.outcome {
            metrics::counter!("gito_bridge_messages_total", "outcome" => outcome).increment(n);
        }
    }

    pub fn set(flag: &Flag, value: bool) {
        let was = flag.value.swap(value, Ordering::Relaxed);
        if value && !was && flag.ever.swap(true, Ordering::Relaxed) {
            metrics::counter!("gito_bridge_reconnects_total", "broker" => flag.broker).increment(1);
        }
        metrics::gauge!(flag.series()).set(f64::from(u8::from(value)));
    }

    pub fn is(flag: &Flag) -> bool {
        flag.value.load(Ordering::Relaxed)
    }

    pub fn dropped(&self, reason: DropReason, n: u64) {
        self.dropped[reason as usize].fetch_add(n, Ordering::Relaxed);
        metrics::counter!("gito_bridge_dropped_total", "reason" => reason.as_str()).increment(n);
        metrics::counter!("gito_bridge_messages_total", "outcome" => reason.outcome()).increment(n);
    }

    pub fn dropped_total(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].load(Ordering::Relaxed)
    }

    fn counters(&self) -> [&Count; 14] {
        [
            &self.received,
            &self.republished,
            &self.devices_created,
            &self.batch_calls,
            &self.spooled,
            &self.api_errors,
            &self.broker_errors,
            &self.replayed,
            &self.upstream_sessions_lost,
            &self.devices_forgotten,
            &self.no_subscribers,
            &self.device_budget_waits,
            &self.redeliveries_recognized,
            &self.ambiguous_redeliveries,
        ]
    }

    fn register(&self) {
        gito_runtime::metrics::handle();
        for counter in self.counters() {
            metrics::describe_counter!(counter.series(), counter.help);
            metrics::counter!(counter.series()).increment(0);
        }
        metrics::describe_counter!("gito_bridge_dropped_total", "Messages skipped, by reason");
        metrics::describe_counter!(
            "gito_bridge_messages_total",
            "Messages received from the external broker, by outcome: republished, dropped_<reason>"
        );
        metrics::counter!("gito_bridge_messages_total", "outcome" => "republished").increment(0);
        for reason in DropReason::ALL {
            metrics::counter!("gito_bridge_dropped_total", "reason" => reason.as_str())
                .increment(0);
            metrics::counter!("gito_bridge_messages_total", "outcome" => reason.outcome())
                .increment(0);
        }
        for flag in [&self.external_connected, &self.local_connected] {
            // Not "1 while connected": a HELP line `gito_bridge_external_connected 1 while ...` fooled
            // every wait for the connection that looked for the sample as a substring.
            metrics::describe_gauge!(flag.series(), "Whether the connection is up (1) or not (0)");
            metrics::gauge!(flag.series()).set(f64::from(u8::from(Self::is(flag))));
        }
        metrics::describe_counter!(
            "gito_bridge_reconnects_total",
            "Connections to a broker after the first, by broker (external, local)"
        );
        metrics::describe_gauge!(
            "gito_bridge_spool_bytes",
            "Bytes on disk, by lane (spool: behind a local broker outage; waiting: new paths)"
        );
        metrics::describe_gauge!(
            "gito_bridge_spool_records",
            "Messages waiting on disk, by lane (spool, waiting)"
        );
        metrics::describe_gauge!(
            "gito_bridge_spool_oldest_age_seconds",
            "Age of the oldest message on disk by its envelope ts, by lane (0 when empty)"
        );
        metrics::describe_histogram!(
            "gito_bridge_api_request_duration_seconds",
            metrics::Unit::Seconds,
            "Latency of gito-api device lookups (batch calls: find or create)"
        );
        metrics::describe_histogram!(
            "gito_bridge_batch_devices",
            "Devices found or created per answered batch call"
        );
        metrics::describe_gauge!(
            "gito_bridge_paths_waiting",
            "New device paths whose batch call is in flight"
        );
        metrics::gauge!("gito_bridge_paths_waiting").set(0.0);
    }

    /// One line for the log.
    pub fn summary(&self) -> String {
        let mut line = String::new();
        for counter in self.counters() {
            let _ = write!(
                line,
                "{}={} ",
                counter.name,
                counter.load(Ordering::Relaxed)
            );
        }
        for reason in DropReason::ALL {
            let value = self.dropped_total(reason);
            if value > 0 {
                let _ = write!(line, "dropped_{}={value} ", reason.as_str());
            }
        }
        line.trim_end().to_owned()
    }
}
