//! The service on librdkafka's in-process mock cluster, as the integration tests set it up:
//! the events topic with its dead-letter and close-log topics, a configuration pointing at
//! them, and a `run` that consumes everything and closes every day of a past history.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use smki_extract::config::Config;
use smki_extract::consumer::{self, RunOptions, RunSummary};
use smki_extract::metrics::Metrics;
use smki_extract::mock::EmbeddedKafka;

/// An embedded cluster with `certs` (`partitions`), `certs.dlq` and `certs.closes`, and the
/// configuration of a service in consumer group `group` that keeps its store in
/// `root/store` and publishes into `root/output` (tests' session timeout: 6 s).
pub fn service(partitions: i32, group: &str, root: &Path) -> (EmbeddedKafka, Config) {
    let kafka = EmbeddedKafka::start(1).unwrap();
    for (topic, n) in [("certs", partitions), ("certs.dlq", 1), ("certs.closes", 1)] {
        kafka.create_topic(topic, n).unwrap();
    }
    let mut config = Config::default();
    config.kafka.bootstrap_servers = kafka.bootstrap_servers();
    config.kafka.topic = "certs".into();
    config.kafka.group_id = group.into();
    config
        .kafka
        .properties
        .insert("session.timeout.ms".into(), "6000".into());
    config.store.path = root.join("store");
    config.output.dir = root.join("output");
    (kafka, config)
}

/// `run` until it has consumed everything, with the window clock's wall-clock rules seeing
/// an instant a minute past the deadline of `last_day` (so every day up to it closes).
#[allow(dead_code)] // not every test crate that includes this module runs the service
pub fn run_past(config: &Config, last_day: u32, metrics: Metrics) -> RunSummary {
    let window = config.window_config().unwrap();
    consumer::run(
        config,
        Arc::new(AtomicBool::new(false)),
        RunOptions {
            stop_at_end: true,
            end_grace: Duration::from_millis(300),
            simulated_now_ms: Some(window.end_of_day_ms(last_day) + window.deadline_ms + 60_000),
        },
        metrics,
    )
    .unwrap()
}
