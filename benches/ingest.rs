//! Ingest benchmarks (issue 2), sizes stated, peak RSS per phase (Linux VmHWM, reset between
//! phases through /proc/self/clear_refs):
//!
//! (a) the pipeline's own cost, no broker: a generated history read from memory through
//!     decode → validate → apply → WriteBatch (one thread);
//! (b) end to end from the in-process mock cluster, side by side in one run with a bare
//!     rdkafka consumer draining the same topic and discarding it;
//! (c) the same against a tansu broker process (when SMKI_TANSU names its binary).
//!
//! `cargo bench --bench ingest` (env: BENCH_EVENTS, default 1_000_000; BENCH_TANSU_EVENTS,
//! default 200_000).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use smki_extract::config::Config;
use smki_extract::consumer::{self, RunOptions};
use smki_extract::deadletter::MemoryDeadLetters;
use smki_extract::eventfile::partition_for_key;
use smki_extract::gen::{history, output};
use smki_extract::ingest::{Ingestor, RecordRef};
use smki_extract::metrics::Metrics;
use smki_extract::mock::EmbeddedKafka;
use smki_extract::store::Store;

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn history_of(events: usize, seed: u64) -> history::History {
    // About 3.8 events per device in the default mix.
    let devices = events * 10 / 38;
    let t = Instant::now();
    let h = history::generate(&history::Spec {
        seed,
        devices,
        days: 15,
        start: NaiveDate::from_ymd_opt(2026, 10, 19).unwrap(),
        tz: "Europe/London".parse().unwrap(),
        invalid_per_mille: 10,
        duplicate_per_mille: 5,
        threads: 2,
    })
    .unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "gen: {} events ({} certificates, {} devices) in {secs:.1}s = {:.0} events/s on 2 threads",
        h.records.len(),
        h.expected.certificates.len(),
        devices,
        h.records.len() as f64 / secs
    );
    h
}

fn bench_pipeline(h: &history::History, dir: &Path) {
    let store = Arc::new(Store::open(&dir.join("a-store"), "certs").unwrap());
    let mut ing = Ingestor::new(store, MemoryDeadLetters::default(), "Europe/London".parse().unwrap(), Metrics::new());
    let partitions = 6u32;
    let mut next = vec![0i64; partitions as usize];
    reset_peak_rss();
    let t = Instant::now();
    for r in &h.records {
        let p = partition_for_key(&r.key, partitions);
        let offset = next[p as usize];
        next[p as usize] += 1;
        ing.ingest(RecordRef { partition: p, offset, key: Some(&r.key), value: Some(&r.value) }).unwrap();
        if ing.pending_records() >= 10_000 {
            ing.commit().unwrap();
        }
    }
    ing.commit().unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "(a) pipeline, no broker: {} events in {secs:.2}s = {:.0} events/s (one thread), peak RSS {:.0} MB, dead letters {}",
        h.records.len(),
        h.records.len() as f64 / secs,
        peak_rss_mb(),
        ing.sink().letters.len()
    );
}

/// Drain every partition of `topic` with a bare consumer, discarding records.
fn bare_drain(bootstrap: &str, topic: &str, partitions: i32) -> (usize, Duration) {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "bare-drain")
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut remaining: BTreeSet<i32> = (0..partitions).collect();
    let mut n = 0usize;
    let mut first = None;
    let mut last = Instant::now();
    while !remaining.is_empty() {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                std::hint::black_box(&m);
                first.get_or_insert_with(Instant::now);
                last = Instant::now();
                n += 1;
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                remaining.remove(&p);
            }
            Some(Err(e)) => panic!("{e}"),
            None => {}
        }
    }
    (n, first.map(|f| last - f).unwrap_or_default())
}

fn side_by_side(label: &str, bootstrap: &str, topic: &str, partitions: i32, dir: &Path) {
    reset_peak_rss();
    let (n, bare) = bare_drain(bootstrap, topic, partitions);
    let bare_rss = peak_rss_mb();
    let mut config = Config::default();
    config.kafka.bootstrap_servers = bootstrap.into();
    config.kafka.topic = topic.into();
    config.kafka.group_id = format!("bench-{label}");
    config.kafka.properties.insert("session.timeout.ms".into(), "6000".into());
    config.store.path = dir.join(format!("store-{label}"));
    reset_peak_rss();
    let summary = consumer::run(
        &config,
        Arc::new(AtomicBool::new(false)),
        RunOptions { stop_at_end: true, end_grace: Duration::from_millis(500) },
        Metrics::new(),
    )
    .unwrap();
    let ours_rss = peak_rss_mb();
    let bare_rate = n as f64 / bare.as_secs_f64();
    let ours_rate = summary.consumed as f64 / summary.busy.as_secs_f64();
    println!(
        "({label}) {n} records, {partitions} partitions: bare drain {bare_rate:.0}/s (peak RSS {bare_rss:.0} MB); \
         smki-extract run {ours_rate:.0}/s (peak RSS {ours_rss:.0} MB); ratio {:.2}",
        ours_rate / bare_rate
    );
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let h = history_of(env_usize("BENCH_EVENTS", 1_000_000), 1);
    bench_pipeline(&h, dir.path());

    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic("certs", 6).unwrap();
    kafka.create_topic("certs.dlq", 1).unwrap();
    output::produce(&h.records, &rdkafka::ClientConfig::new().set("bootstrap.servers", kafka.bootstrap_servers()).clone(), "certs", |_| {}).unwrap();
    side_by_side("b", &kafka.bootstrap_servers(), "certs", 6, dir.path());
    drop(kafka);
    drop(h);

    if let Some(tansu) = std::env::var_os("SMKI_TANSU") {
        let h = history_of(env_usize("BENCH_TANSU_EVENTS", 200_000), 2);
        let tdir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("tcp://127.0.0.1:{port}");
        let mut child = std::process::Command::new(tansu)
            .current_dir(tdir.path())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", "sqlite://tansu.db"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let bootstrap = format!("127.0.0.1:{port}");
        while std::net::TcpStream::connect(&bootstrap).is_err() {
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut cc = rdkafka::ClientConfig::new();
        cc.set("bootstrap.servers", &bootstrap);
        let admin: rdkafka::admin::AdminClient<_> = cc.create().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(admin.create_topics(
            &[
                rdkafka::admin::NewTopic::new("certs", 6, rdkafka::admin::TopicReplication::Fixed(1)),
                rdkafka::admin::NewTopic::new("certs.dlq", 1, rdkafka::admin::TopicReplication::Fixed(1)),
            ],
            &rdkafka::admin::AdminOptions::new(),
        ))
        .unwrap();
        output::produce(&h.records, &cc, "certs", |_| {}).unwrap();
        side_by_side("c", &bootstrap, "certs", 6, dir.path());
        let _ = child.kill();
        let _ = child.wait();
    } else {
        println!("(c) skipped: set SMKI_TANSU to the tansu binary (scripts/setup installs it)");
    }
}
