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

use std::collections::VecDeque;
use std::sync::Arc;

use anyhow::Result;
use chrono_tz::Tz;
use prost::Message;
use rustc_hash::FxHashMap as HashMap;

use crate::certificate::{self, CertificateInfo, CertificateType, Usage};
use crate::contract::{
    issuer_hash, record_key, Body, CertificateEvent, CertificateIssued, CertificateRecord,
    CertificateStatus, StatusChanged, StoredType, StoredUsage,
};
use crate::day::day_of_millis;
use crate::deadletter::{DeadLetter, DeadLetterSink};
use crate::metrics::Metrics;
use crate::store::{CertKey, Store, StoreBatch};

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
    pub const ALL: [Reason; 14] = [
        Reason::Undecodable,
        Reason::InvalidEventId,
        Reason::MissingOccurredAt,
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
    /// Change-index entries.
    changes: Vec<(CertKey, u32)>,
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
    tz: Tz,
    metrics: Metrics,
    open: OpenBatch,
    sealed: VecDeque<Sealed>,
    /// Newest unwritten version of every certificate changed by an unwritten batch, with
    /// the generation of the batch that last changed it.
    overlay: HashMap<CertKey, (CertificateRecord, u64)>,
    /// DER of certificates lodged by unwritten batches.
    bodies: HashMap<CertKey, (Vec<u8>, u64)>,
    /// Next offset per partition consumed into any batch, written or not.
    consumed: HashMap<i32, i64>,
    /// Next offset per partition as written to the store (loaded on first sight).
    committed: HashMap<i32, i64>,
    /// Issuer Name DER → (issuer hash, its hex): a handful of issuers sign everything, so
    /// their hashes are computed once. Cleared if it ever grows past [`ISSUER_CACHE_MAX`].
    issuers: HashMap<Vec<u8>, ([u8; 8], String)>,
}

/// Bound of the issuer cache (bad input could carry any number of issuers).
const ISSUER_CACHE_MAX: usize = 1024;

