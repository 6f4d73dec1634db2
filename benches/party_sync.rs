//! `sync` benchmark (issue 4), sizes stated, each command measured as a child process (wall
//! time and peak RSS from `wait4`), side by side on the same files:
//!
//! - `gzip -dc` of one full + the 7 deltas after it (the floor: decompression alone);
//! - `xmllint --stream --schema` of the same (what XSD validation alone costs);
//! - `smki-extract sync` of them into a fresh local copy (SHA-256, gzip, XSD, certificate
//!   parsing and cross-checks, RocksDB writes and indexes, atomic switch).
//!
//! The files come from the real pipeline: a generated history of `BENCH_DEVICES` (default
//! 50 000) devices over 21 days from Monday 2026-10-19, produced to the in-process mock
//! cluster and published by `consumer::run`; the full of Sunday 2026-11-01 and the deltas
//! of 2026-11-02..08 are taken from it. Built once under `$CARGO_TARGET_DIR/bench-data`.
//! `cargo bench --bench party_sync` (scripts/setup first: xmllint, gzip).

#[path = "common/measure.rs"]
mod measure;
use measure::measure;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use smki_extract::config::Config;
use smki_extract::consumer::{self, RunOptions};
use smki_extract::day::day_of_date;
use smki_extract::extract::publish::{Manifest, MANIFEST};
use smki_extract::extract::xml::ExtractKind;
use smki_extract::gen::{history, output};
use smki_extract::metrics::Metrics;
use smki_extract::mock::EmbeddedKafka;

const DAYS: u32 = 21;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn date(m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, m, d).unwrap()
}

fn bench_root(devices: usize) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"))
        .join("bench-data")
        .join(format!("party-{devices}"))
}

/// The published directory of the pipeline run, built once per size by a child process
/// (so that this one stays small: a forked child starts with its parent's resident pages,
/// which `wait4` would count in the children's peak RSS).
fn published(devices: usize) -> PathBuf {
    let root = bench_root(devices);
    if !root.join("BENCH-COMPLETE").exists() {
        let status = Command::new(std::env::current_exe().unwrap())
            .arg("--build")
            .status()
            .unwrap();
        assert!(status.success(), "building the benchmark files failed");
    }
    root.join("output")
}

/// `--build`: run the pipeline on a generated history and publish its files.
fn build(devices: usize) {
    let root = bench_root(devices);
    let out = root.join("output");
    let marker = root.join("BENCH-COMPLETE");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let t = Instant::now();
    let spec = history::Spec {
        seed: 9,
        devices,
        days: DAYS,
        start: date(10, 19),
        tz: chrono_tz::Europe::London,
        invalid_per_mille: 10,
        duplicate_per_mille: 5,
        late_per_mille: 10,
        threads: 2,
    };
    let h = history::generate(&spec).unwrap();
    eprintln!(
        "generated {} events in {:.0?}",
        h.records.len(),
        t.elapsed()
    );
    let kafka = EmbeddedKafka::start(1).unwrap();
    // The mock cluster keeps at most 5 MB per partition: spread the history.
    let partitions = (h.records.len() / 10_000).clamp(6, 64) as i32;
    kafka.create_topic("certs", partitions).unwrap();
    kafka.create_topic("certs.dlq", 1).unwrap();
    let mut config = Config::default();
    config.kafka.bootstrap_servers = kafka.bootstrap_servers();
    config.kafka.topic = "certs".into();
    config.store.path = root.join("store");
    config.output.dir = out.clone();
    config.output.delta_retention_days = 60;
    config.output.fulls_kept = 5;
    output::produce(&h.records, &config.kafka.client_config(), "certs", |_| {}).unwrap();
    let window = config.window_config().unwrap();
    let last_day = day_of_date(spec.start) + DAYS - 1;
    let now = window.end_of_day_ms(last_day) + window.deadline_ms + 60_000;
    consumer::run(
        &config,
        Arc::new(AtomicBool::new(false)),
        RunOptions {
            stop_at_end: true,
            end_grace: Duration::from_millis(500),
            simulated_now_ms: Some(now),
        },
        Metrics::new(),
    )
    .unwrap();
    std::fs::write(&marker, b"").unwrap();
    eprintln!("pipeline run in {:.0?}", t.elapsed());
}

