//! The RocksDB state store: the current record of every certificate, a change index by day,
//! and the consumer offsets that produced them.
//!
//! Layout (one column family each, all keys big-endian so that byte order is numeric order):
//! - `certs`:   `partition u32 | issuer-hash [8] | serial` → [`CertificateRecord`] (protobuf,
//!   without the DER: small, so the working set of ingest stays in the block cache);
//! - `bodies`:  same key → the certificate DER (written once at lodging);
//! - `changes`: `partition u32 | day u32 | issuer-hash [8] | serial` → empty, where `day` is
//!   the delta day (days from the Common Era, see [`crate::day`]) in which the certificate
//!   was lodged or changed status: the delta of a day is a range scan, whatever the store size;
//! - `offsets`: `partition u32` → next offset to consume, `i64`;
//! - `meta`:    store format version and the topic the store was built from.
//!
//! Everything is keyed by Kafka partition first, so that the state of one partition is a
//! contiguous key range that can be rebuilt, moved or dropped on its own (DESIGN §7).
//! State changes and the offsets that produced them are only ever written together, in one
//! [`WriteBatch`] ([`Store::write`]) with the WAL on: guarantee 1.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use prost::Message;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType,
    IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions, DB,
};

use crate::contract::{CertificateRecord, CertificateStatus, StoredType};

/// Version of the on-disk layout and encoding. A store of another version is refused at
/// open with a message saying what to do, never silently misread.
pub const FORMAT_VERSION: u32 = 1;

const CF_META: &str = "meta";
const CF_CERTS: &str = "certs";
const CF_BODIES: &str = "bodies";
const CF_CHANGES: &str = "changes";
const CF_OFFSETS: &str = "offsets";
const META_FORMAT: &[u8] = b"format_version";
const META_TOPIC: &[u8] = b"topic";
/// Every column family of the store (the `cf` label of the RocksDB metrics).
pub const COLUMN_FAMILIES: [&str; 5] = [CF_META, CF_CERTS, CF_BODIES, CF_CHANGES, CF_OFFSETS];

/// Key of a certificate within the store: partition, issuer hash and serial.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CertKey(Vec<u8>);

impl CertKey {
    /// Build the key of a certificate stored under `partition`.
    pub fn new(partition: i32, issuer_hash: &[u8; 8], serial: &[u8]) -> CertKey {
        let mut k = Vec::with_capacity(12 + serial.len());
        k.extend_from_slice(&partition_bytes(partition));
        k.extend_from_slice(issuer_hash);
        k.extend_from_slice(serial);
        CertKey(k)
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Partition the certificate's events arrive on.
    pub fn partition(&self) -> i32 {
        i32::from_be_bytes(self.0[..4].try_into().expect("4 bytes"))
    }

    /// The part after the partition (issuer hash and serial).
    fn suffix(&self) -> &[u8] {
        &self.0[4..]
    }

    /// Key of this certificate's entry in the change index for `day`.
    pub fn change_key(&self, day: u32) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.0.len() + 4);
        k.extend_from_slice(&self.0[..4]);
        k.extend_from_slice(&day.to_be_bytes());
        k.extend_from_slice(self.suffix());
        k
    }
}

fn partition_bytes(partition: i32) -> [u8; 4] {
    debug_assert!(partition >= 0, "Kafka partitions are non-negative");
    (partition as u32).to_be_bytes()
}

/// Writes that must land together: certificate records, change-index entries and the next
/// offsets of the partitions they came from.
#[derive(Default)]
pub struct StoreBatch {
    certs: Vec<(CertKey, Vec<u8>)>,
    bodies: Vec<(CertKey, Vec<u8>)>,
    changes: Vec<Vec<u8>>,
    offsets: BTreeMap<i32, i64>,
}

impl StoreBatch {
    /// Set a certificate's record (its `certificate_der` must be empty: see [`Self::put_body`]).
    pub fn put_cert(&mut self, key: CertKey, record: &CertificateRecord) {
        debug_assert!(record.certificate_der.is_empty(), "DER goes to put_body");
        self.certs.push((key, record.encode_to_vec()));
    }

    /// Store a newly lodged certificate's DER.
    pub fn put_body(&mut self, key: CertKey, der: Vec<u8>) {
        self.bodies.push((key, der));
    }

    /// Note that the certificate changed on `day` (it belongs in that day's delta).
    pub fn put_change(&mut self, key: &CertKey, day: u32) {
        self.changes.push(key.change_key(day));
    }

