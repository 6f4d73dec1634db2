//! A realistic, deterministic event history over N days: the CA hierarchy and Organisation
//! certificates lodged on day one, devices manufactured (P), commissioned (P→I),
//! decommissioned (I→N) and sometimes recommissioned (N→I), revocations, and a configurable
//! share of invalid events of every kind the service must dead-letter.
//!
//! Alongside the records the generator computes what a correct service must end up with —
//! each certificate's final status and number of applied events, and how many events of each
//! dead-letter reason — by simulating the lifecycle itself, independently of `ingest`.

use std::collections::BTreeMap;

use anyhow::Result;
use chrono::NaiveDate;
use chrono_tz::Tz;
use prost::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Serialize;

use super::pki::{self, Authority, Hierarchy, Usage};
use crate::contract::{
    record_key, Body, CertificateEvent, CertificateId, CertificateIssued, CertificateStatus,
    StatusChanged,
};

/// What to generate.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Everything is a function of this seed.
    pub seed: u64,
    /// Number of devices (each gets a DS and a KA certificate).
    pub devices: usize,
    /// Days of history.
    pub days: u32,
    /// First day of the history.
    pub start: NaiveDate,
    /// Zone whose midnight starts the first day.
    pub tz: Tz,
    /// Invalid events per thousand valid ones (each kind in turn).
    pub invalid_per_mille: u32,
    /// Duplicate re-sends (same event id) per thousand valid events.
    pub duplicate_per_mille: u32,
    /// Device status changes per thousand that reach the topic late: 1 to 36 hours after
    /// they happened (the certificate's later events wait behind them, as a producer that
    /// keeps a certificate's events in order would send them).
    pub late_per_mille: u32,
    /// Worker threads for certificate signing (output is identical whatever the count).
    pub threads: usize,
}

/// One Kafka record to produce, with the instant it is emitted (records are in emit order).
#[derive(Clone, Debug)]
pub struct GenRecord {
    /// When it is sent (Unix ms); the order of the stream.
    pub emit_ms: i64,
    /// Record key.
    pub key: Vec<u8>,
    /// Record value.
    pub value: Vec<u8>,
}

/// Expected final state of one certificate.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ExpectedCertificate {
    /// Record key (certificate id text).
    pub key: String,
    /// Final status code.
    pub status: String,
    /// Number of events applied to it.
    pub events: u32,
}

/// What a correct service holds after ingesting the whole history.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Expectations {
    /// Every certificate, by key.
    pub certificates: BTreeMap<String, ExpectedCertificate>,
    /// Dead-lettered events by reason code.
    pub dead_letters: BTreeMap<String, u64>,
    /// Duplicate events (applied once, counted).
    pub duplicates: u64,
    /// Events applied.
    pub applied: u64,
    /// Records in the stream.
    pub records: u64,
}

/// The generated history.
pub struct History {
    /// Records in emit order.
    pub records: Vec<GenRecord>,
    /// What a correct service ends up with.
    pub expected: Expectations,
}

/// Roles of DESIGN §3 that Organisation certificates are generated for.
const ORG_ROLES: [u8; 11] = [1, 2, 3, 4, 5, 6, 7, 8, 127, 135, 137];

const DAY_MS: i64 = 86_400_000;

/// A certificate as the generator tracks it.
struct Cert {
    der: Vec<u8>,
    issuer: Vec<u8>,
    serial: Vec<u8>,
    key: String,
    status: CertificateStatus,
    events: u32,
    /// Emit time of its newest record: later records of the certificate are not before it.
    last_emit: i64,
}

impl Cert {
    fn new(der: Vec<u8>) -> Result<Cert> {
        let info = crate::certificate::parse(&der)?;
        let key = record_key(&info.issuer_name_der, &info.serial);
        Ok(Cert {
            der,
            issuer: info.issuer_name_der,
            serial: info.serial,
            key,
            status: CertificateStatus::Unspecified,
            events: 0,
            last_emit: i64::MIN,
        })
    }
}

/// Builds the stream for one slice of the history with its own RNG.
struct Builder {
    rng: ChaCha20Rng,
    records: Vec<GenRecord>,
    expected: Expectations,
    certs: Vec<Cert>,
    next_event: u64,
    prefix: String,
    dup_per_mille: u32,
    late_per_mille: u32,
}

