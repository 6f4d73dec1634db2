//! Events files: Kafka records (key and value) stored as a sequence of length-delimited
//! `smki.v1.EventFileRecord` protobuf messages, so benchmarks and tests can feed the exact
//! records of a generated history through the pipeline without a broker.

use std::io::{BufWriter, Read, Write};
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

/// Streams the records of an events file, one at a time, in constant memory.
pub struct EventFileReader<R: Read> {
    input: R,
    buf: Vec<u8>,
    index: usize,
}

impl EventFileReader<std::io::BufReader<std::fs::File>> {
    /// Open `path` for streaming.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path)
            .with_context(|| format!("opening events file {}", path.display()))?;
        Ok(EventFileReader::new(std::io::BufReader::with_capacity(
            1 << 20,
            file,
        )))
    }
}

impl<R: Read> EventFileReader<R> {
    /// Read records from `input`.
    pub fn new(input: R) -> Self {
        EventFileReader {
            input,
            buf: Vec::new(),
            index: 0,
        }
    }

    /// The next record into `record` (reusing its buffers); `false` at a clean end of file.
    pub fn read_into(&mut self, record: &mut EventFileRecord) -> Result<bool> {
        // Length prefix: a protobuf varint, at most 10 bytes.
        let mut len: u64 = 0;
        for i in 0..10 {
            let mut byte = [0u8; 1];
            match self.input.read(&mut byte)? {
                0 if i == 0 => return Ok(false),
                0 => anyhow::bail!(
                    "events file truncated in the length of record {}",
                    self.index
                ),
                _ => {}
            }
            len |= u64::from(byte[0] & 0x7f) << (7 * i);
            if byte[0] & 0x80 == 0 {
                break;
            }
        }
        self.buf.resize(len as usize, 0);
        self.input
            .read_exact(&mut self.buf)
            .with_context(|| format!("events file truncated in record {}", self.index))?;
        record.clear();
        record
            .merge(&self.buf[..])
            .with_context(|| format!("events file record {} is corrupt", self.index))?;
        self.index += 1;
        Ok(true)
    }
}

/// Read a whole events file into memory.
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
        let mut reader = EventFileReader::open(&path).unwrap();
        let mut rec = EventFileRecord::default();
        assert!(reader.read_into(&mut rec).unwrap());
        assert_eq!(rec.key, b"k1");
        assert!(reader.read_into(&mut rec).unwrap());
        assert_eq!((rec.key.len(), rec.value.len()), (0, 300));
        assert!(!reader.read_into(&mut rec).unwrap());
        std::fs::write(&path, [0x05, 0x01]).unwrap();
        assert!(read_all(&path).is_err());
        assert!(EventFileReader::open(&path)
            .unwrap()
            .read_into(&mut rec)
            .is_err());
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