    /// Record that everything before `next_offset` of `partition` is in the store.
    pub fn put_offset(&mut self, partition: i32, next_offset: i64) {
        self.offsets.insert(partition, next_offset);
    }

    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
            && self.bodies.is_empty()
            && self.changes.is_empty()
            && self.offsets.is_empty()
    }
}

/// Counts of certificates by type and status (reports, the demo, tests, metrics).
pub type Census = BTreeMap<(String, String), u64>;

/// The open state store.
pub struct Store {
    db: DB,
    path: PathBuf,
    write_opts: WriteOptions,
}

impl Store {
    /// Open (creating if missing) the store at `path` for `topic`.
    ///
    /// Refuses a store written by another format version or built from another topic.
    pub fn open(path: &Path, topic: &str) -> Result<Store> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_bytes_per_sync(1 << 20);
        opts.set_keep_log_file_num(5);

        let cache = Cache::new_lru_cache(256 << 20);
        // Records: small values read at random by ingest — small blocks, bloom filters, and
        // a memtable bloom so that lookups of new certificates (misses) stay cheap.
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        table.set_block_size(4 << 10);
        let mut certs = Options::default();
        certs.set_block_based_table_factory(&table);
        certs.set_compression_type(DBCompressionType::Lz4);
        certs.set_bottommost_compression_type(DBCompressionType::Zstd);
        certs.set_write_buffer_size(64 << 20);
        certs.set_memtable_whole_key_filtering(true);
        certs.set_memtable_prefix_bloom_ratio(0.05);
        certs.set_level_compaction_dynamic_level_bytes(true);

        // Bodies: DER (keys and signatures do not compress), written once, read in key
        // order when files are written.
        let mut body_table = BlockBasedOptions::default();
        body_table.set_block_cache(&cache);
        body_table.set_block_size(32 << 10);
        let mut bodies = Options::default();
        bodies.set_block_based_table_factory(&body_table);
        bodies.set_compression_type(DBCompressionType::None);
        bodies.set_write_buffer_size(64 << 20);
        bodies.set_level_compaction_dynamic_level_bytes(true);