impl Builder {
    fn new(seed: u64, prefix: String) -> Builder {
        Builder {
            rng: ChaCha20Rng::seed_from_u64(seed),
            records: Vec::new(),
            expected: Expectations::default(),
            certs: Vec::new(),
            next_event: 0,
            prefix,
            dup_per_mille: 0,
            late_per_mille: 0,
        }
    }

    fn event_id(&mut self) -> String {
        self.next_event += 1;
        format!("{}-{}", self.prefix, self.next_event)
    }

    fn emit(&mut self, emit_ms: i64, key: &str, event: &CertificateEvent) {
        self.records.push(GenRecord {
            emit_ms,
            key: key.as_bytes().to_vec(),
            value: event.encode_to_vec(),
        });
        self.expected.records += 1;
    }

    fn envelope(event_id: String, occurred_ms: i64, body: Body) -> CertificateEvent {
        CertificateEvent {
            event_id,
            occurred_at: Some(prost_types::Timestamp {
                seconds: occurred_ms.div_euclid(1000),
                nanos: (occurred_ms.rem_euclid(1000) * 1_000_000) as i32,
            }),
            source: "smki-extract gen".into(),
            body: Some(body),
        }
    }

    /// Lodge certificate `idx` with `status` at `ms`.
    fn lodge(&mut self, idx: usize, status: CertificateStatus, manufacturing: bool, ms: i64) {
        let id = self.event_id();
        let c = &mut self.certs[idx];
        c.status = status;
        c.events += 1;
        let event = Self::envelope(
            id,
            ms,
            Body::Issued(CertificateIssued {
                certificate_der: c.der.clone(),
                initial_status: status as i32,
                manufacturing_flag: manufacturing,
            }),
        );
        let key = c.key.clone();
        let at = ms.max(c.last_emit);
        c.last_emit = at;
        self.expected.applied += 1;
        self.emit(at, &key, &event);
        self.maybe_duplicate(at, &key, &event);
    }

    /// Change certificate `idx` to `status` at `ms`, possibly delivered late.
    fn change_maybe_late(&mut self, idx: usize, status: CertificateStatus, reason: &str, ms: i64) {
        let delay = if self.late_per_mille > 0 && self.rng.gen_range(0..1000) < self.late_per_mille
        {
            self.rng.gen_range(3_600_000..36 * 3_600_000)
        } else {
            0
        };
        self.change_emitted(idx, status, reason, ms, ms + delay);
    }

    /// Change certificate `idx` to `status` at `ms` (a valid transition).
    fn change(&mut self, idx: usize, status: CertificateStatus, reason: &str, ms: i64) {
        self.change_emitted(idx, status, reason, ms, ms);
    }

    /// Change certificate `idx` to `status` at `ms`, reaching the topic at `emit_ms` (or after
    /// the certificate's previous record, whichever is later).
    fn change_emitted(
        &mut self,
        idx: usize,
        status: CertificateStatus,
        reason: &str,
        ms: i64,
        emit_ms: i64,
    ) {
        let id = self.event_id();
        let c = &mut self.certs[idx];
        debug_assert!(c.status.may_become(status));
        c.status = status;
        c.events += 1;
        let event = Self::envelope(
            id,
            ms,
            Body::StatusChanged(status_change(c, status, reason)),
        );
        let key = c.key.clone();
        let at = emit_ms.max(c.last_emit);
        c.last_emit = at;
        self.expected.applied += 1;
        self.emit(at, &key, &event);
        self.maybe_duplicate(at, &key, &event);
    }

    fn maybe_duplicate(&mut self, ms: i64, key: &str, event: &CertificateEvent) {
        if self.dup_per_mille > 0 && self.rng.gen_range(0..1000) < self.dup_per_mille {
            let later = ms + self.rng.gen_range(1..3_600_000);
            self.expected.duplicates += 1;
            self.emit(later, key, event);
        }
    }

    fn bad(&mut self, reason: &str, emit_ms: i64, key: &str, value: Vec<u8>) {
        *self
            .expected
            .dead_letters
            .entry(reason.to_string())
            .or_default() += 1;
        self.records.push(GenRecord {
            emit_ms,
            key: key.as_bytes().to_vec(),
            value,
        });
        self.expected.records += 1;
    }

