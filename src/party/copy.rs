//! The Party's local copy of the SMKI Repository: a RocksDB database that `sync` fills from
//! the published files and `lookup` / `export` read.
//!
//! Layout of the copy directory:
//! - `CURRENT` — the name of the live database (`db-<generation>`), replaced atomically
//!   (temporary file → fsync → rename → fsync directory);
//! - `db-<n>/` — the live RocksDB database; another `db-<m>` only while a rebuild runs (or
//!   after a crash during one: removed at the next open);
//! - `LOCK` — held by the one `sync` that may change the copy.
//!
//! Column families of a database: `records` (record key `<issuer hash>-<SERIAL>` →
//! [`LocalRecord`], protobuf), `ids` (`D`|Device ID|key or `E`|Entity ID|key → empty),
//! `serials` (serial length|serial|key → empty) and `meta` (`state` → [`SyncState`], JSON).
//!
//! All-or-nothing application, two ways: a delta goes in one WriteBatch that also carries the
//! new [`SyncState`] (WAL on, synced); a full (a start from scratch, or a restart after a
//! gap) is loaded into a new generation — written without WAL, flushed at the end — which
//! becomes live only when `CURRENT` names it, after every file of the run has passed.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use chrono::NaiveDate;
use prost::Message;
use rocksdb::{
    ColumnFamilyDescriptor, DBCompressionType, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};
use serde::{Deserialize, Serialize};

use crate::contract::{CertificateStatus, StoredType, StoredUsage};
use crate::eui64::Eui64;
use crate::extract::xml::ParsedRecord;

const CF_RECORDS: &str = "records";
const CF_IDS: &str = "ids";
const CF_SERIALS: &str = "serials";
const CF_META: &str = "meta";
const STATE_KEY: &[u8] = b"state";
const CURRENT: &str = "CURRENT";
const LOCK: &str = "LOCK";
/// Version of this layout, recorded in the state; a copy of another version is refused.
pub const COPY_FORMAT: u32 = 1;

/// One certificate as the local copy keeps it: the record of the last file that listed it.
#[derive(Clone, PartialEq, Message)]
pub struct LocalRecord {
    /// Status code: `P`, `I`, `N`, `E` or `R`.
    #[prost(string, tag = "1")]
    pub status: String,
    /// `OCA`, `DCA`, `Organisation` or `Device`.
    #[prost(string, tag = "2")]
    pub certificate_type: String,
    /// Serial, unsigned big-endian.
    #[prost(bytes = "vec", tag = "3")]
    pub serial: Vec<u8>,
    /// Issuer hash (first 8 bytes of SHA-256 over the issuer Name DER).
    #[prost(bytes = "vec", tag = "4")]
    pub issuer_hash: Vec<u8>,
    /// Issuer DN text.
    #[prost(string, tag = "5")]
    pub issuer: String,
    /// Subject DN text (non-device certificates).
    #[prost(string, tag = "6")]
    pub subject_name: String,
    /// Device ID (devices), 8 bytes, or empty.
    #[prost(bytes = "vec", tag = "7")]
    pub device_id: Vec<u8>,
    /// Entity ID (organisations and CAs that carry one), 8 bytes, or empty.
    #[prost(bytes = "vec", tag = "8")]
    pub entity_id: Vec<u8>,
    /// Remote Party Role, or -1.
    #[prost(int32, tag = "9")]
    pub role: i32,
    /// `DS`, `KA` or `CA`.
    #[prost(string, tag = "10")]
    pub usage: String,
    /// The web service's ManufacturingFlag.
    #[prost(bool, tag = "11")]
    pub manufacturing_flag: bool,
    /// The certificate's DER.
    #[prost(bytes = "vec", tag = "12")]
    pub der: Vec<u8>,
    /// Name of the file this version came from.
    #[prost(string, tag = "13")]
    pub source: String,
}

