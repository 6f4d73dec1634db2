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

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Result;
use chrono_tz::Tz;
use prost::Message;

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

/// The pending batch: records changed since the last commit, read-your-writes for later
/// events of the same batch.
#[derive(Default)]
struct Pending {
    certs: HashMap<CertKey, CertificateRecord>,
    changes: Vec<(CertKey, u32)>,
    offsets: HashMap<i32, i64>,
    records: usize,
}

/// The ingest pipeline over one state store.
pub struct Ingestor<S: DeadLetterSink> {
    store: Arc<Store>,
    sink: S,
    tz: Tz,
    metrics: Metrics,
    pending: Pending,
    /// Next offset per partition as committed to the store (loaded on first sight).
    committed: HashMap<i32, i64>,
}

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
            pending: Pending::default(),
            committed: HashMap::new(),
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

    /// Records consumed since the last commit.
    pub fn pending_records(&self) -> usize {
        self.pending.records
    }

    /// Next offset to consume from `partition`: pending, else stored, else none.
    pub fn next_offset(&mut self, partition: i32) -> Result<Option<i64>> {
        if let Some(o) = self.pending.offsets.get(&partition) {
            return Ok(Some(*o));
        }
        self.committed_offset(partition)
    }

    fn committed_offset(&mut self, partition: i32) -> Result<Option<i64>> {
        if let Some(o) = self.committed.get(&partition) {
            return Ok(Some(*o));
        }
        let stored = self.store.next_offset(partition)?;
        if let Some(o) = stored {
            self.committed.insert(partition, o);
        }
        Ok(stored)
    }

    /// Take one record into the pending batch. Errors are failures of the store or the
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
        self.pending.offsets.insert(rec.partition, rec.offset + 1);
        self.pending.records += 1;
        Ok(outcome)
    }

    /// Write the pending batch: dead letters acknowledged first, then state and offsets in
    /// one WriteBatch. Returns what was committed (`None` when nothing was pending).
    pub fn commit(&mut self) -> Result<Option<Committed>> {
        if self.pending.records == 0 {
            return Ok(None);
        }
        self.sink.flush()?;
        let pending = std::mem::take(&mut self.pending);
        let mut batch = StoreBatch::default();
        for (key, day) in &pending.changes {
            batch.put_change(key, *day);
        }
        for (key, record) in pending.certs {
            batch.put_cert(key, &record);
        }
        let mut offsets: Vec<(i32, i64)> = pending.offsets.into_iter().collect();
        offsets.sort_unstable();
        for (p, o) in &offsets {
            batch.put_offset(*p, *o);
        }
        self.store.write(batch)?;
        for (p, o) in &offsets {
            self.committed.insert(*p, *o);
        }
        self.metrics.batches_committed.inc();
        Ok(Some(Committed {
            offsets,
            records: pending.records,
        }))
    }

    /// Drop what is pending without writing it (a failed sink flush, tests).
    pub fn discard_pending(&mut self) {
        self.pending = Pending::default();
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

    fn lookup(&mut self, key: &CertKey) -> Result<Option<CertificateRecord>> {
        if let Some(r) = self.pending.certs.remove(key) {
            return Ok(Some(r));
        }
        self.store.get_cert(key)
    }

    fn put(&mut self, key: CertKey, record: CertificateRecord, day: u32) {
        self.pending.changes.push((key.clone(), day));
        self.pending.certs.insert(key, record);
    }

    /// Put a record back unchanged (it was taken out of the pending map by `lookup`).
    fn restore(&mut self, key: CertKey, record: CertificateRecord, was_pending: bool) {
        if was_pending {
            if let Entry::Vacant(v) = self.pending.certs.entry(key) {
                v.insert(record);
            }
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
        if let Err(r) = check_key(rec, &info.issuer_name_der, &info.serial) {
            return Ok(Err(r));
        }
        let key = CertKey::new(rec.partition, &issuer_hash(&info.issuer_name_der), &info.serial);
        let was_pending = self.pending.certs.contains_key(&key);
        if let Some(existing) = self.lookup(&key)? {
            let verdict = if existing.applied_event_ids.iter().any(|id| id == event_id) {
                Ok(false)
            } else if existing.certificate_der != issued.certificate_der {
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
            self.restore(key, existing, was_pending);
            return Ok(verdict);
        }
        let record = new_record(&info, issued, initial, event_id, occurred_ms);
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
            return Ok(reject(Reason::UnknownCertificate, "status change without a certificate id"));
        };
        let serial = certificate::canonical_serial(&id.serial);
        if id.issuer_name_der.is_empty() || id.serial.is_empty() {
            return Ok(reject(
                Reason::UnknownCertificate,
                "status change with an empty issuer or serial",
            ));
        }
        if let Err(r) = check_key(rec, &id.issuer_name_der, &serial) {
            return Ok(Err(r));
        }
        let new_status = match CertificateStatus::try_from(change.new_status) {
            Ok(CertificateStatus::Unspecified) | Err(_) => {
                return Ok(reject(
                    Reason::InvalidStatus,
                    format!("new status {} is not a status", change.new_status),
                ))
            }
            Ok(s) => s,
        };
        let key = CertKey::new(rec.partition, &issuer_hash(&id.issuer_name_der), &serial);
        let was_pending = self.pending.certs.contains_key(&key);
        let Some(mut record) = self.lookup(&key)? else {
            return Ok(reject(
                Reason::UnknownCertificate,
                format!("no certificate with serial {} is lodged", hex::encode_upper(&serial)),
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
            self.restore(key, record, was_pending);
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
        Err(e) => return reject(Reason::Undecodable, format!("not a smki.v1.CertificateEvent: {e}")),
    };
    if event.event_id.is_empty() || event.event_id.len() > MAX_EVENT_ID_LEN {
        return reject(
            Reason::InvalidEventId,
            format!("event_id must be 1..={MAX_EVENT_ID_LEN} bytes, got {}", event.event_id.len()),
        );
    }
    if event.occurred_at.is_none() {
        return reject(Reason::MissingOccurredAt, "occurred_at is not set");
    }
    if event.body.is_none() {
        return reject(Reason::MissingBody, "neither issued nor status_changed is set");
    }
    Ok(event)
}

/// The record key must be the certificate id: that is what keeps a certificate's events in
/// one partition, in order.
fn check_key(rec: RecordRef<'_>, issuer_der: &[u8], serial: &[u8]) -> Result<(), Rejection> {
    let expected = record_key(issuer_der, serial);
    match rec.key {
        Some(k) if k == expected.as_bytes() => Ok(()),
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

fn new_record(
    info: &CertificateInfo,
    issued: CertificateIssued,
    initial: CertificateStatus,
    event_id: &str,
    occurred_ms: i64,
) -> CertificateRecord {
    CertificateRecord {
        certificate_der: issued.certificate_der,
        status: initial as i32,
        manufacturing_flag: issued.manufacturing_flag,
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
            occurred_at: Some(prost_types::Timestamp { seconds: 1_790_000_000, nanos: 0 }),
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
            Harness { ing, next: 0, _dir: dir }
        }
        fn feed(&mut self, key: &[u8], value: &[u8]) -> Outcome {
            let o = self.next;
            self.next += 1;
            self.ing
                .ingest(RecordRef { partition: 0, offset: o, key: Some(key), value: Some(value) })
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
        assert_eq!(h.feed(&key, &change("e2", &der, CertificateStatus::InUse)), Outcome::Applied);
        assert_eq!(h.feed(&key, &change("e3", &der, CertificateStatus::NotInUse)), Outcome::Applied);
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
            .ingest(RecordRef { partition: 0, offset: 1, key: Some(&key), value: Some(&change("e2", &der, CertificateStatus::InUse)) })
            .unwrap();
        assert_eq!(again, Outcome::AlreadyApplied);
        // A producer re-sends e2 as a new record: applied once, by event id.
        assert_eq!(h.feed(&key, &change("e2", &der, CertificateStatus::InUse)), Outcome::Duplicate);
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
            (key.clone(), change("s1", &der, CertificateStatus::InUse), Reason::UnknownCertificate),
            (key.clone(), event("nb", Body::Issued(CertificateIssued { certificate_der: b"nope".to_vec(), initial_status: 1, manufacturing_flag: false })), Reason::CertificateUnparseable),
            (b"wrong".to_vec(), lodge("k1", &der), Reason::KeyMismatch),
            (key.clone(), CertificateEvent { body: None, ..CertificateEvent::decode(&lodge("mb", &der)[..]).unwrap() }.encode_to_vec(), Reason::MissingBody),
            (key.clone(), lodge(&"x".repeat(MAX_EVENT_ID_LEN + 1), &der), Reason::InvalidEventId),
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
        fn flush(&mut self) -> Result<()> {
            anyhow::bail!("broker unreachable")
        }
    }

    #[test]
    fn offsets_are_not_written_when_dead_letters_are_not_acknowledged() {
        let der = fixture("00db123456789006-ds.pem");
        let key = key_text(&der);
        let mut h = Harness::new(FailingSink);
        h.feed(&key, &lodge("e1", &der));
        h.feed(&key, b"\xff\xff");
        assert!(h.ing.commit().is_err());
        assert_eq!(h.ing.store.next_offset(0).unwrap(), None, "offsets moved past an unsent dead letter");
        assert!(h.stored(&der).is_none());
    }
}
