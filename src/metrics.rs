//! Prometheus metrics of the service (names follow Prometheus conventions: `smki_` prefix,
//! base units, `_total` counters, no high-cardinality labels — the only labels are the
//! dead-letter reason, the Kafka partition, the file kind, the certificate type and status,
//! and the RocksDB column family, each a handful of values).
//!
//! One [`Metrics`] value owns its own registry, so tests and benchmarks can run several
//! pipelines in one process without their counts mixing. Every metric is registered when
//! the value is created, so dashboards and alerts see zeros rather than missing series;
//! only per-partition series appear when a partition is first assigned or observed.
//!
//! Who updates what:
//! - ingest: consumed / applied / duplicate / skipped / dead-lettered, batches;
//! - the consumer loop: partitions assigned, per-partition lag ([`crate::lag`]);
//! - the store observer: certificates by type and status, RocksDB figures
//!   ([`crate::store_metrics`]);
//! - the window clock and the publisher, through the small methods below:
//!   [`Metrics::observe_event_time`], [`Metrics::event_late`], [`Metrics::window_opened`],
//!   [`Metrics::window_closed`], [`Metrics::file_published`], [`Metrics::file_publish_failed`];
//! - replay: [`Metrics::replay_started`], [`Metrics::replay_progress`],
//!   [`Metrics::replay_finished`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::NaiveDate;
use chrono_tz::Tz;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry,
};

/// Buckets of `smki_file_publish_duration_seconds`: a delta takes seconds, a full of 100
/// million certificates tens of minutes; the buckets span both.
pub const PUBLISH_DURATION_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
];

/// The kinds of extract file (the `kind` label of the file metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// `SMKIKR_FULL_YYYY-MM-DD.xml.gz`, weekly.
    Full,
    /// `SMKIKR_DELT_YYYY-MM-DD.xml.gz`, daily.
    Delta,
}

impl From<crate::extract::xml::ExtractKind> for FileKind {
    fn from(kind: crate::extract::xml::ExtractKind) -> FileKind {
        match kind {
            crate::extract::xml::ExtractKind::Full => FileKind::Full,
            crate::extract::xml::ExtractKind::Delta => FileKind::Delta,
        }
    }
}

impl FileKind {
    /// Every kind (pre-registration of the labelled series).
    pub const ALL: [FileKind; 2] = [FileKind::Full, FileKind::Delta];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Full => "full",
            FileKind::Delta => "delta",
        }
    }
}

/// Facts `/readyz` decides on that are not metrics themselves.
#[derive(Debug)]
pub struct Status {
    /// The state store is open (set by [`crate::store_metrics::StoreObserver`]).
    pub store_open: AtomicBool,
    /// Records behind the head, summed over the assigned partitions; -1 while unknown
    /// (no high watermark seen yet for some assigned partition).
    pub lag_records: AtomicI64,
}

/// Every metric of the service.
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
    /// Events for a day that had already closed (they go into the next delta).
    pub events_late: IntCounter,
    /// Certificates expired by the window clock (notAfter within a day that closed).
    pub events_expired: IntCounter,
    /// Per assigned partition: high watermark − next offset to consume.
    pub partition_lag_records: IntGaugeVec,
    /// Per partition: the newest event time seen (Unix seconds).
    partition_watermark: GaugeVec,
    /// The watermarks again, for the scrape-time event-time lag.
    watermarks: Arc<Mutex<BTreeMap<i32, f64>>>,
    window_open_day: Gauge,
    window_last_closed_day: Gauge,
    files_published: IntCounterVec,
    file_publish_failures: IntCounterVec,
    file_bytes: IntGaugeVec,
    file_records: IntGaugeVec,
    file_publish_duration: HistogramVec,
    file_last_success: GaugeVec,
    /// Certificates in the store by type and status (from the periodic census).
    pub store_certificates: IntGaugeVec,
    /// When the last census finished (Unix seconds).
    pub store_census_timestamp: Gauge,
    /// How long the last census took.
    pub store_census_duration: Gauge,
    replay_in_progress: IntGauge,
    replay_target: IntGauge,
    replay_done: IntGauge,
    replay_started_at: Gauge,
    replay_compacting: IntGauge,
    sync_in_progress: IntGauge,
    sync_files_applied: IntCounterVec,
    sync_records_applied: IntCounter,
    sync_last_success: Gauge,
    /// Readiness facts (see [`Status`]).
    pub status: Arc<Status>,
    /// Where the store observer puts the open store, for the scrape-time RocksDB figures.
    pub(crate) store_slot: crate::store_metrics::StoreSlot,
}