impl<S: DeadLetterSink> Ingestor<S> {
    /// A pipeline writing to `store`, dead-lettering into `sink`, with days in `tz`.
    pub fn new(store: Arc<Store>, sink: S, tz: Tz, metrics: Metrics) -> Self {
        for r in Reason::ALL {
            metrics.events_dead_lettered.with_label_values(&[r.code()]);
        }
        Ingestor {
            store,
            sink,
            tz,
            metrics,
            open: OpenBatch::default(),
            sealed: VecDeque::new(),
            overlay: HashMap::default(),
            bodies: HashMap::default(),
            consumed: HashMap::default(),
            committed: HashMap::default(),
            issuers: HashMap::default(),
        }
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
        self.metrics.events_consumed.inc();
        if let Some(next) = self.next_offset(rec.partition)? {
            if rec.offset < next {
                self.metrics.records_skipped.inc();
                return Ok(Outcome::AlreadyApplied);
            }
        }
        let outcome = match self.apply(rec)? {
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
        Ok(outcome)
    }

    /// Close the open batch (if it holds anything) for writing.
    pub fn seal(&mut self) {
        if self.open.records == 0 {
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
        for (key, day) in &open.changes {
            batch.put_change(key, *day);
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

    /// Decode, validate and apply one record into the pending batch.
    /// `Ok(Ok(true))` applied, `Ok(Ok(false))` duplicate, `Ok(Err(_))` rejected.
    fn apply(&mut self, rec: RecordRef<'_>) -> Result<Result<bool, Rejection>> {
        let event = match decode(rec) {
            Ok(e) => e,
            Err(r) => return Ok(Err(r)),
        };
        let occurred_ms = event
            .occurred_at
            .as_ref()
            .map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
            .expect("checked by decode");
        let day = day_of_millis(self.tz, occurred_ms);
        match event.body.expect("checked by decode") {
            Body::Issued(issued) => {
                self.apply_issued(rec, &event.event_id, occurred_ms, day, issued)
            }
            Body::StatusChanged(change) => {
                self.apply_status_change(rec, &event.event_id, occurred_ms, day, change)
            }
        }
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

    /// Record a changed certificate in the open batch.
    fn put(&mut self, key: CertKey, record: CertificateRecord, day: u32) {
        self.open.changes.push((key.clone(), day));
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
        rec: RecordRef<'_>,
        event_id: &str,
        occurred_ms: i64,
        day: u32,
        issued: CertificateIssued,
    ) -> Result<Result<bool, Rejection>> {
        let initial = match CertificateStatus::try_from(issued.initial_status) {
            Ok(s @ (CertificateStatus::Pending | CertificateStatus::InUse)) => s,
            _ => {
                return Ok(reject(
                    Reason::InvalidStatus,
                    format!(
                        "initial status {} is not PENDING or IN_USE",
                        issued.initial_status
                    ),
                ))
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
                return Ok(reject(reason, e.to_string()));
            }
        };
        let key = match self.key_for(rec, &info.issuer_name_der, &info.serial) {
            Ok(k) => k,
            Err(r) => return Ok(Err(r)),
        };
        if let Some((existing, generation)) = self.lookup(&key)? {
            let verdict = if existing.applied_event_ids.iter().any(|id| id == event_id) {
                Ok(false)
            } else if self.body(&key)?.as_deref() != Some(&issued.certificate_der[..]) {
                reject(
                    Reason::ConflictingCertificate,
                    format!(
                        "certificate {} of {} is already lodged with different DER",
                        info.serial_hex(),
                        info.issuer
                    ),
                )
            } else {
                reject(
                    Reason::AlreadyLodged,
                    format!(
                        "certificate {} of {} was already lodged by another event",
                        info.serial_hex(),
                        info.issuer
                    ),
                )
            };
            self.restore(key, existing, generation);
            return Ok(verdict);
        }
        let (record, der) = new_record(&info, issued, initial, event_id, occurred_ms);
        self.bodies.insert(key.clone(), (der, self.open.generation));
        self.open.lodged.push(key.clone());
        self.put(key, record, day);
        Ok(Ok(true))
    }

    fn apply_status_change(
        &mut self,
        rec: RecordRef<'_>,
        event_id: &str,
        occurred_ms: i64,
        day: u32,
        change: StatusChanged,
    ) -> Result<Result<bool, Rejection>> {
        let Some(id) = change.certificate else {
            return Ok(reject(
                Reason::UnknownCertificate,
                "status change without a certificate id",
            ));
        };
        let serial = certificate::canonical_serial(&id.serial);
        if id.issuer_name_der.is_empty() || id.serial.is_empty() {
            return Ok(reject(
                Reason::UnknownCertificate,
                "status change with an empty issuer or serial",
            ));
        }
        let key = match self.key_for(rec, &id.issuer_name_der, &serial) {
            Ok(k) => k,
            Err(r) => return Ok(Err(r)),
        };
        let new_status = match CertificateStatus::try_from(change.new_status) {
            Ok(CertificateStatus::Unspecified) | Err(_) => {
                return Ok(reject(
                    Reason::InvalidStatus,
                    format!("new status {} is not a status", change.new_status),
                ))
            }
            Ok(s) => s,
        };
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
        } else if record.issuer_name_der != id.issuer_name_der {
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
            if current.is_final() {
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
            record.status_reason = change.reason;
            record.applied_event_ids.push(event_id.to_string());
            record.applied_events += 1;
            self.put(key, record, day);
        } else {
            self.restore(key, record, generation);
        }
        Ok(verdict)
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
        CertificateEvent {
            event_id: id.into(),
            occurred_at: Some(prost_types::Timestamp {
                seconds: 1_790_000_000,
                nanos: 0,
            }),
            source: String::new(),
            body: Some(body),
        }
        .encode_to_vec()
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
            let ing = Ingestor::new(store, sink, chrono_tz::Europe::London, Metrics::new());
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
                })
                .unwrap()
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
        let day = day_of_millis(chrono_tz::Europe::London, 1_790_000_000_000);
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
}
