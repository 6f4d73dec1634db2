//! `replay` rebuilds a lost store from the topic and the close log, and the rebuilt store
//! writes byte-identical files for every day the original published — including days the
//! wall-clock deadline closed (a forced cut the replay must reproduce at its offset) and
//! days that received late events. Without the close log's cuts the files would differ
//! (checked, so the test can fail).

#[path = "common/embedded.rs"]
mod embedded;
#[path = "common/files.rs"]
mod files;
use std::collections::BTreeMap;

use chrono::{Datelike, NaiveDate};
use smki_extract::day::day_of_date;
use smki_extract::extract::gzip::GzOptions;
use smki_extract::extract::publish::{Manifest, Publisher, Retention, MANIFEST};
use smki_extract::extract::xml::ExtractKind;
use smki_extract::gen::{history, output};
use smki_extract::metrics::Metrics;
use smki_extract::publication::publish_one;
use smki_extract::replay::{replay, ReplayLimits};
use smki_extract::store::Store;

const DAYS: u32 = 16;

fn start() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 10, 19).unwrap()
}

/// Every file the original could have published — the delta of every closed day and the
/// full of every closed Sunday, not only those retention kept — rewritten from `store`:
/// name → sha256.
fn rewrite_every_day(store: &Store, closed: &[u32]) -> BTreeMap<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let keep_all = Retention {
        delta_days: 10_000,
        fulls_kept: 10_000,
    };
    let mut p = Publisher::open(dir.path(), keep_all).unwrap();
    let mut out = BTreeMap::new();
    for day in closed {
        let mut kinds = vec![ExtractKind::Delta];
        if smki_extract::day::date_of_day(*day).weekday() == chrono::Weekday::Sun {
            kinds.push(ExtractKind::Full);
        }
        for kind in kinds {
            let e = publish_one(store, &mut p, kind, *day, GzOptions::default()).unwrap();
            out.insert(e.name, e.sha256);
        }
    }
    out
}

/// Every file of the original's manifest, rewritten from `store`: name → sha256.
fn rewrite(store: &Store, m: &Manifest) -> BTreeMap<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Publisher::open(dir.path(), Retention::default()).unwrap();
    m.files
        .iter()
        .map(|f| {
            let kind = ExtractKind::from_attr(&f.kind).unwrap();
            let e = publish_one(
                store,
                &mut p,
                kind,
                day_of_date(f.day),
                GzOptions::default(),
            )
            .unwrap();
            (e.name, e.sha256)
        })
        .collect()
}

