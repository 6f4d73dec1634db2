//! Guarantee 4, the recovery invariant, as a property test over randomized histories:
//! for every closed day D, `InUse(FULL_D) == InUse(apply(FULL_{D-7}, DELT_{D-6}, …, DELT_D))`
//! (from the first day on, where there is no FULL_{D-7} yet, from nothing), compared by
//! re-reading the published files — and the last full equals an independent model of the
//! history's end state.
//!
//! Each history has 1–12 partitions (some with no events at all: idle partitions), devices
//! and organisations with random lifecycles over 16 days across the end of BST (a 25-hour
//! day), organisation certificates expiring mid-history, revocations, late deliveries (an
//! event delivered hours or days after it happened), events stamped earlier than the
//! certificate's previous event (a skewed clock), partitions consumed at different
//! speeds, and a simulated wall clock that drives the idle and deadline rules. Records are
//! fed to the real ingest pipeline (no broker: the interleaving of partitions is part of
//! what is randomized); files are written by the real publication code and checked with
//! `xmllint --schema` too.
//!
//! `SMKI_INVARIANT_CASES` sets the number of histories (default 200); a failure names the
//! seed of its history.

#[path = "common/files.rs"]
mod files;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::NaiveDate;
use prost::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use smki_extract::contract::{
    record_key, Body, CertificateEvent, CertificateId, CertificateIssued, CertificateStatus,
    DayClose, StatusChanged,
};
use smki_extract::day::{date_of_day, day_of_date};
use smki_extract::deadletter::MemoryDeadLetters;
use smki_extract::eventfile::partition_for_key;
use smki_extract::extract::gzip::GzOptions;
use smki_extract::extract::publish::{Publisher, Retention};
use smki_extract::extract::xml::{read_extract, ExtractKind, ParsedRecord};
use smki_extract::gen::pki::{self, Hierarchy, Usage};
use smki_extract::ingest::{Ingestor, Preparer, RecordRef};
use smki_extract::metrics::Metrics;
use smki_extract::publication::publish_one;
use smki_extract::store::Store;
use smki_extract::window::WindowConfig;

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
const DAYS: u32 = 16;

/// A certificate of the shared pool (signing is the slow part, so histories draw from it).
struct PoolCert {
    der: Vec<u8>,
    issuer: Vec<u8>,
    serial: Vec<u8>,
    key: String,
    /// Organisation certificates: notAfter (Unix ms).
    not_after_ms: Option<i64>,
}

struct Pool {
    cas: Vec<PoolCert>,
    orgs: Vec<PoolCert>,
    devices: Vec<PoolCert>,
}

fn tz() -> chrono_tz::Tz {
    chrono_tz::Europe::London
}

/// 2026-10-19 (Monday): BST ends on day 7 (25 October).
fn start_day() -> u32 {
    day_of_date(NaiveDate::from_ymd_opt(2026, 10, 19).unwrap())
}

fn start_ms() -> i64 {
    smki_extract::day::start_of_day_millis(tz(), date_of_day(start_day()))
}

fn pool_cert(der: Vec<u8>, not_after_ms: Option<i64>) -> PoolCert {
    let info = smki_extract::certificate::parse(&der).unwrap();
    PoolCert {
        key: record_key(&info.issuer_name_der, &info.serial),
        issuer: info.issuer_name_der,
        serial: info.serial,
        der,
        not_after_ms,
    }
}

fn build_pool() -> Pool {
    let h = Hierarchy::generate(77).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(77);
    let nb = time::OffsetDateTime::from_unix_timestamp(start_ms() / 1000 - 86_400).unwrap();
    let cas = [&h.root_oca, &h.issuing_oca, &h.root_dca, &h.issuing_dca]
        .iter()
        .map(|a| pool_cert(a.certificate_der().to_vec(), None))
        .collect();
    let mut orgs = Vec::new();
    for i in 0..24u8 {
        // notAfter somewhere in the history (day 1..17), at a random hour.
        let na_ms = start_ms() + rng.gen_range(DAY..(DAYS as i64 + 1) * DAY);
        let na = time::OffsetDateTime::from_unix_timestamp(na_ms / 1000).unwrap();
        let entity = [0x90, 0xB3, 0xD5, 0x1F, 0x30, 0x00, 0x01, i];
        let usage = if i % 2 == 0 {
            Usage::DigitalSignature
        } else {
            Usage::KeyAgreement
        };
        let der = pki::issue_organisation(
            &h.issuing_oca,
            entity,
            2,
            None,
            usage,
            rng.gen(),
            nb,
            na,
            rng.gen(),
        )
        .unwrap();
        orgs.push(pool_cert(der, Some(na_ms / 1000 * 1000)));
    }
    let mut devices = Vec::new();
    for i in 0..160u32 {
        let id = i.to_be_bytes();
        let device = [0x00, 0xDB, 0x12, 0x00, id[0], id[1], id[2], id[3]];
        let usage = if i % 2 == 0 {
            Usage::DigitalSignature
        } else {
            Usage::KeyAgreement
        };
        let der =
            pki::issue_device(&h.issuing_dca, device, usage, rng.gen(), nb, rng.gen()).unwrap();
        devices.push(pool_cert(der, None));
    }
    Pool { cas, orgs, devices }
}

