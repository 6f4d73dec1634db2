//! The RocksDB state store: the current record of every certificate, its version at the close
//! of every delta day it changed in, the delta index, the window clock and the consumer
//! offsets that produced them.
//!
//! Layout (one column family each; all integers big-endian so byte order is numeric order; a
//! *cert key* is `partition u32 | issuer-hash [8] | serial length u8 | serial`, prefix-free):
//! - `certs`:   cert key → the current [`CertificateRecord`] (protobuf, without the DER:
//!   small, so the working set of ingest stays in the block cache);
//! - `bodies`:  cert key → the certificate DER (written once at lodging);
//! - `history`: cert key `| day u32` → the record as it stood at the close of delta day
//!   `day` (its last change that day). Entries of a closed day never change again, so the
//!   delta of any closed day and the full "as of" any closed day can be written, byte for
//!   byte the same, at any later time — while ingest goes on;
//! - `changes`: `partition u32 | day u32 |` cert-key suffix → empty: the delta index, so the
//!   delta of a day is a range scan whose cost follows the day's changes, not the store;
//! - `expiry`:  `day u32 |` cert key → empty: Organisation and CA certificates whose notAfter
//!   falls within `day`, expired when the day closes on their partition;
//! - `clock`:   `partition u32` → [`PartitionClock`] (event-time watermark, forced cuts);
//! - `closes`:  `day u32` → [`DayClose`]: when each day closed, at which offsets;
//! - `offsets`: `partition u32` → next offset to consume, `i64`;
//! - `meta`:    store format version, the topic the store was built from, the first day.
//!
//! Everything a partition owns is keyed by partition first (or carries it in the key), so
//! that the state of one partition can be rebuilt, moved or dropped on its own (DESIGN §7).
//! State changes and the offsets that produced them are only ever written together, in one
//! [`WriteBatch`] ([`Store::write`]) with the WAL on: guarantee 1.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use prost::Message;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType,
    DBRawIteratorWithThreadMode, IteratorMode, Options, ReadOptions, SnapshotWithThreadMode,
    WriteBatch, WriteOptions, DB,
};

use crate::contract::{CertificateRecord, CertificateStatus, DayClose, PartitionClock, StoredType};

/// Version of the on-disk layout and encoding. A store of another version is refused at
/// open with a message saying what to do, never silently misread.
pub const FORMAT_VERSION: u32 = 2;

const CF_META: &str = "meta";
const CF_CERTS: &str = "certs";
const CF_BODIES: &str = "bodies";
const CF_HISTORY: &str = "history";
const CF_CHANGES: &str = "changes";
const CF_EXPIRY: &str = "expiry";
const CF_CLOCK: &str = "clock";
const CF_CLOSES: &str = "closes";
const CF_OFFSETS: &str = "offsets";
const META_FORMAT: &[u8] = b"format_version";
const META_TOPIC: &[u8] = b"topic";
const META_FIRST_DAY: &[u8] = b"first_day";
const META_CLOSE_LOG_MARK: &[u8] = b"close_log_mark";
const META_REPLAY_INCOMPLETE: &[u8] = b"replay_incomplete";
/// Every column family of the store (the `cf` label of the RocksDB metrics).
pub const COLUMN_FAMILIES: [&str; 9] = [
    CF_META, CF_CERTS, CF_BODIES, CF_HISTORY, CF_CHANGES, CF_EXPIRY, CF_CLOCK, CF_CLOSES,
    CF_OFFSETS,
];

/// Key of a certificate within the store: partition, issuer hash and length-prefixed serial.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CertKey(Vec<u8>);

impl CertKey {
    /// Build the key of a certificate stored under `partition`. Serials are at most
    /// [`crate::certificate::MAX_SERIAL_LEN`] bytes (callers check), so the length fits a byte.
    pub fn new(partition: i32, issuer_hash: &[u8; 8], serial: &[u8]) -> CertKey {
        debug_assert!(serial.len() <= u8::MAX as usize);
        let mut k = Vec::with_capacity(13 + serial.len());
        k.extend_from_slice(&partition_bytes(partition));
        k.extend_from_slice(issuer_hash);
        k.push(serial.len().min(u8::MAX as usize) as u8);
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

    /// Key of this certificate's version at the close of `day`.
    pub fn history_key(&self, day: u32) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.0.len() + 4);
        k.extend_from_slice(&self.0);
        k.extend_from_slice(&day.to_be_bytes());
        k
    }

    fn expiry_key(&self, day: u32) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.0.len() + 4);
        k.extend_from_slice(&day.to_be_bytes());
        k.extend_from_slice(&self.0);
        k
    }

    fn from_change_key(k: &[u8]) -> CertKey {
        let mut key = k[..4].to_vec();
        key.extend_from_slice(&k[8..]);
        CertKey(key)
    }
}

