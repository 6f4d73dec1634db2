//! The Party side (issue 4): what an energy company or network operator runs against the
//! published files — `sync` into a local copy, `verify` of files, `lookup` and `export` of
//! the copy. Nothing here touches the service's store or Kafka: the files are the interface.

pub mod cli;
pub mod copy;
pub mod lookup;
pub mod schema;
pub mod sync;
pub mod verify;
