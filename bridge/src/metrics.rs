//! Counters of what the bridge did, logged periodically and served for Prometheus.

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
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub received: AtomicU64,
    pub republished: AtomicU64,
    pub devices_created: AtomicU64,
    pub spooled: AtomicU64,
    pub api_errors: AtomicU64,
    pub broker_errors: AtomicU64,
    /// Messages moved from the replay window back into the spool after a local connection loss.
    pub replayed: AtomicU64,
    /// Times the external broker answered without our session after an absence.
    pub upstream_sessions_lost: AtomicU64,
    /// Deleted devices whose path the bridge forgot on the API's word.
    pub devices_forgotten: AtomicU64,
    /// Acknowledgements of the local broker saying nobody subscribed (the message is retried).
    pub no_subscribers: AtomicU64,
    /// Device lookups that waited because the budget of new devices per minute was spent.
    pub device_budget_waits: AtomicU64,
    /// Redeliveries recognized as such (they keep their first identity).
    pub redeliveries_recognized: AtomicU64,
    /// Redeliveries after our ack had gone out, taken for redeliveries (docs/BRIDGE.md).
    pub ambiguous_redeliveries: AtomicU64,
    /// Connected to the external broker with our subscriptions in place.
    pub external_connected: AtomicBool,
    pub local_connected: AtomicBool,
    dropped: [AtomicU64; DropReason::ALL.len()],
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set(flag: &AtomicBool, value: bool) {
        flag.store(value, Ordering::Relaxed);
    }

    pub fn is(flag: &AtomicBool) -> bool {
        flag.load(Ordering::Relaxed)
    }

    pub fn dropped(&self, reason: DropReason, n: u64) {
        self.dropped[reason as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn dropped_total(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].load(Ordering::Relaxed)
    }

    fn counters(&self) -> [(&'static str, &'static str, u64); 13] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            (
                "received",
                "Messages received from the external broker",
                get(&self.received),
            ),
            (
                "republished",
                "Messages the local broker acknowledged",
                get(&self.republished),
            ),
            (
                "devices_created",
                "Devices the API created for new topics",
                get(&self.devices_created),
            ),
            (
                "spooled",
                "Messages written to the on-disk spool",
                get(&self.spooled),
            ),
            (
                "api_errors",
                "Failed calls to gito-api",
                get(&self.api_errors),
            ),
            (
                "broker_errors",
                "Connection errors with either broker",
                get(&self.broker_errors),
            ),
            (
                "replayed",
                "Messages replayed from the replay window after a local connection loss",
                get(&self.replayed),
            ),
            (
                "upstream_sessions_lost",
                "Reconnects where the external broker no longer had our session",
                get(&self.upstream_sessions_lost),
            ),
            (
                "devices_forgotten",
                "Deleted devices whose path the bridge forgot",
                get(&self.devices_forgotten),
            ),
            (
                "no_subscribers",
                "Publishes the local broker had no subscriber for (held and retried)",
                get(&self.no_subscribers),
            ),
            (
                "device_budget_waits",
                "New device paths that waited for the budget of new devices per minute",
                get(&self.device_budget_waits),
            ),
            (
                "redeliveries_recognized",
                "Redelivered messages that kept the identity of their first receipt",
                get(&self.redeliveries_recognized),
            ),
            (
                "ambiguous_redeliveries",
                "Redeliveries after our ack had gone out, taken for redeliveries (docs/BRIDGE.md)",
                get(&self.ambiguous_redeliveries),
            ),
        ]
    }

    /// One line for the log.
    pub fn summary(&self) -> String {
        let mut line = String::new();
        for (name, _, value) in self.counters() {
            let _ = write!(line, "{name}={value} ");
        }
        for reason in DropReason::ALL {
            let value = self.dropped_total(reason);
            if value > 0 {
                let _ = write!(line, "dropped_{}={value} ", reason.as_str());
            }
        }
        line.trim_end().to_owned()
    }

    /// The Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, help, value) in self.counters() {
            let _ = writeln!(
                out,
                "# HELP gito_bridge_{name}_total {help}\n# TYPE gito_bridge_{name}_total counter"
            );
            let _ = writeln!(out, "gito_bridge_{name}_total {value}");
        }
        for (name, flag) in [
            ("external_connected", &self.external_connected),
            ("local_connected", &self.local_connected),
        ] {
            let value = u8::from(Self::is(flag));
            let _ = writeln!(
                out,
                "# TYPE gito_bridge_{name} gauge\ngito_bridge_{name} {value}"
            );
        }

        let _ = writeln!(
            out,
            "# HELP gito_bridge_dropped_total Messages skipped, by reason\n# TYPE gito_bridge_dropped_total counter"
        );
        for reason in DropReason::ALL {
            let _ = writeln!(
                out,
                "gito_bridge_dropped_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                self.dropped_total(reason)
            );
        }
        out
    }
}