    fn finish(mut self) -> (Vec<GenRecord>, Expectations) {
        for c in &self.certs {
            if c.events > 0 {
                self.expected.certificates.insert(
                    c.key.clone(),
                    ExpectedCertificate {
                        key: c.key.clone(),
                        status: c.status.code().to_string(),
                        events: c.events,
                    },
                );
            }
        }
        (self.records, self.expected)
    }
}

fn status_change(c: &Cert, status: CertificateStatus, reason: &str) -> StatusChanged {
    StatusChanged {
        certificate: Some(CertificateId {
            issuer_name_der: c.issuer.clone(),
            serial: c.serial.clone(),
        }),
        new_status: status as i32,
        reason: reason.to_string(),
    }
}

fn serial(rng: &mut ChaCha20Rng) -> [u8; 16] {
    let mut s: [u8; 16] = rng.gen();
    s[0] = (s[0] & 0x7f).max(1);
    s
}

fn split_seed(seed: u64, salt: u64) -> u64 {
    // SplitMix64 step: decorrelates per-slice seeds.
    let mut z = seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Generate the history of `spec`.
pub fn generate(spec: &Spec) -> Result<History> {
    let start_ms = crate::day::start_of_day_millis(spec.tz, spec.start);
    let span_ms = i64::from(spec.days.max(1)) * DAY_MS;
    let hierarchy = Hierarchy::generate(spec.seed)?;

    let mut parts = vec![authorities_and_organisations(
        spec, &hierarchy, start_ms, span_ms,
    )?];
    let threads = spec.threads.max(1);
    let chunk = 2_000usize;
    let chunks: Vec<(usize, usize)> = (0..spec.devices)
        .step_by(chunk)
        .map(|s| (s, (s + chunk).min(spec.devices)))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<Result<(Vec<GenRecord>, Expectations)>>>> =
        chunks.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(&(from, to)) = chunks.get(i) else {
                    break;
                };
                let r = devices(spec, &hierarchy.issuing_dca, from, to, start_ms, span_ms);
                *slots[i].lock().expect("not poisoned") = Some(r);
            });
        }
    });
    let results = slots.into_iter().map(|s| {
        s.into_inner()
            .expect("not poisoned")
            .expect("every chunk ran")
    });
    for r in results {
        parts.push(r?);
    }

    let mut expected = Expectations::default();
    let mut records = Vec::with_capacity(parts.iter().map(|p| p.0.len()).sum());
    for (recs, exp) in parts {
        records.extend(recs);
        expected.certificates.extend(exp.certificates);
        for (k, v) in exp.dead_letters {
            *expected.dead_letters.entry(k).or_default() += v;
        }
        expected.duplicates += exp.duplicates;
        expected.applied += exp.applied;
        expected.records += exp.records;
    }
    // Stable: records of one certificate keep their causal order on equal instants.
    records.sort_by_key(|r| r.emit_ms);
    Ok(History { records, expected })
}

fn authorities_and_organisations(
    spec: &Spec,
    h: &Hierarchy,
    start_ms: i64,
    span_ms: i64,
) -> Result<(Vec<GenRecord>, Expectations)> {
    let mut b = Builder::new(split_seed(spec.seed, u64::MAX), "org".into());
    b.dup_per_mille = spec.duplicate_per_mille;
    for ca in [&h.root_oca, &h.issuing_oca, &h.root_dca, &h.issuing_dca] {
        b.certs.push(Cert::new(ca.certificate_der().to_vec())?);
        let idx = b.certs.len() - 1;
        b.lodge(idx, CertificateStatus::InUse, false, start_ms);
    }
    let not_before = time::OffsetDateTime::from_unix_timestamp(start_ms / 1000 - 86_400)?;
    let not_after = not_before + time::Duration::days(365 * 5);
    for (i, role) in ORG_ROLES.iter().enumerate() {
        let entity = [0x90, 0xB3, 0xD5, 0x1F, 0x30, 0x00, 0x00, i as u8 + 1];
        for usage in [Usage::DigitalSignature, Usage::KeyAgreement] {
            let s = serial(&mut b.rng);
            let key_seed = b.rng.gen();
            let der = pki::issue_organisation(
                &h.issuing_oca,
                entity,
                *role,
                Some(&format!("Party {i}")),
                usage,
                s,
                not_before,
                not_after,
                key_seed,
            )?;
            b.certs.push(Cert::new(der)?);
            let idx = b.certs.len() - 1;
            let at = start_ms + b.rng.gen_range(0..3_600_000);
            b.lodge(idx, CertificateStatus::InUse, false, at);
            // A few organisation keys are revoked during the history.
            if b.rng.gen_range(0..100) < 5 {
                let when = at + b.rng.gen_range(DAY_MS..span_ms.max(DAY_MS + 1));
                // Every event happens within the history's days.
                if when < start_ms + span_ms {
                    b.change(idx, CertificateStatus::Revoked, "key compromise", when);
                }
            }
        }
    }
    Ok(b.finish())
}

