//! `demo`: the whole pipeline with zero set-up. Starts the in-process Kafka cluster,
//! generates a realistic history, produces it, ingests it into a fresh state store, then
//! reports what the store holds (by type and status) and what went to the dead-letter topic,
//! and checks both against what the generator says a correct service must hold.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
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
    kafka.create_topic(&config.kafka.topic, opts.partitions)?;
    kafka.create_topic(&config.kafka.dead_letter_topic(), 1)?;
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
    let summary = consumer::run(
        &config,
        Arc::new(AtomicBool::new(false)),
        RunOptions {
            stop_at_end: true,
            end_grace: Duration::from_millis(500),
        },
        metrics,
    )?;
    println!(
        "ingested {} records in {:.1?}: {} applied, {} duplicates, {} dead-lettered",
        summary.consumed,
        t.elapsed(),
        summary.applied,
        summary.duplicates,
        summary.dead_lettered
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
    Ok(())
}