impl LocalRecord {
    /// The copy's record of a file's record.
    pub fn from_parsed(rec: &ParsedRecord, source: &str) -> LocalRecord {
        LocalRecord {
            status: rec.status.code().to_string(),
            certificate_type: type_name(rec.certificate_type).to_string(),
            serial: rec.serial.clone(),
            issuer_hash: rec.issuer_hash.to_vec(),
            issuer: rec.issuer.clone(),
            subject_name: rec.subject_name.clone().unwrap_or_default(),
            device_id: rec
                .subject_alt_name
                .map(|i| i.0.to_vec())
                .unwrap_or_default(),
            entity_id: rec.entity_id.map(|i| i.0.to_vec()).unwrap_or_default(),
            role: rec.role.map(i32::from).unwrap_or(-1),
            usage: usage_code(rec.usage).to_string(),
            manufacturing_flag: rec.manufacturing_flag,
            der: rec.certificate_der.clone(),
            source: source.to_string(),
        }
    }

    /// The certificate id `<issuer-hash hex>-<SERIAL HEX>` (the key of the copy).
    pub fn key(&self) -> String {
        format!(
            "{}-{}",
            hex::encode(&self.issuer_hash),
            hex::encode_upper(&self.serial)
        )
    }

    /// The Device ID, for device certificates.
    pub fn device_id(&self) -> Option<Eui64> {
        Eui64::from_slice(&self.device_id)
    }

    /// The Entity ID, for certificates that carry one.
    pub fn entity_id(&self) -> Option<Eui64> {
        Eui64::from_slice(&self.entity_id)
    }
}

fn type_name(t: StoredType) -> &'static str {
    match t {
        StoredType::Oca => "OCA",
        StoredType::Dca => "DCA",
        StoredType::Organisation => "Organisation",
        StoredType::Device => "Device",
        StoredType::Unspecified => "?",
    }
}

fn usage_code(u: StoredUsage) -> &'static str {
    match u {
        StoredUsage::DigitalSignature => "DS",
        StoredUsage::KeyAgreement => "KA",
        StoredUsage::CertSign => "CA",
        StoredUsage::Unspecified => "?",
    }
}

/// A file the copy has applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedFile {
    /// File name.
    pub name: String,
    /// Its day.
    pub day: NaiveDate,
    /// Its SHA-256 (to notice a day republished with other bytes).
    pub sha256: String,
    /// Records it held.
    pub records: u64,
}

/// What the copy holds: the full it started from and every delta applied since, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncState {
    /// Layout version ([`COPY_FORMAT`]).
    pub format: u32,
    /// The full extract the copy was loaded from.
    pub full: Option<AppliedFile>,
    /// Deltas applied after it, oldest first.
    pub deltas: Vec<AppliedFile>,
}

impl SyncState {
    /// The newest day the copy describes (the full's, or the last delta's).
    pub fn last_day(&self) -> Option<NaiveDate> {
        self.deltas
            .last()
            .map(|d| d.day)
            .or(self.full.as_ref().map(|f| f.day))
    }

    /// The file of `day` the copy applied (the full, or a delta), if any.
    pub fn applied(&self, day: NaiveDate) -> Option<&AppliedFile> {
        self.deltas
            .iter()
            .rev()
            .find(|d| d.day == day)
            .or(self.full.as_ref().filter(|f| f.day == day))
    }
}

fn column_families() -> Vec<ColumnFamilyDescriptor> {
    let mut records = Options::default();
    records.set_compression_type(DBCompressionType::Lz4);
    records.set_write_buffer_size(64 << 20);
    let mut index = Options::default();
    index.set_compression_type(DBCompressionType::Lz4);
    vec![
        ColumnFamilyDescriptor::new(CF_RECORDS, records),
        ColumnFamilyDescriptor::new(CF_IDS, index.clone()),
        ColumnFamilyDescriptor::new(CF_SERIALS, index),
        ColumnFamilyDescriptor::new(CF_META, Options::default()),
    ]
}

fn open_db(path: &Path, create: bool) -> Result<DB> {
    let mut opts = Options::default();
    opts.create_if_missing(create);
    opts.create_missing_column_families(create);
    opts.set_max_background_jobs(2);
    DB::open_cf_descriptors(&opts, path, column_families())
        .with_context(|| format!("opening the local copy database {}", path.display()))
}

