//! Metrics of the state store, in two parts of different cost:
//!
//! - RocksDB's own figures — estimated keys, live SST bytes, pending compaction bytes per
//!   column family, block-cache usage — are in-memory properties, read at scrape time by
//!   [`StoreCollector`];
//! - certificates by type and status need a scan of the `certs` column family, so the
//!   [`StoreObserver`] runs that census in a background thread every
//!   `http.store_census_interval_s` (at 100 million certificates a scan is minutes of one
//!   core; the series say when the last census finished and how long it took).
//!
//! Both hold the store only while working: the collector keeps a [`Weak`] reference, and the
//! observer's thread is stopped and joined when it is dropped, so a closed store is really
//! closed (RocksDB's lock is released) when `run` returns.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGauge, IntGaugeVec, Opts};
use tracing::{debug, warn};

use crate::metrics::{unix_now, Metrics};
use crate::store::{Store, COLUMN_FAMILIES};

/// The open store, as the scrape-time collector sees it (empty while no store is open).
pub type StoreSlot = Arc<Mutex<Option<Weak<Store>>>>;

/// Reads RocksDB properties of the open store at scrape time.
#[derive(Clone)]
pub struct StoreCollector {
    slot: StoreSlot,
    open: IntGauge,
    keys: IntGaugeVec,
    sst: IntGaugeVec,
    pending: IntGaugeVec,
    cache: IntGauge,
}

impl StoreCollector {
    /// A collector reading whatever store `slot` holds.
    pub fn new(slot: StoreSlot) -> StoreCollector {
        let per_cf = |name: &str, help: &str| {
            IntGaugeVec::new(Opts::new(name, help), &["cf"]).expect("valid metric")
        };
        StoreCollector {
            slot,
            open: IntGauge::new(
                "smki_store_open",
                "1 while the state store is open, else 0.",
            )
            .expect("valid metric"),
            keys: per_cf(
                "smki_store_estimated_keys",
                "RocksDB's estimate of the keys in the column family.",
            ),
            sst: per_cf(
                "smki_store_live_sst_bytes",
                "Bytes of the live SST files of the column family.",
            ),
            pending: per_cf(
                "smki_store_pending_compaction_bytes",
                "RocksDB's estimate of the bytes compaction still has to rewrite.",
            ),
            cache: IntGauge::new(
                "smki_store_block_cache_usage_bytes",
                "Bytes held in the shared RocksDB block cache.",
            )
            .expect("valid metric"),
        }
    }
}

impl Collector for StoreCollector {
    fn desc(&self) -> Vec<&Desc> {
        let mut d = self.open.desc();
        d.extend(self.keys.desc());
        d.extend(self.sst.desc());
        d.extend(self.pending.desc());
        d.extend(self.cache.desc());
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let store = self
            .slot
            .lock()
            .expect("not poisoned")
            .as_ref()
            .and_then(Weak::upgrade);
        let Some(store) = store else {
            self.open.set(0);
            return self.open.collect();
        };
        self.open.set(1);
        let int = |cf: &str, name: &str| store.property_int_of(cf, name).unwrap_or(0) as i64;
        for cf in COLUMN_FAMILIES {
            self.keys
                .with_label_values(&[cf])
                .set(int(cf, "rocksdb.estimate-num-keys"));
            self.sst
                .with_label_values(&[cf])
                .set(int(cf, "rocksdb.live-sst-files-size"));
            self.pending
                .with_label_values(&[cf])
                .set(int(cf, "rocksdb.estimate-pending-compaction-bytes"));
        }
        // One cache is shared by every column family: read it through one of them.
        self.cache
            .set(int(COLUMN_FAMILIES[1], "rocksdb.block-cache-usage"));
        let mut out = self.open.collect();
        for c in [&self.keys, &self.sst, &self.pending] {
            out.extend(c.collect());
        }
        out.extend(self.cache.collect());
        out
    }
}

