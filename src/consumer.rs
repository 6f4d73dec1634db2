//! The Kafka side of ingest: a consumer-group member that feeds the [`Ingestor`].
//!
//! - On assignment each partition starts at the offset stored in RocksDB (from the beginning
//!   when the store has never seen it: an empty store, offset 0, or a partition added to the
//!   topic later). Kafka's committed offsets are never read for correctness.
//! - On revocation (or loss) the in-flight batch is committed to the store first.
//! - After each store commit the same offsets are committed to Kafka, asynchronously, only so
//!   that lag tools see progress.
//! - SIGTERM/SIGINT: stop polling, commit the batch, commit offsets, leave the group, exit 0.
//! - The window clock is told the topic's partition count and the assignment after every
//!   rebalance, when a partition reaches its end, and ticks every poll; days it closes are
//!   handed to the [`PublicationWorker`], which writes their files while ingest goes on.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{debug, error, info, warn};

use crate::closelog::CloseLog;
use crate::config::Config;
use crate::deadletter::KafkaDeadLetters;
use crate::extract::publish::ManifestEntry;
use crate::ingest::{Committed, Ingestor, RecordRef};
use crate::lag::LagMonitor;
use crate::metrics::Metrics;
use crate::publication::{PublicationWorker, PublishSettings};
use crate::store::Store;
use crate::store_metrics::StoreObserver;

/// How `run` ends besides a signal.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Exit once every assigned partition is at its end and nothing more arrives for
    /// `end_grace` (tests, `replay`-like one-shot catch-up).
    pub stop_at_end: bool,
    /// How long the end must stay quiet before stopping.
    pub end_grace: Duration,
    /// Evaluate the window clock's wall-clock rules (idle, deadline) as if it were always
    /// this instant (Unix ms), not the real time: for the demo and tests, which replay a
    /// history whose days are long past.
    pub simulated_now_ms: Option<i64>,
}

/// What a run did (for the caller's report).
#[derive(Clone, Debug, Default)]
pub struct RunSummary {
    /// Records consumed (including skipped re-deliveries).
    pub consumed: u64,
    /// Events applied.
    pub applied: u64,
    /// Events dead-lettered.
    pub dead_lettered: u64,
    /// Duplicate events.
    pub duplicates: u64,
    /// From the first record received to the last one (throughput measurements).
    pub busy: Duration,
    /// Days closed during the run.
    pub days_closed: u64,
    /// Files published during the run.
    pub published: Vec<ManifestEntry>,
}

/// Shared between the poll loop and the rebalance callback (which librdkafka runs inside
/// `poll`, on the same thread, so the lock is never contended in practice).
struct IngestContext {
    ingestor: Mutex<Ingestor<KafkaDeadLetters>>,
    topic: String,
    assigned: Mutex<BTreeSet<i32>>,
    /// The assignment changed: the window clock must be told (outside the callback).
    assignment_changed: AtomicBool,
    at_end: Mutex<BTreeSet<i32>>,
    fatal: Mutex<Option<anyhow::Error>>,
    metrics: Metrics,
    /// Offsets written to the store but not yet reported to Kafka, and when Kafka was last
    /// told: reports are informational, so they are sent at most once a second (a commit
    /// per batch floods slow brokers; measured on tansu, it starved group heartbeats).
    unreported: Mutex<(BTreeMap<i32, i64>, Option<Instant>)>,
}

/// Least time between two informational offset commits to Kafka.
const KAFKA_COMMIT_INTERVAL: Duration = Duration::from_secs(1);