/// One event of a history.
struct Ev {
    key: String,
    value: Vec<u8>,
    /// When it reaches the topic.
    emit_ms: i64,
}

/// A random history and the model's end state (status per certificate key).
struct History {
    events: Vec<Ev>,
    model: BTreeMap<String, CertificateStatus>,
}

fn envelope(id: String, occurred_ms: i64, body: Body) -> Vec<u8> {
    CertificateEvent {
        event_id: id,
        occurred_at: Some(prost_types::Timestamp {
            seconds: occurred_ms.div_euclid(1000),
            nanos: (occurred_ms.rem_euclid(1000) * 1_000_000) as i32,
        }),
        source: "invariant test".into(),
        body: Some(body),
    }
    .encode_to_vec()
}

fn history(pool: &Pool, rng: &mut ChaCha20Rng) -> History {
    let t0 = start_ms();
    let end = t0 + DAYS as i64 * DAY;
    let mut events = Vec::new();
    let mut model = BTreeMap::new();
    let mut next_id = 0u64;
    let mut id = || {
        next_id += 1;
        format!("ev-{next_id}")
    };
    // Delivery delay: mostly minutes; sometimes hours or days (late after the grace).
    let late_share = rng.gen_range(0..15);
    let delay = |rng: &mut ChaCha20Rng, allow_late: bool| -> i64 {
        if allow_late && rng.gen_range(0..100) < late_share {
            rng.gen_range(HOUR..2 * DAY)
        } else {
            rng.gen_range(0..5 * 60_000)
        }
    };
    let mut lifecycle = |rng: &mut ChaCha20Rng,
                         c: &PoolCert,
                         initial: CertificateStatus,
                         mut t: i64,
                         steps: &[(CertificateStatus, i64)],
                         allow_late: bool,
                         events: &mut Vec<Ev>| {
        let mut emit = t + delay(rng, allow_late);
        events.push(Ev {
            key: c.key.clone(),
            value: envelope(
                id(),
                t,
                Body::Issued(CertificateIssued {
                    certificate_der: c.der.clone(),
                    initial_status: initial as i32,
                    manufacturing_flag: initial == CertificateStatus::Pending,
                }),
            ),
            emit_ms: emit,
        });
        let mut status = initial;
        for (to, gap) in steps {
            t += gap;
            if t >= end {
                break;
            }
            // A certificate's events reach the topic in causal order; now and then the
            // issuing system's clock says an event happened before the previous one.
            emit = (t + delay(rng, allow_late)).max(emit + 1);
            let occurred = if rng.gen_range(0..100) < 5 {
                t - rng.gen_range(HOUR..30 * HOUR)
            } else {
                t
            };
            events.push(Ev {
                key: c.key.clone(),
                value: envelope(
                    id(),
                    occurred,
                    Body::StatusChanged(StatusChanged {
                        certificate: Some(CertificateId {
                            issuer_name_der: c.issuer.clone(),
                            serial: c.serial.clone(),
                        }),
                        new_status: *to as i32,
                        reason: "test".into(),
                    }),
                ),
                emit_ms: emit,
            });
            status = *to;
        }
        status
    };
    for c in &pool.cas {
        let s = lifecycle(
            rng,
            c,
            CertificateStatus::InUse,
            t0,
            &[],
            false,
            &mut events,
        );
        model.insert(c.key.clone(), s);
    }
    // Organisations: lodged In use early; some revoked a day or more before they expire,
    // and delivered late like anything else: a revocation that arrives after the expiry
    // (applied when the notAfter day closed) still revokes.
    let orgs: Vec<&PoolCert> = pool.orgs.iter().filter(|_| rng.gen_bool(0.5)).collect();
    for c in orgs {
        let na = c.not_after_ms.unwrap();
        let lodged = t0 + rng.gen_range(0..(na - t0).min(DAY));
        let mut steps = Vec::new();
        if rng.gen_bool(0.3) && na - lodged > 2 * DAY {
            steps.push((
                CertificateStatus::Revoked,
                rng.gen_range(HOUR..na - lodged - DAY),
            ));
        }
        let mut s = lifecycle(
            rng,
            c,
            CertificateStatus::InUse,
            lodged,
            &steps,
            true,
            &mut events,
        );
        // Every notAfter falls in a day that closes before the end of the test.
        if !s.is_final() {
            s = CertificateStatus::Expired;
        }
        model.insert(c.key.clone(), s);
    }
    // Devices: manufactured (P), commissioned, maybe decommissioned and recommissioned,
    // rarely revoked.
    let share = rng.gen_range(0.1..0.6);
    let devices: Vec<&PoolCert> = pool
        .devices
        .iter()
        .filter(|_| rng.gen_bool(share))
        .collect();
    for c in devices {
        let made = t0 + rng.gen_range(0..end - t0);
        let mut steps = Vec::new();
        if rng.gen_bool(0.8) {
            steps.push((CertificateStatus::InUse, rng.gen_range(HOUR..3 * DAY)));
            if rng.gen_bool(0.3) {
                steps.push((CertificateStatus::NotInUse, rng.gen_range(HOUR..3 * DAY)));
                if rng.gen_bool(0.5) {
                    steps.push((CertificateStatus::InUse, rng.gen_range(HOUR..2 * DAY)));
                }
            }
        }
        if rng.gen_bool(0.1) {
            steps.push((CertificateStatus::Revoked, rng.gen_range(HOUR..2 * DAY)));
        }
        let s = lifecycle(
            rng,
            c,
            CertificateStatus::Pending,
            made,
            &steps,
            true,
            &mut events,
        );
        model.insert(c.key.clone(), s);
    }
    History { events, model }
}