fn devices(
    spec: &Spec,
    dca: &Authority,
    from: usize,
    to: usize,
    start_ms: i64,
    span_ms: i64,
) -> Result<(Vec<GenRecord>, Expectations)> {
    let mut b = Builder::new(split_seed(spec.seed, from as u64), format!("dev{from}"));
    b.dup_per_mille = spec.duplicate_per_mille;
    b.late_per_mille = spec.late_per_mille;
    let mut invalid_budget = 0u32;
    let mut bad_kind = 0usize;
    for d in from..to {
        let device_id = {
            let n = (d as u64 + 1).to_be_bytes();
            [0x00, 0xDB, 0x12, n[3], n[4], n[5], n[6], n[7]]
        };
        let first_record = b.records.len();
        let made = start_ms + b.rng.gen_range(0..span_ms);
        let nb = time::OffsetDateTime::from_unix_timestamp(made / 1000)?;
        let mut pair = [0usize; 2];
        for (slot, usage) in [Usage::DigitalSignature, Usage::KeyAgreement]
            .into_iter()
            .enumerate()
        {
            let s = serial(&mut b.rng);
            let key_seed = b.rng.gen();
            let der = pki::issue_device(dca, device_id, usage, s, nb, key_seed)?;
            b.certs.push(Cert::new(der)?);
            pair[slot] = b.certs.len() - 1;
            b.lodge(
                pair[slot],
                CertificateStatus::Pending,
                true,
                made + slot as i64,
            );
        }
        // Lifecycle: most devices are commissioned within days of manufacture.
        let end = start_ms + span_ms;
        let mut t = made + b.rng.gen_range(3_600_000..3 * DAY_MS);
        if b.rng.gen_range(0..100) < 75 && t < end {
            for idx in pair {
                b.change_maybe_late(idx, CertificateStatus::InUse, "commissioned", t);
            }
            t += b.rng.gen_range(DAY_MS / 2..4 * DAY_MS);
            if b.rng.gen_range(0..100) < 8 && t < end {
                for idx in pair {
                    b.change_maybe_late(idx, CertificateStatus::NotInUse, "decommissioned", t);
                }
                t += b.rng.gen_range(DAY_MS / 2..3 * DAY_MS);
                if b.rng.gen_range(0..100) < 40 && t < end {
                    for idx in pair {
                        b.change_maybe_late(idx, CertificateStatus::InUse, "recommissioned", t);
                    }
                }
            }
        }
        if b.rng.gen_range(0..1000) < 5 {
            let when = t + b.rng.gen_range(0..DAY_MS);
            let which = pair[b.rng.gen_range(0..2)];
            if when < end {
                b.change(which, CertificateStatus::Revoked, "key compromise", when);
            }
        }

        invalid_budget +=
            spec.invalid_per_mille * (b.certs[pair[0]].events + b.certs[pair[1]].events);
        while invalid_budget >= 1000 {
            invalid_budget -= 1000;
            let at = (made + b.rng.gen_range(0..span_ms)).min(end - 2);
            let last = b.records[first_record..]
                .iter()
                .map(|r| r.emit_ms)
                .max()
                .unwrap_or(at);
            // After everything else of the device (so its expected status is known), and
            // within the history's days; a device whose records end later gets none.
            if at.max(last) + 2 < end {
                bad_event(&mut b, bad_kind, pair, at.max(last) + 1)?;
                bad_kind += 1;
            }
        }
    }
    Ok(b.finish())
}

