//! `demo`: the whole pipeline with zero set-up. Starts the in-process Kafka cluster,
//! generates a realistic history, produces it, ingests it into a fresh state store while the
//! window clock closes its days and the files are published, then reports what the store
//! holds (by type and status), what went to the dead-letter topic and which files were
//! published, and checks all three: the store and dead letters against what the generator
//! says a correct service must hold, and the files by loading the newest full extract and
//! every later delta, as a Party would, and comparing with the store.
//!
//! The history's days are in the past, so the window clock's wall-clock rules run on a
//! simulated clock that stands just after the deadline of the history's last day: every day
//! closes, and the output is the same whenever the demo runs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::NaiveDate;

use crate::config::Config;
use crate::consumer::{self, RunOptions};
use crate::gen::{history, output};
use crate::metrics::Metrics;
use crate::mock::EmbeddedKafka;
use crate::store::Store;

/// Knobs of the demo.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Directory for the store and the generated files (created; must be empty or absent).
    pub dir: PathBuf,
    /// Devices in the history.
    pub devices: usize,
    /// Days of history.
    pub days: u32,
    /// Seed.
    pub seed: u64,
    /// Partitions of the events topic.
    pub partitions: i32,
}

/// Run the demo, printing a report to stdout. Fails if the result differs from expectations.
pub fn run(opts: &DemoOptions) -> Result<()> {
    if opts.dir.exists() && std::fs::read_dir(&opts.dir)?.next().is_some() {
        bail!(
            "demo directory {} is not empty; choose another with --dir or remove it",
            opts.dir.display()
        );
    }
    std::fs::create_dir_all(&opts.dir)?;
    let kafka = EmbeddedKafka::start(1)?;
    let mut config = Config::default();
    config.kafka.bootstrap_servers = kafka.bootstrap_servers();
    config.kafka.topic = "smki.certificate-events".into();
    config.kafka.group_id = "smki-extract-demo".into();
    config.store.path = opts.dir.join("store");
    config.output.dir = opts.dir.join("output");
    kafka.create_topic(&config.kafka.topic, opts.partitions)?;
    kafka.create_topic(&config.kafka.dead_letter_topic(), 1)?;
    kafka.create_topic(&config.kafka.closes_topic(), 1)?;
    println!(
        "embedded Kafka on {} — topic {} ({} partitions)",
        config.kafka.bootstrap_servers, config.kafka.topic, opts.partitions
    );

    let t = Instant::now();
    let spec = history::Spec {
        seed: opts.seed,
        devices: opts.devices,
        days: opts.days,
        start: NaiveDate::from_ymd_opt(2026, 10, 19).expect("date"),
        tz: crate::day::parse_time_zone(&config.ingest.time_zone)?,
        invalid_per_mille: 10,
        duplicate_per_mille: 5,
        late_per_mille: 10,
        threads: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    };
    let h = history::generate(&spec)?;
    println!(
        "generated {} events for {} certificates over {} days from 2026-10-19 (DST ends on day 7) in {:.1?}",
        h.records.len(),
        h.expected.certificates.len(),
        opts.days,
        t.elapsed()
    );
    output::write_expectations(&h.expected, &opts.dir.join("expected.json"))?;
    output::produce(
        &h.records,
        &config.kafka.client_config(),
        &config.kafka.topic,
        |_| {},
    )?;

    let t = Instant::now();
    let metrics = Metrics::new();
    let window = config.window_config()?;
    let last_day = crate::day::day_of_date(spec.start) + opts.days.max(1) - 1;
    let simulated_now = window.end_of_day_ms(last_day) + window.deadline_ms + 60_000;
    let summary = consumer::run(
        &config,
        Arc::new(AtomicBool::new(false)),
        RunOptions {
            stop_at_end: true,
            end_grace: Duration::from_millis(500),
            simulated_now_ms: Some(simulated_now),
        },
        metrics.clone(),
    )?;
    println!(
        "ingested {} records in {:.1?}: {} applied, {} duplicates, {} dead-lettered, {} late; \
         {} days closed, {} files published",
        summary.consumed,
        t.elapsed(),
        summary.applied,
        summary.duplicates,
        summary.dead_lettered,
        metrics.events_late.get(),
        summary.days_closed,
        summary.published.len()
    );

    let store = Store::open(&config.store.path, &config.kafka.topic)?;
    let census = store.census()?;
    println!("\nstate store {} holds:", config.store.path.display());
    println!(
        "  {:<14} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "type", "P", "I", "N", "E", "R"
    );
    let mut types: Vec<&String> = census.keys().map(|(t, _)| t).collect();
    types.dedup();
    for t in types {
        let n = |s: &str| {
            census
                .get(&(t.clone(), s.to_string()))
                .copied()
                .unwrap_or(0)
        };
        println!(
            "  {:<14} {:>8} {:>8} {:>8} {:>8} {:>8}",
            t,
            n("P"),
            n("I"),
            n("N"),
            n("E"),
            n("R")
        );
    }

    let letters = crate::deadletter::read_all(
        &config.kafka.client_config(),
        &config.kafka.dead_letter_topic(),
        Duration::from_secs(30),
    )?;
    let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
    for l in &letters {
        *by_reason.entry(l.reason.clone()).or_default() += 1;
    }
    println!(
        "\ndead-letter topic {} holds {} events:",
        config.kafka.dead_letter_topic(),
        letters.len()
    );
    for (reason, n) in &by_reason {
        println!("  {reason:<26} {n:>6}");
    }
    if let Some(l) = letters.first() {
        println!(
            "  e.g. partition {} offset {}: {}",
            l.partition, l.offset, l.detail
        );
    }

    // Check against the generator's independent expectations.
    let mut wrong = 0usize;
    let mut seen = 0usize;
    for item in store.certificates() {
        let (_, rec) = item?;
        seen += 1;
        let key = crate::contract::record_key(&rec.issuer_name_der, &rec.serial);
        let status = crate::contract::CertificateStatus::try_from(rec.status)
            .map(|s| s.code())
            .unwrap_or("?");
        match h.expected.certificates.get(&key) {
            Some(e) if e.status == status && e.events == rec.applied_events => {}
            _ => wrong += 1,
        }
    }
    if wrong > 0 || seen != h.expected.certificates.len() || by_reason != h.expected.dead_letters {
        bail!(
            "the store does not match the generator's expectations: {wrong} certificates differ, \
             {seen} stored vs {} expected; dead letters {by_reason:?} vs {:?}",
            h.expected.certificates.len(),
            h.expected.dead_letters
        );
    }
    println!(
        "\nchecked: every certificate's status and event count, and every dead-letter reason, \
         match the generator's expectations ({})",
        opts.dir.join("expected.json").display()
    );
    report_files(&config.output.dir, &store)
}