fn partition_bytes(partition: i32) -> [u8; 4] {
    debug_assert!(partition >= 0, "Kafka partitions are non-negative");
    (partition as u32).to_be_bytes()
}

/// Writes that must land together: certificate records and their versions, change-index and
/// expiry entries, window-clock state, day closes and the next offsets of the partitions
/// they came from.
#[derive(Default)]
pub struct StoreBatch {
    certs: Vec<(CertKey, Vec<u8>)>,
    bodies: Vec<(CertKey, Vec<u8>)>,
    history: Vec<(Vec<u8>, Vec<u8>)>,
    changes: Vec<Vec<u8>>,
    expiry: Vec<Vec<u8>>,
    clocks: BTreeMap<i32, Vec<u8>>,
    closes: Vec<(u32, Vec<u8>)>,
    offsets: BTreeMap<i32, i64>,
    first_day: Option<u32>,
}

impl StoreBatch {
    /// Set a certificate's current record (its `certificate_der` must be empty: see
    /// [`Self::put_body`]).
    pub fn put_cert(&mut self, key: CertKey, record: &CertificateRecord) {
        debug_assert!(record.certificate_der.is_empty(), "DER goes to put_body");
        self.certs.push((key, record.encode_to_vec()));
    }

    /// Store a newly lodged certificate's DER.
    pub fn put_body(&mut self, key: CertKey, der: Vec<u8>) {
        self.bodies.push((key, der));
    }

    /// Record the certificate's version at the close of delta `day` and list it in that
    /// day's delta.
    pub fn put_version(&mut self, key: &CertKey, day: u32, record: &CertificateRecord) {
        debug_assert!(record.certificate_der.is_empty(), "DER goes to put_body");
        self.history
            .push((key.history_key(day), record.encode_to_vec()));
        self.changes.push(key.change_key(day));
    }

    /// Note that the certificate expires when `day` closes.
    pub fn put_expiry(&mut self, key: &CertKey, day: u32) {
        self.expiry.push(key.expiry_key(day));
    }

    /// Persist a partition's window clock.
    pub fn put_clock(&mut self, partition: i32, clock: &PartitionClock) {
        self.clocks.insert(partition, clock.encode_to_vec());
    }

    /// Record that a day closed everywhere.
    pub fn put_close(&mut self, close: &DayClose) {
        self.closes.push((close.day, close.encode_to_vec()));
    }

    /// Record the first day any change belongs to (the first delta to publish).
    pub fn set_first_day(&mut self, day: u32) {
        self.first_day = Some(day);
    }

    /// Record that everything before `next_offset` of `partition` is in the store.
    pub fn put_offset(&mut self, partition: i32, next_offset: i64) {
        self.offsets.insert(partition, next_offset);
    }

    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
            && self.bodies.is_empty()
            && self.history.is_empty()
            && self.changes.is_empty()
            && self.expiry.is_empty()
            && self.clocks.is_empty()
            && self.closes.is_empty()
            && self.offsets.is_empty()
            && self.first_day.is_none()
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

/// Options of the store's column families; the same for read-write and read-only opens.
fn column_families() -> Vec<ColumnFamilyDescriptor> {
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

    // History: written once per certificate and day, read in key order (full extracts) or
    // by point lookup (deltas); records compress well (issuer names repeat).
    let mut history_table = BlockBasedOptions::default();
    history_table.set_block_cache(&cache);
    history_table.set_bloom_filter(10.0, false);
    history_table.set_block_size(16 << 10);
    let mut history = Options::default();
    history.set_block_based_table_factory(&history_table);
    history.set_compression_type(DBCompressionType::Lz4);
    history.set_bottommost_compression_type(DBCompressionType::Zstd);
    history.set_write_buffer_size(64 << 20);
    history.set_level_compaction_dynamic_level_bytes(true);

    let mut index = Options::default();
    index.set_compression_type(DBCompressionType::Lz4);
    index.set_level_compaction_dynamic_level_bytes(true);

    vec![
        ColumnFamilyDescriptor::new(CF_META, Options::default()),
        ColumnFamilyDescriptor::new(CF_CERTS, certs),
        ColumnFamilyDescriptor::new(CF_BODIES, bodies),
        ColumnFamilyDescriptor::new(CF_HISTORY, history),
        ColumnFamilyDescriptor::new(CF_CHANGES, index.clone()),
        ColumnFamilyDescriptor::new(CF_EXPIRY, index),
        ColumnFamilyDescriptor::new(CF_CLOCK, Options::default()),
        ColumnFamilyDescriptor::new(CF_CLOSES, Options::default()),
        ColumnFamilyDescriptor::new(CF_OFFSETS, Options::default()),
    ]
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
        let db = DB::open_cf_descriptors(&opts, path, column_families())
            .with_context(|| format!("opening state store {}", path.display()))?;
        let store = Store {
            db,
            path: path.to_path_buf(),
            write_opts: WriteOptions::default(),
        };
        store.check_or_init_meta(topic, true)?;
        store.refuse_incomplete_replay()?;
        Ok(store)
    }