/// The records of one file (or part of a full), not yet written: applied all at once.
#[derive(Default)]
pub struct PendingBatch {
    batch: WriteBatch,
    records: u64,
}

impl PendingBatch {
    /// Adds (replaces) a record, with its index entries.
    pub fn put(&mut self, db: &Database, rec: &ParsedRecord, source: &str) {
        let local = LocalRecord::from_parsed(rec, source);
        let key = local.key();
        self.batch
            .put_cf(db.cf(CF_RECORDS), key.as_bytes(), local.encode_to_vec());
        for id in index_ids(&local) {
            self.batch
                .put_cf(db.cf(CF_IDS), id_key(id.0, &id.1, &key), b"");
        }
        self.batch
            .put_cf(db.cf(CF_SERIALS), serial_key(&local.serial, &key), b"");
        self.records += 1;
    }

    /// Records in the batch.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Approximate bytes held (to cut a full into chunks).
    pub fn size_in_bytes(&self) -> usize {
        self.batch.size_in_bytes()
    }
}

fn index_ids(r: &LocalRecord) -> Vec<(u8, Eui64)> {
    let mut v = Vec::new();
    if let Some(id) = r.device_id() {
        v.push((b'D', id));
    }
    if let Some(id) = r.entity_id() {
        v.push((b'E', id));
    }
    v
}

fn id_key(tag: u8, id: &Eui64, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + key.len());
    k.push(tag);
    k.extend_from_slice(&id.0);
    k.extend_from_slice(key.as_bytes());
    k
}

fn serial_key(serial: &[u8], key: &str) -> Vec<u8> {
    let mut k = serial_prefix(serial);
    k.extend_from_slice(key.as_bytes());
    k
}

fn serial_prefix(serial: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + serial.len() + 40);
    k.push(serial.len().min(255) as u8);
    k.extend_from_slice(serial);
    k
}

/// One RocksDB database of the copy (the live one, or a rebuild in progress).
pub struct Database {
    db: DB,
    path: PathBuf,
}

impl Database {
    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(name).expect("column family opened")
    }

    /// The state recorded in the database.
    pub fn state(&self) -> Result<SyncState> {
        match self.db.get_cf(self.cf(CF_META), STATE_KEY)? {
            None => Ok(SyncState {
                format: COPY_FORMAT,
                ..Default::default()
            }),
            Some(b) => {
                let s: SyncState = serde_json::from_slice(&b).with_context(|| {
                    format!("the state of {} is unreadable", self.path.display())
                })?;
                ensure!(
                    s.format == COPY_FORMAT,
                    "{} has copy format {}, this program knows {COPY_FORMAT}",
                    self.path.display(),
                    s.format
                );
                Ok(s)
            }
        }
    }

    /// Write a batch and, with it, the state: one atomic, synced write.
    pub fn commit(&self, mut pending: PendingBatch, state: &SyncState) -> Result<()> {
        pending.batch.put_cf(
            self.cf(CF_META),
            STATE_KEY,
            serde_json::to_vec(state).expect("state serialises"),
        );
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db
            .write_opt(pending.batch, &opts)
            .with_context(|| format!("writing to the local copy {}", self.path.display()))
    }

    /// Write a batch without WAL (a rebuild in progress: durability comes from the flush
    /// before it becomes live).
    fn write_unlogged(&self, pending: PendingBatch) -> Result<()> {
        let mut opts = WriteOptions::default();
        opts.disable_wal(true);
        self.db
            .write_opt(pending.batch, &opts)
            .with_context(|| format!("writing to {}", self.path.display()))
    }

    /// The record of a certificate id.
    pub fn get(&self, key: &str) -> Result<Option<LocalRecord>> {
        match self.db.get_cf(self.cf(CF_RECORDS), key.as_bytes())? {
            None => Ok(None),
            Some(b) => Ok(Some(LocalRecord::decode(&b[..])?)),
        }
    }

    /// Records whose Device ID (`device = true`) or Entity ID is `id`.
    pub fn by_id(&self, device: bool, id: Eui64) -> Result<Vec<LocalRecord>> {
        let mut prefix = vec![if device { b'D' } else { b'E' }];
        prefix.extend_from_slice(&id.0);
        self.by_prefix(CF_IDS, &prefix)
    }

    /// Records with this serial (of any issuer).
    pub fn by_serial(&self, serial: &[u8]) -> Result<Vec<LocalRecord>> {
        self.by_prefix(CF_SERIALS, &serial_prefix(serial))
    }

    fn by_prefix(&self, cf: &str, prefix: &[u8]) -> Result<Vec<LocalRecord>> {
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            self.cf(cf),
            IteratorMode::From(prefix, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (k, _) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            let key = std::str::from_utf8(&k[prefix.len()..]).context("index key")?;
            if let Some(r) = self.get(key)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Every record, in key order.
    pub fn records(&self) -> impl Iterator<Item = Result<LocalRecord>> + '_ {
        self.db
            .iterator_cf(self.cf(CF_RECORDS), IteratorMode::Start)
            .map(|item| {
                let (_, v) = item?;
                Ok(LocalRecord::decode(&v[..])?)
            })
    }
}