/// What one run of a history through the pipeline did.
struct Ingested {
    /// Days closed.
    closed: u64,
    /// The first day not closed.
    next_day: u32,
    /// The window settings drawn for the run.
    window: WindowConfig,
    /// Each partition's records, in offset order.
    streams: Vec<Vec<(String, Vec<u8>, i64)>>,
    /// Expiries applied, late events counted.
    expired: u64,
    late: u64,
}

/// Feed a history through the real pipeline, as a consumer would see it: per partition in
/// offset order, partitions interleaved by when the (possibly lagging) consumer reads them.
/// `on_close` is called with each day as soon as it closes (the service publishes then).
fn ingest(
    h: &History,
    rng: &mut ChaCha20Rng,
    store: Arc<Store>,
    mut on_close: impl FnMut(u32),
) -> Ingested {
    let partitions: i32 = rng.gen_range(1..=12);
    let window = WindowConfig {
        tz: tz(),
        grace_ms: rng.gen_range(0..3) * 10 * 60_000,
        idle_ms: rng.gen_range(1..4) * 60_000,
        deadline_ms: rng.gen_range(1..4) * HOUR,
        max_future_skew_ms: HOUR,
    };
    let metrics = Metrics::new();
    let mut ing =
        Ingestor::new(store, MemoryDeadLetters::default(), window, metrics.clone()).unwrap();
    let all: Vec<i32> = (0..partitions).collect();
    ing.set_partitions(partitions, &all).unwrap();
    // Per-partition streams in emit order; each partition's consumer lags by its own amount.
    let mut streams: Vec<Vec<&Ev>> = vec![Vec::new(); partitions as usize];
    for e in &h.events {
        streams[partition_for_key(e.key.as_bytes(), partitions as u32) as usize].push(e);
    }
    for s in &mut streams {
        s.sort_by_key(|e| e.emit_ms);
    }
    let mut lag: Vec<i64> = (0..partitions)
        .map(|_| rng.gen_range(0..6 * HOUR))
        .collect();
    // Sometimes one partition's consumer is far behind (a stalled fetch): its backlog holds
    // days open for a day or more while the others are cut by the idle rule and then pass
    // those days by their own event time.
    if partitions > 2 && rng.gen_bool(0.4) {
        let slow = rng.gen_range(0..partitions) as usize;
        lag[slow] = rng.gen_range(12 * HOUR..36 * HOUR);
    }
    let mut reads: Vec<(i64, i32, i64)> = Vec::new(); // (read at, partition, offset)
    for (p, s) in streams.iter().enumerate() {
        for (o, e) in s.iter().enumerate() {
            reads.push((e.emit_ms + lag[p], p as i32, o as i64));
        }
    }
    // Reads of one partition stay in offset order (emit order plus a constant lag).
    reads.sort();
    let batch = rng.gen_range(1..50);
    let mut closed = 0u64;
    for (now, p, o) in &reads {
        let e = streams[*p as usize][*o as usize];
        ing.ingest(RecordRef {
            partition: *p,
            offset: *o,
            key: Some(e.key.as_bytes()),
            value: Some(&e.value),
            timestamp_ms: Some(e.emit_ms),
        })
        .unwrap();
        // Partitions with nothing available now are at their end.
        for (q, s) in streams.iter().enumerate() {
            let next = reads_done(&reads, q as i32, *now);
            if s.get(next).is_none_or(|e| e.emit_ms > *now) {
                ing.note_end(q as i32, *now).unwrap();
            }
        }
        ing.tick(*now).unwrap();
        for close in ing.take_closed() {
            closed += 1;
            on_close(close.day);
        }
        if ing.pending_records() >= batch {
            ing.commit().unwrap();
        }
    }
    // Everything read; the clock runs past the deadline of the last day.
    let last = start_day() + DAYS + 2;
    let now = window.end_of_day_ms(last) + window.deadline_ms + 1;
    for p in 0..partitions {
        ing.note_end(p, now).unwrap();
    }
    ing.tick(now).unwrap();
    ing.commit().unwrap();
    for close in ing.take_closed() {
        closed += 1;
        on_close(close.day);
    }
    assert!(
        ing.sink().letters.is_empty(),
        "valid history dead-lettered: {:?}",
        ing.sink()
            .letters
            .iter()
            .map(|l| &l.detail)
            .collect::<Vec<_>>()
    );
    Ingested {
        closed,
        next_day: ing.next_day().expect("something closed"),
        window,
        streams: streams
            .iter()
            .map(|s| {
                s.iter()
                    .map(|e| (e.key.clone(), e.value.clone(), e.emit_ms))
                    .collect()
            })
            .collect(),
        expired: metrics.events_expired.get(),
        late: metrics.events_late.get(),
    }
}

