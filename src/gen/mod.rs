//! `gen`: realistic synthetic certificates and event histories, deterministic for a seed —
//! test data for the whole pipeline and load for the benchmarks.
//!
//! - [`pki`]: a GBCS-profile CA hierarchy and really-signed Organisation and Device
//!   certificates;
//! - [`history`]: an event history over N days, with the expected end state;
//! - [`output`]: writing a history to an events file or producing it to a Kafka topic.

pub mod history;
pub mod output;
pub mod pki;