    /// Open a new store for `replay` into `path`, which must be empty or absent: the bulk-load
    /// path — writes skip the WAL (the topic is the log; a replay that dies is started over).
    /// The store is marked incomplete until [`Store::finish_bulk_load`], and refused by
    /// [`Store::open`] while it is.
    pub fn open_for_replay(path: &Path, topic: &str) -> Result<Store> {
        if path.exists() && std::fs::read_dir(path)?.next().is_some() {
            bail!(
                "replay needs an empty directory; {} is not empty",
                path.display()
            );
        }
        let mut store = Store::open(path, topic)?;
        store
            .db
            .put_cf(store.cf(CF_META), META_REPLAY_INCOMPLETE, b"1")
            .context("marking the store as being replayed")?;
        store.db.flush_cf(store.cf(CF_META))?;
        store.write_opts.disable_wal(true);
        Ok(store)
    }

    /// End the bulk load: flush every column family to SST files, compact them, clear the
    /// incomplete mark (through the WAL) and go back to normal writes.
    pub fn finish_bulk_load(&mut self) -> Result<()> {
        self.flush_and_compact()?;
        self.write_opts = WriteOptions::default();
        self.db
            .delete_cf_opt(self.cf(CF_META), META_REPLAY_INCOMPLETE, &self.write_opts)
            .context("clearing the replay mark")?;
        self.db.flush_cf(self.cf(CF_META))?;
        Ok(())
    }