#[test]
fn a_replayed_store_writes_the_same_files_as_the_original() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_test_writer()
        .try_init();
    let spec = history::Spec {
        seed: 33,
        devices: 800,
        days: DAYS,
        start: start(),
        tz: chrono_tz::Europe::London,
        invalid_per_mille: 10,
        duplicate_per_mille: 10,
        late_per_mille: 300,
        threads: 2,
    };
    let h = history::generate(&spec).unwrap();
    let window_probe = smki_extract::window::WindowConfig::new(chrono_tz::Europe::London);
    let first = day_of_date(start());
    let half = first + 7; // 26 Oct: the service is live and caught up at its end
    let half_end = window_probe.end_of_day_ms(half);
    let (before, after): (Vec<_>, Vec<_>) = h
        .records
        .iter()
        .cloned()
        .partition(|r| r.emit_ms < half_end);
    let late_after_half = after
        .iter()
        .filter(|r| {
            use prost::Message;
            smki_extract::contract::CertificateEvent::decode(&r.value[..])
                .ok()
                .and_then(|e| e.occurred_at)
                .is_some_and(|t| t.seconds * 1000 < half_end)
        })
        .count();
    assert!(
        late_after_half > 5,
        "events of the first half delivered in the second: {late_after_half}"
    );

    let dir = tempfile::tempdir().unwrap();
    let (kafka, mut config) = embedded::service(4, "original", dir.path());
    config.ingest.batch_max_records = 300;
    // A long grace: by event time alone a day closes 6 h after its end, so the deadline cut
    // at the end of the first half makes late what event time alone would not.
    config.window.grace_secs = 6 * 3600;
    config.window.deadline_secs = 7 * 3600;

    // The original: the first half, caught up past the deadline of its last day (the
    // deadline cuts every partition there), then the rest with its late events.
    output::produce(&before, &config.kafka.client_config(), "certs", |_| {}).unwrap();
    let one = embedded::run_past(&config, half, Metrics::new());
    assert!(one.days_closed >= 8, "{} days closed", one.days_closed);
    output::produce(&after, &config.kafka.client_config(), "certs", |_| {}).unwrap();
    let two = embedded::run_past(&config, first + DAYS - 1, Metrics::new());
    assert!(two.days_closed >= 8, "{} days closed", two.days_closed);
    let original = Store::open_read_only(&config.store.path, "certs").unwrap();
    let closes = original.closes().unwrap();
    let deadline_cuts = closes
        .iter()
        .flat_map(|c| c.forced_cuts.values())
        .filter(|c| c.rule == "deadline")
        .count();
    assert!(deadline_cuts > 0, "the deadline cut some partitions");
    let m: Manifest =
        serde_json::from_slice(&std::fs::read(config.output.dir.join(MANIFEST)).unwrap()).unwrap();
    assert_eq!(m.files.len(), 9, "7 deltas and 2 fulls after retention");
    let published: BTreeMap<String, String> = m
        .files
        .iter()
        .map(|f| (f.name.clone(), f.sha256.clone()))
        .collect();
    assert_eq!(
        rewrite(&original, &m),
        published,
        "the original rewrites itself"
    );
    let original_late: u64 = {
        // Late events exist in the published days: a version of a certificate in a day after
        // the event's own day shows up as a delta record whose status changed before the day.
        let snap = original.snapshot();
        let mut late = 0;
        for f in m.files.iter().filter(|f| f.kind == "DELTA") {
            let day = day_of_date(f.day);
            for p in snap.partitions().unwrap() {
                for key in snap.changes_on(p, day) {
                    let rec = snap.version(&key.unwrap(), day).unwrap().unwrap();
                    let changed = window_probe.day_of(rec.status_changed_at_ms);
                    if changed < day && rec.status_reason != "expired" {
                        late += 1;
                    }
                }
            }
        }
        late
    };
    assert!(original_late > 0, "the published deltas hold late events");
    // Every day the original closed, including those retention has since removed: the day
    // the deadline closed (26 Oct) and the day its late events went to (27 Oct) among them.
    let closed_days: Vec<u32> = closes.iter().map(|c| c.day).collect();
    assert!(closed_days.contains(&half) && closed_days.contains(&(half + 1)));
    assert!(
        closes
            .iter()
            .find(|c| c.day == half)
            .is_some_and(|c| c.forced_cuts.values().any(|cut| cut.rule == "deadline")),
        "26 Oct was closed by the deadline"
    );
    let every_day = rewrite_every_day(&original, &closed_days);
    assert_eq!(
        every_day.len(),
        closed_days.len() + 2,
        "a delta a day and 2 Sundays' fulls"
    );
    drop(original);

    // The store is lost: replay it into an empty directory.
    let mut lost = config.clone();
    lost.store.path = dir.path().join("replayed");
    let summary = replay(&lost, &ReplayLimits::default(), Metrics::new()).unwrap();
    assert_eq!(summary.records, h.records.len() as u64);
    assert!(summary.cuts_applied > 0);
    let replayed = Store::open(&lost.store.path, "certs").unwrap();
    assert_eq!(
        rewrite(&replayed, &m),
        published,
        "the replayed store writes byte-identical files"
    );
    assert_eq!(
        replayed
            .closes()
            .unwrap()
            .iter()
            .map(|c| c.day)
            .collect::<Vec<_>>(),
        closed_days,
        "the replay closes the same days"
    );
    assert_eq!(
        rewrite_every_day(&replayed, &closed_days),
        every_day,
        "the replayed store writes byte-identical files for every closed day"
    );
    drop(replayed);
    // A replay into a directory that is not empty is refused.
    let err = replay(&lost, &ReplayLimits::default(), Metrics::new()).unwrap_err();
    assert!(err.to_string().contains("empty directory"), "{err}");

    // Control: without the recorded cuts (an empty close log), the files differ.
    kafka.create_topic("other.closes", 1).unwrap();
    let mut blind = lost.clone();
    blind.store.path = dir.path().join("blind");
    blind.kafka.closes_topic = "other.closes".into();
    replay(&blind, &ReplayLimits::default(), Metrics::new()).unwrap();
    let blind_store = Store::open(&blind.store.path, "certs").unwrap();
    let without = {
        let d = tempfile::tempdir().unwrap();
        let mut p = Publisher::open(d.path(), Retention::default()).unwrap();
        let mut out = BTreeMap::new();
        for f in &m.files {
            let kind = ExtractKind::from_attr(&f.kind).unwrap();
            if let Ok(e) = publish_one(
                &blind_store,
                &mut p,
                kind,
                day_of_date(f.day),
                GzOptions::default(),
            ) {
                out.insert(e.name, e.sha256);
            }
        }
        out
    };
    assert_ne!(
        without, published,
        "the close log's cuts made no difference: the test is blind"
    );

    // A replay with other window settings than the original's would write other files: it
    // is refused before it reads anything.
    let mut other = lost.clone();
    other.store.path = dir.path().join("other-grace");
    other.window.grace_secs = 600;
    let err = replay(&other, &ReplayLimits::default(), Metrics::new()).unwrap_err();
    assert!(format!("{err:#}").contains("window settings"), "{err:#}");
    assert!(
        !other.store.path.exists(),
        "refused before creating the store"
    );

    // A replay up to given offsets reads only that far and leaves a store the service opens.
    let mut part = lost.clone();
    part.store.path = dir.path().join("partial");
    let limits = ReplayLimits {
        until_offsets: BTreeMap::from([(0, 10), (1, 10), (2, 10), (3, 10)]),
        until_ms: None,
    };
    let s = replay(&part, &limits, Metrics::new()).unwrap();
    assert_eq!(s.records, 40);
    let store = Store::open(&part.store.path, "certs").unwrap();
    assert_eq!(
        store
            .offsets()
            .unwrap()
            .values()
            .copied()
            .collect::<Vec<_>>(),
        vec![10, 10, 10, 10]
    );
    files::assert_published_files_valid(&config.output.dir);
}
