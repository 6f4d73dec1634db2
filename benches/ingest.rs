//! Ingest benchmarks (issue 2), sizes stated, peak RSS per phase (Linux VmHWM, reset between
//! phases through /proc/self/clear_refs):
//!
//! (a) the pipeline's own cost, no broker: a generated history read from memory through
//!     decode → validate → apply → WriteBatch (one thread);
//! (b) end to end from the in-process mock cluster, side by side in one run with a bare
//!     rdkafka consumer draining the same topic and discarding it;
//! (c) the same against a tansu broker process (when scripts/setup installed it, or
//!     SMKI_TANSU names its binary).
//!
//! Metrics cost (issue 5): (a) and (b) run with metrics off (`http.address = ""`: counters
//! only, no endpoint, no lag polling, no store census) and on (endpoint served, scraped every
//! second — fifteen times the usual Prometheus rate —, lag polling, store census and
//! scrape-time RocksDB figures), alternating `BENCH_ROUNDS` times (default 2).
//! `BENCH_ONLY=metrics` runs just those; `BENCH_ONLY=replay` runs (b) and the replay of the
//! same topic next to it.
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

#[path = "../tests/common/tansu.rs"]
mod tansu;

#[path = "../tests/common/prom.rs"]
mod prom;

/// Metrics on: the endpoint of `metrics`, and a thread scraping it every second until dropped.
struct Scraped {
    _server: smki_extract::http::HttpServer,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl Scraped {
    fn start(metrics: &Metrics) -> Scraped {
        let server =
            smki_extract::http::HttpServer::start("127.0.0.1:0", metrics.clone(), 0).unwrap();
        let addr = server.local_addr().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut scrapes = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let (status, body) = prom::get(&addr, "/metrics");
                    assert_eq!(status, 200);
                    std::hint::black_box(body);
                    scrapes += 1;
                    std::thread::sleep(Duration::from_secs(1));
                }
                scrapes
            })
        };
        Scraped {
            _server: server,
            stop,
            thread: Some(thread),
        }
    }

    /// Stop scraping; how many scrapes were served.
    fn finish(mut self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

fn mode(on: bool) -> &'static str {
    if on {
        "metrics on"
    } else {
        "metrics off"
    }
}

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

/// The benchmark's events file: generated once per size and seed, then reused (kept under
/// the cargo target directory, outside the clone), so runs measure ingest, not `gen`.
fn events_file(events: usize, seed: u64) -> std::path::PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("target"))
        .join("bench-data");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("events-{events}-seed{seed}.bin"));
    if !path.exists() {
        let h = history_of(events, seed);
        let tmp = path.with_extension("tmp");
        output::write_file(&h.records, &tmp).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }
    path
}

fn history_of(events: usize, seed: u64) -> history::History {
    history_with(events, seed, 10)
}