/// A directory with the full of 2026-11-01 and the deltas of 11-02..08 only.
fn bench_directory(published: &Path, to: &Path) -> (Vec<PathBuf>, u64, u64) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    let mut names = vec![ExtractKind::Full.file_name(date(11, 1))];
    names.extend((2..=8).map(|d| ExtractKind::Delta.file_name(date(11, d))));
    let mut m: Manifest =
        serde_json::from_slice(&std::fs::read(published.join(MANIFEST)).unwrap()).unwrap();
    m.files.retain(|e| names.contains(&e.name));
    assert_eq!(
        m.files.len(),
        8,
        "the run published the full and the 7 deltas"
    );
    for n in &names {
        for f in [n.clone(), format!("{n}.sha256")] {
            std::fs::copy(published.join(&f), to.join(&f)).unwrap();
        }
    }
    std::fs::write(to.join(MANIFEST), serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let records = m.files.iter().map(|e| e.records).sum();
    let bytes = m.files.iter().map(|e| e.size).sum();
    (names.iter().map(|n| to.join(n)).collect(), records, bytes)
}

fn sh(script: String) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c").arg(script);
    c
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The service's allocator (see `src/main.rs`), so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let devices = env_usize("BENCH_DEVICES", 50_000);
    if std::env::args().any(|a| a == "--build") {
        return build(devices);
    }
    let published = published(devices);
    let work = published.parent().unwrap().join("sync-run");
    let dir = work.join("dir");
    let (files, records, bytes) = bench_directory(&published, &dir);
    let list = files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(" ");
    let xml_bytes: u64 = String::from_utf8(
        Command::new("sh")
            .arg("-c")
            .arg(format!("gzip -dc {list} | wc -c"))
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/smki-extract-v1.xsd");
    let copy = work.join("copy");
    let (mut gz, mut lint, mut ours, mut stub) = (vec![], vec![], vec![], vec![]);
    let (mut gz_rss, mut lint_rss, mut ours_rss) = (0f64, 0f64, 0f64);
    for _ in 0..3 {
        let (t, rss) = measure(sh(format!("gzip -dc {list} > /dev/null")));
        gz.push(t.as_secs_f64());
        gz_rss = gz_rss.max(rss);
        let (t, rss) = measure(sh(format!(
            "for f in {list}; do gzip -dc $f | xmllint --noout --stream --schema {} - 2>/dev/null \
             || exit 1; done",
            schema.display()
        )));
        lint.push(t.as_secs_f64());
        lint_rss = lint_rss.max(rss);
        let _ = std::fs::remove_dir_all(&copy);
        let mut c = Command::new(env!("CARGO_BIN_EXE_smki-extract"));
        c.arg("sync")
            .arg("--dir")
            .arg(&dir)
            .arg("--copy")
            .arg(&copy)
            .env("SMKI_LOG", "warn");
        let (t, rss) = measure(c);
        ours.push(t.as_secs_f64());
        ours_rss = ours_rss.max(rss);
        // Diagnostic: the same with the XSD step stubbed out (an "xmllint" that accepts
        // anything), to show what our own pipeline costs.
        let _ = std::fs::remove_dir_all(&copy);
        let mut c = Command::new(env!("CARGO_BIN_EXE_smki-extract"));
        c.arg("sync")
            .arg("--dir")
            .arg(&dir)
            .arg("--copy")
            .arg(&copy)
            .env("SMKI_LOG", "warn")
            .env("SMKI_XMLLINT", "/bin/true");
        stub.push(measure(c).0.as_secs_f64());
    }
    let (g, l, o) = (median(gz), median(lint), median(ours));
    let copy_mb = String::from_utf8(
        Command::new("du")
            .arg("-sm")
            .arg(&copy)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    println!(
        "sync of one full + 7 deltas ({devices} devices' history): {records} records, \
         {:.1} MB gzip, {:.1} MB XML; local copy {} MB",
        bytes as f64 / 1e6,
        xml_bytes as f64 / 1e6,
        copy_mb.split_whitespace().next().unwrap_or("?")
    );
    println!("    gzip -dc (decompression only):          {g:.2} s, peak RSS {gz_rss:.0} MB");
    println!("    gzip -dc | xmllint --stream --schema:   {l:.2} s, peak RSS {lint_rss:.0} MB");
    println!(
        "    smki-extract sync (fresh copy):         {o:.2} s, peak RSS {ours_rss:.0} MB \
         (sync process or its xmllint, whichever is larger)"
    );
    println!(
        "    (diagnostic) sync with the XSD step stubbed out: {:.2} s",
        median(stub)
    );
    println!(
        "    ratio sync / gzip -dc: {:.2} (target 1.5); sync / (gzip -dc | xmllint): {:.2}",
        o / g,
        o / l
    );
    println!("    median of 3 runs each");
}
