//! Consumer lag per assigned partition: high watermark − next offset to consume.
//!
//! The high watermarks come from librdkafka's cache (`rd_kafka_get_watermark_offsets`),
//! which every fetch response refreshes — no broker round trip. The poll loop calls
//! [`LagMonitor::update`] when [`LagMonitor::due`] says so (every [`LAG_INTERVAL`]), so the
//! cost per record is nothing and per update a few map lookups per partition.
//! The result goes to `smki_partition_lag_records{partition}` and, summed, to
//! [`crate::metrics::Status::lag_records`] for `/readyz`.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::client::{Client, ClientContext};

use crate::metrics::Metrics;

/// How often lag is recomputed.
pub const LAG_INTERVAL: Duration = Duration::from_secs(2);

/// librdkafka's "no offset known".
const OFFSET_INVALID: i64 = -1001;

/// The low and high watermarks librdkafka last saw for a partition (`None` when unknown).
pub fn cached_watermarks<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    partition: i32,
) -> (Option<i64>, Option<i64>) {
    let Ok(topic) = CString::new(topic) else {
        return (None, None);
    };
    let (mut low, mut high) = (OFFSET_INVALID, OFFSET_INVALID);
    // SAFETY: the client pointer is valid while `client` is borrowed; the topic string and
    // both out-parameters outlive the call, which only reads local state of the client.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            client.native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    if !matches!(
        err,
        rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR
    ) {
        return (None, None);
    }
    let known = |o: i64| (o >= 0).then_some(o);
    (known(low), known(high))
}

/// Records behind the head: `high − next`, where an unknown `next` (nothing consumed or
/// stored yet: consumption starts at the beginning) counts from `low`, or from 0 when even
/// that is unknown — an over-estimate, which is the safe side for readiness.
pub fn lag_of(low: Option<i64>, high: Option<i64>, next: Option<i64>) -> Option<i64> {
    let high = high?;
    let next = next.or(low).unwrap_or(0);
    Some((high - next).max(0))
}

/// Keeps the lag series of the assigned partitions up to date.
pub struct LagMonitor {
    metrics: Metrics,
    last: Option<Instant>,
    exported: BTreeSet<i32>,
}

impl LagMonitor {
    /// A monitor writing into `metrics`.
    pub fn new(metrics: Metrics) -> LagMonitor {
        LagMonitor {
            metrics,
            last: None,
            exported: BTreeSet::new(),
        }
    }

    /// True when [`LAG_INTERVAL`] has passed since the last update.
    pub fn due(&self) -> bool {
        self.last.is_none_or(|t| t.elapsed() >= LAG_INTERVAL)
    }

    /// Recompute the lag of every partition in `assigned`, with `next_offset` giving the
    /// next offset the service will consume (consumed or stored), if any.
    pub fn update<C: ClientContext>(
        &mut self,
        client: &Client<C>,
        topic: &str,
        assigned: &BTreeSet<i32>,
        mut next_offset: impl FnMut(i32) -> Option<i64>,
    ) {
        let lags: Vec<(i32, Option<i64>)> = assigned
            .iter()
            .map(|&p| {
                let (low, high) = cached_watermarks(client, topic, p);
                (p, lag_of(low, high, next_offset(p)))
            })
            .collect();
        self.record(&lags);
    }

    /// Publish per-partition lags (`None`: not known yet) and drop the series of
    /// partitions that are no longer listed.
    pub fn record(&mut self, lags: &[(i32, Option<i64>)]) {
        self.last = Some(Instant::now());
        let now: BTreeSet<i32> = lags.iter().map(|(p, _)| *p).collect();
        for gone in self.exported.difference(&now) {
            self.metrics.forget_partition(*gone);
        }
        let mut total = Some(0i64);
        for (p, lag) in lags {
            match lag {
                Some(l) => {
                    self.metrics
                        .partition_lag_records
                        .with_label_values(&[p.to_string()])
                        .set(*l);
                    total = total.map(|t| t + l);
                }
                None => total = None,
            }
        }
        self.exported = now;
        // No partition assigned: nothing is known about the head.
        let total = if lags.is_empty() { None } else { total };
        self.metrics
            .status
            .lag_records
            .store(total.unwrap_or(-1), Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_from_the_next_offset_or_the_beginning() {
        assert_eq!(lag_of(Some(0), Some(100), Some(40)), Some(60));
        assert_eq!(lag_of(Some(10), Some(100), None), Some(90));
        assert_eq!(lag_of(None, Some(100), None), Some(100));
        assert_eq!(lag_of(Some(0), None, Some(40)), None);
        // A stored offset past a (stale) cached head is no negative lag.
        assert_eq!(lag_of(Some(0), Some(5), Some(7)), Some(0));
    }

    #[test]
    fn series_follow_the_assignment_and_the_total_feeds_readiness() {
        let m = Metrics::new();
        let mut mon = LagMonitor::new(m.clone());
        assert!(mon.due());
        mon.record(&[(0, Some(5)), (3, Some(7))]);
        assert!(!mon.due());
        assert_eq!(m.status.lag_records.load(Ordering::SeqCst), 12);
        let t = m.render();
        assert!(
            t.contains("smki_partition_lag_records{partition=\"3\"} 7"),
            "{t}"
        );
        m.observe_event_time(3, 1_000);
        mon.record(&[(0, Some(1)), (1, None)]);
        assert_eq!(m.status.lag_records.load(Ordering::SeqCst), -1);
        let t = m.render();
        assert!(
            t.contains("smki_partition_lag_records{partition=\"0\"} 1"),
            "{t}"
        );
        assert!(
            !t.contains("partition=\"3\""),
            "revoked partition still exported:\n{t}"
        );
        mon.record(&[]);
        assert_eq!(m.status.lag_records.load(Ordering::SeqCst), -1);
    }
}
