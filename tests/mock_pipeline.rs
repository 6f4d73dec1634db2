//! The whole spine over Kafka protocol on the in-process mock cluster: a generated history
//! (every kind of event, duplicates, bad events, a DST change) produced to a multi-partition
//! topic, ingested, and compared with the generator's independent expectations; then a
//! restart on the same store applies nothing again.

#[path = "common/files.rs"]
mod files;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use smki_extract::config::Config;
use smki_extract::consumer::{self, RunOptions};
use smki_extract::contract::{record_key, CertificateStatus};
use smki_extract::eventfile::partition_for_key;
use smki_extract::gen::{history, output};
use smki_extract::metrics::Metrics;
use smki_extract::mock::EmbeddedKafka;
use smki_extract::store::Store;

/// Configuration for topic `certs` on `kafka`, with a store in `dir`.
fn mock_config(kafka: &EmbeddedKafka, dir: &std::path::Path, group: &str) -> Config {
    kafka.create_topic("certs.dlq", 1).unwrap();
    kafka.create_topic("certs.closes", 1).unwrap();
    let mut config = Config::default();
    config.kafka.bootstrap_servers = kafka.bootstrap_servers();
    config.kafka.topic = "certs".into();
    config.kafka.group_id = group.into();
    config.store.path = dir.join("store");
    config.output.dir = dir.join("output");
    // The mock cluster keeps a departed member until its session times out.
    config
        .kafka
        .properties
        .insert("session.timeout.ms".into(), "6000".into());
    config
}

fn run(config: &Config) -> consumer::RunSummary {
    consumer::run(
        config,
        Arc::new(AtomicBool::new(false)),
        RunOptions {
            stop_at_end: true,
            end_grace: Duration::from_millis(300),
            simulated_now_ms: None,
        },
        Metrics::new(),
    )
    .unwrap()
}

#[test]
fn generated_history_lands_exactly_and_a_restart_applies_nothing_twice() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info,librdkafka=warn,rdkafka=warn")
        .with_test_writer()
        .try_init();
    let spec = history::Spec {
        seed: 9,
        devices: 1500,
        days: 10,
        start: NaiveDate::from_ymd_opt(2026, 10, 20).unwrap(),
        tz: "Europe/London".parse().unwrap(),
        invalid_per_mille: 20,
        duplicate_per_mille: 20,
        late_per_mille: 0,
        threads: 2,
    };
    let h = history::generate(&spec).unwrap();
    assert!(h.expected.duplicates > 0 && h.expected.dead_letters.len() >= 6);

    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic("certs", 4).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = mock_config(&kafka, dir.path(), "pipeline");
    config.ingest.batch_max_records = 333;
    output::produce(&h.records, &config.kafka.client_config(), "certs", |_| {}).unwrap();

    let first = run(&config);
    assert_eq!(first.consumed, h.expected.records);
    assert_eq!(first.applied, h.expected.applied);
    assert_eq!(first.duplicates, h.expected.duplicates);

    let second = run(&config);
    assert_eq!(second.applied, 0, "a restart re-applied events");

    let store = Store::open(&config.store.path, "certs").unwrap();
    let mut seen = 0;
    for item in store.certificates() {
        let (_, rec) = item.unwrap();
        let key = record_key(&rec.issuer_name_der, &rec.serial);
        let want = &h.expected.certificates[&key];
        let status = CertificateStatus::try_from(rec.status).unwrap().code();
        assert_eq!(
            (status, rec.applied_events),
            (want.status.as_str(), want.events),
            "{key}"
        );
        seen += 1;
    }
    assert_eq!(seen, h.expected.certificates.len());
    let offsets: i64 = store.offsets().unwrap().values().sum();
    assert_eq!(offsets as u64, h.expected.records);
    files::assert_published_files_valid(&config.output.dir);
}

/// Produce `records` to `partitions` (chosen per key, so a certificate stays in one).
fn produce_to(config: &Config, records: &[history::GenRecord], partitions: &[i32]) {
    let producer: BaseProducer = config.kafka.client_config().create().unwrap();
    for r in records {
        let p = partitions[partition_for_key(&r.key, partitions.len() as u32) as usize];
        loop {
            match producer.send(
                BaseRecord::<[u8], [u8]>::to("certs")
                    .key(&r.key[..])
                    .payload(&r.value[..])
                    .partition(p),
            ) {
                Ok(()) => break,
                Err(_) => {
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// Partitions the store has never seen — an empty store, offset 0, or partitions added to
/// the topic later — are consumed from their first record, while known ones resume at the
/// stored offset. (Neither the mock cluster nor tansu 0.6.0 implements CreatePartitions, so
/// the "added later" case is the store meeting partitions it has no offset for.)
#[test]
fn partitions_unknown_to_the_store_start_at_their_beginning() {
    let spec = |seed| history::Spec {
        seed,
        devices: 300,
        days: 5,
        start: NaiveDate::from_ymd_opt(2026, 10, 20).unwrap(),
        tz: "Europe/London".parse().unwrap(),
        invalid_per_mille: 0,
        duplicate_per_mille: 0,
        late_per_mille: 0,
        threads: 2,
    };
    let (a, b) = (
        history::generate(&spec(1)).unwrap(),
        history::generate(&spec(2)).unwrap(),
    );
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic("certs", 4).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = mock_config(&kafka, dir.path(), "grow");

    produce_to(&config, &a.records, &[0, 1]);
    assert_eq!(run(&config).applied, a.expected.applied);
    let known = Store::open(&config.store.path, "certs")
        .unwrap()
        .offsets()
        .unwrap();
    assert_eq!(known.keys().copied().collect::<Vec<_>>(), vec![0, 1]);

    produce_to(&config, &b.records, &[2, 3]);
    assert_eq!(
        run(&config).applied,
        b.expected.applied,
        "records of the new partitions were missed"
    );
    let store = Store::open(&config.store.path, "certs").unwrap();
    let offsets = store.offsets().unwrap();
    assert_eq!(offsets.len(), 4);
    assert_eq!(offsets[&0] + offsets[&1], a.records.len() as i64);
    assert_eq!(offsets[&2] + offsets[&3], b.records.len() as i64);
    assert_eq!(
        store.certificates().count(),
        a.expected.certificates.len() + b.expected.certificates.len()
    );
    files::assert_published_files_valid(&config.output.dir);
}
