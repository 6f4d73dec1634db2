//! Decode → validate → apply: turns Kafka records into state-store changes, one batch at a
//! time, with no Kafka in sight (the consumer, the benchmark and tests all drive it).
//!
//! Guarantee 1 (exactly-once effect): the changes of a batch and the next offsets of the
//! partitions they came from are written by one [`Store::write`]. Records at offsets the store
//! already covers are skipped, so a re-delivery after a crash or rebalance applies nothing
//! twice; a crash before the write loses nothing, since the offsets were not written either.
//!
//! Guarantee 2 (nothing lost on bad input): an event that cannot be decoded or validated is
//! handed to a [`DeadLetterSink`] with its reason, counted, and ingest continues. The sink is
//! flushed (every dead letter acknowledged) *before* the batch's offsets are written, so a
//! dead letter is never lost; after a crash between the two it may be sent twice (the origin
//! partition and offset in its headers identify the copy).
//!
//! A repeated `event_id` is applied once: each certificate record keeps the ids of the events
//! applied to it (a handful in a certificate's life), so the check costs no extra lookup.
//!
//! Guarantee 3 (windows by event time): every change gets a *delta day* from the
//! [`window`](crate::window) clock — its event day, or the next day still open on its
//! partition when it is late — and is written as the certificate's version at the close of
//! that day (the `history` column family) plus an entry in that day's delta index. The clock
//! state is written with the offsets; when a day has closed on every partition, the pipeline
//! writes everything consumed and records the [`DayClose`] in the
//! store, then hands it to the publisher ([`Ingestor::take_closed`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use anyhow::Result;
use prost::Message;
use rustc_hash::FxHashMap as HashMap;

use crate::certificate::{self, CertificateInfo, CertificateType, Usage};
use crate::contract::{
    issuer_hash, record_key, Body, CertificateEvent, CertificateIssued, CertificateRecord,
    CertificateStatus, DayClose, StatusChanged, StoredType, StoredUsage,
};
use crate::deadletter::{DeadLetter, DeadLetterSink};
use crate::metrics::Metrics;
use crate::store::{CertKey, Store, StoreBatch};
use crate::window::{self, Clock, WindowConfig};

/// Longest `event_id` accepted (bytes).
pub const MAX_EVENT_ID_LEN: usize = 128;

/// One Kafka record, borrowed from wherever it was read.
#[derive(Clone, Copy, Debug)]
pub struct RecordRef<'a> {
    /// Partition of the events topic.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
    /// Record key (the certificate id text).
    pub key: Option<&'a [u8]>,
    /// Record value (a serialized `CertificateEvent`).
    pub value: Option<&'a [u8]>,
    /// The record's Kafka timestamp (Unix ms), when it has one: `occurred_at` may not be far
    /// ahead of it (see [`WindowConfig::max_future_skew_ms`]).
    pub timestamp_ms: Option<i64>,
}

/// Why an event was dead-lettered: a stable code for headers and metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The value is not a `CertificateEvent` (not protobuf, or empty).
    Undecodable,
    /// No `event_id`, or one longer than [`MAX_EVENT_ID_LEN`].
    InvalidEventId,
    /// No `occurred_at`.
    MissingOccurredAt,
    /// `occurred_at` further ahead of the record's Kafka timestamp than the allowed skew.
    OccurredAtInFuture,
    /// Neither `issued` nor `status_changed` is set.
    MissingBody,
    /// The record key is not the id of the certificate the event is about.
    KeyMismatch,
    /// The DER does not parse as an X.509 certificate.
    CertificateUnparseable,
    /// A certificate outside the GBCS profile (key, algorithm, key usage, ...).
    CertificateProfile,
    /// A certificate whose SMKI type cannot be determined.
    CertificateUnclassifiable,
    /// An initial status other than P or I, or an unspecified new status.
    InvalidStatus,
    /// The certificate id is already lodged with different DER.
    ConflictingCertificate,
    /// The same certificate lodged again under a new event id.
    AlreadyLodged,
    /// A status change for a certificate that was never lodged.
    UnknownCertificate,
    /// A status change out of a final status (E, R).
    TransitionFromFinal,
    /// A status change the lifecycle does not allow (e.g. P→N, I→I).
    InvalidTransition,
}

impl Reason {
    /// The code in the `smki-dlq-reason` header and the `reason` metric label.
    pub fn code(self) -> &'static str {
        match self {
            Reason::Undecodable => "undecodable",
            Reason::InvalidEventId => "invalid_event_id",
            Reason::MissingOccurredAt => "missing_occurred_at",
            Reason::OccurredAtInFuture => "occurred_at_in_future",
            Reason::MissingBody => "missing_body",
            Reason::KeyMismatch => "key_mismatch",
            Reason::CertificateUnparseable => "certificate_unparseable",
            Reason::CertificateProfile => "certificate_profile",
            Reason::CertificateUnclassifiable => "certificate_unclassifiable",
            Reason::InvalidStatus => "invalid_status",
            Reason::ConflictingCertificate => "conflicting_certificate",
            Reason::AlreadyLodged => "already_lodged",
            Reason::UnknownCertificate => "unknown_certificate",
            Reason::TransitionFromFinal => "transition_from_final",
            Reason::InvalidTransition => "invalid_transition",
        }
    }

    /// Every reason (metrics pre-registration, docs, tests).
    pub const ALL: [Reason; 15] = [
        Reason::Undecodable,
        Reason::InvalidEventId,
        Reason::MissingOccurredAt,
        Reason::OccurredAtInFuture,
        Reason::MissingBody,
        Reason::KeyMismatch,
        Reason::CertificateUnparseable,
        Reason::CertificateProfile,
        Reason::CertificateUnclassifiable,
        Reason::InvalidStatus,
        Reason::ConflictingCertificate,
        Reason::AlreadyLodged,
        Reason::UnknownCertificate,
        Reason::TransitionFromFinal,
        Reason::InvalidTransition,
    ];
}

/// A rejected event: the reason code and a human explanation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Stable code.
    pub reason: Reason,
    /// What exactly was wrong.
    pub detail: String,
}

fn reject<T>(reason: Reason, detail: impl Into<String>) -> Result<T, Rejection> {
    Err(Rejection {
        reason,
        detail: detail.into(),
    })
}

/// What became of one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Its effect is in the pending batch.
    Applied,
    /// Its `event_id` was already applied to the certificate: nothing changed.
    Duplicate,
    /// Handed to the dead-letter sink.
    DeadLettered(Rejection),
    /// The store already covers its offset: skipped.
    AlreadyApplied,
}

/// What a committed batch covered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Committed {
    /// Next offset of every partition the batch touched.
    pub offsets: Vec<(i32, i64)>,
    /// Records the batch consumed.
    pub records: usize,
}

/// The batch being filled.
#[derive(Default)]
struct OpenBatch {
    /// Generation of this batch (increases by one per sealed batch).
    generation: u64,
    /// Certificates this batch changed (may repeat).
    touched: Vec<CertKey>,
    /// Certificates this batch lodged (their DER must be written).
    lodged: Vec<CertKey>,
    /// Versions at the close of a delta day (history + delta index), in order of change.
    versions: Vec<(CertKey, u32, CertificateRecord)>,
    /// Expiry-index entries of certificates this batch lodged.
    expiries: Vec<(CertKey, u32)>,
    /// A new first day of the delta series.
    first_day: Option<u32>,
    /// Next offset per partition after this batch.
    offsets: HashMap<i32, i64>,
    /// Records consumed into it.
    records: usize,
}

/// A batch closed to new records, waiting for its dead letters to be acknowledged before
/// it is written.
struct Sealed {
    generation: u64,
    batch: StoreBatch,
    offsets: Vec<(i32, i64)>,
    records: usize,
    /// Dead letters sent up to the end of this batch: all must be acknowledged first.
    dead_letters_sent: u64,
}