/// Replay: the same partitions read again into `store`, in another interleaving, cutting
/// where the original's day closes say (no wall clock), as `smki-extract replay` does.
fn replay(
    run: &Ingested,
    closes: &BTreeMap<u32, DayClose>,
    rng: &mut ChaCha20Rng,
    store: Arc<Store>,
) {
    let mut ing = Ingestor::new(
        store,
        MemoryDeadLetters::default(),
        run.window,
        Metrics::new(),
    )
    .unwrap();
    let partitions = run.streams.len() as i32;
    let all: Vec<i32> = (0..partitions).collect();
    ing.set_partitions(partitions, &all).unwrap();
    ing.plan_cuts(closes).unwrap();
    let mut preparer = Preparer::new(&run.window);
    let mut next = vec![0usize; run.streams.len()];
    let batch = rng.gen_range(1..500);
    loop {
        let open: Vec<usize> = (0..run.streams.len())
            .filter(|p| next[*p] < run.streams[*p].len())
            .collect();
        if open.is_empty() {
            break;
        }
        // A burst from one partition, as a fetch delivers them.
        let p = open[rng.gen_range(0..open.len())];
        for _ in 0..rng.gen_range(1..40) {
            let Some((key, value, emit_ms)) = run.streams[p].get(next[p]) else {
                break;
            };
            let rec = RecordRef {
                partition: p as i32,
                offset: next[p] as i64,
                key: Some(key.as_bytes()),
                value: Some(value),
                timestamp_ms: Some(*emit_ms),
            };
            // As `replay` does: the record-only work by a separate preparer.
            let prepared = preparer.prepare(rec);
            ing.ingest_prepared(rec, prepared).unwrap();
            next[p] += 1;
            if ing.pending_records() >= batch {
                ing.commit().unwrap();
            }
        }
    }
    let ends: BTreeMap<i32, i64> = next
        .iter()
        .enumerate()
        .map(|(p, n)| (p as i32, *n as i64))
        .collect();
    ing.finish_replay(&ends).unwrap();
}

/// Records of partition `p` read at or before `now`.
fn reads_done(reads: &[(i64, i32, i64)], p: i32, now: i64) -> usize {
    reads
        .iter()
        .filter(|(t, q, _)| *q == p && *t <= now)
        .count()
}

