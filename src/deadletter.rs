//! Where bad events go (guarantee 2): the dead-letter topic, with the reason and the origin
//! of each record in its headers.
//!
//! A dead letter carries the original key and value unchanged, plus headers:
//! `smki-dlq-reason` (a stable code, see [`crate::ingest::Reason`]), `smki-dlq-detail`
//! (human text), `smki-origin-topic`, `smki-origin-partition` and `smki-origin-offset`.
//! Delivery is at-least-once: [`DeadLetterSink::flush`] returns only when every dead letter
//! is acknowledged by the broker, and the ingest pipeline writes its offsets only after that.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

/// Header names of dead letters.
pub mod headers {
    /// Reason code.
    pub const REASON: &str = "smki-dlq-reason";
    /// Human explanation.
    pub const DETAIL: &str = "smki-dlq-detail";
    /// Topic the record was read from.
    pub const ORIGIN_TOPIC: &str = "smki-origin-topic";
    /// Partition the record was read from (decimal text).
    pub const ORIGIN_PARTITION: &str = "smki-origin-partition";
    /// Offset of the record (decimal text).
    pub const ORIGIN_OFFSET: &str = "smki-origin-offset";
}

/// One rejected record on its way to the dead-letter topic.
#[derive(Clone, Copy, Debug)]
pub struct DeadLetter<'a> {
    /// Origin partition.
    pub partition: i32,
    /// Origin offset.
    pub offset: i64,
    /// Original key.
    pub key: Option<&'a [u8]>,
    /// Original value.
    pub value: Option<&'a [u8]>,
    /// Reason code.
    pub reason: &'static str,
    /// Human explanation.
    pub detail: &'a str,
}

/// Somewhere dead letters can be sent and then acknowledged.
///
/// Dead letters are numbered in the order they are sent; `acknowledged` is how many of the
/// first ones are durably accepted (a prefix), so the ingest pipeline can write the offsets
/// of a batch as soon as every dead letter sent before the batch's end is safe.
pub trait DeadLetterSink {
    /// Queue one dead letter.
    fn send(&mut self, letter: DeadLetter<'_>) -> Result<()>;
    /// How many dead letters were sent so far.
    fn sent(&self) -> u64;
    /// How many of the first [`Self::sent`] dead letters are durably accepted, without
    /// waiting; an error if any delivery failed.
    fn acknowledged(&mut self) -> Result<u64>;
    /// Return once every queued dead letter is durably accepted; an error if any failed.
    fn flush(&mut self) -> Result<()>;
}

/// An owned copy of a dead letter (in-memory sink, tests, the benchmark).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedDeadLetter {
    /// Origin partition.
    pub partition: i32,
    /// Origin offset.
    pub offset: i64,
    /// Reason code.
    pub reason: String,
    /// Human explanation.
    pub detail: String,
}

/// Keeps dead letters in memory: for the file-driven benchmark and unit tests, where there is
/// no broker.
#[derive(Default)]
pub struct MemoryDeadLetters {
    /// Every dead letter sent, in order.
    pub letters: Vec<OwnedDeadLetter>,
}

impl DeadLetterSink for MemoryDeadLetters {
    fn send(&mut self, l: DeadLetter<'_>) -> Result<()> {
        self.letters.push(OwnedDeadLetter {
            partition: l.partition,
            offset: l.offset,
            reason: l.reason.to_string(),
            detail: l.detail.to_string(),
        });
        Ok(())
    }
    fn sent(&self) -> u64 {
        self.letters.len() as u64
    }
    fn acknowledged(&mut self) -> Result<u64> {
        Ok(self.letters.len() as u64)
    }
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Counts dead letters and sends none: for `replay`, which re-reads records whose dead
/// letters the original run already sent (the metrics still count them by reason).
#[derive(Default)]
pub struct DiscardDeadLetters {
    sent: u64,
}

impl DeadLetterSink for DiscardDeadLetters {
    fn send(&mut self, _: DeadLetter<'_>) -> Result<()> {
        self.sent += 1;
        Ok(())
    }
    fn sent(&self) -> u64 {
        self.sent
    }
    fn acknowledged(&mut self) -> Result<u64> {
        Ok(self.sent)
    }
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Producer context that tracks deliveries by sequence number: which prefix of the sent
/// messages is acknowledged, and whether any failed.
#[derive(Default)]
pub struct DeliveryTracker {
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    acked: Mutex<AckedPrefix>,
}

/// Contiguous acknowledged prefix plus acknowledgements beyond a gap.
#[derive(Default)]
struct AckedPrefix {
    prefix: u64,
    beyond: std::collections::BTreeSet<u64>,
}

impl DeliveryTracker {
    /// Deliveries that failed so far.
    pub fn failed_deliveries(&self) -> u64 {
        self.failed.load(Ordering::SeqCst)
    }

    /// How many of the messages numbered 0, 1, 2, … are acknowledged, as a prefix.
    pub fn acknowledged_prefix(&self) -> u64 {
        self.acked.lock().expect("not poisoned").prefix
    }

