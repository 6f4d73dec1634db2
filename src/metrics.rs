//! Prometheus metrics of the service (names follow Prometheus conventions: `smki_` prefix,
//! base units, `_total` counters, no high-cardinality labels).
//!
//! One [`Metrics`] value owns its own registry, so tests and benchmarks can run several
//! pipelines in one process without their counts mixing.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Every metric of the ingest path.
#[derive(Clone)]
pub struct Metrics {
    /// The registry all of these are registered in (served on `/metrics`).
    pub registry: Registry,
    /// Records read from the topic (including ones already applied and skipped).
    pub events_consumed: IntCounter,
    /// Events whose effect was applied to the store.
    pub events_applied: IntCounter,
    /// Events that went to the dead-letter topic, by reason code.
    pub events_dead_lettered: IntCounterVec,
    /// Events whose `event_id` had already been applied: counted, not applied again.
    pub events_duplicate: IntCounter,
    /// Records at offsets the store already covers (re-delivered after a rebalance or restart).
    pub records_skipped: IntCounter,
    /// Store batches committed (one RocksDB WriteBatch each).
    pub batches_committed: IntCounter,
    /// Partitions currently assigned to this instance.
    pub partitions_assigned: IntGauge,
    /// Events applied after their day had closed on their partition: routed to a later delta.
    pub events_late: IntCounter,
    /// Certificates expired by the window clock (notAfter within a closed day).
    pub events_expired: IntCounter,
}

impl Metrics {
    /// Create and register every metric in a fresh registry.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::with_opts(Opts::new(name, help)).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let events_consumed = counter(
            "smki_events_consumed_total",
            "Records read from the events topic.",
        );
        let events_applied = counter(
            "smki_events_applied_total",
            "Events applied to the state store.",
        );
        let events_duplicate = counter(
            "smki_events_duplicate_total",
            "Events whose event_id was already applied; applied once only.",
        );
        let records_skipped = counter(
            "smki_records_skipped_total",
            "Records at offsets the state store already covers.",
        );
        let batches_committed = counter(
            "smki_store_batches_committed_total",
            "RocksDB write batches committed (state and offsets together).",
        );
        let events_late = counter(
            "smki_events_late_total",
            "Events applied after their day closed on their partition (routed to a later delta).",
        );
        let events_expired = counter(
            "smki_certificates_expired_total",
            "Certificates given status E when the day of their notAfter closed.",
        );
        let events_dead_lettered = IntCounterVec::new(
            Opts::new(
                "smki_events_dead_lettered_total",
                "Events sent to the dead-letter topic, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(events_dead_lettered.clone()))
            .expect("unique metric");
        let partitions_assigned = IntGauge::with_opts(Opts::new(
            "smki_partitions_assigned",
            "Partitions of the events topic assigned to this instance.",
        ))
        .expect("valid metric");
        registry
            .register(Box::new(partitions_assigned.clone()))
            .expect("unique metric");
        Metrics {
            registry,
            events_consumed,
            events_applied,
            events_dead_lettered,
            events_duplicate,
            records_skipped,
            batches_committed,
            partitions_assigned,
            events_late,
            events_expired,
        }
    }

    /// Total dead-lettered events over all reasons.
    pub fn dead_lettered_total(&self) -> u64 {
        use prometheus::core::Collector;
        self.events_dead_lettered
            .collect()
            .iter()
            .flat_map(|mf| {
                mf.get_metric()
                    .iter()
                    .map(|m| m.get_counter().get_value() as u64)
            })
            .sum()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