/// One invalid event of kind `kind % N`, about the device certificates `pair`.
fn bad_event(b: &mut Builder, kind: usize, pair: [usize; 2], at: i64) -> Result<()> {
    let (key, issuer, der) = {
        let c = &b.certs[pair[0]];
        (c.key.clone(), c.issuer.clone(), c.der.clone())
    };
    // `at` is after everything else of the device, so the expected status is known.
    let emit = at;
    match kind % 7 {
        0 => {
            let garbage: Vec<u8> = (0..b.rng.gen_range(1..64)).map(|_| b.rng.gen()).collect();
            // Guarantee it is not accidentally a valid (empty-ish) protobuf message.
            let mut v = vec![
                0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ];
            v.extend(garbage);
            b.bad("undecodable", emit, &key, v);
        }
        1 => {
            // A status change for a certificate that was never lodged.
            let ghost = Cert {
                der: Vec::new(),
                issuer: issuer.clone(),
                serial: serial(&mut b.rng).to_vec(),
                key: String::new(),
                status: CertificateStatus::InUse,
                events: 0,
                last_emit: i64::MIN,
            };
            let ghost_key = record_key(&ghost.issuer, &ghost.serial);
            let id = b.event_id();
            let ev = Builder::envelope(
                id,
                emit,
                Body::StatusChanged(status_change(&ghost, CertificateStatus::NotInUse, "ghost")),
            );
            b.bad("unknown_certificate", emit, &ghost_key, ev.encode_to_vec());
        }
        2 => {
            // Out of a final status: revoke (valid) first, then try to bring it back.
            let idx = pair[0];
            if !b.certs[idx].status.is_final() {
                b.change(idx, CertificateStatus::Revoked, "key compromise", emit);
            }
            let id = b.event_id();
            let c = &b.certs[idx];
            let ev = Builder::envelope(
                id,
                emit + 1,
                Body::StatusChanged(status_change(c, CertificateStatus::InUse, "resurrect")),
            );
            b.bad("transition_from_final", emit + 1, &key, ev.encode_to_vec());
        }
        3 => {
            // The same certificate id with different DER.
            let mut other = der.clone();
            let last = other.len() - 1;
            other[last] ^= 0x01; // signature bit flip: still parses, different DER
            let id = b.event_id();
            let ev = Builder::envelope(
                id,
                emit,
                Body::Issued(CertificateIssued {
                    certificate_der: other,
                    initial_status: CertificateStatus::Pending as i32,
                    manufacturing_flag: true,
                }),
            );
            b.bad("conflicting_certificate", emit, &key, ev.encode_to_vec());
        }
        4 => {
            // A transition the lifecycle does not allow (to the status it already has).
            let id = b.event_id();
            let c = &b.certs[pair[1]];
            let status = if c.status.is_final() {
                CertificateStatus::InUse
            } else {
                c.status
            };
            let reason = if c.status.is_final() {
                "transition_from_final"
            } else {
                "invalid_transition"
            };
            let ev = Builder::envelope(
                id,
                emit,
                Body::StatusChanged(status_change(c, status, "again")),
            );
            let k = c.key.clone();
            b.bad(reason, emit, &k, ev.encode_to_vec());
        }
        5 => {
            // The key of another certificate.
            let other_key = b.certs[pair[1]].key.clone();
            let id = b.event_id();
            let c = &b.certs[pair[0]];
            let ev = Builder::envelope(
                id,
                emit,
                Body::StatusChanged(status_change(c, CertificateStatus::Revoked, "x")),
            );
            b.bad("key_mismatch", emit, &other_key, ev.encode_to_vec());
        }
        _ => {
            // DER that is not a certificate at all.
            let id = b.event_id();
            let ev = Builder::envelope(
                id,
                emit,
                Body::Issued(CertificateIssued {
                    certificate_der: der[..der.len() / 2].to_vec(),
                    initial_status: CertificateStatus::Pending as i32,
                    manufacturing_flag: true,
                }),
            );
            b.bad("certificate_unparseable", emit, &key, ev.encode_to_vec());
        }
    }
    Ok(())
}