fn read(path: &Path) -> Vec<ParsedRecord> {
    let f = std::fs::File::open(path).unwrap();
    let gz = flate2::read::MultiGzDecoder::new(std::io::BufReader::new(f));
    read_extract(std::io::BufReader::new(gz)).unwrap().1
}

fn in_use(records: impl IntoIterator<Item = (String, CertificateStatus)>) -> BTreeSet<String> {
    records
        .into_iter()
        .filter(|(_, s)| *s == CertificateStatus::InUse)
        .map(|(k, _)| k)
        .collect()
}

fn scratch_dir() -> tempfile::TempDir {
    // RAM-backed when available: these histories fsync thousands of small files, and what is
    // tested here is content, not durability (tests of publication cover that).
    match Path::new("/dev/shm").is_dir() {
        true => tempfile::tempdir_in("/dev/shm").unwrap(),
        false => tempfile::tempdir().unwrap(),
    }
}

fn check_history(pool: &Pool, seed: u64) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let h = history(pool, &mut rng);
    let dir = scratch_dir();
    let store = Arc::new(Store::open(&dir.path().join("store"), "t").unwrap());
    // A delta and a full for every day, published the moment it closes (as the service
    // does, while later events keep arriving); all kept.
    let out = dir.path().join("out");
    let keep_all = Retention {
        delta_days: 10_000,
        fulls_kept: 10_000,
    };
    let mut publisher = Publisher::open(&out, keep_all).unwrap();
    let gz = GzOptions {
        threads: 1,
        ..GzOptions::default()
    };
    let mut closed_days = Vec::new();
    let run = ingest(&h, &mut rng, store.clone(), |day| {
        closed_days.push(day);
        for kind in [ExtractKind::Delta, ExtractKind::Full] {
            publish_one(&store, &mut publisher, kind, day, gz).unwrap();
        }
    });
    let (closed, next_day) = (run.closed, run.next_day);
    let first = store.first_day().unwrap().unwrap();
    assert_eq!(
        closed,
        u64::from(next_day - first),
        "seed {seed}: days closed in order"
    );
    assert_eq!(
        closed_days,
        (first..next_day).collect::<Vec<_>>(),
        "seed {seed}"
    );
    let last = next_day - 1;
    assert!(
        last >= start_day() + DAYS - 1,
        "seed {seed}: every day of the history closed"
    );

    // The files as published at each close, re-read.
    let mut deltas = BTreeMap::new();
    let mut fulls = BTreeMap::new();
    for day in first..=last {
        let date = date_of_day(day);
        deltas.insert(day, read(&out.join(ExtractKind::Delta.file_name(date))));
        fulls.insert(day, read(&out.join(ExtractKind::Full.file_name(date))));
    }
    common_xmllint(&out, seed);

    let pairs = |r: &Vec<ParsedRecord>| -> Vec<(String, CertificateStatus)> {
        r.iter().map(|r| (r.record_key(), r.status)).collect()
    };
    for d in first..=last {
        // A delta lists each certificate once.
        let keys: BTreeSet<String> = deltas[&d].iter().map(|r| r.record_key()).collect();
        assert_eq!(
            keys.len(),
            deltas[&d].len(),
            "seed {seed}: duplicate in delta {d}"
        );
        // Full D-7 (or nothing before the first day) plus the deltas after it.
        let base = d.checked_sub(7).filter(|b| *b >= first);
        let mut party: BTreeMap<String, CertificateStatus> = match base {
            Some(b) => pairs(&fulls[&b]).into_iter().collect(),
            None => BTreeMap::new(),
        };
        let from = base.map_or(first, |b| b + 1);
        for delta_day in from..=d {
            party.extend(pairs(&deltas[&delta_day]));
        }
        assert_eq!(
            in_use(party),
            in_use(pairs(&fulls[&d])),
            "seed {seed}: recovery invariant broken for {} (from {:?})",
            date_of_day(d),
            base.map(date_of_day)
        );
    }
    // Rewritten from the final store, every file is byte-identical to the one published at
    // its close (the publisher refuses different bytes under a published name).
    for day in first..=last {
        for kind in [ExtractKind::Delta, ExtractKind::Full] {
            let e = publish_one(&store, &mut publisher, kind, day, gz)
                .unwrap_or_else(|e| panic!("seed {seed}: {e:#}"));
            let n = match kind {
                ExtractKind::Delta => deltas[&day].len(),
                ExtractKind::Full => fulls[&day].len(),
            };
            assert_eq!(n as u64, e.records, "seed {seed}: {}", e.name);
        }
    }
    // Guarantee 5: a replay of the topic (another interleaving, no wall clock) cutting where
    // the original's recorded closes say writes the same bytes for every day: the
    // publisher refuses different bytes under a published name.
    let closes: BTreeMap<u32, DayClose> = store
        .closes()
        .unwrap()
        .into_iter()
        .map(|c| (c.day, c))
        .collect();
    let replayed = Arc::new(Store::open(&dir.path().join("replayed"), "t").unwrap());
    replay(&run, &closes, &mut rng, replayed.clone());
    assert_eq!(
        replayed
            .closes()
            .unwrap()
            .iter()
            .map(|c| c.day)
            .collect::<Vec<_>>(),
        (first..=last).collect::<Vec<_>>(),
        "seed {seed}: the replay closes the same days"
    );
    for day in first..=last {
        for kind in [ExtractKind::Delta, ExtractKind::Full] {
            publish_one(&replayed, &mut publisher, kind, day, gz).unwrap_or_else(|e| {
                panic!("seed {seed}: replayed {kind:?} {}: {e:#}", date_of_day(day))
            });
        }
    }
    COVERAGE.note(
        &closes,
        run.expired,
        run.late,
        run.streams.iter().filter(|s| s.is_empty()).count(),
    );

    // The last full is the model's end state.
    let expected = in_use(h.model.clone());
    assert_eq!(
        in_use(pairs(&fulls[&last])),
        expected,
        "seed {seed}: last full differs from the model"
    );
}

