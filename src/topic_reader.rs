//! Read a whole (small) topic once, from the beginning of every partition to its current end:
//! the dead-letter report and the close log both need exactly that.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

struct QuietEof;
impl ClientContext for QuietEof {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        crate::consumer::log_client_error(error, reason);
    }
}
impl rdkafka::consumer::ConsumerContext for QuietEof {}

/// Hand every record of `topic` to `each`, partition by partition as they arrive, until
/// each partition is at its end; `group` names the (never committing) reader. A topic that
/// does not exist is an error naming it.
pub fn read_to_end(
    config: &ClientConfig,
    topic: &str,
    group: &str,
    timeout: Duration,
    mut each: impl FnMut(&BorrowedMessage<'_>) -> Result<()>,
) -> Result<()> {
    let mut config = config.clone();
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true");
    let consumer: BaseConsumer<QuietEof> = config
        .create_with_context(QuietEof)
        .with_context(|| format!("creating a reader of {topic}"))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("metadata of {topic}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        bail!("topic {topic} does not exist");
    }
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut remaining: std::collections::BTreeSet<i32> = partitions.into_iter().collect();
    let deadline = Instant::now() + timeout;
    while !remaining.is_empty() {
        if Instant::now() > deadline {
            bail!("timed out reading {topic}: partitions {remaining:?} not at their end");
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => each(&m)?,
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                remaining.remove(&p);
            }
            Some(Err(e)) => bail!("reading {topic}: {e}"),
            None => {}
        }
    }
    Ok(())
}
