//! The close log: every [`DayClose`] also goes to a small compacted Kafka topic
//! (`<topic>.closes`, key = the day `YYYY-MM-DD`, value = the protobuf), so that the record of
//! when each day closed survives the loss of the state store.
//!
//! Why a topic and not the published `manifest.json`: a replay must cut where the original
//! cut, and a cut forced by a wall-clock rule can route a late event into a later delta
//! long before (and after) the files Parties can still see; the manifest lists only the files
//! within retention, and lives on the disk that may be lost with the store. The events topic's
//! broker is already the durable source of truth that a replay reads; the close log sits
//! beside it, keyed by day so compaction keeps one record per day (a few hundred bytes a day,
//! forever). A close is logged — and acknowledged by the broker — before the day's files are
//! written, so no published file depends on a decision that is not durable.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use prost::Message;
use rdkafka::config::ClientConfig;
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::contract::DayClose;
use crate::day::date_of_day;
use crate::store::Store;

/// How long a close may take to be acknowledged before the service stops with an error.
const ACK_TIMEOUT: Duration = Duration::from_secs(60);

/// Appends day closes to the close-log topic.
pub struct CloseLog {
    producer: BaseProducer,
    topic: String,
}

impl CloseLog {
    /// A producer for `topic` (acks=all, idempotent order is irrelevant: keyed by day).
    pub fn new(config: &ClientConfig, topic: &str) -> Result<CloseLog> {
        let mut config = config.clone();
        config.set("acks", "all").set("linger.ms", "0");
        let producer: BaseProducer = config.create().context("creating the close-log producer")?;
        Ok(CloseLog {
            producer,
            topic: topic.to_string(),
        })
    }

    /// The topic written to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Fail with a clear message when the topic does not exist (better at start than at the
    /// first close, a day later).
    pub fn check_exists(&self, timeout: Duration) -> Result<()> {
        let metadata = self
            .producer
            .client()
            .fetch_metadata(Some(&self.topic), timeout)
            .with_context(|| format!("metadata of the close-log topic {}", self.topic))?;
        let ok = metadata
            .topics()
            .iter()
            .any(|t| t.name() == self.topic && t.error().is_none() && !t.partitions().is_empty());
        if !ok {
            bail!(
                "close-log topic {} does not exist: create it (1 partition, cleanup.policy=compact) \
                 — it keeps when each day closed, for replay",
                self.topic
            );
        }
        Ok(())
    }

    /// Append `closes` and wait until the broker has acknowledged every one.
    pub fn append(&self, closes: &[DayClose]) -> Result<()> {
        if closes.is_empty() {
            return Ok(());
        }
        for close in closes {
            let key = date_of_day(close.day).to_string();
            let value = close.encode_to_vec();
            self.producer
                .send(
                    BaseRecord::<str, [u8]>::to(&self.topic)
                        .key(&key)
                        .payload(&value),
                )
                .map_err(|(e, _)| e)
                .with_context(|| format!("logging the close of {key} to {}", self.topic))?;
        }
        self.producer
            .flush(ACK_TIMEOUT)
            .with_context(|| format!("waiting for {} to acknowledge day closes", self.topic))?;
        Ok(())
    }

    /// Log every close in the store after the store's log mark (closes a crash kept from the
    /// log), then move the mark.
    pub fn catch_up(&self, store: &Store) -> Result<()> {
        let mark = store.close_log_mark()?;
        let pending: Vec<DayClose> = store
            .closes()?
            .into_iter()
            .filter(|c| mark.is_none_or(|m| c.day > m))
            .collect();
        self.append(&pending)?;
        if let Some(last) = pending.last() {
            store.set_close_log_mark(last.day)?;
        }
        Ok(())
    }
}

/// Read the whole close log (last record per day wins). A topic with no records gives an
/// empty map; a topic that does not exist is an error naming it.
pub fn read_all(
    config: &ClientConfig,
    topic: &str,
    timeout: Duration,
) -> Result<BTreeMap<u32, DayClose>> {
    let mut out = BTreeMap::new();
    crate::topic_reader::read_to_end(
        config,
        topic,
        "smki-extract-close-log-reader",
        timeout,
        |m| {
            let close = DayClose::decode(m.payload().unwrap_or_default())
                .with_context(|| format!("{topic} offset {}: not a DayClose", m.offset()))?;
            out.insert(close.day, close);
            Ok(())
        },
    )
    .with_context(|| format!("reading the close log (create {topic}: 1 partition, compacted)"))?;
    Ok(out)
}