    /// Flush every column family's memtable to SST files and compact each fully: after a
    /// bulk load, so that the store opens without replaying a large WAL and reads from few,
    /// sorted files.
    pub fn flush_and_compact(&self) -> Result<()> {
        for name in COLUMN_FAMILIES {
            let cf = self.cf(name);
            self.db
                .flush_cf(cf)
                .with_context(|| format!("flushing column family {name}"))?;
            self.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }

    fn refuse_incomplete_replay(&self) -> Result<()> {
        if self
            .db
            .get_cf(self.cf(CF_META), META_REPLAY_INCOMPLETE)?
            .is_some()
        {
            bail!(
                "state store {} is an unfinished replay (it stopped before the end): delete the \
                 directory and run `smki-extract replay` again",
                self.path.display()
            );
        }
        Ok(())
    }

    /// Open an existing store read-only, e.g. to write a file on demand while the service
    /// runs on it (the view is the store as it was at open).
    pub fn open_read_only(path: &Path, topic: &str) -> Result<Store> {
        if !path.join("CURRENT").exists() {
            bail!("no state store at {}", path.display());
        }
        let opts = Options::default();
        let db = DB::open_cf_descriptors_read_only(&opts, path, column_families(), false)
            .with_context(|| format!("opening state store {} read-only", path.display()))?;
        let store = Store {
            db,
            path: path.to_path_buf(),
            write_opts: WriteOptions::default(),
        };
        store.check_or_init_meta(topic, false)?;
        Ok(store)
    }

    fn check_or_init_meta(&self, topic: &str, writable: bool) -> Result<()> {
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
                if !writable {
                    bail!("state store {} is empty", self.path.display());
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
            Some(bytes) => Ok(Some(decode_record(&bytes, key.as_bytes())?)),
        }
    }

    /// The DER of a stored certificate.
    pub fn get_body(&self, key: &CertKey) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(CF_BODIES), key.as_bytes())?)
    }

    /// A certificate's version at the close of delta `day`, if it changed that day.
    pub fn get_version(&self, key: &CertKey, day: u32) -> Result<Option<CertificateRecord>> {
        let k = key.history_key(day);
        match self.db.get_pinned_cf(self.cf(CF_HISTORY), &k)? {
            None => Ok(None),
            Some(bytes) => Ok(Some(decode_record(&bytes, &k)?)),
        }
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

    /// The persisted window clock of `partition`.
    pub fn clock(&self, partition: i32) -> Result<Option<PartitionClock>> {
        self.db
            .get_cf(self.cf(CF_CLOCK), partition_bytes(partition))?
            .map(|v| PartitionClock::decode(v.as_slice()).context("corrupt partition clock"))
            .transpose()
    }

    /// The first day any change belongs to: where the series of delta files starts.
    pub fn first_day(&self) -> Result<Option<u32>> {
        self.meta_u32(META_FIRST_DAY, "first day")
    }

    /// The newest day whose close the close-log topic has acknowledged.
    pub fn close_log_mark(&self) -> Result<Option<u32>> {
        self.meta_u32(META_CLOSE_LOG_MARK, "close-log mark")
    }

    fn meta_u32(&self, key: &[u8], what: &str) -> Result<Option<u32>> {
        self.db
            .get_cf(self.cf(CF_META), key)?
            .map(|v| {
                Ok(u32::from_be_bytes(
                    v.as_slice()
                        .try_into()
                        .with_context(|| format!("corrupt {what}"))?,
                ))
            })
            .transpose()
    }

    /// Record that the close log holds every close up to `day`.
    pub fn set_close_log_mark(&self, day: u32) -> Result<()> {
        self.db
            .put_cf_opt(
                self.cf(CF_META),
                META_CLOSE_LOG_MARK,
                day.to_be_bytes(),
                &self.write_opts,
            )
            .context("writing the close-log mark")
    }

    /// Every recorded day close, in day order.
    pub fn closes(&self) -> Result<Vec<DayClose>> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_CLOSES), IteratorMode::Start) {
            let (_, v) = item?;
            out.push(DayClose::decode(v.as_ref()).context("corrupt day close")?);
        }
        Ok(out)
    }

    /// The close record of `day`, if the day has closed.
    pub fn close_of(&self, day: u32) -> Result<Option<DayClose>> {
        self.db
            .get_cf(self.cf(CF_CLOSES), day.to_be_bytes())?
            .map(|v| DayClose::decode(v.as_slice()).context("corrupt day close"))
            .transpose()
    }

    /// The newest closed day.
    pub fn last_closed_day(&self) -> Result<Option<u32>> {
        match self
            .db
            .iterator_cf(self.cf(CF_CLOSES), IteratorMode::End)
            .next()
        {
            None => Ok(None),
            Some(item) => {
                let (k, _) = item?;
                Ok(Some(u32::from_be_bytes(
                    k.as_ref().try_into().context("corrupt close key")?,
                )))
            }
        }
    }

    /// Certificates of `partition` whose expiry falls in the days `from..=to`, with the day,
    /// in (day, key) order.
    pub fn expiring_between(
        &self,
        partition: i32,
        from: u32,
        to: u32,
    ) -> Result<Vec<(u32, CertKey)>> {
        let mut out = Vec::new();
        if from > to {
            return Ok(out);
        }
        let mut it = self.db.raw_iterator_cf(self.cf(CF_EXPIRY));
        it.seek(from.to_be_bytes());
        while let Some(k) = it.key() {
            let day = u32::from_be_bytes(k[..4].try_into().context("corrupt expiry key")?);
            if day > to {
                break;
            }
            let key = CertKey(k[4..].to_vec());
            if key.partition() == partition {
                out.push((day, key));
            }
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// Apply a batch atomically (one RocksDB WriteBatch through the WAL).
    ///
    /// Entries are inserted in key order: the memtable's skip list inserts sorted keys far
    /// faster than random ones (measured: a quarter of ingest time went to random inserts).
    pub fn write(&self, mut batch: StoreBatch) -> Result<()> {
        batch.certs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        batch.bodies.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        // Stable: of two versions of one key, the later one wins.
        batch.history.sort_by(|a, b| a.0.cmp(&b.0));
        batch.changes.sort_unstable();
        batch.changes.dedup();
        batch.expiry.sort_unstable();
        batch.expiry.dedup();
        let mut wb = WriteBatch::default();
        let certs = self.cf(CF_CERTS);
        for (k, v) in &batch.certs {
            wb.put_cf(certs, k.as_bytes(), v);
        }
        let bodies = self.cf(CF_BODIES);
        for (k, v) in &batch.bodies {
            wb.put_cf(bodies, k.as_bytes(), v);
        }
        let history = self.cf(CF_HISTORY);
        for (k, v) in &batch.history {
            wb.put_cf(history, k, v);
        }
        let changes = self.cf(CF_CHANGES);
        for k in &batch.changes {
            wb.put_cf(changes, k, []);
        }
        let expiry = self.cf(CF_EXPIRY);
        for k in &batch.expiry {
            wb.put_cf(expiry, k, []);
        }
        let clock = self.cf(CF_CLOCK);
        for (p, v) in &batch.clocks {
            wb.put_cf(clock, partition_bytes(*p), v);
        }
        let closes = self.cf(CF_CLOSES);
        for (day, v) in &batch.closes {
            wb.put_cf(closes, day.to_be_bytes(), v);
        }
        let offsets = self.cf(CF_OFFSETS);
        for (p, o) in &batch.offsets {
            wb.put_cf(offsets, partition_bytes(*p), o.to_be_bytes());
        }
        if let Some(day) = batch.first_day {
            wb.put_cf(self.cf(CF_META), META_FIRST_DAY, day.to_be_bytes());
        }
        self.db
            .write_opt(wb, &self.write_opts)
            .context("writing a batch to the state store")
    }

    /// Every current certificate record, in key order (partition, issuer, serial).
    pub fn certificates(&self) -> impl Iterator<Item = Result<(CertKey, CertificateRecord)>> + '_ {
        let mut ro = ReadOptions::default();
        ro.fill_cache(false);
        self.db
            .iterator_cf_opt(self.cf(CF_CERTS), ro, IteratorMode::Start)
            .map(|item| {
                let (k, v) = item?;
                let rec = decode_record(&v, &k)?;
                Ok((CertKey(k.into_vec()), rec))
            })
    }

    /// Change-index entries of `partition` for `day`, as certificate keys.
    pub fn changes_on(&self, partition: i32, day: u32) -> Result<Vec<CertKey>> {
        let mut prefix = partition_bytes(partition).to_vec();
        prefix.extend_from_slice(&day.to_be_bytes());
        let mut out = Vec::new();
        let mut it = self.db.raw_iterator_cf(self.cf(CF_CHANGES));
        it.seek(&prefix);
        while let Some(k) = it.key() {
            if !k.starts_with(&prefix) {
                break;
            }
            out.push(CertKey::from_change_key(k));
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// A consistent, read-only view of the store as it is now, for writing files while
    /// ingest goes on.
    pub fn snapshot(&self) -> StoreSnapshot<'_> {
        StoreSnapshot {
            store: self,
            snapshot: self.db.snapshot(),
        }
    }

    /// Count current certificates by type and status (a full scan).
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
            *out.entry((type_label(&rec), status_label(&rec)))
                .or_default() += 1;
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

/// Type name of a record as reports show it (`DEVICE`, `ORGANISATION`, ...).
pub fn type_label(rec: &CertificateRecord) -> String {
    StoredType::try_from(rec.certificate_type)
        .map(|t| {
            t.as_str_name()
                .trim_start_matches("CERTIFICATE_TYPE_")
                .to_string()
        })
        .unwrap_or_else(|_| "?".into())
}

/// Status code of a record (`P`, `I`, ...).
pub fn status_label(rec: &CertificateRecord) -> String {
    CertificateStatus::try_from(rec.status)
        .map(|s| s.code().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// A point-in-time view of the store (a RocksDB snapshot): what the file writers read, so
/// that counting the records and writing them see the same state.
pub struct StoreSnapshot<'a> {
    store: &'a Store,
    snapshot: SnapshotWithThreadMode<'a, DB>,
}

impl<'a> StoreSnapshot<'a> {
    fn read_opts(&self, fill_cache: bool) -> ReadOptions {
        let mut ro = ReadOptions::default();
        ro.set_snapshot(&self.snapshot);
        ro.fill_cache(fill_cache);
        ro
    }

    /// Partitions the store has offsets for (every partition it holds anything of).
    pub fn partitions(&self) -> Result<Vec<i32>> {
        let mut out = Vec::new();
        let mut it = self
            .snapshot
            .raw_iterator_cf_opt(self.store.cf(CF_OFFSETS), self.read_opts(true));
        it.seek_to_first();
        while let Some(k) = it.key() {
            out.push(u32::from_be_bytes(k.try_into().context("corrupt offset key")?) as i32);
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// The delta index of `day` in `partition`: the certificates its delta lists, in key
    /// order, streamed.
    pub fn changes_on(&self, partition: i32, day: u32) -> ChangeCursor<'_> {
        let mut prefix = partition_bytes(partition).to_vec();
        prefix.extend_from_slice(&day.to_be_bytes());
        let mut it = self
            .snapshot
            .raw_iterator_cf_opt(self.store.cf(CF_CHANGES), self.read_opts(true));
        it.seek(&prefix);
        ChangeCursor {
            it,
            prefix,
            done: false,
        }
    }

    /// A certificate's version at the close of delta `day`.
    pub fn version(&self, key: &CertKey, day: u32) -> Result<Option<CertificateRecord>> {
        let k = key.history_key(day);
        match self.snapshot.get_pinned_cf_opt(
            self.store.cf(CF_HISTORY),
            &k,
            self.read_opts(true),
        )? {
            None => Ok(None),
            Some(bytes) => Ok(Some(decode_record(&bytes, &k)?)),
        }
    }

    /// A certificate's DER.
    pub fn body(&self, key: &CertKey) -> Result<Option<Vec<u8>>> {
        Ok(self
            .snapshot
            .get_pinned_cf_opt(
                self.store.cf(CF_BODIES),
                key.as_bytes(),
                self.read_opts(false),
            )?
            .map(|b| b.to_vec()))
    }

    /// Every certificate as it stood at the close of `day` (its newest version of a day up
    /// to `day`), in key order, streamed from the history column family; certificates first
    /// lodged after `day` are left out.
    pub fn as_of(&self, day: u32) -> AsOfCursor<'_> {
        let mut ro = self.read_opts(false);
        ro.set_readahead_size(2 << 20);
        let mut it = self
            .snapshot
            .raw_iterator_cf_opt(self.store.cf(CF_HISTORY), ro);
        it.seek_to_first();
        AsOfCursor { it, day }
    }

    /// How many certificates are In use as of the close of `day` (what [`Self::as_of`] would
    /// yield with status `I`), counted in one pass that decodes only each version's status
    /// and allocates nothing per certificate.
    pub fn count_in_use_as_of(&self, day: u32) -> Result<u64> {
        let mut ro = self.read_opts(false);
        ro.set_readahead_size(2 << 20);
        let mut it = self
            .snapshot
            .raw_iterator_cf_opt(self.store.cf(CF_HISTORY), ro);
        it.seek_to_first();
        let in_use = CertificateStatus::InUse as i32;
        let mut cert: Vec<u8> = Vec::new();
        let mut status: Option<i32> = None;
        let mut count = 0u64;
        while let Some(k) = it.key() {
            if k.len() < 17 {
                bail!("corrupt history key {}", hex::encode(k));
            }
            let (this, day_bytes) = k.split_at(k.len() - 4);
            if this != cert.as_slice() {
                if status == Some(in_use) {
                    count += 1;
                }
                cert.clear();
                cert.extend_from_slice(this);
                status = None;
            }
            let d = u32::from_be_bytes(day_bytes.try_into().expect("4 bytes"));
            if d <= day {
                let v = it.value().expect("valid iterator");
                status = Some(
                    StatusOnly::decode(v)
                        .with_context(|| format!("corrupt version under {}", hex::encode(k)))?
                        .status,
                );
            }
            it.next();
        }
        it.status()?;
        if status == Some(in_use) {
            count += 1;
        }
        Ok(count)
    }

    /// A cursor over the DER of certificates asked for in key order (what [`Self::as_of`]
    /// yields): one sequential pass over the bodies column family.
    pub fn bodies_in_order(&self) -> BodyCursor<'_> {
        let mut ro = self.read_opts(false);
        ro.set_readahead_size(4 << 20);
        let mut it = self
            .snapshot
            .raw_iterator_cf_opt(self.store.cf(CF_BODIES), ro);
        it.seek_to_first();
        BodyCursor { it }
    }
}

/// Streams the certificate keys of one partition's delta index for one day.
pub struct ChangeCursor<'a> {
    it: DBRawIteratorWithThreadMode<'a, DB>,
    prefix: Vec<u8>,
    done: bool,
}

impl Iterator for ChangeCursor<'_> {
    type Item = Result<CertKey>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.it.key() {
            Some(k) if k.starts_with(&self.prefix) => {
                let key = CertKey::from_change_key(k);
                self.it.next();
                Some(Ok(key))
            }
            _ => {
                self.done = true;
                self.it.status().err().map(|e| Err(e.into()))
            }
        }
    }
}

