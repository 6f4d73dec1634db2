//! The published files end to end over Kafka protocol (in-process mock cluster): a generated
//! 15-day history (DST change, late deliveries, duplicates, bad events) through `run`, whose
//! window clock closes every day and whose publication leaves, after retention, the 7 newest
//! deltas and the 2 newest fulls. Every file is read back by tools nobody here wrote
//! (`gzip -t`, `pigz -t`, `zcat | xmllint --schema`, Python's `gzip`, `sha256sum -c`,
//! `openssl x509` for the certificates inside, multi-member files included); a Party loading
//! the newest full and the later deltas holds exactly the store's In-use set; and the bytes
//! are the same with 1 and 4 compression threads and across two independent runs.

#[path = "common/embedded.rs"]
mod embedded;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::{Datelike, NaiveDate};
use smki_extract::config::Config;
use smki_extract::contract::{record_key, CertificateStatus};
use smki_extract::day::{date_of_day, day_of_date};
use smki_extract::extract::gzip::GzOptions;
use smki_extract::extract::publish::{Manifest, Publisher, Retention, MANIFEST};
use smki_extract::extract::xml::{read_extract, ExtractKind, ParsedRecord, SCHEMA_PATH};
use smki_extract::gen::{history, output};
use smki_extract::metrics::Metrics;
use smki_extract::publication::publish_one;
use smki_extract::store::Store;

const START: (i32, u32, u32) = (2026, 10, 19);
const DAYS: u32 = 15;

fn spec() -> history::Spec {
    history::Spec {
        seed: 21,
        devices: 700,
        days: DAYS,
        start: NaiveDate::from_ymd_opt(START.0, START.1, START.2).unwrap(),
        tz: chrono_tz::Europe::London,
        invalid_per_mille: 10,
        duplicate_per_mille: 10,
        late_per_mille: 60,
        threads: 2,
    }
}

/// One independent run: a fresh cluster, topic, store and output directory.
struct Run {
    dir: tempfile::TempDir,
    config: Config,
    late: u64,
}

fn pipeline(h: &history::History, gzip_threads: usize) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let (_kafka, mut config) = embedded::service(4, "files", dir.path());
    config.output.gzip_threads = gzip_threads;
    config.ingest.batch_max_records = 250;
    output::produce(&h.records, &config.kafka.client_config(), "certs", |_| {}).unwrap();
    let last_day = day_of_date(spec().start) + DAYS - 1;
    let metrics = Metrics::new();
    let summary = embedded::run_past(&config, last_day, metrics.clone());
    assert_eq!(summary.applied, h.expected.applied);
    // Every day of the history closed (and the days after it that the partitions' event time
    // passed: revocations and bad events reach beyond the last day).
    assert!(
        summary.days_closed >= u64::from(DAYS),
        "{} days closed",
        summary.days_closed
    );
    Run {
        dir,
        config,
        late: metrics.events_late.get(),
    }
}

fn manifest(dir: &Path) -> Manifest {
    serde_json::from_slice(&std::fs::read(dir.join(MANIFEST)).unwrap()).unwrap()
}

fn sh(cmd: &str, cwd: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn read(path: &Path) -> Vec<ParsedRecord> {
    let f = std::fs::File::open(path).unwrap();
    let gz = flate2::read::MultiGzDecoder::new(std::io::BufReader::new(f));
    read_extract(std::io::BufReader::new(gz)).unwrap().1
}

fn schema() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(SCHEMA_PATH)
}

/// Every independent reader accepts `name` in `dir`, with `records` records.
fn check_with_independent_readers(dir: &Path, name: &str, records: u64) {
    sh(&format!("gzip -t {name} && pigz -t {name}"), dir);
    sh(
        &format!(
            "zcat {name} | xmllint --noout --schema {} -",
            schema().display()
        ),
        dir,
    );
    let py = sh(
        &format!(
            "python3 -c \"import gzip,sys; d=gzip.open('{name}').read(); \
             print(d.count(b'<Certificate>'))\""
        ),
        dir,
    );
    assert_eq!(
        py.trim(),
        records.to_string(),
        "{name}: Python's gzip count"
    );
    // Every certificate inside parses with openssl: all of them as one PEM bundle, and the
    // first few one by one from DER with their serials compared.
    let recs = read(&dir.join(name));
    assert_eq!(recs.len() as u64, records);
    if recs.is_empty() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let mut bundle = String::new();
    for r in &recs {
        bundle.push_str(&pem(&r.certificate_der));
    }
    std::fs::write(scratch.path().join("all.pem"), bundle).unwrap();
    let printed = sh(
        "openssl crl2pkcs7 -nocrl -certfile all.pem | openssl pkcs7 -print_certs -noout \
         | grep -c '^subject='",
        scratch.path(),
    );
    assert_eq!(
        printed.trim(),
        recs.len().to_string(),
        "{name}: openssl count"
    );
    for (i, r) in recs.iter().take(3).enumerate() {
        let der = scratch.path().join(format!("{i}.der"));
        std::fs::write(&der, &r.certificate_der).unwrap();
        let serial = sh(
            &format!("openssl x509 -inform DER -in {i}.der -noout -serial"),
            scratch.path(),
        );
        assert_eq!(
            serial.trim().trim_start_matches("serial="),
            hex::encode_upper(&r.serial),
            "{name}: serial of record {i}"
        );
    }
}

fn pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(line).unwrap());
        s.push('\n');
    }
    s.push_str("-----END CERTIFICATE-----\n");
    s
}

