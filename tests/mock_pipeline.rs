//! The whole spine over Kafka protocol on the in-process mock cluster: a generated history
//! (every kind of event, duplicates, bad events, a DST change) produced to a multi-partition
//! topic, ingested, and compared with the generator's independent expectations; then a
//! restart on the same store applies nothing again.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;
use smki_extract::config::Config;
use smki_extract::consumer::{self, RunOptions};
use smki_extract::contract::{record_key, CertificateStatus};
use smki_extract::gen::{history, output};
use smki_extract::metrics::Metrics;
use smki_extract::mock::EmbeddedKafka;
use smki_extract::store::Store;

fn run(config: &Config) -> consumer::RunSummary {
    consumer::run(
        config,
        Arc::new(AtomicBool::new(false)),
        RunOptions { stop_at_end: true, end_grace: Duration::from_millis(300) },
        Metrics::new(),
    )
    .unwrap()
}

#[test]
fn generated_history_lands_exactly_and_a_restart_applies_nothing_twice() {
    let spec = history::Spec {
        seed: 9,
        devices: 1500,
        days: 10,
        start: NaiveDate::from_ymd_opt(2026, 10, 20).unwrap(),
        tz: "Europe/London".parse().unwrap(),
        invalid_per_mille: 20,
        duplicate_per_mille: 20,
        threads: 2,
    };
    let h = history::generate(&spec).unwrap();
    assert!(h.expected.duplicates > 0 && h.expected.dead_letters.len() >= 6);

    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic("certs", 4).unwrap();
    kafka.create_topic("certs.dlq", 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.kafka.bootstrap_servers = kafka.bootstrap_servers();
    config.kafka.topic = "certs".into();
    config.kafka.group_id = "pipeline".into();
    config.store.path = dir.path().join("store");
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
        assert_eq!((status, rec.applied_events), (want.status.as_str(), want.events), "{key}");
        seen += 1;
    }
    assert_eq!(seen, h.expected.certificates.len());
    let offsets: i64 = store.offsets().unwrap().values().sum();
    assert_eq!(offsets as u64, h.expected.records);
}