/// Every file of the history validates against the schema (gzip, then one xmllint run for
/// all of them), and its sidecar checks.
fn common_xmllint(out: &Path, seed: u64) {
    let _ = seed;
    files::assert_published_files_valid(out);
}

#[test]
fn full_d_equals_full_d_minus_7_plus_the_deltas_over_randomized_histories() {
    let pool = build_pool();
    let cases: u64 = std::env::var("SMKI_INVARIANT_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let seeds: Vec<u64> = (1..=cases).collect();
    // Two threads: the machine has two cores.
    std::thread::scope(|s| {
        for half in seeds.chunks(seeds.len().div_ceil(2).max(1)) {
            let pool = &pool;
            s.spawn(move || {
                for seed in half {
                    check_history(pool, *seed);
                }
            });
        }
    });
    // The histories exercised what they claim to (so a generator change that stopped
    // producing late events, idle partitions, cuts or expiries would fail here).
    let c = &COVERAGE;
    let got = |a: &AtomicU64| a.load(Ordering::Relaxed);
    eprintln!(
        "coverage over {cases} histories: {} idle cuts, {} deadline cuts, {} late changes, \
         {} expiries, {} partitions without events",
        got(&c.idle_cuts),
        got(&c.deadline_cuts),
        got(&c.late),
        got(&c.expired),
        got(&c.empty_partitions)
    );
    if cases >= 50 {
        for (what, n) in [
            ("idle cuts", got(&c.idle_cuts)),
            ("deadline cuts", got(&c.deadline_cuts)),
            ("late changes", got(&c.late)),
            ("expiries", got(&c.expired)),
            ("partitions without events", got(&c.empty_partitions)),
        ] {
            assert!(n > 0, "no history had {what}");
        }
    }
}

/// What the histories exercised, summed over all of them.
struct Coverage {
    idle_cuts: AtomicU64,
    deadline_cuts: AtomicU64,
    late: AtomicU64,
    expired: AtomicU64,
    empty_partitions: AtomicU64,
}

static COVERAGE: Coverage = Coverage {
    idle_cuts: AtomicU64::new(0),
    deadline_cuts: AtomicU64::new(0),
    late: AtomicU64::new(0),
    expired: AtomicU64::new(0),
    empty_partitions: AtomicU64::new(0),
};

impl Coverage {
    fn note(&self, closes: &BTreeMap<u32, DayClose>, expired: u64, late: u64, empty: usize) {
        for cut in closes.values().flat_map(|c| c.forced_cuts.values()) {
            match cut.rule.as_str() {
                "idle" => &self.idle_cuts,
                _ => &self.deadline_cuts,
            }
            .fetch_add(1, Ordering::Relaxed);
        }
        self.expired.fetch_add(expired, Ordering::Relaxed);
        self.late.fetch_add(late, Ordering::Relaxed);
        self.empty_partitions
            .fetch_add(empty as u64, Ordering::Relaxed);
    }
}