fn history_with(events: usize, seed: u64, invalid_per_mille: u32) -> history::History {
    // About 3.8 events per device in the default mix.
    let devices = events * 10 / 35; // about 3.5 events per device in the default mix
    let t = Instant::now();
    let h = history::generate(&history::Spec {
        seed,
        devices,
        days: 15,
        start: NaiveDate::from_ymd_opt(2026, 10, 19).unwrap(),
        tz: "Europe/London".parse().unwrap(),
        invalid_per_mille,
        duplicate_per_mille: 5,
        late_per_mille: 0,
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

/// (a); returns events per second.
fn bench_pipeline(file: &Path, dir: &Path, metrics_on: bool, round: usize) -> f64 {
    let store_dir = dir.join(format!("a-store-{metrics_on}-{round}"));
    let store = Arc::new(Store::open(&store_dir, "certs").unwrap());
    let metrics = Metrics::new();
    let observed = metrics_on.then(|| {
        (
            smki_extract::store_metrics::StoreObserver::start(
                &store,
                &metrics,
                Duration::from_secs(300),
            ),
            Scraped::start(&metrics),
        )
    });
    let mut ing = Ingestor::new(
        store,
        MemoryDeadLetters::default(),
        smki_extract::window::WindowConfig::new("Europe/London".parse().unwrap()),
        metrics,
    )
    .unwrap();
    let partitions = 6u32;
    let mut next = vec![0i64; partitions as usize];
    reset_peak_rss();
    let t = Instant::now();
    let mut reader = smki_extract::eventfile::EventFileReader::open(file).unwrap();
    let mut r = smki_extract::contract::EventFileRecord::default();
    let mut n = 0usize;
    while reader.read_into(&mut r).unwrap() {
        n += 1;
        let p = partition_for_key(&r.key, partitions);
        let offset = next[p as usize];
        next[p as usize] += 1;
        ing.ingest(RecordRef {
            partition: p,
            offset,
            key: Some(&r.key),
            value: Some(&r.value),
            timestamp_ms: None,
        })
        .unwrap();
        if ing.pending_records() >= 10_000 {
            ing.commit().unwrap();
        }
    }
    ing.commit().unwrap();
    let secs = t.elapsed().as_secs_f64();
    let scrapes = observed.map(|(_, s)| s.finish()).unwrap_or(0);
    println!(
        "(a) pipeline, no broker, streamed from the events file, {}: {} events in {secs:.2}s = {:.0} events/s (one ingest thread), peak RSS {:.0} MB, dead letters {}, scrapes {scrapes}",
        mode(metrics_on),
        n,
        n as f64 / secs,
        peak_rss_mb(),
        ing.sink().letters.len()
    );
    drop(ing);
    let _ = std::fs::remove_dir_all(&store_dir);
    n as f64 / secs
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
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
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
    let (ours_rate, ours_rss, _) = ours(label, bootstrap, topic, dir, false);
    let bare_rate = n as f64 / bare.as_secs_f64();
    println!(
        "({label}) {n} records, {partitions} partitions: bare drain {bare_rate:.0}/s (peak RSS {bare_rss:.0} MB); \
         smki-extract run {ours_rate:.0}/s (peak RSS {ours_rss:.0} MB); ratio {:.2}",
        ours_rate / bare_rate
    );
}

/// `consumer::run` over the whole topic with a fresh group and store: records per second
/// of the busy period, peak RSS (MB) and scrapes served.
fn ours(
    label: &str,
    bootstrap: &str,
    topic: &str,
    dir: &Path,
    metrics_on: bool,
) -> (f64, f64, usize) {
    let mut config = Config::default();
    config.kafka.bootstrap_servers = bootstrap.into();
    config.kafka.topic = topic.into();
    config.kafka.group_id = format!("bench-{label}");
    config
        .kafka
        .properties
        .insert("session.timeout.ms".into(), "6000".into());
    config.store.path = dir.join(format!("store-{label}"));
    config.output.dir = dir.join(format!("output-{label}"));
    config.http.address = if metrics_on {
        "127.0.0.1:0".into()
    } else {
        String::new()
    };
    reset_peak_rss();
    let metrics = Metrics::new();
    let scraped = metrics_on.then(|| Scraped::start(&metrics));
    let summary = consumer::run(
        &config,
        Arc::new(AtomicBool::new(false)),
        RunOptions {
            stop_at_end: true,
            end_grace: Duration::from_millis(500),
            simulated_now_ms: None,
        },
        metrics,
    )
    .unwrap();
    let scrapes = scraped.map(Scraped::finish).unwrap_or(0);
    let _ = std::fs::remove_dir_all(&config.store.path);
    (
        summary.consumed as f64 / summary.busy.as_secs_f64(),
        peak_rss_mb(),
        scrapes,
    )
}

/// Metrics on against off, alternating, for (a) and (b).
fn metrics_cost(file: &Path, dir: &Path, h: &history::History) {
    let rounds = env_usize("BENCH_ROUNDS", 2);
    let (mut a_off, mut a_on) = (Vec::new(), Vec::new());
    // Which mode goes first alternates between rounds, so that neither gains from order
    // (a warmer page cache, a quieter machine).
    let order = |round: usize| {
        if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        }
    };
    for round in 0..rounds {
        for on in order(round) {
            let rate = bench_pipeline(file, dir, on, round);
            if on {
                a_on.push(rate)
            } else {
                a_off.push(rate)
            }
        }
    }
    let partitions = 32;
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic("certs", partitions).unwrap();
    kafka.create_topic("certs.dlq", 1).unwrap();
    let mut cc = rdkafka::ClientConfig::new();
    cc.set("bootstrap.servers", kafka.bootstrap_servers());
    output::produce(&h.records, &cc, "certs", |_| {}).unwrap();
    let (mut b_off, mut b_on) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for on in order(round) {
            let label = format!("b-{}-{round}", if on { "on" } else { "off" });
            let (rate, rss, scrapes) = ours(&label, &kafka.bootstrap_servers(), "certs", dir, on);
            println!(
                "(b) {} records from the mock cluster, {partitions} partitions, {}: {rate:.0} records/s, peak RSS {rss:.0} MB, scrapes {scrapes}",
                h.records.len(),
                mode(on)
            );
            if on {
                b_on.push(rate)
            } else {
                b_off.push(rate)
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for (label, off, on) in [("a", &mut a_off, &mut a_on), ("b", &mut b_off, &mut b_on)] {
        let (off, on) = (median(off), median(on));
        println!(
            "metrics cost ({label}): off {off:.0}/s, on {on:.0}/s (medians of {rounds}): on/off = {:.3}",
            on / off
        );
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `replay` of the same topic into an empty store (bulk load: WAL off, flush and compaction
/// at the end), next to `run`'s rate printed just before it.
fn replay_rate(bootstrap: &str, topic: &str, dir: &Path) {
    let mut config = Config::default();
    config.kafka.bootstrap_servers = bootstrap.into();
    config.kafka.topic = topic.into();
    config.store.path = dir.join("store-replay");
    reset_peak_rss();
    let s = smki_extract::replay::replay(
        &config,
        &smki_extract::replay::ReplayLimits::default(),
        Metrics::new(),
    )
    .unwrap();
    println!(
        "(r) replay of the same {} records into an empty store: {:.0}/s while reading \
         ({:.1} s), {:.0}/s including the final flush and compaction ({:.1} s); peak RSS {:.0} MB",
        s.records,
        s.records as f64 / s.ingest_time.as_secs_f64(),
        s.ingest_time.as_secs_f64(),
        s.records as f64 / s.total_time.as_secs_f64(),
        s.total_time.as_secs_f64(),
        peak_rss_mb()
    );
}

/// (b) from the in-process mock cluster, side by side with a bare drain, then (r) a replay of
/// the same topic into an empty store.
fn mock_and_replay(h: &history::History, dir: &Path) {
    // The mock cluster keeps at most 5 MB or 100k records per partition (older ones are
    // purged), so the topic has enough partitions to hold the whole history.
    let mock_partitions = 32;
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic("certs", mock_partitions).unwrap();
    kafka.create_topic("certs.dlq", 1).unwrap();
    kafka.create_topic("certs.closes", 1).unwrap();
    output::produce(
        &h.records,
        &rdkafka::ClientConfig::new()
            .set("bootstrap.servers", kafka.bootstrap_servers())
            .clone(),
        "certs",
        |_| {},
    )
    .unwrap();
    side_by_side(
        "b",
        &kafka.bootstrap_servers(),
        "certs",
        mock_partitions,
        dir,
    );
    replay_rate(&kafka.bootstrap_servers(), "certs", dir);
    drop(kafka);
}

/// The service's allocator (see `src/main.rs`), so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let dir = tempfile::tempdir().unwrap();
    if only == "replay" {
        let h = history_of(env_usize("BENCH_MOCK_EVENTS", 300_000), 3);
        mock_and_replay(&h, dir.path());
        return;
    }
    let file = events_file(env_usize("BENCH_EVENTS", 1_000_000), 1);
    println!(
        "(a) input: {} ({} MB)",
        file.display(),
        std::fs::metadata(&file).unwrap().len() >> 20
    );
    if only == "parse" {
        use prost::Message;
        let records = smki_extract::eventfile::read_all(&file).unwrap();
        let t = Instant::now();
        let mut n = 0;
        for r in &records {
            if let Ok(ev) = smki_extract::contract::CertificateEvent::decode(&r.value[..]) {
                n += 1;
                std::hint::black_box(&ev);
            }
        }
        println!("decode only: {n} in {:.2?}", t.elapsed());
        let ders: Vec<Vec<u8>> = records
            .iter()
            .filter_map(|r| {
                match smki_extract::contract::CertificateEvent::decode(&r.value[..])
                    .ok()?
                    .body?
                {
                    smki_extract::contract::Body::Issued(i) => Some(i.certificate_der),
                    _ => None,
                }
            })
            .collect();
        let t = Instant::now();
        for d in &ders {
            std::hint::black_box(smki_extract::certificate::parse(d).ok());
        }
        println!("certificate::parse: {} in {:.2?}", ders.len(), t.elapsed());
        return;
    }
    if only == "metrics" {
        let h = history_of(env_usize("BENCH_MOCK_EVENTS", 300_000), 3);
        metrics_cost(&file, dir.path(), &h);
        return;
    }
    bench_pipeline(&file, dir.path(), false, 0);
    if only == "a" {
        return;
    }
    let h = history_of(env_usize("BENCH_MOCK_EVENTS", 300_000), 3);
    metrics_cost(&file, dir.path(), &h);

    mock_and_replay(&h, dir.path());
    drop(h);

    if tansu::tansu_binary().is_some() {
        let h = history_of(env_usize("BENCH_TANSU_EVENTS", 200_000), 2);
        let broker = tansu::Tansu::start();
        let bootstrap = broker.bootstrap.clone();
        let mut cc = rdkafka::ClientConfig::new();
        cc.set("bootstrap.servers", &bootstrap);
        let admin: rdkafka::admin::AdminClient<_> = cc.create().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let fixed = || rdkafka::admin::TopicReplication::Fixed(1);
        rt.block_on(admin.create_topics(
            &[
                rdkafka::admin::NewTopic::new("certs", 6, fixed()),
                rdkafka::admin::NewTopic::new("certs.dlq", 1, fixed()),
                rdkafka::admin::NewTopic::new("certs.closes", 1, fixed()),
                rdkafka::admin::NewTopic::new("clean", 6, fixed()),
                rdkafka::admin::NewTopic::new("clean.dlq", 1, fixed()),
                rdkafka::admin::NewTopic::new("clean.closes", 1, fixed()),
            ],
            &rdkafka::admin::AdminOptions::new(),
        ))
        .unwrap();
        output::produce(&h.records, &cc, "certs", |_| {}).unwrap();
        side_by_side("c", &bootstrap, "certs", 6, dir.path());
        // The same size without bad events: no dead-letter writes competing with the
        // fetches inside the broker.
        let clean = history_with(env_usize("BENCH_TANSU_EVENTS", 200_000), 2, 0);
        output::produce(&clean.records, &cc, "clean", |_| {}).unwrap();
        side_by_side("c-clean", &bootstrap, "clean", 6, dir.path());
        drop(broker);
    } else {
        println!("(c) skipped: no tansu binary (run scripts/setup, or set SMKI_TANSU)");
    }
}