/// Print what the output directory holds, and check it as a Party would use it: the newest
/// full extract plus every later delta gives exactly the store's In-use certificates.
fn report_files(dir: &std::path::Path, store: &Store) -> Result<()> {
    use crate::extract::publish::{Manifest, MANIFEST};
    let manifest: Manifest = serde_json::from_slice(
        &std::fs::read(dir.join(MANIFEST)).context("reading the demo's manifest")?,
    )?;
    println!("\npublished in {}:", dir.display());
    println!(
        "  {:<32} {:>8} {:>10}  by status",
        "file", "records", "bytes"
    );
    let mut files = BTreeMap::new();
    for f in &manifest.files {
        let (_, records) = read_gz(&dir.join(&f.name))?;
        let mut by_status: BTreeMap<&str, u64> = BTreeMap::new();
        for r in &records {
            *by_status.entry(r.status.code()).or_default() += 1;
        }
        let statuses: Vec<String> = by_status.iter().map(|(s, n)| format!("{s} {n}")).collect();
        println!(
            "  {:<32} {:>8} {:>10}  {}",
            f.name,
            f.records,
            f.size,
            statuses.join(", ")
        );
        files.insert((f.kind.clone(), f.day), records);
    }
    let Some(((_, full_day), full)) = files.iter().filter(|((k, _), _)| k == "FULL").last() else {
        bail!("the demo published no full extract");
    };
    let mut party: BTreeMap<String, crate::contract::CertificateStatus> =
        full.iter().map(|r| (r.record_key(), r.status)).collect();
    let mut applied = 0;
    for ((_, day), records) in files
        .iter()
        .filter(|((k, d), _)| k == "DELTA" && d > full_day)
    {
        applied += 1;
        for r in records {
            party.insert(r.record_key(), r.status);
        }
        let _ = day;
    }
    let in_use = crate::contract::CertificateStatus::InUse;
    let party_in_use: std::collections::BTreeSet<&String> = party
        .iter()
        .filter(|(_, s)| **s == in_use)
        .map(|(k, _)| k)
        .collect();
    // The store as of the last closed day (changes dated in days still open are in no file).
    let last = store
        .last_closed_day()?
        .context("no day closed in the demo's store")?;
    let mut store_in_use = std::collections::BTreeSet::new();
    let snap = store.snapshot();
    for item in snap.as_of(last) {
        let (_, rec) = item?;
        if rec.status == in_use as i32 {
            store_in_use.insert(crate::contract::record_key(
                &rec.issuer_name_der,
                &rec.serial,
            ));
        }
    }
    let store_in_use: std::collections::BTreeSet<&String> = store_in_use.iter().collect();
    if party_in_use != store_in_use {
        bail!(
            "a Party loading FULL {full_day} and {applied} later deltas holds {} certificates \
             in use, the store {}",
            party_in_use.len(),
            store_in_use.len()
        );
    }
    println!(
        "\nchecked: FULL {full_day} + the {applied} later deltas, loaded as a Party would, give \
         exactly the store's {} certificates in use at the close of {}",
        store_in_use.len(),
        crate::day::date_of_day(last)
    );
    Ok(())
}

/// Read one published file (gzip, possibly multi-member) with the project's reader.
fn read_gz(
    path: &std::path::Path,
) -> Result<(
    crate::extract::xml::Header,
    Vec<crate::extract::xml::ParsedRecord>,
)> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let gz = flate2::read::MultiGzDecoder::new(std::io::BufReader::new(file));
    crate::extract::xml::read_extract(std::io::BufReader::new(gz))
        .with_context(|| format!("reading {}", path.display()))
}