/// Streams every certificate's version as of a day (see [`StoreSnapshot::as_of`]).
pub struct AsOfCursor<'a> {
    it: DBRawIteratorWithThreadMode<'a, DB>,
    day: u32,
}

impl Iterator for AsOfCursor<'_> {
    type Item = Result<(CertKey, CertificateRecord)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (cert, chosen) = {
                let k = self.it.key()?;
                if k.len() < 17 {
                    return Some(Err(anyhow::anyhow!(
                        "corrupt history key {}",
                        hex::encode(k)
                    )));
                }
                let cert = k[..k.len() - 4].to_vec();
                let mut chosen: Option<Vec<u8>> = None;
                // Versions of one certificate are adjacent, oldest day first (keys are
                // prefix-free, the day is the big-endian suffix).
                while let Some(k) = self.it.key() {
                    if k.len() != cert.len() + 4 || !k.starts_with(&cert) {
                        break;
                    }
                    let day = u32::from_be_bytes(k[cert.len()..].try_into().expect("4 bytes"));
                    if day <= self.day {
                        chosen = Some(self.it.value().expect("valid iterator").to_vec());
                    }
                    self.it.next();
                }
                (cert, chosen)
            };
            if let Err(e) = self.it.status() {
                return Some(Err(e.into()));
            }
            if let Some(bytes) = chosen {
                return Some(decode_record(&bytes, &cert).map(|r| (CertKey(cert), r)));
            }
        }
    }
}