/// The copy directory, locked for changes (one `sync` at a time).
pub struct LocalCopy {
    root: PathBuf,
    live: Option<(u64, Database)>,
    _lock: File,
}

impl LocalCopy {
    /// Opens (creating if missing) the copy at `root` for `sync`: takes the lock, removes a
    /// rebuild left by a crash, opens the live database if there is one.
    pub fn open(root: &Path) -> Result<LocalCopy> {
        fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        let lock = crate::dirlock::lock(root, LOCK, |held| {
            format!(
                "the local copy {} is being changed by another sync (it holds {})",
                root.display(),
                held.display()
            )
        })?;
        let current = read_current(root)?;
        for entry in fs::read_dir(root)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(g) = name.strip_prefix("db-").and_then(|g| g.parse::<u64>().ok()) {
                if Some(g) != current {
                    fs::remove_dir_all(entry.path()).with_context(|| {
                        format!("removing the unfinished rebuild {}", entry.path().display())
                    })?;
                }
            }
            if name.starts_with(".tmp-") {
                fs::remove_file(entry.path())?;
            }
        }
        let live = match current {
            None => None,
            Some(g) => {
                let path = root.join(format!("db-{g}"));
                Some((
                    g,
                    Database {
                        db: open_db(&path, false)?,
                        path,
                    },
                ))
            }
        };
        Ok(LocalCopy {
            root: root.to_path_buf(),
            live,
            _lock: lock,
        })
    }

    /// The live database (`None`: nothing synced yet).
    pub fn live(&self) -> Option<&Database> {
        self.live.as_ref().map(|(_, d)| d)
    }

    /// What the copy holds (empty state before the first sync).
    pub fn state(&self) -> Result<SyncState> {
        match self.live() {
            Some(d) => d.state(),
            None => Ok(SyncState {
                format: COPY_FORMAT,
                ..Default::default()
            }),
        }
    }

    /// Starts a new generation (a load from a full), invisible until [`LocalCopy::switch`].
    pub fn begin_rebuild(&self) -> Result<Rebuild> {
        let generation = self.live.as_ref().map(|(g, _)| g + 1).unwrap_or(1);
        let path = self.root.join(format!("db-{generation}"));
        if path.exists() {
            fs::remove_dir_all(&path)?;
        }
        Ok(Rebuild {
            generation,
            db: Some(Database {
                db: open_db(&path, true)?,
                path,
            }),
        })
    }

    /// Makes a finished rebuild the live copy, recording `state` in it: flush, point
    /// `CURRENT` at it (atomically), then drop the old generation.
    pub fn switch(&mut self, mut rebuild: Rebuild, state: &SyncState) -> Result<()> {
        let db = rebuild.db.take().expect("rebuild not yet switched");
        db.commit(PendingBatch::default(), state)?;
        db.db.flush_wal(true)?;
        for cf in [CF_RECORDS, CF_IDS, CF_SERIALS, CF_META] {
            db.db
                .flush_cf(db.cf(cf))
                .with_context(|| format!("flushing {}", db.path.display()))?;
        }
        write_current(&self.root, rebuild.generation)?;
        let old = self.live.replace((rebuild.generation, db));
        if let Some((g, old)) = old {
            drop(old);
            let path = self.root.join(format!("db-{g}"));
            fs::remove_dir_all(&path)
                .with_context(|| format!("removing the old generation {}", path.display()))?;
        }
        Ok(())
    }
}