    fn first_error(&self) -> Option<String> {
        self.first_error.lock().expect("not poisoned").clone()
    }
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    /// The message's sequence number.
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        match result {
            Ok(_) => {
                let mut acked = self.acked.lock().expect("not poisoned");
                acked.beyond.insert(seq as u64);
                loop {
                    let next = acked.prefix;
                    if !acked.beyond.remove(&next) {
                        break;
                    }
                    acked.prefix += 1;
                }
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::SeqCst);
                let mut first = self.first_error.lock().expect("not poisoned");
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// Dead letters produced to a Kafka topic.
pub struct KafkaDeadLetters {
    producer: ThreadedProducer<DeliveryTracker>,
    tracker: Arc<DeliveryTracker>,
    sent: u64,
    topic: String,
    origin_topic: String,
    flush_timeout: Duration,
}

impl KafkaDeadLetters {
    /// A producer to `topic` for records read from `origin_topic`. `config` carries the
    /// connection settings (bootstrap servers, TLS, SASL). Every dead letter needs the
    /// acknowledgement of all in-sync replicas. Idempotence is not needed — the order of
    /// dead letters does not matter and a repeated one is identified by its origin headers
    /// — and is left off, so the service does not depend on the broker handing out
    /// producer ids (measured: tansu 0.6 sometimes stalls on them for a minute).
    pub fn new(config: &ClientConfig, topic: &str, origin_topic: &str) -> Result<Self> {
        let mut config = config.clone();
        config
            .set("enable.idempotence", "false")
            .set("acks", "all")
            .set("linger.ms", "5");
        let producer: ThreadedProducer<DeliveryTracker> = config
            .create_with_context(DeliveryTracker::default())
            .context("creating the dead-letter producer")?;
        let tracker = producer.context().clone();
        Ok(KafkaDeadLetters {
            producer,
            tracker,
            sent: 0,
            topic: topic.to_string(),
            origin_topic: origin_topic.to_string(),
            flush_timeout: Duration::from_secs(60),
        })
    }

    /// The dead-letter topic name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// A failed delivery is final: the service stops rather than move offsets past a dead
    /// letter that is not on the topic (librdkafka has already retried it).
    fn check_failures(&self) -> Result<()> {
        let failed = self.tracker.failed_deliveries();
        if failed > 0 {
            bail!(
                "{failed} dead letters to {} failed: {}",
                self.topic,
                self.tracker.first_error().unwrap_or_default()
            );
        }
        Ok(())
    }
}

impl DeadLetterSink for KafkaDeadLetters {
    fn send(&mut self, l: DeadLetter<'_>) -> Result<()> {
        let partition = l.partition.to_string();
        let offset = l.offset.to_string();
        let hdrs = OwnedHeaders::new()
            .insert(Header {
                key: headers::REASON,
                value: Some(l.reason),
            })
            .insert(Header {
                key: headers::DETAIL,
                value: Some(l.detail),
            })
            .insert(Header {
                key: headers::ORIGIN_TOPIC,
                value: Some(self.origin_topic.as_str()),
            })
            .insert(Header {
                key: headers::ORIGIN_PARTITION,
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: headers::ORIGIN_OFFSET,
                value: Some(offset.as_str()),
            });
        let mut record: BaseRecord<'_, [u8], [u8], usize> =
            BaseRecord::with_opaque_to(&self.topic, self.sent as usize).headers(hdrs);
        if let Some(k) = l.key {
            record = record.key(k);
        }
        if let Some(v) = l.value {
            record = record.payload(v);
        }
        let mut record = record;
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    self.sent += 1;
                    return Ok(());
                }
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    r,
                )) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err((e, _)) => bail!("queueing a dead letter for {}: {e}", self.topic),
            }
        }
    }

    fn sent(&self) -> u64 {
        self.sent
    }

    fn acknowledged(&mut self) -> Result<u64> {
        self.check_failures()?;
        Ok(self.tracker.acknowledged_prefix())
    }

    fn flush(&mut self) -> Result<()> {
        self.producer
            .flush(self.flush_timeout)
            .with_context(|| format!("dead letters to {} not acknowledged", self.topic))?;
        self.check_failures()?;
        let acked = self.tracker.acknowledged_prefix();
        if acked < self.sent {
            bail!(
                "only {acked} of {} dead letters to {} acknowledged",
                self.sent,
                self.topic
            );
        }
        Ok(())
    }
}

/// Read every dead letter currently on `topic` (the demo's report, tests, operators' checks):
/// assigns all partitions from the beginning and reads until each is at its end.
pub fn read_all(
    config: &ClientConfig,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<OwnedDeadLetter>> {
    use rdkafka::message::{Headers, Message};
    let mut out = Vec::new();
    crate::topic_reader::read_to_end(config, topic, "smki-extract-dlq-reader", timeout, |m| {
        let mut letter = OwnedDeadLetter {
            partition: -1,
            offset: -1,
            reason: String::new(),
            detail: String::new(),
        };
        if let Some(h) = m.headers() {
            for header in h.iter() {
                let v = String::from_utf8_lossy(header.value.unwrap_or_default()).to_string();
                match header.key {
                    headers::REASON => letter.reason = v,
                    headers::DETAIL => letter.detail = v,
                    headers::ORIGIN_PARTITION => letter.partition = v.parse().unwrap_or(-1),
                    headers::ORIGIN_OFFSET => letter.offset = v.parse().unwrap_or(-1),
                    _ => {}
                }
            }
        }
        out.push(letter);
        Ok(())
    })?;
    Ok(out)
}