#[test]
fn files_of_a_generated_history_are_complete_valid_recoverable_and_reproducible() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_test_writer()
        .try_init();
    let h = history::generate(&spec()).unwrap();
    let run = pipeline(&h, 2);
    assert!(run.late > 0, "the history has late deliveries");
    let out = run.config.output.dir.clone();
    let m = manifest(&out);

    // After retention: the 7 newest deltas and the 2 newest fulls (Sundays, 7 days apart).
    let store = Store::open_read_only(&run.config.store.path, "certs").unwrap();
    let last = date_of_day(store.last_closed_day().unwrap().unwrap());
    let deltas: Vec<NaiveDate> = m
        .files
        .iter()
        .filter(|f| f.kind == "DELTA")
        .map(|f| f.day)
        .collect();
    let fulls: Vec<NaiveDate> = m
        .files
        .iter()
        .filter(|f| f.kind == "FULL")
        .map(|f| f.day)
        .collect();
    let want: Vec<NaiveDate> = (0..7).rev().map(|i| last - chrono::Days::new(i)).collect();
    assert_eq!(deltas, want);
    assert_eq!(fulls.len(), 2);
    assert_eq!(fulls[1] - fulls[0], chrono::TimeDelta::days(7));
    assert!(fulls
        .iter()
        .all(|d| d.weekday() == chrono::Weekday::Sun && *d <= last));
    assert!(
        last - fulls[1] < chrono::TimeDelta::days(7),
        "the newest Sunday"
    );
    // The directory holds exactly what the manifest lists (plus sidecars and the lock).
    let mut on_disk: BTreeSet<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(on_disk.remove(MANIFEST));
    assert!(on_disk.remove(".lock"));
    let mut listed = BTreeSet::new();
    for f in &m.files {
        listed.insert(f.name.clone());
        listed.insert(format!("{}.sha256", f.name));
    }
    assert_eq!(on_disk, listed);

    for f in &m.files {
        check_with_independent_readers(&out, &f.name, f.records);
        sh(&format!("sha256sum -c --status {}.sha256", f.name), &out);
        assert_eq!(sh(&format!("sha256sum {}", f.name), &out)[..64], f.sha256);
        assert!(
            f.offsets.len() == 4,
            "{}: offsets of every partition",
            f.name
        );
    }

    // A Party: the newest full, then every later delta, gives the store's In-use set.
    let full = m.files.iter().rev().find(|f| f.kind == "FULL").unwrap();
    let mut party: BTreeMap<String, CertificateStatus> = read(&out.join(&full.name))
        .into_iter()
        .map(|r| (r.record_key(), r.status))
        .collect();
    for f in m
        .files
        .iter()
        .filter(|f| f.kind == "DELTA" && f.day > full.day)
    {
        party.extend(
            read(&out.join(&f.name))
                .into_iter()
                .map(|r| (r.record_key(), r.status)),
        );
    }
    // ...the store's certificates In use at the close of the last closed day (changes
    // of days still open — revocations dated after it — are not in any file yet).
    let in_use = CertificateStatus::InUse as i32;
    let snap = store.snapshot();
    let as_of_last: BTreeSet<String> = snap
        .as_of(day_of_date(last))
        .map(|r| r.unwrap().1)
        .filter(|r| r.status == in_use)
        .map(|r| record_key(&r.issuer_name_der, &r.serial))
        .collect();
    let party_in_use: BTreeSet<String> = party
        .into_iter()
        .filter(|(_, s)| *s == CertificateStatus::InUse)
        .map(|(k, _)| k)
        .collect();
    assert_eq!(party_in_use, as_of_last);
    // The store's current state is the generator's independent expectation.
    let mut store_in_use = BTreeSet::new();
    for item in store.certificates() {
        let (_, rec) = item.unwrap();
        if rec.status == in_use {
            store_in_use.insert(record_key(&rec.issuer_name_der, &rec.serial));
        }
    }
    let expected: BTreeSet<String> = h
        .expected
        .certificates
        .values()
        .filter(|c| c.status == "I")
        .map(|c| c.key.clone())
        .collect();
    assert_eq!(store_in_use, expected);

    // Rewritten with 1 and with 4 threads: the same bytes; with small members (many gzip
    // members per file) every reader still accepts them.
    for threads in [1, 4] {
        let again = tempfile::tempdir().unwrap();
        let mut p = Publisher::open(again.path(), Retention::default()).unwrap();
        for f in &m.files {
            let kind = ExtractKind::from_attr(&f.kind).unwrap();
            let gz = GzOptions {
                threads,
                ..GzOptions::default()
            };
            let e = publish_one(&store, &mut p, kind, day_of_date(f.day), gz).unwrap();
            assert_eq!(e.sha256, f.sha256, "{} with {threads} threads", f.name);
        }
    }
    let small = tempfile::tempdir().unwrap();
    let mut p = Publisher::open(small.path(), Retention::default()).unwrap();
    let gz = GzOptions {
        chunk_size: 64 << 10,
        threads: 2,
        ..GzOptions::default()
    };
    let e = publish_one(&store, &mut p, ExtractKind::Full, day_of_date(full.day), gz).unwrap();
    assert_eq!(e.records, full.records);
    let members = sh(
        &format!("python3 -c \"d=open('{}','rb').read(); print(d.count(b'\\x1f\\x8b\\x08\\x00\\x00\\x00\\x00\\x00'))\"", e.name),
        small.path(),
    );
    assert!(
        members.trim().parse::<u32>().unwrap() > 3,
        "several members: {members}"
    );
    check_with_independent_readers(small.path(), &e.name, e.records);

    // A second, independent run of the same history: byte-identical files.
    let second = pipeline(&h, 1);
    let m2 = manifest(&second.config.output.dir);
    let hashes = |m: &Manifest| -> Vec<(String, String)> {
        m.files
            .iter()
            .map(|f| (f.name.clone(), f.sha256.clone()))
            .collect()
    };
    assert_eq!(hashes(&m2), hashes(&m));
    drop(second.dir);
    drop(run.dir);
}