/// Sequential reader of certificate bodies for keys asked in increasing order.
pub struct BodyCursor<'a> {
    it: DBRawIteratorWithThreadMode<'a, DB>,
}

/// Bodies further ahead than this many keys are reached by a seek instead of steps.
const BODY_STEPS_BEFORE_SEEK: usize = 16;

impl BodyCursor<'_> {
    /// The DER of `key`; keys must be asked in increasing order.
    pub fn body_of(&mut self, key: &CertKey) -> Result<Vec<u8>> {
        let want = key.as_bytes();
        let mut steps = 0;
        loop {
            match self.it.key() {
                Some(k) if k == want => {
                    return Ok(self.it.value().expect("valid iterator").to_vec());
                }
                Some(k) if k < want => {
                    steps += 1;
                    if steps > BODY_STEPS_BEFORE_SEEK {
                        self.it.seek(want);
                        steps = 0;
                        if self.it.key() != Some(want) {
                            break;
                        }
                    } else {
                        self.it.next();
                    }
                }
                _ => break,
            }
        }
        self.it.status()?;
        bail!(
            "state store has no certificate body for key {}",
            hex::encode(want)
        )
    }
}

/// The status field of a [`CertificateRecord`] alone (protobuf skips the other fields
/// without allocating): for counting.
#[derive(Clone, PartialEq, prost::Message)]
struct StatusOnly {
    #[prost(int32, tag = "2")]
    status: i32,
}