/// Unix time now, in seconds.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn register<C: Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("unique, valid metric");
    c
}

impl Metrics {
    /// Create and register every metric in a fresh registry.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let r = &registry;
        let counter =
            |name: &str, help: &str| register(r, IntCounter::new(name, help).expect("valid"));
        let gauge = |name: &str, help: &str| register(r, Gauge::new(name, help).expect("valid"));
        let int_gauge =
            |name: &str, help: &str| register(r, IntGauge::new(name, help).expect("valid"));
        let counter_vec = |name: &str, help: &str, label: &str| {
            register(
                r,
                IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid"),
            )
        };
        let int_gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                r,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid"),
            )
        };
        let gauge_vec = |name: &str, help: &str, label: &str| {
            register(
                r,
                GaugeVec::new(Opts::new(name, help), &[label]).expect("valid"),
            )
        };

        let build_info = int_gauge_vec(
            "smki_build_info",
            "Always 1; the labels say which build is running.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        let m = Metrics {
            events_consumed: counter(
                "smki_events_consumed_total",
                "Records read from the events topic.",
            ),
            events_applied: counter(
                "smki_events_applied_total",
                "Events applied to the state store.",
            ),
            events_dead_lettered: counter_vec(
                "smki_events_dead_lettered_total",
                "Events sent to the dead-letter topic, by reason.",
                "reason",
            ),
            events_duplicate: counter(
                "smki_events_duplicate_total",
                "Events whose event_id was already applied; applied once only.",
            ),
            records_skipped: counter(
                "smki_records_skipped_total",
                "Records at offsets the state store already covers.",
            ),
            batches_committed: counter(
                "smki_store_batches_committed_total",
                "RocksDB write batches committed (state and offsets together).",
            ),
            partitions_assigned: int_gauge(
                "smki_partitions_assigned",
                "Partitions of the events topic assigned to this instance.",
            ),
            events_late: counter(
                "smki_events_late_total",
                "Events for a day that had already closed; they go into the next delta.",
            ),
            events_expired: counter(
                "smki_certificates_expired_total",
                "Certificates given status E when the day of their notAfter closed.",
            ),
            partition_lag_records: int_gauge_vec(
                "smki_partition_lag_records",
                "Records behind the head of the partition (high watermark minus next offset).",
                &["partition"],
            ),
            partition_watermark: gauge_vec(
                "smki_partition_event_time_watermark_seconds",
                "Newest event time (occurred_at) seen on the partition, Unix seconds.",
                "partition",
            ),
            watermarks: Arc::default(),
            window_open_day: gauge(
                "smki_window_open_day_timestamp_seconds",
                "Start (Unix seconds, in the configured time zone) of the oldest day not yet closed; 0 before the first.",
            ),
            window_last_closed_day: gauge(
                "smki_window_last_closed_day_timestamp_seconds",
                "Start (Unix seconds, in the configured time zone) of the newest closed day; 0 before the first.",
            ),
            files_published: counter_vec(
                "smki_files_published_total",
                "Extract files published, by kind (full, delta).",
                "kind",
            ),
            file_publish_failures: counter_vec(
                "smki_file_publish_failures_total",
                "Attempts to produce or publish an extract file that failed, by kind.",
                "kind",
            ),
            file_bytes: int_gauge_vec(
                "smki_file_bytes",
                "Size of the last published file of the kind, in bytes (compressed).",
                &["kind"],
            ),
            file_records: int_gauge_vec(
                "smki_file_records",
                "Certificate records in the last published file of the kind.",
                &["kind"],
            ),
            file_publish_duration: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "smki_file_publish_duration_seconds",
                        "Time to produce and publish an extract file, by kind.",
                    )
                    .buckets(PUBLISH_DURATION_BUCKETS.to_vec()),
                    &["kind"],
                )
                .expect("valid"),
            ),
            file_last_success: gauge_vec(
                "smki_file_last_success_timestamp_seconds",
                "When the last file of the kind was published (Unix seconds); 0 if never.",
                "kind",
            ),
            store_certificates: int_gauge_vec(
                "smki_store_certificates",
                "Certificates in the state store by type and status, as of the last census.",
                &["type", "status"],
            ),
            store_census_timestamp: gauge(
                "smki_store_census_timestamp_seconds",
                "When the last census of the store finished (Unix seconds); 0 if none yet.",
            ),
            store_census_duration: gauge(
                "smki_store_census_duration_seconds",
                "How long the last census of the store took.",
            ),
            replay_in_progress: int_gauge(
                "smki_replay_in_progress",
                "1 while a replay (rebuild of the store from the topic) runs, else 0.",
            ),
            replay_target: int_gauge(
                "smki_replay_target_records",
                "Records the running replay must read to reach the head as of its start.",
            ),
            replay_done: int_gauge(
                "smki_replay_done_records",
                "Records the running replay has read so far.",
            ),
            replay_started_at: gauge(
                "smki_replay_started_timestamp_seconds",
                "When the last replay started (Unix seconds); 0 if none.",
            ),
            replay_compacting: int_gauge(
                "smki_replay_compacting",
                "1 while a replay that has read everything flushes and compacts the rebuilt \
                 store (no records move then), else 0.",
            ),
            sync_in_progress: int_gauge(
                "smki_sync_in_progress",
                "1 while `sync` checks and applies published files to a Party's copy, else 0.",
            ),
            sync_files_applied: counter_vec(
                "smki_sync_files_applied_total",
                "Published files `sync` applied to the local copy, by kind.",
                "kind",
            ),
            sync_records_applied: counter(
                "smki_sync_records_applied_total",
                "Certificate records `sync` applied to the local copy.",
            ),
            sync_last_success: gauge(
                "smki_sync_last_success_timestamp_seconds",
                "When `sync` last brought the copy up to date (Unix seconds); 0 if never.",
            ),
            status: Arc::new(Status {
                store_open: AtomicBool::new(false),
                lag_records: AtomicI64::new(-1),
            }),
            store_slot: Default::default(),
            registry,
        };
        for kind in FileKind::ALL {
            let k = [kind.as_str()];
            m.files_published.with_label_values(&k);
            m.file_publish_failures.with_label_values(&k);
            m.file_bytes.with_label_values(&k);
            m.file_records.with_label_values(&k);
            m.file_publish_duration.with_label_values(&k);
            m.file_last_success.with_label_values(&k);
            m.sync_files_applied.with_label_values(&k);
        }
        register(
            &m.registry,
            EventTimeLag::new(m.watermarks.clone()).expect("valid"),
        );
        register(
            &m.registry,
            crate::store_metrics::StoreCollector::new(m.store_slot.clone()),
        );
        #[cfg(target_os = "linux")]
        m.registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process metrics registered once");
        m
    }

    /// Total dead-lettered events over all reasons.
    pub fn dead_lettered_total(&self) -> u64 {
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

    /// The window clock saw events of `partition` up to `event_time_ms` (Unix ms of
    /// `occurred_at`). The watermark only moves forward. Cheap but not free (a lock and a
    /// label lookup): call it once per batch or when the clock advances, not per record.
    pub fn observe_event_time(&self, partition: i32, event_time_ms: i64) {
        let secs = event_time_ms as f64 / 1000.0;
        let mut w = self.watermarks.lock().expect("not poisoned");
        let entry = w.entry(partition).or_insert(f64::MIN);
        if secs > *entry {
            *entry = secs;
            self.partition_watermark
                .with_label_values(&[partition.to_string()])
                .set(secs);
        }
    }

    /// Drop every per-partition series of a partition this instance no longer has.
    pub fn forget_partition(&self, partition: i32) {
        let label = [partition.to_string()];
        let _ = self.partition_lag_records.remove_label_values(&label);
        let _ = self.partition_watermark.remove_label_values(&label);
        self.watermarks
            .lock()
            .expect("not poisoned")
            .remove(&partition);
    }

    /// An event arrived for a day that had already closed (it goes into the next delta).
    pub fn event_late(&self) {
        self.events_late.inc();
    }

    /// The oldest day not yet closed is now `day` (in `tz`).
    pub fn window_opened(&self, tz: Tz, day: NaiveDate) {
        self.window_open_day.set(day_start_seconds(tz, day));
    }

    /// `day` (in `tz`) closed: its delta can be produced.
    pub fn window_closed(&self, tz: Tz, day: NaiveDate) {
        self.window_last_closed_day.set(day_start_seconds(tz, day));
    }

    /// A file of `kind` was published: `bytes` on disk, `records` certificates, produced
    /// and published in `duration`. Call once per file, after the rename succeeded.
    pub fn file_published(&self, kind: FileKind, bytes: u64, records: u64, duration: Duration) {
        let k = [kind.as_str()];
        self.files_published.with_label_values(&k).inc();
        self.file_bytes.with_label_values(&k).set(bytes as i64);
        self.file_records.with_label_values(&k).set(records as i64);
        self.file_publish_duration
            .with_label_values(&k)
            .observe(duration.as_secs_f64());
        self.file_last_success.with_label_values(&k).set(unix_now());
    }

    /// Producing or publishing a file of `kind` failed (it will be retried or alerted on).
    pub fn file_publish_failed(&self, kind: FileKind) {
        self.file_publish_failures
            .with_label_values(&[kind.as_str()])
            .inc();
    }

    /// A replay started that must read `target_records` to reach the head.
    pub fn replay_started(&self, target_records: u64) {
        self.replay_in_progress.set(1);
        self.replay_target.set(target_records as i64);
        self.replay_done.set(0);
        self.replay_started_at.set(unix_now());
    }

    /// The running replay has read `done_records` so far (call it every few seconds or
    /// every batch; it is one atomic store).
    pub fn replay_progress(&self, done_records: u64) {
        self.replay_done.set(done_records as i64);
    }

    /// The replay finished (successfully or not).
    pub fn replay_finished(&self) {
        self.replay_in_progress.set(0);
        self.replay_compacting.set(0);
    }

    /// The replay read everything and flushes and compacts the store (`true`), or is done
    /// with that (`false`): progress in records stands still meanwhile, and the stall alert
    /// must not mistake it for a stuck replay.
    pub fn replay_compacting(&self, on: bool) {
        self.replay_compacting.set(i64::from(on));
    }

    /// `sync` started checking and applying files.
    pub fn sync_started(&self) {
        self.sync_in_progress.set(1);
    }

    /// `sync` ended: on success with what it applied (`(kind, records)` per file).
    pub fn sync_finished(&self, applied: Option<&[(FileKind, u64)]>) {
        self.sync_in_progress.set(0);
        if let Some(files) = applied {
            for (kind, records) in files {
                self.sync_files_applied
                    .with_label_values(&[kind.as_str()])
                    .inc();
                self.sync_records_applied.inc_by(*records);
            }
            self.sync_last_success.set(unix_now());
        }
    }

    /// The exposition of every metric in Prometheus text format (what `/metrics` serves).
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding of valid metrics");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The value of one sample, `name{labels}` exactly as exposed (labels in name order), in a
/// text exposition such as [`Metrics::render`] gives: for tests and reports.
pub fn exposed_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Start of `day` in `tz`, Unix seconds.
fn day_start_seconds(tz: Tz, day: NaiveDate) -> f64 {
    crate::day::start_of_day_millis(tz, day) as f64 / 1000.0
}

/// `smki_partition_event_time_lag_seconds`: how far the newest event time of each
/// partition is behind the wall clock, computed at scrape time so it keeps growing when
/// events stop arriving (which is what an operator wants to see).
#[derive(Clone)]
struct EventTimeLag {
    watermarks: Arc<Mutex<BTreeMap<i32, f64>>>,
    lag: GaugeVec,
}

impl EventTimeLag {
    fn new(watermarks: Arc<Mutex<BTreeMap<i32, f64>>>) -> prometheus::Result<EventTimeLag> {
        Ok(EventTimeLag {
            watermarks,
            lag: GaugeVec::new(
                Opts::new(
                    "smki_partition_event_time_lag_seconds",
                    "Wall-clock time minus the partition's event-time watermark, in seconds.",
                ),
                &["partition"],
            )?,
        })
    }
}

impl Collector for EventTimeLag {
    fn desc(&self) -> Vec<&Desc> {
        self.lag.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let now = unix_now();
        // Held throughout, so that concurrent scrapes do not see each other's reset.
        let watermarks = self.watermarks.lock().expect("not poisoned");
        self.lag.reset();
        for (p, w) in watermarks.iter() {
            self.lag
                .with_label_values(&[p.to_string()])
                .set((now - w).max(0.0));
        }
        self.lag.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::exposed_value as sample;

    #[test]
    fn every_family_is_present_from_the_start() {
        let text = Metrics::new().render();
        for name in [
            "smki_build_info{version=\"",
            "smki_events_applied_total 0",
            "smki_events_late_total 0",
            "smki_window_open_day_timestamp_seconds 0",
            "smki_files_published_total{kind=\"full\"} 0",
            "smki_files_published_total{kind=\"delta\"} 0",
            "smki_file_publish_duration_seconds_bucket{kind=\"delta\",le=\"0.1\"} 0",
            "smki_file_last_success_timestamp_seconds{kind=\"full\"} 0",
            "smki_replay_in_progress 0",
            "process_resident_memory_bytes ",
            "process_open_fds ",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }

    #[test]
    fn publication_and_window_methods_set_their_series() {
        let m = Metrics::new();
        m.file_published(FileKind::Delta, 1234, 56, Duration::from_secs(2));
        m.file_published(FileKind::Delta, 999, 7, Duration::from_millis(50));
        m.file_publish_failed(FileKind::Full);
        let tz: Tz = "Europe/London".parse().unwrap();
        m.window_closed(tz, NaiveDate::from_ymd_opt(2026, 7, 1).unwrap());
        m.window_opened(tz, NaiveDate::from_ymd_opt(2026, 7, 2).unwrap());
        m.event_late();
        let t = m.render();
        let s = |series: &str| sample(&t, series).unwrap_or_else(|| panic!("{series} in\n{t}"));
        assert_eq!(s("smki_files_published_total{kind=\"delta\"}"), 2.0);
        assert_eq!(s("smki_files_published_total{kind=\"full\"}"), 0.0);
        assert_eq!(s("smki_file_publish_failures_total{kind=\"full\"}"), 1.0);
        assert_eq!(s("smki_file_bytes{kind=\"delta\"}"), 999.0);
        assert_eq!(s("smki_file_records{kind=\"delta\"}"), 7.0);
        assert_eq!(
            s("smki_file_publish_duration_seconds_bucket{kind=\"delta\",le=\"0.1\"}"),
            1.0
        );
        assert_eq!(
            s("smki_file_publish_duration_seconds_bucket{kind=\"delta\",le=\"5\"}"),
            2.0
        );
        assert!(s("smki_file_last_success_timestamp_seconds{kind=\"delta\"}") > 1.7e9);
        // 2026-07-01 00:00 BST is 2026-06-30 23:00 UTC.
        assert_eq!(
            s("smki_window_last_closed_day_timestamp_seconds"),
            1_782_860_400.0
        );
        assert_eq!(
            s("smki_window_open_day_timestamp_seconds"),
            1_782_860_400.0 + 86_400.0
        );
        assert_eq!(s("smki_events_late_total"), 1.0);
    }

    #[test]
    fn watermarks_only_advance_and_lag_is_computed_at_scrape() {
        let m = Metrics::new();
        let ms = ((unix_now() - 3600.0) * 1000.0) as i64;
        m.observe_event_time(2, ms);
        m.observe_event_time(2, ms - 60_000);
        let t = m.render();
        let w = sample(
            &t,
            "smki_partition_event_time_watermark_seconds{partition=\"2\"}",
        );
        assert_eq!(w, Some(ms as f64 / 1000.0));
        let lag = sample(&t, "smki_partition_event_time_lag_seconds{partition=\"2\"}").unwrap();
        assert!((3599.0..3700.0).contains(&lag), "{lag}");
        m.forget_partition(2);
        let t = m.render();
        assert!(!t.contains("partition=\"2\""), "{t}");
    }

    #[test]
    fn replay_progress_is_reported() {
        let m = Metrics::new();
        m.replay_started(1000);
        m.replay_progress(250);
        let t = m.render();
        assert_eq!(sample(&t, "smki_replay_in_progress"), Some(1.0));
        assert_eq!(sample(&t, "smki_replay_target_records"), Some(1000.0));
        assert_eq!(sample(&t, "smki_replay_done_records"), Some(250.0));
        m.replay_compacting(true);
        assert_eq!(sample(&m.render(), "smki_replay_compacting"), Some(1.0));
        m.replay_finished();
        assert_eq!(sample(&m.render(), "smki_replay_in_progress"), Some(0.0));
        assert_eq!(sample(&m.render(), "smki_replay_compacting"), Some(0.0));
    }

    #[test]
    fn sync_progress_is_reported() {
        let m = Metrics::new();
        assert_eq!(
            sample(&m.render(), "smki_sync_files_applied_total{kind=\"delta\"}"),
            Some(0.0)
        );
        m.sync_started();
        assert_eq!(sample(&m.render(), "smki_sync_in_progress"), Some(1.0));
        m.sync_finished(Some(&[
            (FileKind::Full, 100),
            (FileKind::Delta, 7),
            (FileKind::Delta, 3),
        ]));
        let t = m.render();
        assert_eq!(sample(&t, "smki_sync_in_progress"), Some(0.0));
        assert_eq!(
            sample(&t, "smki_sync_files_applied_total{kind=\"delta\"}"),
            Some(2.0)
        );
        assert_eq!(
            sample(&t, "smki_sync_files_applied_total{kind=\"full\"}"),
            Some(1.0)
        );
        assert_eq!(sample(&t, "smki_sync_records_applied_total"), Some(110.0));
        assert!(sample(&t, "smki_sync_last_success_timestamp_seconds").unwrap() > 0.0);
        // A failed sync changes nothing but the in-progress flag.
        m.sync_started();
        m.sync_finished(None);
        assert_eq!(
            sample(&m.render(), "smki_sync_records_applied_total"),
            Some(110.0)
        );
    }
}
