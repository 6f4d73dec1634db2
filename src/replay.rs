//! `replay`: rebuild the state store from the topic into an empty directory (disaster
//! recovery, a new format version, a new instance).
//!
//! - Reads every partition from its beginning up to the end it had when the replay started
//!   (or up to given offsets, or to the first record stamped after a given time), as an
//!   assigned consumer outside the service's group (it commits nothing).
//! - Cuts where the original run cut: the original's day closes are read from the close log
//!   ([`crate::closelog`]) and every forced cut they record is applied at its offset; the
//!   wall-clock rules are not used. Cuts by event time fall at the same offsets by
//!   construction. So the rebuilt store holds the same version of every certificate for every
//!   closed day, and writes byte-identical files.
//! - Bulk load: writes skip the WAL, and the store is flushed and compacted at the end
//!   ([`Store::open_for_replay`], [`Store::finish_bulk_load`]); a replay that dies leaves a
//!   store marked incomplete, which the service refuses to open.
//! - Dead letters are counted, not sent again (the original run sent them).
//! - Progress (records, rate, ETA) is logged every few seconds and kept in the replay metrics.

use std::collections::BTreeMap;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::info;

use crate::closelog;
use crate::config::Config;
use crate::deadletter::DiscardDeadLetters;
use crate::ingest::{Ingestor, Prepared, Preparer, RecordRef};
use crate::metrics::Metrics;
use crate::store::Store;

/// Where a replay stops.
#[derive(Clone, Debug, Default)]
pub struct ReplayLimits {
    /// Stop each listed partition before this offset (others: at their end).
    pub until_offsets: BTreeMap<i32, i64>,
    /// Stop each partition at its first record whose Kafka timestamp is after this instant
    /// (Unix ms).
    pub until_ms: Option<i64>,
}

/// What a replay did.
#[derive(Clone, Debug, Default)]
pub struct ReplaySummary {
    /// Records read.
    pub records: u64,
    /// Events applied.
    pub applied: u64,
    /// Events that would be dead-lettered (counted, not sent).
    pub dead_lettered: u64,
    /// Days closed in the rebuilt store.
    pub days_closed: u64,
    /// Forced cuts of the original applied at their offsets.
    pub cuts_applied: u64,
    /// Time spent reading and applying (not counting the final flush and compaction).
    pub ingest_time: Duration,
    /// The whole replay, compaction included.
    pub total_time: Duration,
}

struct Quiet;
impl ClientContext for Quiet {
    fn error(&self, error: KafkaError, reason: &str) {
        crate::consumer::log_client_error(error, reason);
    }
}
impl rdkafka::consumer::ConsumerContext for Quiet {}