/// While alive: the store is visible to the scrape-time collector, `/readyz` knows it is
/// open, and a background thread takes the census every `interval`. Dropping it stops and
/// joins the thread and withdraws the store.
pub struct StoreObserver {
    metrics: Metrics,
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl StoreObserver {
    /// Observe `store` into `metrics`, with a census now and then every `interval`.
    pub fn start(store: &Arc<Store>, metrics: &Metrics, interval: Duration) -> StoreObserver {
        *metrics.store_slot.lock().expect("not poisoned") = Some(Arc::downgrade(store));
        metrics.status.store_open.store(true, Ordering::SeqCst);
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let thread = {
            let (store, metrics, stop) = (Arc::downgrade(store), metrics.clone(), stop.clone());
            std::thread::Builder::new()
                .name("smki-census".into())
                .spawn(move || census_loop(store, metrics, stop, interval))
                .expect("spawning the census thread")
        };
        StoreObserver {
            metrics: metrics.clone(),
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for StoreObserver {
    fn drop(&mut self) {
        *self.stop.0.lock().expect("not poisoned") = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        *self.metrics.store_slot.lock().expect("not poisoned") = None;
        self.metrics
            .status
            .store_open
            .store(false, Ordering::SeqCst);
    }
}

fn census_loop(
    store: Weak<Store>,
    metrics: Metrics,
    stop: Arc<(Mutex<bool>, Condvar)>,
    interval: Duration,
) {
    let stopped = || *stop.0.lock().expect("not poisoned");
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    loop {
        let Some(s) = store.upgrade() else { return };
        let t = Instant::now();
        match s.census_while(|| !stopped()) {
            Ok(Some(census)) => {
                // Combinations that vanished (every certificate moved on) read 0, not stale.
                for gone in seen.iter().filter(|k| !census.contains_key(*k)) {
                    metrics
                        .store_certificates
                        .with_label_values(&[&gone.0, &gone.1])
                        .set(0);
                }
                for ((ty, st), n) in &census {
                    metrics
                        .store_certificates
                        .with_label_values(&[ty, st])
                        .set(*n as i64);
                    seen.insert((ty.clone(), st.clone()));
                }
                metrics.store_census_duration.set(t.elapsed().as_secs_f64());
                metrics.store_census_timestamp.set(unix_now());
                debug!(elapsed = ?t.elapsed(), "store census taken");
            }
            Ok(None) => return,
            Err(e) => warn!("store census: {e:#}"),
        }
        drop(s);
        let guard = stop.0.lock().expect("not poisoned");
        let (guard, _) = stop
            .1
            .wait_timeout_while(guard, interval, |stopped| !*stopped)
            .expect("not poisoned");
        if *guard {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{CertificateRecord, CertificateStatus, StoredType};
    use crate::metrics::exposed_value as value;
    use crate::store::{CertKey, StoreBatch};

    #[test]
    fn census_and_rocksdb_figures_while_observed_and_nothing_after() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), "t").unwrap());
        let mut b = StoreBatch::default();
        for (i, status) in [
            CertificateStatus::InUse,
            CertificateStatus::InUse,
            CertificateStatus::Revoked,
        ]
        .into_iter()
        .enumerate()
        {
            let rec = CertificateRecord {
                status: status as i32,
                certificate_type: StoredType::Device as i32,
                ..Default::default()
            };
            b.put_cert(CertKey::new(0, &[1; 8], &[i as u8]), &rec);
        }
        b.put_offset(0, 3);
        store.write(b).unwrap();

        let m = Metrics::new();
        let obs = StoreObserver::start(&store, &m, Duration::from_secs(3600));
        // The first census runs at start; wait for it (a bound, not a timing assertion).
        let deadline = Instant::now() + Duration::from_secs(60);
        while m.store_census_timestamp.get() == 0.0 {
            assert!(Instant::now() < deadline, "no census within a minute");
            std::thread::sleep(Duration::from_millis(10));
        }
        let t = m.render();
        let v = |s: &str| value(&t, s).unwrap_or_else(|| panic!("{s} in\n{t}"));
        assert_eq!(
            v("smki_store_certificates{status=\"I\",type=\"DEVICE\"}"),
            2.0
        );
        assert_eq!(
            v("smki_store_certificates{status=\"R\",type=\"DEVICE\"}"),
            1.0
        );
        assert_eq!(v("smki_store_open"), 1.0);
        assert!(v("smki_store_estimated_keys{cf=\"certs\"}") >= 1.0);
        assert!(t.contains("smki_store_live_sst_bytes{cf=\"bodies\"}"));
        assert!(t.contains("smki_store_pending_compaction_bytes{cf=\"certs\"}"));
        assert!(t.contains("smki_store_block_cache_usage_bytes "));
        assert!(m.status.store_open.load(Ordering::SeqCst));

        drop(obs);
        assert!(!m.status.store_open.load(Ordering::SeqCst));
        let t = m.render();
        assert_eq!(value(&t, "smki_store_open"), Some(0.0));
        // The observer kept no strong reference: the store can be closed and reopened.
        drop(store);
        Store::open(dir.path(), "t").unwrap();
    }
}