fn decode_record(bytes: &[u8], key: &[u8]) -> Result<CertificateRecord> {
    CertificateRecord::decode(bytes)
        .with_context(|| format!("corrupt certificate record under key {}", hex::encode(key)))
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
    fn keys_order_by_partition_then_issuer_then_serial_and_are_prefix_free() {
        let a = CertKey::new(1, &[0; 8], &[0xff]);
        let b = CertKey::new(2, &[0; 8], &[0x00]);
        let c = CertKey::new(2, &[0; 8], &[0x01]);
        assert!(a < b && b < c);
        assert_eq!(b.partition(), 2);
        let ck = c.change_key(739_000);
        assert_eq!(&ck[..4], &2u32.to_be_bytes());
        assert_eq!(&ck[4..8], &739_000u32.to_be_bytes());
        assert_eq!(&ck[8..], &c.as_bytes()[4..]);
        assert_eq!(CertKey::from_change_key(&ck), c);
        // A serial that is a prefix of another does not make its key a prefix of the other's.
        let short = CertKey::new(0, &[1; 8], &[7]);
        let long = CertKey::new(0, &[1; 8], &[7, 0]);
        assert!(!long.as_bytes().starts_with(short.as_bytes()));
        assert!(!long.history_key(5).starts_with(short.as_bytes()));
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
            b.put_version(&key, 739_001, &record(CertificateStatus::InUse));
            b.put_expiry(&key, 739_005);
            b.put_clock(
                3,
                &PartitionClock {
                    watermark_ms: Some(99),
                    ..Default::default()
                },
            );
            b.put_close(&DayClose {
                day: 739_000,
                offsets: BTreeMap::from([(3, 40)]),
                ..Default::default()
            });
            b.set_first_day(739_000);
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
        assert_eq!(
            store.expiring_between(3, 739_000, 739_005).unwrap(),
            vec![(739_005, key.clone())]
        );
        assert!(store
            .expiring_between(3, 739_000, 739_004)
            .unwrap()
            .is_empty());
        assert!(store
            .expiring_between(2, 739_000, 739_009)
            .unwrap()
            .is_empty());
        assert_eq!(store.clock(3).unwrap().unwrap().watermark_ms, Some(99));
        assert_eq!(store.first_day().unwrap(), Some(739_000));
        assert_eq!(store.last_closed_day().unwrap(), Some(739_000));
        assert_eq!(store.close_of(739_000).unwrap().unwrap().offsets[&3], 40);
        let census = store.census().unwrap();
        assert_eq!(census.get(&("DEVICE".into(), "I".into())), Some(&1));
        drop(store);
        // A read-only view sees the same.
        let ro = Store::open_read_only(dir.path(), "certs").unwrap();
        assert_eq!(ro.next_offset(3).unwrap(), Some(42));
    }

    #[test]
    fn as_of_gives_each_certificate_its_newest_version_up_to_the_day() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "certs").unwrap();
        let a = CertKey::new(0, &[1; 8], &[7]);
        let b = CertKey::new(0, &[1; 8], &[7, 0]); // a's serial is a prefix of b's
        let c = CertKey::new(1, &[1; 8], &[9]);
        let mut batch = StoreBatch::default();
        batch.put_version(&a, 10, &record(CertificateStatus::Pending));
        batch.put_version(&a, 12, &record(CertificateStatus::InUse));
        batch.put_version(&b, 11, &record(CertificateStatus::InUse));
        batch.put_version(&b, 14, &record(CertificateStatus::Revoked));
        batch.put_version(&c, 13, &record(CertificateStatus::InUse));
        for k in [&a, &b, &c] {
            batch.put_body(k.clone(), k.as_bytes().to_vec());
            batch.put_offset(k.partition(), 1);
        }
        store.write(batch).unwrap();
        let snap = store.snapshot();
        let at = |day| -> Vec<(CertKey, i32)> {
            snap.as_of(day)
                .map(|r| r.map(|(k, rec)| (k, rec.status)))
                .collect::<Result<_>>()
                .unwrap()
        };
        use CertificateStatus::*;
        assert_eq!(at(9), vec![]);
        assert_eq!(
            at(11),
            vec![(a.clone(), Pending as i32), (b.clone(), InUse as i32)]
        );
        assert_eq!(
            at(13),
            vec![
                (a.clone(), InUse as i32),
                (b.clone(), InUse as i32),
                (c.clone(), InUse as i32)
            ]
        );
        assert_eq!(at(20)[1], (b.clone(), Revoked as i32));
        for day in [9, 11, 13, 20] {
            let in_use = at(day).iter().filter(|(_, s)| *s == InUse as i32).count() as u64;
            assert_eq!(snap.count_in_use_as_of(day).unwrap(), in_use, "day {day}");
        }
        let mut bodies = snap.bodies_in_order();
        assert_eq!(bodies.body_of(&a).unwrap(), a.as_bytes());
        assert_eq!(bodies.body_of(&c).unwrap(), c.as_bytes());
        assert!(bodies.body_of(&CertKey::new(2, &[0; 8], &[1])).is_err());
        let changes: Vec<CertKey> = snap.changes_on(0, 14).collect::<Result<_>>().unwrap();
        assert_eq!(changes, vec![b.clone()]);
        assert_eq!(snap.partitions().unwrap(), vec![0, 1]);
        assert_eq!(
            snap.version(&b, 14).unwrap().unwrap().status,
            Revoked as i32
        );
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
        let empty = tempfile::tempdir().unwrap();
        assert!(Store::open_read_only(empty.path(), "certs").is_err());
    }
}