/// The ingest pipeline over one state store.
///
/// Records go into an open batch; [`Ingestor::seal`] closes it, and
/// [`Ingestor::write_ready`] writes sealed batches, in order, as soon as the dead letters
/// sent before their end are acknowledged — so a slow dead-letter broker does not stall
/// consumption, while no offset is ever written ahead of a dead letter it covers. Until a
/// batch is written, its certificates stay in an overlay that later events read.
pub struct Ingestor<S: DeadLetterSink> {
    store: Arc<Store>,
    sink: S,
    window: WindowConfig,
    metrics: Metrics,
    open: OpenBatch,
    sealed: VecDeque<Sealed>,
    /// Newest unwritten version of every certificate changed by an unwritten batch, with
    /// the generation of the batch that last changed it.
    overlay: HashMap<CertKey, (CertificateRecord, u64)>,
    /// DER of certificates lodged by unwritten batches.
    bodies: HashMap<CertKey, (Vec<u8>, u64)>,
    /// Expiry-index entries (day, certificate) of unwritten batches, with their generation.
    expiries: Vec<(u32, CertKey, u64)>,
    /// Next offset per partition consumed into any batch, written or not.
    consumed: HashMap<i32, i64>,
    /// Next offset per partition as written to the store (loaded on first sight).
    committed: HashMap<i32, i64>,
    /// The record-only half of ingest (decode, parse, key), here when the caller does not
    /// run it on a thread of its own.
    preparer: Preparer,
    /// Window clock of every partition seen or assigned (restored from the store).
    clocks: BTreeMap<i32, Clock>,
    /// Partitions of the topic, once known: days close only when every one of them is
    /// assigned here and closed.
    topic_partitions: Option<i32>,
    /// Partitions assigned to this instance.
    assigned: BTreeSet<i32>,
    /// First day of the delta series (the earliest delta day of any change).
    first_day: Option<u32>,
    /// The next day to close everywhere (none before the first change).
    next_day: Option<u32>,
    /// Some day has closed (the first day of the series is fixed).
    any_closed: bool,
    /// A partition's clock closed a further day: look whether days can close everywhere.
    close_check: bool,
    /// Days closed and recorded, not yet taken by the publisher.
    closed: Vec<DayClose>,
    /// Batches written by a day close (not by the caller), not yet reported to the caller.
    written_by_close: Vec<Committed>,
    /// Replay: the original run's forced cuts still ahead, per partition in offset order.
    cut_plan: BTreeMap<i32, VecDeque<(i64, u32, String)>>,
}

/// Bound of the issuer cache (bad input could carry any number of issuers).
const ISSUER_CACHE_MAX: usize = 1024;

impl<S: DeadLetterSink> Ingestor<S> {
    /// A pipeline writing to `store`, dead-lettering into `sink`, with days and their
    /// closing by `window`.
    pub fn new(store: Arc<Store>, sink: S, window: WindowConfig, metrics: Metrics) -> Result<Self> {
        for r in Reason::ALL {
            metrics.events_dead_lettered.with_label_values(&[r.code()]);
        }
        let first_day = store.first_day()?;
        let last_closed = store.last_closed_day()?;
        let next_day = match last_closed {
            Some(d) => Some(d + 1),
            None => first_day,
        };
        if let Some(d) = last_closed {
            metrics.window_closed(window.tz, crate::day::date_of_day(d));
        }
        if let Some(d) = next_day {
            metrics.window_opened(window.tz, crate::day::date_of_day(d));
        }
        Ok(Ingestor {
            store,
            sink,
            window,
            metrics,
            open: OpenBatch::default(),
            sealed: VecDeque::new(),
            overlay: HashMap::default(),
            bodies: HashMap::default(),
            expiries: Vec::new(),
            consumed: HashMap::default(),
            committed: HashMap::default(),
            preparer: Preparer::new(&window),
            clocks: BTreeMap::new(),
            topic_partitions: None,
            assigned: BTreeSet::new(),
            first_day,
            next_day,
            any_closed: last_closed.is_some(),
            close_check: false,
            closed: Vec::new(),
            written_by_close: Vec::new(),
            cut_plan: BTreeMap::new(),
        })
    }

    /// The window settings.
    pub fn window(&self) -> &WindowConfig {
        &self.window
    }

    /// The next day to close everywhere, if any change was ever applied.
    pub fn next_day(&self) -> Option<u32> {
        self.next_day
    }

    /// Say how many partitions the topic has and which are assigned here (after every
    /// rebalance). A partition that leaves is "not at its end" when it comes back.
    pub fn set_partitions(&mut self, topic_partitions: i32, assigned: &[i32]) -> Result<()> {
        self.topic_partitions = Some(topic_partitions);
        let now: BTreeSet<i32> = assigned.iter().copied().collect();
        for p in self.assigned.difference(&now) {
            if let Some(clock) = self.clocks.get_mut(p) {
                clock.reached_end = false;
                clock.at_end_since = None;
            }
        }
        for p in &now {
            self.clock_mut(*p)?;
        }
        self.assigned = now;
        self.close_check = true;
        Ok(())
    }

    /// The consumer reached the end of `partition` at wall-clock `now_ms` (nothing more to
    /// read for now): the partition is caught up, and idle from then on until a record comes.
    pub fn note_end(&mut self, partition: i32, now_ms: i64) -> Result<()> {
        let clock = self.clock_mut(partition)?;
        clock.reached_end = true;
        clock.at_end_since.get_or_insert(now_ms);
        Ok(())
    }

    /// Apply the wall-clock rules of the window clock at `now_ms` (idle partitions, the
    /// deadline), then close every day that can close. Call it regularly (every poll).
    pub fn tick(&mut self, now_ms: i64) -> Result<()> {
        if let (Some(next), true) = (self.next_day, self.all_partitions_here()) {
            let clocks: BTreeMap<i32, Clock> = self
                .clocks
                .iter()
                .filter(|(p, _)| self.assigned.contains(p))
                .map(|(p, c)| (*p, c.clone()))
                .collect();
            for cut in window::forced_cuts(&self.window, &clocks, next, now_ms) {
                let offset = self.next_offset(cut.partition)?.unwrap_or(0);
                self.force_cut(cut.partition, cut.through_day, offset, cut.rule)?;
            }
        }
        self.close_ready_days()
    }

    /// Cut `partition` through `day` at `offset` (its next offset), expiring what the cut
    /// closes.
    fn force_cut(&mut self, partition: i32, day: u32, offset: i64, rule: &str) -> Result<()> {
        let cfg = self.window;
        let clock = self.clock_mut(partition)?;
        let before = clock.closed_through(&cfg);
        if clock.force(&cfg, day, offset, rule) {
            self.expire(partition, before + 1, day)?;
            tracing::info!(
                partition,
                offset,
                through = %crate::day::date_of_day(day),
                rule,
                "partition cut by a wall-clock rule"
            );
            self.close_check = true;
        }
        Ok(())
    }

    /// Replay: cut where the original run cut, not by this run's wall clock. `closes` are the
    /// original's day closes (from the close log); each forced cut they record is applied
    /// when ingest reaches its offset on its partition. Call before the first record, and do
    /// not call [`Self::tick`] during a replay. Refused when the closes were decided with
    /// other window settings (time zone, grace, future skew) than this pipeline's.
    pub fn plan_cuts(&mut self, closes: &BTreeMap<u32, DayClose>) -> Result<()> {
        window::check_replay_settings(&self.window, closes.values())?;
        let mut plan: BTreeMap<i32, BTreeMap<(i64, u32), String>> = BTreeMap::new();
        for close in closes.values() {
            for (p, cut) in &close.forced_cuts {
                plan.entry(*p)
                    .or_default()
                    .insert((cut.offset, cut.through_day), cut.rule.clone());
            }
        }
        self.cut_plan = plan
            .into_iter()
            .map(|(p, cuts)| {
                let cuts = cuts.into_iter().map(|((o, d), r)| (o, d, r)).collect();
                (p, cuts)
            })
            .collect();
        Ok(())
    }

    /// Apply the planned cuts of `partition` at offsets up to `offset`.
    fn apply_planned_cuts(&mut self, partition: i32, offset: i64) -> Result<()> {
        while let Some((at, day, rule)) = self
            .cut_plan
            .get_mut(&partition)
            .and_then(|cuts| cuts.front().filter(|c| c.0 <= offset).cloned())
        {
            self.cut_plan.get_mut(&partition).expect("some").pop_front();
            self.force_cut(partition, day, at, &rule)?;
        }
        Ok(())
    }

    /// Replay reached the end of every partition, at `next_offsets`: apply the cuts planned
    /// at those positions (the original cut there when it was caught up), close what closes
    /// and write everything. Returns the planned cuts beyond the end (the topic was read
    /// only up to a limit), which are left unapplied.
    pub fn finish_replay(&mut self, next_offsets: &BTreeMap<i32, i64>) -> Result<usize> {
        for (p, end) in next_offsets {
            self.apply_planned_cuts(*p, *end)?;
        }
        self.close_check = true;
        self.close_ready_days()?;
        self.commit()?;
        Ok(self.cut_plan.values().map(|c| c.len()).sum())
    }

    /// Days closed everywhere (and recorded in the store) since the last call, in order:
    /// their files are due.
    pub fn take_closed(&mut self) -> Vec<DayClose> {
        std::mem::take(&mut self.closed)
    }

    /// Batches a day close wrote on its own (it writes everything consumed first) since the
    /// last call: the caller reports their offsets as it does for its own commits.
    pub fn take_written_by_close(&mut self) -> Vec<Committed> {
        std::mem::take(&mut self.written_by_close)
    }

    /// Every partition of the topic is known and assigned here.
    fn all_partitions_here(&self) -> bool {
        self.topic_partitions
            .is_some_and(|n| n > 0 && (0..n).all(|p| self.assigned.contains(&p)))
    }

    /// The clock of `partition`, restored from the store on first sight.
    fn clock_mut(&mut self, partition: i32) -> Result<&mut Clock> {
        if !self.clocks.contains_key(&partition) {
            let state = self.store.clock(partition)?.unwrap_or_default();
            self.clocks.insert(partition, Clock::restored(state));
        }
        Ok(self.clocks.get_mut(&partition).expect("inserted"))
    }

