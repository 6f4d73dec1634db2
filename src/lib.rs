//! smki-extract: publishes the GB SMKI Repository extracts from a Kafka stream of
//! certificate events. See DESIGN (shared) and README for the whole picture; each module
//! below has one job.

pub mod certificate;
pub mod closelog;
pub mod config;
pub mod consumer;
pub mod contract;
pub mod day;
pub mod deadletter;
pub mod demo;
pub mod dirlock;
pub mod eui64;
pub mod eventfile;
pub mod extract;
pub mod gen;
pub mod http;
pub mod ingest;
pub mod lag;
pub mod metrics;
pub mod mock;
pub mod party;
pub mod publication;
pub mod replay;
pub mod store;
pub mod store_metrics;
pub mod topic_reader;
pub mod window;