        let mut index = Options::default();
        index.set_compression_type(DBCompressionType::Lz4);
        index.set_level_compaction_dynamic_level_bytes(true);

        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_META, Options::default()),
            ColumnFamilyDescriptor::new(CF_CERTS, certs),
            ColumnFamilyDescriptor::new(CF_BODIES, bodies),
            ColumnFamilyDescriptor::new(CF_CHANGES, index),
            ColumnFamilyDescriptor::new(CF_OFFSETS, Options::default()),
        ];
        let db = DB::open_cf_descriptors(&opts, path, cfs)
            .with_context(|| format!("opening state store {}", path.display()))?;
        let store = Store {
            db,
            path: path.to_path_buf(),
            write_opts: WriteOptions::default(),
        };
        store.check_or_init_meta(topic)?;
        Ok(store)
    }

    fn check_or_init_meta(&self, topic: &str) -> Result<()> {
        let meta = self.cf(CF_META);
        match self.db.get_cf(meta, META_FORMAT)? {
            None => {
                if self
                    .db
                    .iterator_cf(self.cf(CF_CERTS), IteratorMode::Start)
                    .next()
                    .is_some()
                {
                    bail!(
                        "state store {} holds certificates but no format version: not a store of this service",
                        self.path.display()
                    );
                }
                let mut wb = WriteBatch::default();
                wb.put_cf(meta, META_FORMAT, FORMAT_VERSION.to_be_bytes());
                wb.put_cf(meta, META_TOPIC, topic.as_bytes());
                self.db.write_opt(wb, &self.write_opts)?;
            }
            Some(v) => {
                let version = u32::from_be_bytes(v.as_slice().try_into().map_err(|_| {
                    anyhow::anyhow!(
                        "state store {}: corrupt format version",
                        self.path.display()
                    )
                })?);
                if version != FORMAT_VERSION {
                    bail!(
                        "state store {} has format version {version}, this build reads version {FORMAT_VERSION}: \
                         rebuild it from the topic with `smki-extract replay` into an empty directory",
                        self.path.display()
                    );
                }
                let stored = self.db.get_cf(meta, META_TOPIC)?.unwrap_or_default();
                if stored != topic.as_bytes() {
                    bail!(
                        "state store {} was built from topic {:?}, not {topic:?}",
                        self.path.display(),
                        String::from_utf8_lossy(&stored)
                    );
                }
            }
        }
        Ok(())
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    /// Where the store lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current record of a certificate.
    pub fn get_cert(&self, key: &CertKey) -> Result<Option<CertificateRecord>> {
        match self.db.get_pinned_cf(self.cf(CF_CERTS), key.as_bytes())? {
            None => Ok(None),
            Some(bytes) => Ok(Some(
                CertificateRecord::decode(bytes.as_ref()).with_context(|| {
                    format!(
                        "corrupt certificate record under key {}",
                        hex::encode(key.as_bytes())
                    )
                })?,
            )),
        }
    }

    /// The DER of a stored certificate.
    pub fn get_body(&self, key: &CertKey) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(CF_BODIES), key.as_bytes())?)
    }

    /// The next offset to consume from `partition`, if anything of it was ever stored.
    pub fn next_offset(&self, partition: i32) -> Result<Option<i64>> {
        Ok(self
            .db
            .get_cf(self.cf(CF_OFFSETS), partition_bytes(partition))?
            .map(|v| decode_i64(&v))
            .transpose()?)
    }

    /// Next offsets of every partition the store has seen.
    pub fn offsets(&self) -> Result<BTreeMap<i32, i64>> {
        let mut out = BTreeMap::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_OFFSETS), IteratorMode::Start)
        {
            let (k, v) = item?;
            let p = u32::from_be_bytes(k.as_ref().try_into().context("corrupt offset key")?);
            out.insert(p as i32, decode_i64(&v)?);
        }
        Ok(out)
    }

    /// Apply a batch atomically (one RocksDB WriteBatch through the WAL).
    ///
    /// Entries are inserted in key order: the memtable's skip list inserts sorted keys far
    /// faster than random ones (measured: a quarter of ingest time went to random inserts).
    pub fn write(&self, mut batch: StoreBatch) -> Result<()> {
        batch.certs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        batch.bodies.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        batch.changes.sort_unstable();
        batch.changes.dedup();
        let mut wb = WriteBatch::default();
        let certs = self.cf(CF_CERTS);
        for (k, v) in &batch.certs {
            wb.put_cf(certs, k.as_bytes(), v);
        }
        let bodies = self.cf(CF_BODIES);
        for (k, v) in &batch.bodies {
            wb.put_cf(bodies, k.as_bytes(), v);
        }
        let changes = self.cf(CF_CHANGES);
        for k in &batch.changes {
            wb.put_cf(changes, k, []);
        }
        let offsets = self.cf(CF_OFFSETS);
        for (p, o) in &batch.offsets {
            wb.put_cf(offsets, partition_bytes(*p), o.to_be_bytes());
        }
        self.db
            .write_opt(wb, &self.write_opts)
            .context("writing a batch to the state store")
    }

    /// Every certificate record, in key order (partition, issuer, serial).
    pub fn certificates(&self) -> impl Iterator<Item = Result<(CertKey, CertificateRecord)>> + '_ {
        let mut ro = ReadOptions::default();
        ro.fill_cache(false);
        self.db
            .iterator_cf_opt(self.cf(CF_CERTS), ro, IteratorMode::Start)
            .map(|item| {
                let (k, v) = item?;
                let rec = CertificateRecord::decode(v.as_ref())
                    .with_context(|| format!("corrupt certificate record {}", hex::encode(&k)))?;
                Ok((CertKey(k.into_vec()), rec))
            })
    }

    /// Change-index entries of `partition` for `day`, as certificate keys.
    pub fn changes_on(&self, partition: i32, day: u32) -> Result<Vec<CertKey>> {
        let mut prefix = partition_bytes(partition).to_vec();
        prefix.extend_from_slice(&day.to_be_bytes());
        let mut out = Vec::new();
        for item in self.db.prefix_iterator_cf(self.cf(CF_CHANGES), &prefix) {
            let (k, _) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            let mut key = partition_bytes(partition).to_vec();
            key.extend_from_slice(&k[8..]);
            out.push(CertKey(key));
        }
        Ok(out)
    }

    /// Count certificates by type and status (a full scan).
    pub fn census(&self) -> Result<Census> {
        Ok(self.census_while(|| true)?.expect("never interrupted"))
    }

    /// [`Store::census`] that asks `go_on` every few thousand records whether to continue
    /// (`None` when told to stop): the metrics census runs in the background and must not
    /// hold a closing store open for the length of a 100-million-record scan.
    pub fn census_while(&self, mut go_on: impl FnMut() -> bool) -> Result<Option<Census>> {
        let mut out = Census::new();
        for (i, item) in self.certificates().enumerate() {
            if i % 4096 == 0 && !go_on() {
                return Ok(None);
            }
            let (_, rec) = item?;
            let t = StoredType::try_from(rec.certificate_type)
                .map(|t| {
                    t.as_str_name()
                        .trim_start_matches("CERTIFICATE_TYPE_")
                        .to_string()
                })
                .unwrap_or_else(|_| "?".into());
            let s = CertificateStatus::try_from(rec.status)
                .map(|s| s.code().to_string())
                .unwrap_or_else(|_| "?".into());
            *out.entry((t, s)).or_default() += 1;
        }
        Ok(Some(out))
    }

    /// An integer property of one column family (metrics), e.g. `rocksdb.live-sst-files-size`.
    pub fn property_int_of(&self, column_family: &str, name: &str) -> Option<u64> {
        let cf = self.db.cf_handle(column_family)?;
        self.db.property_int_value_cf(cf, name).ok().flatten()
    }

    /// RocksDB's own estimate of a property (metrics), e.g. `rocksdb.estimate-num-keys`.
    pub fn property_int(&self, name: &str) -> Option<u64> {
        self.db
            .property_int_value_cf(self.cf(CF_CERTS), name)
            .ok()
            .flatten()
    }
}

