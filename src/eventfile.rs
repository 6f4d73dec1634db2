//! Events files: Kafka records (key and value) stored as a sequence of length-delimited
//! `smki.v1.EventFileRecord` protobuf messages, so benchmarks and tests can feed the exact
//! records of a generated history through the pipeline without a broker.

use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};
use prost::Message;

use crate::contract::EventFileRecord;

/// Streams records into an events file.
pub struct EventFileWriter {
    out: BufWriter<std::fs::File>,
    buf: Vec<u8>,
}

impl EventFileWriter {
    /// Create (truncate) `path`.
    pub fn create(path: &Path) -> Result<Self> {
        let file = std::fs::File::create(path)
            .with_context(|| format!("creating events file {}", path.display()))?;
        Ok(EventFileWriter {
            out: BufWriter::with_capacity(1 << 20, file),
            buf: Vec::new(),
        })
    }

    /// Append one record.
    pub fn write(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.buf.clear();
        EventFileRecord {
            key: key.to_vec(),
            value: value.to_vec(),
        }
        .encode_length_delimited(&mut self.buf)?;
        self.out.write_all(&self.buf)?;
        Ok(())
    }

    /// Flush and sync to disk.
    pub fn finish(self) -> Result<()> {
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(())
    }
}

/// Read a whole events file into memory (benchmarks measure the pipeline, not the disk).
pub fn read_all(path: &Path) -> Result<Vec<EventFileRecord>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading events file {}", path.display()))?;
    let mut buf = bytes.as_slice();
    let mut out = Vec::new();
    while !buf.is_empty() {
        let rec = EventFileRecord::decode_length_delimited(&mut buf)
            .with_context(|| format!("events file {} record {}", path.display(), out.len()))?;
        out.push(rec);
    }
    Ok(out)
}

/// The partition a record with `key` lands in among `partitions`, for file-driven runs
/// (the broker's partitioner decides for real topics; any stable function keeps a
/// certificate's events together and in order, which is all ingest relies on).
pub fn partition_for_key(key: &[u8], partitions: u32) -> i32 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(key);
    (u32::from_be_bytes(d[..4].try_into().expect("4 bytes")) % partitions.max(1)) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_records_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.bin");
        let mut w = EventFileWriter::create(&path).unwrap();
        w.write(b"k1", b"v1").unwrap();
        w.write(b"", &[0u8; 300]).unwrap();
        w.finish().unwrap();
        let recs = read_all(&path).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].key, b"k1");
        assert_eq!(recs[1].value.len(), 300);
        std::fs::write(&path, [0x05, 0x01]).unwrap();
        assert!(read_all(&path).is_err());
    }

    #[test]
    fn partitioning_is_stable_and_in_range() {
        for k in [&b"a"[..], b"b", b"certificate"] {
            let p = partition_for_key(k, 6);
            assert!((0..6).contains(&p));
            assert_eq!(p, partition_for_key(k, 6));
        }
    }
}