impl IngestContext {
    fn ingestor(&self) -> MutexGuard<'_, Ingestor<KafkaDeadLetters>> {
        self.ingestor.lock().expect("ingestor lock not poisoned")
    }

    fn fail(&self, e: anyhow::Error) {
        error!("fatal: {e:#}");
        self.fatal.lock().expect("not poisoned").get_or_insert(e);
    }

    /// Write everything consumed to the store (waiting for dead letters to be
    /// acknowledged), then commit the offsets (informationally) to Kafka.
    fn commit(&self, consumer: &BaseConsumer<IngestContext>, mode: CommitMode) -> Result<()> {
        let committed = self.ingestor().commit()?;
        if let Some(c) = committed {
            self.note_committed(&c);
        }
        self.report_to_kafka(consumer, mode, true);
        Ok(())
    }

    /// Write the sealed batches whose dead letters are acknowledged; with `wait`, all of them.
    fn write_ready(&self, consumer: &BaseConsumer<IngestContext>, wait: bool) -> Result<()> {
        let written = self.ingestor().write_ready(wait)?;
        for c in &written {
            self.note_committed(c);
        }
        self.report_to_kafka(consumer, CommitMode::Async, false);
        Ok(())
    }

    fn note_committed(&self, c: &Committed) {
        debug!(records = c.records, offsets = ?c.offsets, "batch committed to the state store");
        let mut unreported = self.unreported.lock().expect("not poisoned");
        unreported.0.extend(c.offsets.iter().copied());
    }

    /// Commit the offsets written to the store to Kafka (informational only, for lag
    /// tools): now with `force`, else at most once per [`KAFKA_COMMIT_INTERVAL`].
    fn report_to_kafka(
        &self,
        consumer: &BaseConsumer<IngestContext>,
        mode: CommitMode,
        force: bool,
    ) {
        let offsets = {
            let mut unreported = self.unreported.lock().expect("not poisoned");
            let due = force
                || unreported
                    .1
                    .is_none_or(|t| t.elapsed() >= KAFKA_COMMIT_INTERVAL);
            if unreported.0.is_empty() || !due {
                return;
            }
            unreported.1 = Some(Instant::now());
            std::mem::take(&mut unreported.0)
        };
        let mut tpl = TopicPartitionList::new();
        for (p, o) in &offsets {
            if tpl
                .add_partition_offset(&self.topic, *p, Offset::Offset(*o))
                .is_err()
            {
                return;
            }
        }
        // Failure is logged, never fatal: correctness rests on the offsets in the store.
        if let Err(e) = consumer.commit(&tpl, mode) {
            debug!("committing offsets to Kafka: {e}");
        }
    }

    fn on_assign(
        &self,
        consumer: &BaseConsumer<IngestContext>,
        tpl: &mut TopicPartitionList,
    ) -> Result<()> {
        let partitions: Vec<i32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        {
            let mut ing = self.ingestor();
            for p in &partitions {
                let offset = match ing.next_offset(*p)? {
                    Some(o) => Offset::Offset(o),
                    None => Offset::Beginning,
                };
                info!(
                    partition = p,
                    ?offset,
                    "assigned; starting at the offset in the state store"
                );
                tpl.set_partition_offset(&self.topic, *p, offset)
                    .map_err(|e| anyhow!("setting start offset of partition {p}: {e}"))?;
            }
        }
        match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_assign(tpl),
            _ => consumer.assign(tpl),
        }
        .context("assigning partitions")?;
        let mut assigned = self.assigned.lock().expect("not poisoned");
        assigned.extend(partitions);
        self.metrics.partitions_assigned.set(assigned.len() as i64);
        self.assignment_changed.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn on_revoke(
        &self,
        consumer: &BaseConsumer<IngestContext>,
        tpl: &TopicPartitionList,
    ) -> Result<()> {
        // Persist what was read from the revoked partitions before letting them go.
        let result = self.commit(consumer, CommitMode::Sync);
        let partitions: Vec<i32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        info!(?partitions, "revoked");
        let unassign = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_unassign(tpl),
            _ => consumer.unassign(),
        };
        if let Err(e) = unassign {
            warn!("unassigning: {e}");
        }
        let mut assigned = self.assigned.lock().expect("not poisoned");
        let mut at_end = self.at_end.lock().expect("not poisoned");
        for p in partitions {
            assigned.remove(&p);
            at_end.remove(&p);
        }
        self.metrics.partitions_assigned.set(assigned.len() as i64);
        self.assignment_changed.store(true, Ordering::SeqCst);
        result
    }
}

impl ClientContext for IngestContext {
    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(error, reason);
    }
}

/// librdkafka reports reaching the end of a partition as a "global error" too when
/// `enable.partition.eof` is on; that is expected here, so it is not logged as an error.
pub(crate) fn log_client_error(error: KafkaError, reason: &str) {
    match error {
        KafkaError::PartitionEOF(_) => debug!("librdkafka: {reason}"),
        KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF) => {
            debug!("librdkafka: {reason}")
        }
        e => error!("librdkafka: {e}: {reason}"),
    }
}

impl ConsumerContext for IngestContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.on_assign(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.on_revoke(consumer, tpl),
            other => {
                warn!("rebalance error {other:?}; dropping the assignment");
                let r = self.on_revoke(consumer, tpl);
                if let Err(e) = consumer.unassign() {
                    warn!("unassigning after a rebalance error: {e}");
                }
                r
            }
        };
        if let Err(e) = result {
            self.fail(e);
        }
    }
}