fn decode_i64(v: &[u8]) -> Result<i64> {
    Ok(i64::from_be_bytes(
        v.try_into().context("corrupt offset value")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: CertificateStatus) -> CertificateRecord {
        CertificateRecord {
            status: status as i32,
            certificate_type: StoredType::Device as i32,
            applied_event_ids: vec!["e1".into()],
            applied_events: 1,
            ..Default::default()
        }
    }

    #[test]
    fn keys_order_by_partition_then_issuer_then_serial() {
        let a = CertKey::new(1, &[0; 8], &[0xff]);
        let b = CertKey::new(2, &[0; 8], &[0x00]);
        let c = CertKey::new(2, &[0; 8], &[0x01]);
        assert!(a < b && b < c);
        assert_eq!(b.partition(), 2);
        let ck = c.change_key(739_000);
        assert_eq!(&ck[..4], &2u32.to_be_bytes());
        assert_eq!(&ck[4..8], &739_000u32.to_be_bytes());
        assert_eq!(&ck[8..], &c.as_bytes()[4..]);
    }

    #[test]
    fn a_batch_lands_whole_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let key = CertKey::new(3, &[7; 8], &[1, 2]);
        {
            let store = Store::open(dir.path(), "certs").unwrap();
            assert_eq!(store.next_offset(3).unwrap(), None);
            let mut b = StoreBatch::default();
            b.put_cert(key.clone(), &record(CertificateStatus::InUse));
            b.put_body(key.clone(), vec![0x30, 0x03, 1, 2, 3]);
            b.put_change(&key, 739_001);
            b.put_offset(3, 42);
            store.write(b).unwrap();
        }
        let store = Store::open(dir.path(), "certs").unwrap();
        assert_eq!(store.next_offset(3).unwrap(), Some(42));
        assert_eq!(store.offsets().unwrap(), BTreeMap::from([(3, 42)]));
        let rec = store.get_cert(&key).unwrap().unwrap();
        assert_eq!(rec, record(CertificateStatus::InUse));
        assert_eq!(
            store.get_body(&key).unwrap(),
            Some(vec![0x30, 0x03, 1, 2, 3])
        );
        assert_eq!(store.changes_on(3, 739_001).unwrap(), vec![key.clone()]);
        assert!(store.changes_on(3, 739_002).unwrap().is_empty());
        assert!(store.changes_on(2, 739_001).unwrap().is_empty());
        let census = store.census().unwrap();
        assert_eq!(census.get(&("DEVICE".into(), "I".into())), Some(&1));
    }

    #[test]
    fn refuses_another_topic_and_another_format_version() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path(), "certs").unwrap());
        let err = Store::open(dir.path(), "other").err().unwrap();
        assert!(err.to_string().contains("topic"), "{err}");
        {
            let store = Store::open(dir.path(), "certs").unwrap();
            store
                .db
                .put_cf(store.cf(CF_META), META_FORMAT, 99u32.to_be_bytes())
                .unwrap();
        }
        let err = Store::open(dir.path(), "certs").err().unwrap();
        assert!(err.to_string().contains("format version 99"), "{err}");
    }
}
