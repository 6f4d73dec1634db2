//! The embedded Kafka broker: librdkafka's in-process mock cluster, speaking the Kafka
//! protocol over TCP on a loopback port. Used by `demo` (zero set-up), fast tests and
//! benchmarks; the integration lane also runs against a real broker process (tansu).

use anyhow::{Context, Result};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

/// A running in-process Kafka cluster; stops when dropped.
pub struct EmbeddedKafka {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl EmbeddedKafka {
    /// Start a cluster of `brokers` brokers on loopback ports.
    pub fn start(brokers: i32) -> Result<EmbeddedKafka> {
        let cluster = MockCluster::new(brokers).context("starting the in-process Kafka cluster")?;
        Ok(EmbeddedKafka { cluster })
    }

    /// `bootstrap.servers` for clients.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Create a topic (the mock cluster does not implement the admin API).
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<()> {
        self.cluster
            .create_topic(name, partitions, 1)
            .with_context(|| format!("creating topic {name} on the in-process cluster"))
    }
}
