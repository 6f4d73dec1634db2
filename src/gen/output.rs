//! Where a generated history goes: an events file, a Kafka topic, and the expectations file
//! that tests compare the service's state against.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

use super::history::{Expectations, GenRecord};
use crate::deadletter::DeliveryTracker;
use crate::eventfile::EventFileWriter;

/// Write records to an events file.
pub fn write_file(records: &[GenRecord], path: &Path) -> Result<()> {
    let mut w = EventFileWriter::create(path)?;
    for r in records {
        w.write(&r.key, &r.value)?;
    }
    w.finish()
}

/// Write the expectations as pretty JSON.
pub fn write_expectations(expected: &Expectations, path: &Path) -> Result<()> {
    let text = serde_json::to_string_pretty(expected)?;
    std::fs::write(path, text).with_context(|| format!("writing expectations {}", path.display()))
}

/// Produce records to `topic`, in order, keyed by certificate id, and wait until every one is
/// acknowledged. `progress` is called with the number sent so far every 10 000 records.
pub fn produce(
    records: &[GenRecord],
    config: &ClientConfig,
    topic: &str,
    mut progress: impl FnMut(usize),
) -> Result<()> {
    let mut config = config.clone();
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000");
    let producer: ThreadedProducer<DeliveryTracker> = config
        .create_with_context(DeliveryTracker::default())
        .context("creating the producer")?;
    for (i, r) in records.iter().enumerate() {
        let mut rec = BaseRecord::<[u8], [u8], usize>::with_opaque_to(topic, i)
            .key(&r.key[..])
            .payload(&r.value[..]);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    back,
                )) => {
                    rec = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => bail!("producing record {i} to {topic}: {e}"),
            }
        }
        if (i + 1) % 10_000 == 0 {
            progress(i + 1);
        }
    }
    producer
        .flush(Duration::from_secs(300))
        .with_context(|| format!("waiting for {topic} to acknowledge every record"))?;
    let failed = producer.context().failed_deliveries();
    if failed > 0 {
        bail!("{failed} records to {topic} were not delivered");
    }
    progress(records.len());
    Ok(())
}