    /// Close, in order, every day that is closed on every partition: write everything
    /// consumed and record the close, before the day's files are written from the store.
    fn close_ready_days(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.close_check) || !self.all_partitions_here() {
            return Ok(());
        }
        let n = self.topic_partitions.expect("checked");
        while let Some(day) = self.next_day {
            let closed_everywhere = (0..n).all(|p| {
                self.clocks
                    .get(&p)
                    .is_some_and(|c| c.closed_through(&self.window) >= day)
            });
            if !closed_everywhere {
                break;
            }
            if let Some(c) = self.commit()? {
                self.written_by_close.push(c);
            }
            let mut batch = StoreBatch::default();
            let mut close = DayClose {
                day,
                window_settings: self.window.replay_settings(),
                ..DayClose::default()
            };
            for p in 0..n {
                close.offsets.insert(p, self.next_offset(p)?.unwrap_or(0));
                let clock = self.clocks.get_mut(&p).expect("checked");
                if let Some(cut) = clock.forced_cut_of(&self.window, day) {
                    close.forced_cuts.insert(p, cut);
                }
                clock.prune_forced(day);
                if clock.dirty {
                    batch.put_clock(p, &clock.state);
                    clock.dirty = false;
                }
            }
            batch.put_close(&close);
            self.store.write(batch)?;
            tracing::info!(
                day = %crate::day::date_of_day(day),
                forced = close.forced_cuts.len(),
                "day closed on every partition"
            );
            self.closed.push(close);
            self.any_closed = true;
            self.next_day = Some(day + 1);
            let tz = self.window.tz;
            self.metrics.window_closed(tz, crate::day::date_of_day(day));
            self.metrics
                .window_opened(tz, crate::day::date_of_day(day + 1));
        }
        Ok(())
    }

    /// The store this pipeline writes.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The dead-letter sink (tests and the demo read what it holds).
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// Records in the open batch.
    pub fn pending_records(&self) -> usize {
        self.open.records
    }

    /// Sealed batches not yet written.
    pub fn sealed_batches(&self) -> usize {
        self.sealed.len()
    }

    /// True when everything consumed is written.
    pub fn is_idle(&self) -> bool {
        self.open.records == 0 && self.sealed.is_empty()
    }

    /// Next offset to consume from `partition`: consumed, else stored, else none.
    pub fn next_offset(&mut self, partition: i32) -> Result<Option<i64>> {
        if let Some(o) = self.consumed.get(&partition) {
            return Ok(Some(*o));
        }
        if let Some(o) = self.committed.get(&partition) {
            return Ok(Some(*o));
        }
        let stored = self.store.next_offset(partition)?;
        if let Some(o) = stored {
            self.committed.insert(partition, o);
        }
        Ok(stored)
    }

    /// Take one record into the open batch. Errors are failures of the store or the
    /// dead-letter sink (the service must stop); bad events are an [`Outcome`].
    pub fn ingest(&mut self, rec: RecordRef<'_>) -> Result<Outcome> {
        if self.already_applied(rec)? {
            return Ok(Outcome::AlreadyApplied);
        }
        let prepared = self.preparer.prepare(rec);
        self.apply_new(rec, prepared)
    }

    /// [`Self::ingest`] for a record whose record-only work a [`Preparer`] did already,
    /// possibly on another thread (replay runs it beside the consumer). `prepared` must be
    /// what `prepare` gave for this very record.
    pub fn ingest_prepared(&mut self, rec: RecordRef<'_>, prepared: Prepared) -> Result<Outcome> {
        if self.already_applied(rec)? {
            return Ok(Outcome::AlreadyApplied);
        }
        self.apply_new(rec, prepared)
    }

    /// Count a record read, and say whether the store already covers its offset.
    fn already_applied(&mut self, rec: RecordRef<'_>) -> Result<bool> {
        self.metrics.events_consumed.inc();
        if let Some(next) = self.next_offset(rec.partition)? {
            if rec.offset < next {
                self.metrics.records_skipped.inc();
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Apply a record the store does not cover yet, prepared, and account for it.
    fn apply_new(&mut self, rec: RecordRef<'_>, prepared: Prepared) -> Result<Outcome> {
        if !self.cut_plan.is_empty() {
            self.apply_planned_cuts(rec.partition, rec.offset)?;
        }
        let outcome = match self.apply(rec, prepared)? {
            Ok(true) => {
                self.metrics.events_applied.inc();
                Outcome::Applied
            }
            Ok(false) => {
                self.metrics.events_duplicate.inc();
                Outcome::Duplicate
            }
            Err(rejection) => {
                self.metrics
                    .events_dead_lettered
                    .with_label_values(&[rejection.reason.code()])
                    .inc();
                self.sink.send(DeadLetter {
                    partition: rec.partition,
                    offset: rec.offset,
                    key: rec.key,
                    value: rec.value,
                    reason: rejection.reason.code(),
                    detail: &rejection.detail,
                })?;
                Outcome::DeadLettered(rejection)
            }
        };
        self.open.offsets.insert(rec.partition, rec.offset + 1);
        self.consumed.insert(rec.partition, rec.offset + 1);
        self.open.records += 1;
        if self.close_check {
            self.close_ready_days()?;
        }
        Ok(outcome)
    }

    /// Close the open batch (if it holds anything) for writing.
    pub fn seal(&mut self) {
        let clocks_dirty = self.clocks.values().any(|c| c.dirty);
        if self.open.records == 0 && !clocks_dirty && self.open.first_day.is_none() {
            return;
        }
        let next = OpenBatch {
            generation: self.open.generation + 1,
            ..OpenBatch::default()
        };
        let mut open = std::mem::replace(&mut self.open, next);
        let mut batch = StoreBatch::default();
        open.touched.sort_unstable();
        open.touched.dedup();
        for key in open.touched {
            let (record, _) = &self.overlay[&key];
            batch.put_cert(key, record);
        }
        for key in open.lodged {
            let (der, _) = &self.bodies[&key];
            batch.put_body(key, der.clone());
        }
        for (key, day, record) in &open.versions {
            batch.put_version(key, *day, record);
        }
        for (key, day) in &open.expiries {
            batch.put_expiry(key, *day);
        }
        if let Some(day) = open.first_day {
            batch.set_first_day(day);
        }
        for (p, clock) in self.clocks.iter_mut().filter(|(_, c)| c.dirty) {
            batch.put_clock(*p, &clock.state);
            if let Some(wm) = clock.state.watermark_ms {
                self.metrics.observe_event_time(*p, wm);
            }
            clock.dirty = false;
        }
        let mut offsets: Vec<(i32, i64)> = open.offsets.into_iter().collect();
        offsets.sort_unstable();
        for (p, o) in &offsets {
            batch.put_offset(*p, *o);
        }
        self.sealed.push_back(Sealed {
            generation: open.generation,
            batch,
            offsets,
            records: open.records,
            dead_letters_sent: self.sink.sent(),
        });
    }

    /// Write sealed batches, in order, whose dead letters are all acknowledged; with
    /// `wait`, first wait for every dead letter and write them all. Each batch is one
    /// WriteBatch of state, change index and offsets.
    pub fn write_ready(&mut self, wait: bool) -> Result<Vec<Committed>> {
        let mut out = Vec::new();
        if self.sealed.is_empty() {
            return Ok(out);
        }
        let acknowledged = if wait {
            let started = std::time::Instant::now();
            self.sink.flush()?;
            tracing::trace!(elapsed = ?started.elapsed(), "dead letters acknowledged");
            self.sink.sent()
        } else {
            self.sink.acknowledged()?
        };
        while self
            .sealed
            .front()
            .is_some_and(|s| s.dead_letters_sent <= acknowledged)
        {
            let sealed = self.sealed.pop_front().expect("checked");
            self.store.write(sealed.batch)?;
            for (p, o) in &sealed.offsets {
                self.committed.insert(*p, *o);
            }
            let written = sealed.generation;
            self.overlay.retain(|_, (_, g)| *g > written);
            self.bodies.retain(|_, (_, g)| *g > written);
            self.expiries.retain(|(_, _, g)| *g > written);
            self.metrics.batches_committed.inc();
            out.push(Committed {
                offsets: sealed.offsets,
                records: sealed.records,
            });
        }
        Ok(out)
    }

    /// Seal and write everything consumed, waiting for dead letters to be acknowledged.
    /// Returns what was committed (`None` when nothing was pending).
    pub fn commit(&mut self) -> Result<Option<Committed>> {
        self.seal();
        let written = self.write_ready(true)?;
        if written.is_empty() {
            return Ok(None);
        }
        let mut offsets: std::collections::BTreeMap<i32, i64> = Default::default();
        let mut records = 0;
        for c in written {
            offsets.extend(c.offsets);
            records += c.records;
        }
        Ok(Some(Committed {
            offsets: offsets.into_iter().collect(),
            records,
        }))
    }

    /// Validate against the state and apply one prepared record into the pending batch.
    /// `Ok(Ok(true))` applied, `Ok(Ok(false))` duplicate, `Ok(Err(_))` rejected.
    fn apply(&mut self, rec: RecordRef<'_>, prepared: Prepared) -> Result<Result<bool, Rejection>> {
        let envelope = match prepared.0 {
            Ok(e) => e,
            Err(r) => return Ok(Err(r)),
        };
        let occurred_ms = envelope.occurred_ms;
        let cfg = self.window;
        let clock = self.clock_mut(rec.partition)?;
        clock.at_end_since = None;
        let before = clock.closed_through(&cfg);
        clock.observe(&cfg, occurred_ms);
        let closed_through = clock.closed_through(&cfg);
        if closed_through > before {
            // The cut is here, before this event: expiries of the days it closes come first.
            self.close_check = true;
            self.expire(rec.partition, before + 1, closed_through)?;
        }
        let when = When {
            occurred_ms,
            event_day: cfg.day_of(occurred_ms),
            closed_through,
        };
        match envelope.body {
            PreparedBody::Issued(Err(r)) | PreparedBody::Changed(Err(r)) => Ok(Err(r)),
            PreparedBody::Issued(Ok(lodgement)) => {
                self.apply_issued(&envelope.event_id, when, lodgement)
            }
            PreparedBody::Changed(Ok(change)) => {
                self.apply_status_change(&envelope.event_id, when, change)
            }
        }
    }

    /// The DER of a certificate: unwritten, else stored.
    fn body(&self, key: &CertKey) -> Result<Option<Vec<u8>>> {
        if let Some((b, _)) = self.bodies.get(key) {
            return Ok(Some(b.clone()));
        }
        self.store.get_body(key)
    }

    /// The current record of a certificate, taken out of the overlay if it is there (with
    /// its generation, so [`Self::restore`] can put it back unchanged).
    fn lookup(&mut self, key: &CertKey) -> Result<Option<(CertificateRecord, Option<u64>)>> {
        if let Some((r, g)) = self.overlay.remove(key) {
            return Ok(Some((r, Some(g))));
        }
        Ok(self.store.get_cert(key)?.map(|r| (r, None)))
    }

    /// Expire the Organisation and CA certificates of `partition` whose notAfter falls in the
    /// days `from..=to`, which have just closed on it: each gets status `E` as its last
    /// change of its expiry day, at the partition's cut (so the same offsets give the same
    /// result, however partitions interleave).
    fn expire(&mut self, partition: i32, from: u32, to: u32) -> Result<()> {
        let mut due: BTreeSet<(u32, CertKey)> = self
            .store
            .expiring_between(partition, from, to)?
            .into_iter()
            .collect();
        for (day, key, _) in &self.expiries {
            if key.partition() == partition && (from..=to).contains(day) {
                due.insert((*day, key.clone()));
            }
        }
        for (day, key) in due {
            let Some((mut record, generation)) = self.lookup(&key)? else {
                continue;
            };
            let status = CertificateStatus::try_from(record.status)
                .unwrap_or(CertificateStatus::Unspecified);
            if status.is_final() {
                self.restore(key, record, generation);
                continue;
            }
            let not_after_ms = record.not_after.saturating_mul(1000);
            record.status = CertificateStatus::Expired as i32;
            record.status_changed_at_ms = not_after_ms;
            record.status_reason = EXPIRED_REASON.into();
            let when = When {
                occurred_ms: not_after_ms,
                event_day: day,
                closed_through: day - 1,
            };
            self.put(key, record, when);
            self.metrics.events_expired.inc();
        }
        Ok(())
    }

    /// Record a changed certificate in the open batch, as its version at the close of its
    /// delta day (see [`window::delta_day`]), counting it as late when that is after its
    /// event day.
    fn put(&mut self, key: CertKey, mut record: CertificateRecord, when: When) {
        let previous = record.delta_day;
        let day = window::delta_day(when.event_day, when.closed_through, previous);
        record.delta_day = day;
        if day > when.event_day {
            self.metrics.events_late.inc();
        }
        if self.first_day.is_none_or(|f| day < f) {
            self.first_day = Some(day);
            self.open.first_day = Some(day);
            // Until a day has closed, the series starts at the earliest delta day; after
            // that no change can be earlier than the next open day.
            if !self.any_closed {
                self.next_day = Some(day);
            }
        }
        self.open.versions.push((key.clone(), day, record.clone()));
        self.open.touched.push(key.clone());
        self.overlay.insert(key, (record, self.open.generation));
    }

    /// Put a record taken by `lookup` back unchanged.
    fn restore(&mut self, key: CertKey, record: CertificateRecord, generation: Option<u64>) {
        if let Some(g) = generation {
            self.overlay.insert(key, (record, g));
        }
    }

    fn apply_issued(
        &mut self,
        event_id: &str,
        when: When,
        lodgement: Lodgement,
    ) -> Result<Result<bool, Rejection>> {
        let Lodgement { key, record, der } = lodgement;
        if let Some((existing, generation)) = self.lookup(&key)? {
            let verdict = if existing.applied_event_ids.iter().any(|id| id == event_id) {
                Ok(false)
            } else if self.body(&key)?.as_deref() != Some(&der[..]) {
                reject(
                    Reason::ConflictingCertificate,
                    format!(
                        "certificate {} of {} is already lodged with different DER",
                        hex::encode_upper(&record.serial),
                        record.issuer
                    ),
                )
            } else {
                reject(
                    Reason::AlreadyLodged,
                    format!(
                        "certificate {} of {} was already lodged by another event",
                        hex::encode_upper(&record.serial),
                        record.issuer
                    ),
                )
            };
            self.restore(key, existing, generation);
            return Ok(verdict);
        }
        self.bodies.insert(key.clone(), (der, self.open.generation));
        self.open.lodged.push(key.clone());
        if record.certificate_type != StoredType::Device as i32 {
            // Organisation and CA certificates expire without an event: when the day of
            // their notAfter closes (or the day they are lodged, if that is later).
            let lodged_day = window::delta_day(when.event_day, when.closed_through, 0);
            let expiry_day = self
                .window
                .day_of(record.not_after.saturating_mul(1000))
                .max(lodged_day);
            self.open.expiries.push((key.clone(), expiry_day));
            self.expiries
                .push((expiry_day, key.clone(), self.open.generation));
        }
        self.put(key, record, when);
        Ok(Ok(true))
    }

    fn apply_status_change(
        &mut self,
        event_id: &str,
        when: When,
        change: Change,
    ) -> Result<Result<bool, Rejection>> {
        let occurred_ms = when.occurred_ms;
        let Change {
            key,
            issuer_name_der,
            serial,
            new_status,
            reason,
        } = change;
        let Some((mut record, generation)) = self.lookup(&key)? else {
            return Ok(reject(
                Reason::UnknownCertificate,
                format!(
                    "no certificate with serial {} is lodged",
                    hex::encode_upper(&serial)
                ),
            ));
        };
        let verdict = if record.applied_event_ids.iter().any(|e| e == event_id) {
            Ok(false)
        } else if record.issuer_name_der != issuer_name_der {
            reject(
                Reason::UnknownCertificate,
                format!(
                    "no certificate with serial {} of this issuer is lodged",
                    hex::encode_upper(&serial)
                ),
            )
        } else {
            let current = CertificateStatus::try_from(record.status)
                .unwrap_or(CertificateStatus::Unspecified);
            if revokes_before_expiry(&record, new_status, occurred_ms) {
                // The expiry was this service's own inference when the notAfter day closed;
                // the revocation happened while the certificate was still valid and only
                // arrived later. It is applied (late, into the next open delta): Parties must
                // see a certificate revoked during its life as revoked.
                Ok(true)
            } else if current.is_final() {
                reject(
                    Reason::TransitionFromFinal,
                    format!(
                        "certificate {} is {} (final); cannot become {}",
                        hex::encode_upper(&serial),
                        current.code(),
                        new_status.code()
                    ),
                )
            } else if !current.may_become(new_status) {
                reject(
                    Reason::InvalidTransition,
                    format!(
                        "certificate {}: {} -> {} is not an allowed transition",
                        hex::encode_upper(&serial),
                        current.code(),
                        new_status.code()
                    ),
                )
            } else {
                Ok(true)
            }
        };
        if verdict == Ok(true) {
            record.status = new_status as i32;
            record.status_changed_at_ms = occurred_ms;
            record.status_reason = reason;
            record.applied_event_ids.push(event_id.to_string());
            record.applied_events += 1;
            self.put(key, record, when);
        } else {
            self.restore(key, record, generation);
        }
        Ok(verdict)
    }
}

/// A revocation that happened before the notAfter of a certificate this service expired
/// (status `E` set by [`Ingestor::expire`], not by an event): it supersedes the expiry.
fn revokes_before_expiry(
    record: &CertificateRecord,
    new_status: CertificateStatus,
    occurred_ms: i64,
) -> bool {
    let not_after_ms = record.not_after.saturating_mul(1000);
    new_status == CertificateStatus::Revoked
        && record.status == CertificateStatus::Expired as i32
        && record.status_reason == EXPIRED_REASON
        && record.status_changed_at_ms == not_after_ms
        && occurred_ms < not_after_ms
}

/// `status_reason` of an expiry this service applied at the close of the notAfter day.
const EXPIRED_REASON: &str = "expired";

/// When an event happened, and what its partition's clock said when it arrived.
#[derive(Clone, Copy, Debug)]
struct When {
    occurred_ms: i64,
    event_day: u32,
    closed_through: u32,
}

/// The work on a record that needs nothing but the record: decode the envelope, check it,
/// parse and classify the certificate of a lodgement, and work out the store key (checking
/// it against the record key). It is most of the CPU time of ingest and independent of the
/// state, so a caller may run it on a thread of its own ([`Ingestor::ingest_prepared`]);
/// [`Ingestor::ingest`] runs it inline.
pub struct Preparer {
    max_future_skew_ms: i64,
    /// Issuer Name DER → (issuer hash, its hex): a handful of issuers sign everything, so
    /// their hashes are computed once. Cleared if it ever grows past [`ISSUER_CACHE_MAX`].
    issuers: HashMap<Vec<u8>, ([u8; 8], String)>,
}

/// A record after [`Preparer::prepare`]: its event, or why it is refused. Rejections found
/// here come out of [`Ingestor::ingest_prepared`] exactly as `ingest` would give them (the
/// ones found in the body still let the event's time move the window clock first).
pub struct Prepared(Result<Envelope, Rejection>);

struct Envelope {
    event_id: String,
    occurred_ms: i64,
    body: PreparedBody,
}

enum PreparedBody {
    Issued(Result<Lodgement, Rejection>),
    Changed(Result<Change, Rejection>),
}

/// A lodgement: the new record (without its DER), the DER, and the store key.
struct Lodgement {
    key: CertKey,
    record: CertificateRecord,
    der: Vec<u8>,
}

/// A status change of the certificate at `key`.
struct Change {
    key: CertKey,
    issuer_name_der: Vec<u8>,
    serial: Vec<u8>,
    new_status: CertificateStatus,
    reason: String,
}

impl Preparer {
    /// A preparer for the pipeline with these window settings (the future-skew limit).
    pub fn new(window: &WindowConfig) -> Preparer {
        Preparer {
            max_future_skew_ms: window.max_future_skew_ms,
            issuers: HashMap::default(),
        }
    }

    /// Everything about `rec` that does not depend on the state.
    pub fn prepare(&mut self, rec: RecordRef<'_>) -> Prepared {
        Prepared(self.envelope(rec))
    }

    fn envelope(&mut self, rec: RecordRef<'_>) -> Result<Envelope, Rejection> {
        let event = decode(rec)?;
        let occurred_ms = event
            .occurred_at
            .as_ref()
            .map(|t| {
                t.seconds
                    .saturating_mul(1000)
                    .saturating_add(i64::from(t.nanos) / 1_000_000)
            })
            .expect("checked by decode");
        if let Some(ts) = rec.timestamp_ms {
            if occurred_ms > ts.saturating_add(self.max_future_skew_ms) {
                return reject(
                    Reason::OccurredAtInFuture,
                    format!(
                        "occurred_at {} ms is {} s ahead of the record's timestamp {ts} ms \
                         (at most {} s allowed)",
                        occurred_ms,
                        (occurred_ms - ts) / 1000,
                        self.max_future_skew_ms / 1000
                    ),
                );
            }
        }
        let body = match event.body.expect("checked by decode") {
            Body::Issued(issued) => {
                PreparedBody::Issued(self.lodgement(rec, &event.event_id, occurred_ms, issued))
            }
            Body::StatusChanged(change) => PreparedBody::Changed(self.change(rec, change)),
        };
        Ok(Envelope {
            event_id: event.event_id,
            occurred_ms,
            body,
        })
    }

    fn lodgement(
        &mut self,
        rec: RecordRef<'_>,
        event_id: &str,
        occurred_ms: i64,
        issued: CertificateIssued,
    ) -> Result<Lodgement, Rejection> {
        let initial = match CertificateStatus::try_from(issued.initial_status) {
            Ok(s @ (CertificateStatus::Pending | CertificateStatus::InUse)) => s,
            _ => {
                return reject(
                    Reason::InvalidStatus,
                    format!(
                        "initial status {} is not PENDING or IN_USE",
                        issued.initial_status
                    ),
                )
            }
        };
        let info = match certificate::parse(&issued.certificate_der) {
            Ok(i) => i,
            Err(e) => {
                let reason = match e {
                    certificate::CertificateError::Unparseable(_) => Reason::CertificateUnparseable,
                    certificate::CertificateError::Profile(_) => Reason::CertificateProfile,
                    certificate::CertificateError::Unclassifiable(_) => {
                        Reason::CertificateUnclassifiable
                    }
                };
                return reject(reason, e.to_string());
            }
        };
        let key = self.key_for(rec, &info.issuer_name_der, &info.serial)?;
        let (record, der) = new_record(&info, issued, initial, event_id, occurred_ms);
        Ok(Lodgement { key, record, der })
    }

    fn change(&mut self, rec: RecordRef<'_>, change: StatusChanged) -> Result<Change, Rejection> {
        let Some(id) = change.certificate else {
            return reject(
                Reason::UnknownCertificate,
                "status change without a certificate id",
            );
        };
        let serial = certificate::canonical_serial(&id.serial);
        if id.issuer_name_der.is_empty()
            || id.serial.is_empty()
            || serial.len() > certificate::MAX_SERIAL_LEN
        {
            return reject(
                Reason::UnknownCertificate,
                "status change with an empty issuer, or an empty or over-long serial",
            );
        }
        let key = self.key_for(rec, &id.issuer_name_der, &serial)?;
        let new_status = match CertificateStatus::try_from(change.new_status) {
            Ok(CertificateStatus::Unspecified) | Err(_) => {
                return reject(
                    Reason::InvalidStatus,
                    format!("new status {} is not a status", change.new_status),
                )
            }
            Ok(s) => s,
        };
        Ok(Change {
            key,
            issuer_name_der: id.issuer_name_der,
            serial,
            new_status,
            reason: change.reason,
        })
    }

    /// Issuer hash and its hex, cached.
    fn issuer(&mut self, issuer_der: &[u8]) -> ([u8; 8], &str) {
        if !self.issuers.contains_key(issuer_der) {
            if self.issuers.len() >= ISSUER_CACHE_MAX {
                self.issuers.clear();
            }
            let h = issuer_hash(issuer_der);
            self.issuers
                .insert(issuer_der.to_vec(), (h, hex::encode(h)));
        }
        let (h, text) = &self.issuers[issuer_der];
        (*h, text.as_str())
    }

    /// The store key of a certificate, after checking that the record key names it: that is
    /// what keeps a certificate's events in one partition, in order.
    fn key_for(
        &mut self,
        rec: RecordRef<'_>,
        issuer_der: &[u8],
        serial: &[u8],
    ) -> Result<CertKey, Rejection> {
        let (hash, hash_hex) = self.issuer(issuer_der);
        let serial_hex = hex::encode_upper(serial);
        let matches = rec.key.is_some_and(|k| {
            k.len() == hash_hex.len() + 1 + serial_hex.len()
                && k.starts_with(hash_hex.as_bytes())
                && k[hash_hex.len()] == b'-'
                && k.ends_with(serial_hex.as_bytes())
        });
        if matches {
            return Ok(CertKey::new(rec.partition, &hash, serial));
        }
        let expected = record_key(issuer_der, serial);
        match rec.key {
            Some(k) => reject(
                Reason::KeyMismatch,
                format!(
                    "record key {:?} is not the certificate id {expected:?}",
                    String::from_utf8_lossy(k)
                ),
            ),
            None => reject(
                Reason::KeyMismatch,
                format!("record has no key; expected the certificate id {expected:?}"),
            ),
        }
    }
}

/// Protobuf decode and envelope checks.
fn decode(rec: RecordRef<'_>) -> Result<CertificateEvent, Rejection> {
    let value = rec.value.unwrap_or_default();
    if value.is_empty() {
        return reject(Reason::Undecodable, "empty record value");
    }
    let event = match CertificateEvent::decode(value) {
        Ok(e) => e,
        Err(e) => {
            return reject(
                Reason::Undecodable,
                format!("not a smki.v1.CertificateEvent: {e}"),
            )
        }
    };
    if event.event_id.is_empty() || event.event_id.len() > MAX_EVENT_ID_LEN {
        return reject(
            Reason::InvalidEventId,
            format!(
                "event_id must be 1..={MAX_EVENT_ID_LEN} bytes, got {}",
                event.event_id.len()
            ),
        );
    }
    if event.occurred_at.is_none() {
        return reject(Reason::MissingOccurredAt, "occurred_at is not set");
    }
    if event.body.is_none() {
        return reject(
            Reason::MissingBody,
            "neither issued nor status_changed is set",
        );
    }
    Ok(event)
}

/// The record of a newly lodged certificate, and its DER (stored apart, see the store).
fn new_record(
    info: &CertificateInfo,
    issued: CertificateIssued,
    initial: CertificateStatus,
    event_id: &str,
    occurred_ms: i64,
) -> (CertificateRecord, Vec<u8>) {
    let record = record_for(
        info,
        initial,
        issued.manufacturing_flag,
        event_id,
        occurred_ms,
    );
    (record, issued.certificate_der)
}

/// What the store holds for a certificate lodged by event `event_id` at `occurred_ms`:
/// everything derived from its DER, without the DER itself (the `bodies` column family
/// holds it). Public so that tests of the file writers build records exactly as ingest does.
pub fn record_for(
    info: &CertificateInfo,
    status: CertificateStatus,
    manufacturing_flag: bool,
    event_id: &str,
    occurred_ms: i64,
) -> CertificateRecord {
    CertificateRecord {
        certificate_der: Vec::new(),
        status: status as i32,
        manufacturing_flag,
        certificate_type: match info.cert_type {
            CertificateType::Oca => StoredType::Oca,
            CertificateType::Dca => StoredType::Dca,
            CertificateType::Organisation => StoredType::Organisation,
            CertificateType::Device => StoredType::Device,
        } as i32,
        subject_id: info.subject_id.map(|id| id.0.to_vec()).unwrap_or_default(),
        role: info.role.map(i32::from).unwrap_or(-1),
        usage: match info.usage {
            Usage::DigitalSignature => StoredUsage::DigitalSignature,
            Usage::KeyAgreement => StoredUsage::KeyAgreement,
            Usage::CertSign => StoredUsage::CertSign,
        } as i32,
        issuer_name_der: info.issuer_name_der.clone(),
        serial: info.serial.clone(),
        issuer: info.issuer.clone(),
        subject: info.subject.clone(),
        not_before: info.not_before,
        not_after: info.not_after,
        lodged_at_ms: occurred_ms,
        status_changed_at_ms: occurred_ms,
        status_reason: String::new(),
        applied_event_ids: vec![event_id.to_string()],
        applied_events: 1,
        delta_day: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::CertificateId;
    use crate::deadletter::MemoryDeadLetters;

    fn fixture(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/gbcs-test-certs")
            .join(name);
        certificate::der_from_pem(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn event(id: &str, body: Body) -> Vec<u8> {
        event_at(id, 1_790_000_000, body)
    }

    fn event_at(id: &str, seconds: i64, body: Body) -> Vec<u8> {
        CertificateEvent {
            event_id: id.into(),
            occurred_at: Some(prost_types::Timestamp { seconds, nanos: 0 }),
            source: String::new(),
            body: Some(body),
        }
        .encode_to_vec()
    }

    fn lodge_at(id: &str, der: &[u8], seconds: i64, status: CertificateStatus) -> Vec<u8> {
        event_at(
            id,
            seconds,
            Body::Issued(CertificateIssued {
                certificate_der: der.to_vec(),
                initial_status: status as i32,
                manufacturing_flag: false,
            }),
        )
    }

    fn change_at(id: &str, der: &[u8], to: CertificateStatus, seconds: i64) -> Vec<u8> {
        let info = certificate::parse(der).unwrap();
        event_at(
            id,
            seconds,
            Body::StatusChanged(StatusChanged {
                certificate: Some(CertificateId {
                    issuer_name_der: info.issuer_name_der,
                    serial: info.serial,
                }),
                new_status: to as i32,
                reason: String::new(),
            }),
        )
    }

    fn secs(rfc3339: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp()
    }

    fn london_day(y: i32, m: u32, d: u32) -> u32 {
        crate::day::day_of_date(chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap())
    }

    fn lodge(id: &str, der: &[u8]) -> Vec<u8> {
        event(
            id,
            Body::Issued(CertificateIssued {
                certificate_der: der.to_vec(),
                initial_status: CertificateStatus::Pending as i32,
                manufacturing_flag: true,
            }),
        )
    }

    fn change(id: &str, der: &[u8], to: CertificateStatus) -> Vec<u8> {
        let info = certificate::parse(der).unwrap();
        event(
            id,
            Body::StatusChanged(StatusChanged {
                certificate: Some(CertificateId {
                    issuer_name_der: info.issuer_name_der,
                    serial: info.serial,
                }),
                new_status: to as i32,
                reason: String::new(),
            }),
        )
    }

    fn key_text(der: &[u8]) -> Vec<u8> {
        let info = certificate::parse(der).unwrap();
        record_key(&info.issuer_name_der, &info.serial).into_bytes()
    }

    struct Harness<S: DeadLetterSink> {
        ing: Ingestor<S>,
        next: i64,
        _dir: tempfile::TempDir,
    }

    impl<S: DeadLetterSink> Harness<S> {
        fn new(sink: S) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(Store::open(dir.path(), "t").unwrap());
            let ing = Ingestor::new(
                store,
                sink,
                WindowConfig::new(chrono_tz::Europe::London),
                Metrics::new(),
            )
            .unwrap();
            Harness {
                ing,
                next: 0,
                _dir: dir,
            }
        }
        fn feed(&mut self, key: &[u8], value: &[u8]) -> Outcome {
            let o = self.next;
            self.next += 1;
            self.ing
                .ingest(RecordRef {
                    partition: 0,
                    offset: o,
                    key: Some(key),
                    value: Some(value),
                    timestamp_ms: None,
                })
                .unwrap()
        }
        fn feed_on(&mut self, partition: i32, offset: i64, key: &[u8], value: &[u8]) -> Outcome {
            self.ing
                .ingest(RecordRef {
                    partition,
                    offset,
                    key: Some(key),
                    value: Some(value),
                    timestamp_ms: None,
                })
                .unwrap()
        }
        fn key_of(&self, der: &[u8]) -> CertKey {
            let info = certificate::parse(der).unwrap();
            CertKey::new(0, &issuer_hash(&info.issuer_name_der), &info.serial)
        }
        fn stored_on(&self, partition: i32, der: &[u8]) -> Option<CertificateRecord> {
            let info = certificate::parse(der).unwrap();
            let key = CertKey::new(partition, &issuer_hash(&info.issuer_name_der), &info.serial);
            self.ing.store.get_cert(&key).unwrap()
        }
        fn stored(&self, der: &[u8]) -> Option<CertificateRecord> {
            let info = certificate::parse(der).unwrap();
            let key = CertKey::new(0, &issuer_hash(&info.issuer_name_der), &info.serial);
            self.ing.store.get_cert(&key).unwrap()
        }
    }

    #[test]
    fn later_events_of_a_batch_see_earlier_ones_and_nothing_is_stored_before_commit() {
        let der = fixture("00db123456789003-ds.pem");
        let key = key_text(&der);
        let mut h = Harness::new(MemoryDeadLetters::default());
        assert_eq!(h.feed(&key, &lodge("e1", &der)), Outcome::Applied);
        assert_eq!(
            h.feed(&key, &change("e2", &der, CertificateStatus::InUse)),
            Outcome::Applied
        );
        assert_eq!(
            h.feed(&key, &change("e3", &der, CertificateStatus::NotInUse)),
            Outcome::Applied
        );
        assert!(h.stored(&der).is_none(), "written before commit");
        assert_eq!(h.ing.store.next_offset(0).unwrap(), None);
        let c = h.ing.commit().unwrap().unwrap();
        assert_eq!(c.offsets, vec![(0, 3)]);
        let rec = h.stored(&der).unwrap();
        assert_eq!(rec.status, CertificateStatus::NotInUse as i32);
        assert_eq!(rec.applied_events, 3);
        assert_eq!(rec.applied_event_ids, vec!["e1", "e2", "e3"]);
        assert_eq!(h.ing.store.next_offset(0).unwrap(), Some(3));
        // The change index holds the certificate under its event day.
        let day = crate::day::day_of_millis(chrono_tz::Europe::London, 1_790_000_000_000);
        assert_eq!(h.ing.store.changes_on(0, day).unwrap().len(), 1);
    }

    #[test]
    fn re_delivered_offsets_are_skipped_and_repeated_event_ids_applied_once() {
        let der = fixture("00db123456789004-ka.pem");
        let key = key_text(&der);
        let mut h = Harness::new(MemoryDeadLetters::default());
        h.feed(&key, &lodge("e1", &der));
        h.feed(&key, &change("e2", &der, CertificateStatus::InUse));
        h.ing.commit().unwrap();
        // The broker re-delivers offset 1 (e.g. after a rebalance): skipped by offset.
        let again = h
            .ing
            .ingest(RecordRef {
                partition: 0,
                offset: 1,
                key: Some(&key),
                value: Some(&change("e2", &der, CertificateStatus::InUse)),
                timestamp_ms: None,
            })
            .unwrap();
        assert_eq!(again, Outcome::AlreadyApplied);
        // A producer re-sends e2 as a new record: applied once, by event id.
        assert_eq!(
            h.feed(&key, &change("e2", &der, CertificateStatus::InUse)),
            Outcome::Duplicate
        );
        assert_eq!(h.feed(&key, &lodge("e1", &der)), Outcome::Duplicate);
        h.ing.commit().unwrap();
        assert_eq!(h.stored(&der).unwrap().applied_events, 2);
        assert!(h.ing.sink().letters.is_empty());
    }

    #[test]
    fn rejections_carry_reason_and_origin_and_do_not_stop_ingest() {
        let der = fixture("00db123456789005-ds.pem");
        let key = key_text(&der);
        let mut h = Harness::new(MemoryDeadLetters::default());
        let cases: Vec<(Vec<u8>, Vec<u8>, Reason)> = vec![
            (key.clone(), b"\x0a\xff".to_vec(), Reason::Undecodable),
            (key.clone(), Vec::new(), Reason::Undecodable),
            (
                key.clone(),
                change("s1", &der, CertificateStatus::InUse),
                Reason::UnknownCertificate,
            ),
            (
                key.clone(),
                event(
                    "nb",
                    Body::Issued(CertificateIssued {
                        certificate_der: b"nope".to_vec(),
                        initial_status: 1,
                        manufacturing_flag: false,
                    }),
                ),
                Reason::CertificateUnparseable,
            ),
            (b"wrong".to_vec(), lodge("k1", &der), Reason::KeyMismatch),
            (
                key.clone(),
                CertificateEvent {
                    body: None,
                    ..CertificateEvent::decode(&lodge("mb", &der)[..]).unwrap()
                }
                .encode_to_vec(),
                Reason::MissingBody,
            ),
            (
                key.clone(),
                lodge(&"x".repeat(MAX_EVENT_ID_LEN + 1), &der),
                Reason::InvalidEventId,
            ),
        ];
        for (k, v, reason) in &cases {
            match h.feed(k, v) {
                Outcome::DeadLettered(r) => assert_eq!(r.reason, *reason, "{:?}", r.detail),
                other => panic!("expected {reason:?}, got {other:?}"),
            }
        }
        assert_eq!(h.feed(&key, &lodge("good", &der)), Outcome::Applied);
        h.ing.commit().unwrap();
        let letters = &h.ing.sink().letters;
        assert_eq!(letters.len(), cases.len());
        for (i, l) in letters.iter().enumerate() {
            assert_eq!((l.partition, l.offset), (0, i as i64));
            assert_eq!(l.reason, cases[i].2.code());
        }
        assert!(h.stored(&der).is_some());
        assert_eq!(h.ing.metrics.dead_lettered_total(), cases.len() as u64);
    }

    /// A sink whose acknowledgement fails, as when the broker is unreachable.
    struct FailingSink;
    impl DeadLetterSink for FailingSink {
        fn send(&mut self, _: DeadLetter<'_>) -> Result<()> {
            Ok(())
        }
        fn sent(&self) -> u64 {
            1
        }
        fn acknowledged(&mut self) -> Result<u64> {
            anyhow::bail!("broker unreachable")
        }
        fn flush(&mut self) -> Result<()> {
            anyhow::bail!("broker unreachable")
        }
    }

    /// A sink whose acknowledgements the test hands out.
    #[derive(Default)]
    struct SlowSink {
        sent: u64,
        acked: u64,
    }
    impl DeadLetterSink for SlowSink {
        fn send(&mut self, _: DeadLetter<'_>) -> Result<()> {
            self.sent += 1;
            Ok(())
        }
        fn sent(&self) -> u64 {
            self.sent
        }
        fn acknowledged(&mut self) -> Result<u64> {
            Ok(self.acked)
        }
        fn flush(&mut self) -> Result<()> {
            self.acked = self.sent;
            Ok(())
        }
    }

    #[test]
    fn sealed_batches_wait_for_their_dead_letters_while_ingest_goes_on() {
        let der = fixture("00db123456789007-ds.pem");
        let key = key_text(&der);
        let mut h = Harness::new(SlowSink::default());
        h.feed(&key, &lodge("e1", &der));
        h.feed(&key, b"\xff\xff"); // dead letter #1
        h.ing.seal();
        assert!(
            h.ing.write_ready(false).unwrap().is_empty(),
            "written before its dead letter was acknowledged"
        );
        // Ingest goes on and sees the sealed, unwritten state.
        assert_eq!(
            h.feed(&key, &change("e2", &der, CertificateStatus::InUse)),
            Outcome::Applied
        );
        h.ing.seal();
        assert_eq!(h.ing.sealed_batches(), 2);
        assert_eq!(h.ing.store.next_offset(0).unwrap(), None);
        // The first dead letter is acknowledged: both batches may go (none sent since).
        h.ing.sink.acked = 1;
        let written = h.ing.write_ready(false).unwrap();
        assert_eq!(written.len(), 2);
        assert_eq!(h.ing.store.next_offset(0).unwrap(), Some(3));
        assert_eq!(h.stored(&der).unwrap().applied_events, 2);
        assert!(h.ing.is_idle());
        // A batch whose dead letter is not yet acknowledged stays back behind the others.
        h.feed(&key, b"\xff\xff"); // dead letter #2
        h.ing.seal();
        h.feed(&key, &change("e3", &der, CertificateStatus::NotInUse));
        h.ing.seal();
        assert!(h.ing.write_ready(false).unwrap().is_empty());
        assert_eq!(h.ing.commit().unwrap().unwrap().offsets, vec![(0, 5)]);
        assert_eq!(
            h.stored(&der).unwrap().status,
            CertificateStatus::NotInUse as i32
        );
    }

    #[test]
    fn offsets_are_not_written_when_dead_letters_are_not_acknowledged() {
        let der = fixture("00db123456789006-ds.pem");
        let key = key_text(&der);
        let mut h = Harness::new(FailingSink);
        h.feed(&key, &lodge("e1", &der));
        h.feed(&key, b"\xff\xff");
        assert!(h.ing.commit().is_err());
        assert_eq!(
            h.ing.store.next_offset(0).unwrap(),
            None,
            "offsets moved past an unsent dead letter"
        );
        assert!(h.stored(&der).is_none());
    }

    #[test]
    fn a_late_event_is_applied_into_the_next_open_day_and_counted() {
        let device = fixture("00db123456789008-ds.pem");
        let other = fixture("00db123456789008-ka.pem");
        let (kd, ko) = (key_text(&device), key_text(&other));
        let mut h = Harness::new(MemoryDeadLetters::default());
        let d = london_day(2026, 11, 2);
        assert_eq!(
            h.feed(
                &kd,
                &lodge_at(
                    "l1",
                    &device,
                    secs("2026-11-02T09:00:00Z"),
                    CertificateStatus::Pending
                )
            ),
            Outcome::Applied
        );
        // Event time on the partition moves to 4 Nov noon: 2 and 3 Nov close on it.
        h.feed(
            &ko,
            &lodge_at(
                "l2",
                &other,
                secs("2026-11-04T12:00:00Z"),
                CertificateStatus::Pending,
            ),
        );
        // A commissioning that happened on 2 Nov arrives now: late, into 4 Nov.
        assert_eq!(
            h.feed(
                &kd,
                &change_at(
                    "c1",
                    &device,
                    CertificateStatus::InUse,
                    secs("2026-11-02T10:00:00Z")
                )
            ),
            Outcome::Applied
        );
        assert_eq!(h.ing.metrics.events_late.get(), 1);
        h.ing.commit().unwrap();
        let key = h.key_of(&device);
        assert_eq!(h.ing.store.changes_on(0, d).unwrap(), vec![key.clone()]);
        assert_eq!(h.ing.store.changes_on(0, d + 2).unwrap().len(), 2);
        // Its version of 2 Nov is the lodging; of 4 Nov, the commissioning.
        let v2 = h.ing.store.get_version(&key, d).unwrap().unwrap();
        let v4 = h.ing.store.get_version(&key, d + 2).unwrap().unwrap();
        assert_eq!(v2.status, CertificateStatus::Pending as i32);
        assert_eq!(v4.status, CertificateStatus::InUse as i32);
        assert_eq!(v4.delta_day, d + 2);
        // The clock went to the store with the offsets.
        let clock = h.ing.store.clock(0).unwrap().unwrap();
        assert_eq!(
            clock.watermark_ms,
            Some(secs("2026-11-04T12:00:00Z") * 1000)
        );
    }

    #[test]
    fn an_organisation_certificate_expires_when_its_day_closes_on_its_partition() {
        let org = fixture("90b3d51f30000002-ds.pem"); // notAfter 2025-10-29T23:59:59Z
        let device = fixture("00db123456789009-ds.pem");
        let (korg, kdev) = (key_text(&org), key_text(&device));
        let mut h = Harness::new(MemoryDeadLetters::default());
        h.feed(
            &korg,
            &lodge_at(
                "o1",
                &org,
                secs("2025-10-28T08:00:00Z"),
                CertificateStatus::InUse,
            ),
        );
        h.ing.commit().unwrap();
        // Still 29 Oct: nothing happens.
        h.feed(
            &kdev,
            &lodge_at(
                "d1",
                &device,
                secs("2025-10-29T23:00:00Z"),
                CertificateStatus::Pending,
            ),
        );
        assert_eq!(h.ing.metrics.events_expired.get(), 0);
        // The partition's event time passes the end of 29 Oct plus grace: it expires at the cut.
        h.feed(
            &kdev,
            &change_at(
                "d2",
                &device,
                CertificateStatus::InUse,
                secs("2025-10-30T00:15:00Z"),
            ),
        );
        assert_eq!(h.ing.metrics.events_expired.get(), 1);
        // A later revocation is a transition out of a final status.
        match h.feed(
            &korg,
            &change_at(
                "o2",
                &org,
                CertificateStatus::Revoked,
                secs("2025-10-30T01:00:00Z"),
            ),
        ) {
            Outcome::DeadLettered(r) => assert_eq!(r.reason, Reason::TransitionFromFinal),
            other => panic!("{other:?}"),
        }
        h.ing.commit().unwrap();
        let rec = h.stored(&org).unwrap();
        assert_eq!(rec.status, CertificateStatus::Expired as i32);
        assert_eq!(rec.status_reason, "expired");
        let d29 = london_day(2025, 10, 29);
        assert_eq!(rec.delta_day, d29);
        let key = h.key_of(&org);
        assert!(h.ing.store.changes_on(0, d29).unwrap().contains(&key));
        assert_eq!(
            h.ing.store.get_version(&key, d29).unwrap().unwrap().status,
            CertificateStatus::Expired as i32
        );
        // A revocation that happened before notAfter but arrives after the expiry is not
        // refused: it supersedes the expiry, late, in the next open day.
        assert_eq!(
            h.feed(
                &korg,
                &change_at(
                    "o3",
                    &org,
                    CertificateStatus::Revoked,
                    secs("2025-10-29T12:00:00Z"),
                ),
            ),
            Outcome::Applied
        );
        h.ing.commit().unwrap();
        let rec = h.stored(&org).unwrap();
        assert_eq!(rec.status, CertificateStatus::Revoked as i32);
        assert_eq!(rec.delta_day, d29 + 1, "late: the next open day");
        assert_eq!(
            h.ing.store.get_version(&key, d29).unwrap().unwrap().status,
            CertificateStatus::Expired as i32,
            "the closed day keeps its version"
        );
        // Revoked is final for real: nothing moves it again.
        assert!(matches!(
            h.feed(
                &korg,
                &change_at(
                    "o4",
                    &org,
                    CertificateStatus::Revoked,
                    secs("2025-10-29T13:00:00Z"),
                ),
            ),
            Outcome::DeadLettered(_)
        ));
    }

    #[test]
    fn a_day_closes_everywhere_only_when_every_partition_has_closed_it() {
        let a = fixture("00db12345678900a-ds.pem");
        let b = fixture("00db12345678900a-ka.pem");
        let (ka, kb) = (key_text(&a), key_text(&b));
        let mut h = Harness::new(MemoryDeadLetters::default());
        h.ing.set_partitions(2, &[0, 1]).unwrap();
        let d = london_day(2026, 11, 2);
        h.feed_on(
            0,
            0,
            &ka,
            &lodge_at(
                "a1",
                &a,
                secs("2026-11-02T09:00:00Z"),
                CertificateStatus::Pending,
            ),
        );
        h.feed_on(
            1,
            0,
            &kb,
            &lodge_at(
                "b1",
                &b,
                secs("2026-11-02T10:00:00Z"),
                CertificateStatus::Pending,
            ),
        );
        h.feed_on(
            0,
            1,
            &ka,
            &change_at(
                "a2",
                &a,
                CertificateStatus::InUse,
                secs("2026-11-03T08:00:00Z"),
            ),
        );
        let now = secs("2026-11-03T08:00:00Z") * 1000;
        h.ing.tick(now).unwrap();
        assert!(
            h.ing.take_closed().is_empty(),
            "partition 1 holds 2 Nov open"
        );
        // Partition 1 is caught up; once idle long enough it stops holding the day.
        h.ing.note_end(1, now).unwrap();
        h.ing.tick(now + 30_000).unwrap();
        assert!(h.ing.take_closed().is_empty(), "not idle long enough yet");
        h.ing.tick(now + 60_000).unwrap();
        let closed = h.ing.take_closed();
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].day, d);
        assert_eq!(closed[0].offsets, BTreeMap::from([(0, 2), (1, 1)]));
        assert_eq!(closed[0].forced_cuts[&1].rule, "idle");
        assert_eq!(closed[0].forced_cuts[&1].offset, 1);
        assert!(
            !closed[0].forced_cuts.contains_key(&0),
            "closed by event time"
        );
        assert_eq!(h.ing.store.last_closed_day().unwrap(), Some(d));
        // A late event for 2 Nov on partition 1 now goes to 3 Nov.
        h.feed_on(
            1,
            1,
            &kb,
            &change_at(
                "b2",
                &b,
                CertificateStatus::InUse,
                secs("2026-11-02T11:00:00Z"),
            ),
        );
        h.ing.commit().unwrap();
        assert_eq!(h.stored_on(1, &b).unwrap().delta_day, d + 1);
        // The deadline closes 3 Nov once every partition has reached its end.
        h.ing.tick(secs("2026-11-04T01:59:00Z") * 1000).unwrap();
        assert!(h.ing.take_closed().is_empty());
        h.ing.note_end(0, now).unwrap();
        h.ing.note_end(1, now).unwrap();
        h.ing.tick(secs("2026-11-04T02:00:00Z") * 1000).unwrap();
        let closed = h.ing.take_closed();
        assert_eq!(
            closed.iter().map(|c| c.day).collect::<Vec<_>>(),
            vec![d + 1]
        );
        assert_eq!(closed[0].forced_cuts[&0].rule, "deadline");
        // A restarted pipeline on the same store carries on from the next day.
        let store = h.ing.store.clone();
        let again = Ingestor::new(
            store,
            MemoryDeadLetters::default(),
            WindowConfig::new(chrono_tz::Europe::London),
            Metrics::new(),
        )
        .unwrap();
        assert_eq!(again.next_day(), Some(d + 2));
    }

    /// An idle cut on one partition, then event time on that partition passing the day
    /// before a third partition lets the day close everywhere: the close must still record
    /// the idle cut, or a replay would put the events after it into the wrong day.
    #[test]
    fn an_idle_cut_is_recorded_even_when_event_time_catches_up_before_the_day_closes() {
        let a = fixture("00db12345678900a-ds.pem");
        let b = fixture("00db12345678900a-ka.pem");
        let (ka, kb) = (key_text(&a), key_text(&b));
        let mut h = Harness::new(MemoryDeadLetters::default());
        h.ing.set_partitions(3, &[0, 1, 2]).unwrap();
        let d = london_day(2026, 11, 2);
        let lodge =
            |id: &str, der: &[u8], t: &str| lodge_at(id, der, secs(t), CertificateStatus::Pending);
        h.feed_on(0, 0, &ka, &lodge("a1", &a, "2026-11-02T09:00:00Z"));
        h.feed_on(1, 0, &kb, &lodge("b1", &b, "2026-11-02T09:30:00Z"));
        // Partition 2 passes 2 Nov by event time (an unknown certificate: dead-lettered,
        // but its event time counts).
        h.feed_on(
            2,
            0,
            b"x",
            &change_at(
                "c1",
                &a,
                CertificateStatus::InUse,
                secs("2026-11-03T06:00:00Z"),
            ),
        );
        let now = secs("2026-11-03T06:00:00Z") * 1000;
        // Partition 0 is caught up and idle: cut through 2 Nov at its next offset, 1.
        h.ing.note_end(0, now).unwrap();
        h.ing.tick(now + 60_000).unwrap();
        assert!(
            h.ing.take_closed().is_empty(),
            "partition 1 holds 2 Nov open"
        );
        // Partition 0 gets a late event of 2 Nov, then passes 2 Nov by event time.
        h.feed_on(
            0,
            1,
            &ka,
            &change_at(
                "a2",
                &a,
                CertificateStatus::InUse,
                secs("2026-11-02T20:00:00Z"),
            ),
        );
        h.ing.commit().unwrap();
        assert_eq!(h.stored_on(0, &a).unwrap().delta_day, d + 1, "late");
        h.feed_on(
            0,
            2,
            &ka,
            &change_at(
                "a3",
                &a,
                CertificateStatus::NotInUse,
                secs("2026-11-03T07:00:00Z"),
            ),
        );
        // Partition 1 passes 2 Nov by event time: the day closes everywhere.
        h.feed_on(
            1,
            1,
            &kb,
            &change_at(
                "b2",
                &b,
                CertificateStatus::InUse,
                secs("2026-11-03T07:00:00Z"),
            ),
        );
        h.ing.tick(now + 120_000).unwrap();
        let closed = h.ing.take_closed();
        assert_eq!(closed.iter().map(|c| c.day).collect::<Vec<_>>(), vec![d]);
        let cut = closed[0]
            .forced_cuts
            .get(&0)
            .expect("the idle cut of partition 0");
        assert_eq!((cut.offset, cut.rule.as_str()), (1, "idle"));
        assert!(
            !closed[0].forced_cuts.contains_key(&1),
            "closed by event time"
        );
        assert!(
            !closed[0].forced_cuts.contains_key(&2),
            "closed by event time"
        );
    }
}