/// A new generation being loaded. Dropped without [`LocalCopy::switch`], it is deleted.
pub struct Rebuild {
    generation: u64,
    db: Option<Database>,
}

impl Rebuild {
    /// The database being built (to read while applying deltas on top of the full).
    pub fn db(&self) -> &Database {
        self.db.as_ref().expect("rebuild in progress")
    }

    /// Write part of the load (no WAL: it becomes durable at the switch).
    pub fn write(&self, pending: PendingBatch) -> Result<()> {
        self.db().write_unlogged(pending)
    }
}

impl Drop for Rebuild {
    fn drop(&mut self) {
        if let Some(db) = self.db.take() {
            let path = db.path.clone();
            drop(db);
            let _ = fs::remove_dir_all(path);
        }
    }
}

fn read_current(root: &Path) -> Result<Option<u64>> {
    match fs::read_to_string(root.join(CURRENT)) {
        Ok(s) => {
            let g = s
                .trim()
                .strip_prefix("db-")
                .and_then(|g| g.parse::<u64>().ok())
                .with_context(|| {
                    format!("{} holds {s:?}, not db-<n>", root.join(CURRENT).display())
                })?;
            Ok(Some(g))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", root.join(CURRENT).display())),
    }
}

fn write_current(root: &Path, generation: u64) -> Result<()> {
    let temp = root.join(format!(".tmp-{CURRENT}"));
    let mut f = File::create(&temp)?;
    writeln!(f, "db-{generation}")?;
    f.sync_all()?;
    drop(f);
    fs::rename(&temp, root.join(CURRENT))?;
    File::open(root)?.sync_all()?;
    Ok(())
}

/// Opens the live database of a copy for reading only (`lookup`, `export`), without the
/// lock: a `sync` may run meanwhile.
pub fn open_read_only(root: &Path) -> Result<Database> {
    let g = read_current(root)?.with_context(|| {
        format!(
            "{} is not a local copy (no {CURRENT}): run `smki-extract sync` first",
            root.display()
        )
    })?;
    let path = root.join(format!("db-{g}"));
    let db =
        DB::open_cf_descriptors_read_only(&Options::default(), &path, column_families(), false)
            .with_context(|| format!("opening the local copy {}", path.display()))?;
    Ok(Database { db, path })
}

/// Status of a record as the contract's enum (for comparisons with the service's store).
pub fn status_of(r: &LocalRecord) -> Option<CertificateStatus> {
    CertificateStatus::ALL
        .into_iter()
        .find(|s| s.code() == r.status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::xml::read_extract;

    fn sample() -> ParsedRecord {
        // A real fixture certificate through the writer and reader, so every field is real.
        let pem = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/gbcs-test-certs/00db123456789001-ds.pem"
        ))
        .unwrap();
        let der = crate::certificate::der_from_pem(&pem).unwrap();
        let info = crate::certificate::parse(&der).unwrap();
        let rec = crate::ingest::record_for(&info, CertificateStatus::Pending, true, "t", 0);
        let mut rec = rec;
        rec.certificate_der = der;
        let mut w = crate::extract::xml::ExtractWriter::new(
            Vec::new(),
            crate::extract::xml::ExtractKind::Delta,
            NaiveDate::from_ymd_opt(2026, 11, 2).unwrap(),
            1,
        )
        .unwrap();
        w.write_record(&rec).unwrap();
        let doc = w.finish().unwrap();
        read_extract(&doc[..]).unwrap().1.remove(0)
    }

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, d).unwrap()
    }

    fn applied(name: &str, d: u32) -> AppliedFile {
        AppliedFile {
            name: name.into(),
            day: day(d),
            sha256: "00".repeat(32),
            records: 1,
        }
    }

    #[test]
    fn a_rebuild_is_invisible_until_switched_and_gone_if_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let rec = sample();
        let mut copy = LocalCopy::open(dir.path()).unwrap();
        assert!(copy.live().is_none());
        assert_eq!(copy.state().unwrap().last_day(), None);

        // Dropped: nothing left, still no live copy.
        let r = copy.begin_rebuild().unwrap();
        let mut b = PendingBatch::default();
        b.put(r.db(), &rec, "F");
        r.write(b).unwrap();
        drop(r);
        assert!(copy.live().is_none());
        assert!(!dir.path().join("db-1").exists());

        let r = copy.begin_rebuild().unwrap();
        let mut b = PendingBatch::default();
        b.put(r.db(), &rec, "F");
        r.write(b).unwrap();
        let state = SyncState {
            format: COPY_FORMAT,
            full: Some(applied("F", 1)),
            deltas: vec![],
        };
        copy.switch(r, &state).unwrap();
        assert_eq!(copy.state().unwrap(), state);
        let got = copy
            .live()
            .unwrap()
            .get(&rec.record_key())
            .unwrap()
            .unwrap();
        assert_eq!(got.status, "P");
        assert_eq!(got.der, rec.certificate_der);
        assert_eq!(got.key(), rec.record_key());

        // Indexes: by Device ID (not as an Entity ID) and by serial.
        let id = rec.subject_alt_name.unwrap();
        let db = copy.live().unwrap();
        assert_eq!(db.by_id(true, id).unwrap().len(), 1);
        assert!(db.by_id(false, id).unwrap().is_empty());
        assert_eq!(db.by_serial(&rec.serial).unwrap().len(), 1);
        assert!(db.by_serial(&rec.serial[1..]).unwrap().is_empty());

        // A delta replaces the record by key, with the state, in one write.
        let mut changed = rec.clone();
        changed.status = CertificateStatus::Revoked;
        let mut b = PendingBatch::default();
        b.put(db, &changed, "D2");
        let mut s2 = state.clone();
        s2.deltas.push(applied("D2", 2));
        db.commit(b, &s2).unwrap();
        assert_eq!(db.get(&rec.record_key()).unwrap().unwrap().status, "R");
        assert_eq!(db.records().count(), 1);
        assert_eq!(db.state().unwrap().last_day(), Some(day(2)));
        drop(copy);

        // Reopened: same state; a second generation replaces the first and removes it.
        let mut copy = LocalCopy::open(dir.path()).unwrap();
        assert_eq!(copy.state().unwrap(), s2);
        // A second sync cannot take the lock meanwhile.
        let err = LocalCopy::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("another sync"), "{err}");
        let r = copy.begin_rebuild().unwrap();
        copy.switch(r, &state).unwrap();
        assert!(!dir.path().join("db-1").exists());
        assert!(dir.path().join("db-2").exists());
        assert_eq!(copy.live().unwrap().records().count(), 0);
        drop(copy);
        // A crash during a rebuild leaves a stray generation: removed at open.
        std::fs::create_dir(dir.path().join("db-7")).unwrap();
        let copy = LocalCopy::open(dir.path()).unwrap();
        assert!(!dir.path().join("db-7").exists());
        assert_eq!(copy.state().unwrap(), state);
        drop(copy);
        assert_eq!(open_read_only(dir.path()).unwrap().state().unwrap(), state);
    }

    #[test]
    fn state_knows_its_last_day_and_applied_files() {
        let mut s = SyncState {
            format: COPY_FORMAT,
            full: Some(applied("F1", 1)),
            deltas: vec![],
        };
        assert_eq!(s.last_day(), Some(day(1)));
        assert_eq!(s.applied(day(1)).unwrap().name, "F1");
        s.deltas.push(applied("D2", 2));
        assert_eq!(s.last_day(), Some(day(2)));
        assert_eq!(s.applied(day(2)).unwrap().name, "D2");
        assert!(s.applied(day(3)).is_none());
    }

    #[test]
    fn read_only_open_of_a_directory_that_is_no_copy_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let err = open_read_only(dir.path()).err().unwrap().to_string();
        assert!(err.contains("not a local copy"), "{err}");
    }
}