/// Rebuild the store at `config.store.path` (empty or absent) from the topic.
pub fn replay(config: &Config, limits: &ReplayLimits, metrics: Metrics) -> Result<ReplaySummary> {
    let started = Instant::now();
    let topic = config.kafka.topic.clone();
    let client = config.kafka.client_config();
    let closes_topic = config.kafka.closes_topic();
    let closes = closelog::read_all(&client, &closes_topic, Duration::from_secs(60))
        .with_context(|| format!("reading the close log {closes_topic}"))?;
    let planned: usize = closes.values().map(|c| c.forced_cuts.len()).sum();
    info!(
        days = closes.len(),
        forced_cuts = planned,
        "read the close log: cuts of the original run to reproduce"
    );
    // Before anything is created: a replay with other window settings is refused.
    crate::window::check_replay_settings(&config.window_config()?, closes.values())?;
    let store = Arc::new(Store::open_for_replay(&config.store.path, &topic)?);
    let mut ing = Ingestor::new(
        store.clone(),
        DiscardDeadLetters::default(),
        config.window_config()?,
        metrics.clone(),
    )?;
    ing.plan_cuts(&closes)?;

    let mut cc = client.clone();
    cc.set("group.id", format!("{}.replay", config.kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    // A deep prefetch queue unless the operator set one: the applying thread takes records
    // in bursts (a WriteBatch every batch_max_records); with librdkafka's default (100 000)
    // the reader waited for fetches a third of the time (measured: 119 k/s → 152 k/s).
    if client.get("queued.min.messages").is_none() {
        cc.set("queued.min.messages", "1000000");
    }
    let consumer: BaseConsumer<Quiet> = cc
        .create_with_context(Quiet)
        .context("creating the replay consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(&topic), Duration::from_secs(30))
        .with_context(|| format!("metadata of {topic}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        bail!("topic {topic} does not exist or has no partitions");
    }
    // Where each partition ends for this replay.
    let mut end: BTreeMap<i32, i64> = BTreeMap::new();
    let mut start: BTreeMap<i32, i64> = BTreeMap::new();
    for p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(&topic, *p, Duration::from_secs(30))
            .with_context(|| format!("watermarks of {topic}/{p}"))?;
        let stop = limits.until_offsets.get(p).map_or(high, |o| (*o).min(high));
        start.insert(*p, low);
        end.insert(*p, stop.max(low));
    }
    let total: i64 = partitions.iter().map(|p| end[p] - start[p]).sum();
    metrics.replay_started(total.max(0) as u64);
    ing.set_partitions(partitions.len() as i32, &partitions)?;
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(&topic, *p, Offset::Offset(start[p]))?;
    }
    consumer
        .assign(&tpl)
        .context("assigning the topic's partitions")?;

    // Two threads: this one applies to the store (the part that needs the state, in
    // order); a reader thread polls the consumer and does the record-only work (decode,
    // X.509 parse, key) beside it, handing over owned, prepared records in order.
    let reading = Instant::now();
    let (tx, rx) = mpsc::sync_channel::<Vec<Item>>(HANDOVER_BATCHES);
    let reader = {
        let topic = topic.clone();
        let limits = limits.clone();
        let metrics = metrics.clone();
        let preparer = Preparer::new(&config.window_config()?);
        std::thread::Builder::new()
            .name("smki-replay-read".into())
            .spawn(move || {
                read_and_prepare(
                    consumer, &topic, start, end, &limits, total, preparer, &metrics, tx,
                )
            })
            .context("starting the replay reader")?
    };
    let batch_max = config.ingest.batch_max_records.max(1);
    let mut applied_ok = Ok(());
    for items in rx.iter() {
        for item in items {
            let rec = RecordRef {
                partition: item.partition,
                offset: item.offset,
                key: item.key.as_deref(),
                value: item.value.as_deref(),
                timestamp_ms: item.timestamp_ms,
            };
            if let Err(e) = ing.ingest_prepared(rec, item.prepared) {
                applied_ok = Err(e);
                break;
            }
            if ing.pending_records() >= batch_max {
                if let Err(e) = ing.commit() {
                    applied_ok = Err(e);
                    break;
                }
            }
        }
        if applied_ok.is_err() {
            break;
        }
    }
    // Hanging up stops the reader if applying failed.
    drop(rx);
    let read = reader
        .join()
        .map_err(|_| anyhow!("the replay reader panicked"))?;
    applied_ok?;
    let (next, records) = read?;
    let ingest_time = reading.elapsed();
    let unapplied = ing.finish_replay(&next)?;
    if unapplied > 0 {
        info!(
            unapplied,
            "forced cuts beyond the replay's end left for the service"
        );
    }
    let days_closed = ing.take_closed().len() as u64;
    let summary = ReplaySummary {
        records,
        applied: metrics.events_applied.get(),
        dead_lettered: metrics.dead_lettered_total(),
        days_closed,
        cuts_applied: planned_unique(&closes).saturating_sub(unapplied) as u64,
        ingest_time,
        total_time: Duration::ZERO,
    };
    drop(ing);
    let mut store =
        Arc::try_unwrap(store).map_err(|_| anyhow!("the store is still shared after replay"))?;
    // The original's closes are in the log already: the service must not log them again.
    if let Some(last) = store.last_closed_day()? {
        store.set_close_log_mark(last)?;
    }
    metrics.replay_compacting(true);
    store.finish_bulk_load()?;
    metrics.replay_compacting(false);
    metrics.replay_progress(records);
    metrics.replay_finished();
    let summary = ReplaySummary {
        total_time: started.elapsed(),
        ..summary
    };
    info!(
        records = summary.records,
        applied = summary.applied,
        days_closed = summary.days_closed,
        seconds = summary.total_time.as_secs_f64(),
        "replay finished"
    );
    Ok(summary)
}

/// Records handed from the reader to the applying thread at a time, and how many such
/// handovers may wait (bounds the memory between the two threads: about 32 000 records,
/// more than one WriteBatch, so the reader goes on while a batch is written).
const HANDOVER_RECORDS: usize = 512;
const HANDOVER_BATCHES: usize = 64;

/// One record as read, owned, with its record-only work done.
struct Item {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    timestamp_ms: Option<i64>,
    prepared: Prepared,
}

/// The reader thread: read every partition from `start` to `end` (or to `limits`),
/// prepare each record and hand the records over in order. Returns the next offset of every
/// partition and the records read; stops early (with what it read) when the applying
/// thread hangs up.
#[allow(clippy::too_many_arguments)]
fn read_and_prepare(
    consumer: BaseConsumer<Quiet>,
    topic: &str,
    start: BTreeMap<i32, i64>,
    mut end: BTreeMap<i32, i64>,
    limits: &ReplayLimits,
    total: i64,
    mut preparer: Preparer,
    metrics: &Metrics,
    tx: mpsc::SyncSender<Vec<Item>>,
) -> Result<(BTreeMap<i32, i64>, u64)> {
    let mut next: BTreeMap<i32, i64> = start;
    let done = |next: &BTreeMap<i32, i64>, end: &BTreeMap<i32, i64>| {
        next.iter().all(|(p, o)| *o >= end[p])
    };
    let mut records = 0u64;
    let mut last_report = Instant::now();
    let reading = Instant::now();
    let mut items: Vec<Item> = Vec::with_capacity(HANDOVER_RECORDS);
    let hand_over = |items: &mut Vec<Item>| -> bool {
        if items.is_empty() {
            return true;
        }
        let full = std::mem::replace(items, Vec::with_capacity(HANDOVER_RECORDS));
        tx.send(full).is_ok()
    };
    while !done(&next, &end) {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(msg)) => {
                let p = msg.partition();
                if msg.offset() >= end[&p] {
                    continue;
                }
                let ts = msg.timestamp().to_millis();
                if let (Some(until), Some(ts)) = (limits.until_ms, ts) {
                    if ts > until {
                        // This partition stops here.
                        end.insert(p, msg.offset());
                        continue;
                    }
                }
                let rec = RecordRef {
                    partition: p,
                    offset: msg.offset(),
                    key: msg.key(),
                    value: msg.payload(),
                    timestamp_ms: ts,
                };
                let prepared = preparer.prepare(rec);
                items.push(Item {
                    partition: p,
                    offset: msg.offset(),
                    key: msg.key().map(<[u8]>::to_vec),
                    value: msg.payload().map(<[u8]>::to_vec),
                    timestamp_ms: ts,
                    prepared,
                });
                next.insert(p, msg.offset() + 1);
                records += 1;
                if items.len() >= HANDOVER_RECORDS && !hand_over(&mut items) {
                    return Ok((next, records));
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                // Compacted or deleted offsets: nothing more before the end.
                if let Some(o) = end.get(&p).copied() {
                    let at = next.get(&p).copied().unwrap_or(0);
                    if at < o {
                        tracing::debug!(
                            partition = p,
                            at,
                            end = o,
                            "end of partition before the replay's end"
                        );
                    }
                }
            }
            Some(Err(e)) => return Err(anyhow!("reading {topic}: {e}")),
            None => {
                if !hand_over(&mut items) {
                    return Ok((next, records));
                }
            }
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            let secs = reading.elapsed().as_secs_f64().max(1e-3);
            let rate = records as f64 / secs;
            let left = (total.max(0) as u64).saturating_sub(records);
            info!(
                records,
                of = total,
                rate = format!("{rate:.0}/s"),
                eta = format!("{:.0}s", left as f64 / rate.max(1.0)),
                "replay progress"
            );
            metrics.replay_progress(records);
        }
    }
    hand_over(&mut items);
    Ok((next, records))
}

/// Distinct forced cuts recorded in `closes`.
fn planned_unique(closes: &BTreeMap<u32, crate::contract::DayClose>) -> usize {
    let mut set = std::collections::BTreeSet::new();
    for c in closes.values() {
        for (p, cut) in &c.forced_cuts {
            set.insert((*p, cut.offset, cut.through_day));
        }
    }
    set.len()
}