/// Tell the window clock how many partitions the topic has and which are assigned here
/// (metadata is fetched outside the rebalance callback).
fn tell_window_the_assignment(
    consumer: &BaseConsumer<IngestContext>,
    ctx: &IngestContext,
) -> Result<()> {
    let metadata = consumer
        .fetch_metadata(Some(&ctx.topic), Duration::from_secs(10))
        .with_context(|| format!("fetching the metadata of topic {}", ctx.topic))?;
    let total = metadata
        .topics()
        .iter()
        .find(|t| t.name() == ctx.topic)
        .map_or(0, |t| t.partitions().len() as i32);
    let assigned: Vec<i32> = ctx
        .assigned
        .lock()
        .expect("not poisoned")
        .iter()
        .copied()
        .collect();
    if total > 0 && (assigned.len() as i32) < total && !assigned.is_empty() {
        warn!(
            assigned = assigned.len(),
            total,
            "not every partition of the topic is assigned here: days close (and files are \
             published) only while one instance holds every partition"
        );
    }
    ctx.ingestor().set_partitions(total, &assigned)
}

/// Sealed batches allowed to wait for dead-letter acknowledgements before ingest waits too.
const MAX_SEALED_BATCHES: usize = 4;

/// Build the consumer for `config`.
fn consumer(config: &Config, context: IngestContext) -> Result<BaseConsumer<IngestContext>> {
    // Defaults first, then the operator's pass-through properties may override them...
    let mut c = rdkafka::config::ClientConfig::new();
    c.set("auto.offset.reset", "earliest")
        // A deep prefetch queue: ingest takes records in bursts between WriteBatches.
        .set("queued.min.messages", "1000000");
    for (k, v) in config.kafka.client_config().config_map() {
        c.set(k, v);
    }
    // ...except what correctness depends on.
    c.set("group.id", &config.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true");
    c.create_with_context(context)
        .context("creating the Kafka consumer")
}

/// Run the ingest service until `stop` is set (signal) or, with `stop_at_end`, until caught up.
pub fn run(
    config: &Config,
    stop: Arc<AtomicBool>,
    opts: RunOptions,
    metrics: Metrics,
) -> Result<RunSummary> {
    let window = config.window_config()?;
    let store = Arc::new(Store::open(&config.store.path, &config.kafka.topic)?);
    // Every close is durable in the close log before its files are written.
    let close_log = CloseLog::new(&config.kafka.client_config(), &config.kafka.closes_topic())?;
    close_log.check_exists(Duration::from_secs(30))?;
    close_log.catch_up(&store)?;
    let publication = PublicationWorker::start(
        store.clone(),
        &config.output.dir,
        PublishSettings::from_config(&config.output)?,
        metrics.clone(),
    )?;
    // Metrics work beyond plain counters only when there is an endpoint to show it.
    let observe = !config.http.address.is_empty();
    let census_every = Duration::from_secs(config.http.store_census_interval_s);
    let _store_observer = observe.then(|| StoreObserver::start(&store, &metrics, census_every));
    let mut lag = observe.then(|| LagMonitor::new(metrics.clone()));
    let dlq_topic = config.kafka.dead_letter_topic();
    let sink = KafkaDeadLetters::new(
        &config.kafka.client_config(),
        &dlq_topic,
        &config.kafka.topic,
    )?;
    let ingestor = Ingestor::new(store, sink, window, metrics.clone())?;
    let context = IngestContext {
        ingestor: Mutex::new(ingestor),
        topic: config.kafka.topic.clone(),
        assigned: Mutex::new(BTreeSet::new()),
        assignment_changed: AtomicBool::new(false),
        at_end: Mutex::new(BTreeSet::new()),
        fatal: Mutex::new(None),
        metrics: metrics.clone(),
        unreported: Mutex::new((BTreeMap::new(), None)),
    };
    let consumer = consumer(config, context)?;
    consumer
        .subscribe(&[&config.kafka.topic])
        .with_context(|| format!("subscribing to {}", config.kafka.topic))?;
    info!(
        topic = %config.kafka.topic,
        group = %config.kafka.group_id,
        dead_letters = %dlq_topic,
        store = %config.store.path.display(),
        output = %config.output.dir.display(),
        "ingest started"
    );
    let now_ms = || {
        opts.simulated_now_ms
            .unwrap_or_else(|| chrono::Utc::now().timestamp_millis())
    };
    let mut days_closed = 0u64;

    let max_records = config.ingest.batch_max_records;
    let max_age = Duration::from_millis(config.ingest.batch_max_ms);
    let mut batch_started: Option<Instant> = None;
    let mut quiet_since: Option<Instant> = None;
    let mut last_report = Instant::now();
    let mut first_record: Option<Instant> = None;
    let mut last_record: Option<Instant> = None;
    let ctx = consumer.context().clone();
    let outcome: Result<()> = loop {
        if stop.load(Ordering::SeqCst) {
            info!("stop requested");
            break Ok(());
        }
        if let Some(e) = ctx.fatal.lock().expect("not poisoned").take() {
            break Err(e);
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(msg)) => {
                quiet_since = None;
                first_record.get_or_insert_with(Instant::now);
                last_record = Some(Instant::now());
                ctx.at_end
                    .lock()
                    .expect("not poisoned")
                    .remove(&msg.partition());
                let rec = RecordRef {
                    partition: msg.partition(),
                    offset: msg.offset(),
                    key: msg.key(),
                    value: msg.payload(),
                    timestamp_ms: msg.timestamp().to_millis(),
                };
                let mut ing = ctx.ingestor();
                if let Err(e) = ing.ingest(rec) {
                    break Err(e);
                }
                batch_started.get_or_insert_with(Instant::now);
                if ing.pending_records() >= max_records {
                    ing.seal();
                    batch_started = None;
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                ctx.at_end.lock().expect("not poisoned").insert(p);
                if let Err(e) = ctx.ingestor().note_end(p, now_ms()) {
                    break Err(e);
                }
            }
            Some(Err(e)) => warn!("consumer: {e}"),
            None => {}
        }
        if batch_started.is_some_and(|t| t.elapsed() >= max_age) {
            ctx.ingestor().seal();
            batch_started = None;
        }
        if ctx.assignment_changed.swap(false, Ordering::SeqCst) {
            if let Err(e) = tell_window_the_assignment(&consumer, &ctx) {
                break Err(e);
            }
        }
        // The window clock: wall-clock rules, then any day closed goes to publication.
        let (closed, written) = {
            let mut ing = ctx.ingestor();
            if let Err(e) = ing.tick(now_ms()) {
                break Err(e);
            }
            (ing.take_closed(), ing.take_written_by_close())
        };
        for c in &written {
            ctx.note_committed(c);
        }
        if let Some(last) = closed.last() {
            days_closed += closed.len() as u64;
            if let Err(e) = close_log
                .append(&closed)
                .and_then(|()| ctx.ingestor().store().set_close_log_mark(last.day))
            {
                break Err(e);
            }
            publication.notify();
        }
        // Write what is ready; wait only when too many batches are queued behind slow
        // dead-letter acknowledgements.
        let backlog = ctx.ingestor().sealed_batches();
        if backlog > 0 {
            if let Err(e) = ctx.write_ready(&consumer, backlog > MAX_SEALED_BATCHES) {
                break Err(e);
            }
        } else {
            ctx.report_to_kafka(&consumer, CommitMode::Async, false);
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            info!(
                consumed = metrics.events_consumed.get(),
                applied = metrics.events_applied.get(),
                dead_lettered = metrics.dead_lettered_total(),
                duplicates = metrics.events_duplicate.get(),
                "progress"
            );
        }
        if let Some(lag) = lag.as_mut().filter(|l| l.due()) {
            let assigned = ctx.assigned.lock().expect("not poisoned").clone();
            let mut ing = ctx.ingestor();
            lag.update(consumer.client(), &config.kafka.topic, &assigned, |p| {
                ing.next_offset(p).ok().flatten()
            });
        }
        if opts.stop_at_end {
            let assigned = ctx.assigned.lock().expect("not poisoned").clone();
            let at_end = ctx.at_end.lock().expect("not poisoned").clone();
            if !assigned.is_empty() && assigned.is_subset(&at_end) && ctx.ingestor().is_idle() {
                let since = *quiet_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= opts.end_grace {
                    info!("every assigned partition is at its end; stopping");
                    break Ok(());
                }
            } else {
                quiet_since = None;
            }
        }
    };
    // Whatever happened, persist what was read (unless the store itself failed).
    let final_commit = ctx.commit(&consumer, CommitMode::Sync);
    let busy = match (first_record, last_record) {
        (Some(a), Some(b)) => b - a,
        _ => Duration::ZERO,
    };
    consumer.unsubscribe();
    // Serve the revocation so the group rebalances promptly.
    let _ = consumer.poll(Duration::from_millis(100));
    // Files of days closed so far are written before the process exits.
    let published = publication.finish();
    outcome?;
    final_commit?;
    if let Some(e) = ctx.fatal.lock().expect("not poisoned").take() {
        return Err(e);
    }
    let published = published.context("publishing the files of closed days")?;
    let summary = RunSummary {
        consumed: metrics.events_consumed.get(),
        applied: metrics.events_applied.get(),
        dead_lettered: metrics.dead_lettered_total(),
        duplicates: metrics.events_duplicate.get(),
        busy,
        days_closed,
        published,
    };
    info!(
        consumed = summary.consumed,
        applied = summary.applied,
        dead_lettered = summary.dead_lettered,
        duplicates = summary.duplicates,
        days_closed = summary.days_closed,
        published = summary.published.len(),
        "ingest stopped cleanly"
    );
    Ok(summary)
}
