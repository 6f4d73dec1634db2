//! Atomic publication of extract files into the output directory that Parties read
//! (DESIGN §5.6): a file is visible under its final name only when complete.
//!
//! Each file is written to a hidden temporary name in the same directory, fsynced, renamed
//! to its final name, and the directory fsynced. Beside it goes `<file>.sha256` (in
//! `sha256sum` format, so `sha256sum -c` checks it), and `manifest.json` lists every
//! available file with its size, SHA-256, record count, day and the offsets it covers. The
//! manifest is rewritten the same atomic way, after the file it names is in place and before
//! a file it no longer names is deleted, so it never lists a file that is not there.
//!
//! Retention, counted in days of the extract calendar so that production, replay and the demo
//! behave alike: a delta is removed once a delta 7 or more days newer is published; the
//! newest 2 fulls are kept (both configurable).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::xml::ExtractKind;

/// Name of the manifest in the output directory.
pub const MANIFEST: &str = "manifest.json";
/// Prefix of temporary files (hidden; never listed; removed at open).
const TEMP_PREFIX: &str = ".tmp-";
/// Lock file: one publisher per output directory at a time.
const LOCK_FILE: &str = ".lock";

/// How long published files stay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// A delta is removed once a delta this many days newer (or more) is published.
    pub delta_days: i64,
    /// How many of the newest fulls are kept.
    pub fulls_kept: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            delta_days: 7,
            fulls_kept: 2,
        }
    }
}

/// One published file as the manifest lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// File name in the output directory.
    pub name: String,
    /// `FULL` or `DELTA`.
    pub kind: String,
    /// The extract's day.
    pub day: NaiveDate,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the file, lowercase hex.
    pub sha256: String,
    /// Certificate records in the file.
    pub records: u64,
    /// Per partition, the next offset the file's content covers up to (the store's offsets
    /// at the close of the day).
    pub offsets: BTreeMap<i32, i64>,
}

/// The manifest document.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version.
    pub format: u32,
    /// Every available file, fulls then deltas, each by day.
    pub files: Vec<ManifestEntry>,
}

/// Publishes files into one output directory.
pub struct Publisher {
    dir: PathBuf,
    retention: Retention,
    manifest: Manifest,
    /// Held (exclusively locked) for the publisher's life.
    _lock: File,
}

impl Publisher {
    /// Open `dir` (created if missing): take its lock (a second publisher on the same
    /// directory, e.g. `full` while `run` publishes, is refused), load the manifest and
    /// remove temporary files left by a crash.
    pub fn open(dir: &Path, retention: Retention) -> Result<Publisher> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let lock = crate::dirlock::lock(dir, LOCK_FILE, |held| {
            format!(
                "output directory {} is in use by another smki-extract process (it holds {}); \
                 stop it or publish into another directory",
                dir.display(),
                held.display()
            )
        })?;
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                fs::remove_file(entry.path())
                    .with_context(|| format!("removing stale {}", entry.path().display()))?;
            }
        }
        let path = dir.join(MANIFEST);
        let manifest = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a valid manifest", path.display()))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Manifest {
                format: 1,
                files: Vec::new(),
            },
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(Publisher {
            dir: dir.to_path_buf(),
            retention,
            manifest,
            _lock: lock,
        })
    }

    /// The current manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The output directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the manifest lists the `kind` file of `day`.
    pub fn has(&self, kind: ExtractKind, day: NaiveDate) -> bool {
        let name = kind.file_name(day);
        self.manifest.files.iter().any(|f| f.name == name)
    }

    /// Publish the `kind` extract of `day`: `write` produces its bytes into the temporary
    /// file. Publishing a name that exists is allowed only with identical bytes; otherwise it
    /// is an error naming both hashes, and nothing changes.
    pub fn publish(
        &mut self,
        kind: ExtractKind,
        day: NaiveDate,
        records: u64,
        offsets: BTreeMap<i32, i64>,
        write: impl FnOnce(&mut dyn Write) -> Result<()>,
    ) -> Result<ManifestEntry> {
        let name = kind.file_name(day);
        let final_path = self.dir.join(&name);
        let temp_path = self.dir.join(format!("{TEMP_PREFIX}{name}"));
        let (size, sha256) = match write_file(&temp_path, write) {
            Ok(v) => v,
            Err(e) => {
                let _ = fs::remove_file(&temp_path);
                return Err(e.context(format!("writing {name}")));
            }
        };
        if final_path.exists() {
            let existing = sha256_of(&final_path)?;
            fs::remove_file(&temp_path)?;
            if existing != sha256 {
                bail!(
                    "{name} is already published with SHA-256 {existing}; the new bytes have \
                     SHA-256 {sha256}: refusing to replace a published file with different content"
                );
            }
        } else {
            fs::rename(&temp_path, &final_path)
                .with_context(|| format!("renaming into {}", final_path.display()))?;
            sync_dir(&self.dir)?;
        }
        let sidecar = format!("{sha256}  {name}\n");
        write_atomically(&self.dir, &format!("{name}.sha256"), sidecar.as_bytes())?;

        let entry = ManifestEntry {
            name: name.clone(),
            kind: kind.as_str().to_string(),
            day,
            size,
            sha256,
            records,
            offsets,
        };
        self.manifest.files.retain(|f| f.name != name);
        self.manifest.files.push(entry.clone());
        let removed = self.apply_retention();
        self.save_manifest()?;
        for gone in removed {
            for file in [gone.clone(), format!("{gone}.sha256")] {
                match fs::remove_file(self.dir.join(&file)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e).with_context(|| format!("removing {file}")),
                }
            }
        }
        sync_dir(&self.dir)?;
        Ok(entry)
    }

    /// Whether retention would keep the `kind` file of `day` if it were published now. A
    /// file it would not keep is removed the moment it is written (a delta older than the
    /// retention window, a full older than the fulls kept): on-demand commands refuse it.
    pub fn would_keep(&self, kind: ExtractKind, day: NaiveDate) -> bool {
        let name = kind.file_name(day);
        let mut days: Vec<(&str, NaiveDate, &str)> = self
            .manifest
            .files
            .iter()
            .filter(|f| f.name != name)
            .map(|f| (f.kind.as_str(), f.day, f.name.as_str()))
            .collect();
        days.push((kind.as_str(), day, &name));
        !expired_by_retention(&days, self.retention).contains(&name.as_str())
    }

    /// Drop expired files from the manifest; returns their names (to delete after the
    /// manifest is saved).
    fn apply_retention(&mut self) -> Vec<String> {
        let days: Vec<(&str, NaiveDate, &str)> = self
            .manifest
            .files
            .iter()
            .map(|f| (f.kind.as_str(), f.day, f.name.as_str()))
            .collect();
        let removed: Vec<String> = expired_by_retention(&days, self.retention)
            .into_iter()
            .map(str::to_string)
            .collect();
        self.manifest.files.retain(|f| !removed.contains(&f.name));
        self.manifest
            .files
            .sort_by(|a, b| (b.kind.as_str(), a.day).cmp(&(a.kind.as_str(), b.day)));
        removed
    }

    fn save_manifest(&self) -> Result<()> {
        let mut text = serde_json::to_vec_pretty(&self.manifest)?;
        text.push(b'\n');
        write_atomically(&self.dir, MANIFEST, &text)
    }
}

/// The names among `files` (kind, day, name) that retention removes: deltas once one
/// `delta_days` or more newer exists, fulls beyond the newest `fulls_kept`.
fn expired_by_retention<'a>(
    files: &[(&str, NaiveDate, &'a str)],
    retention: Retention,
) -> Vec<&'a str> {
    let delta = ExtractKind::Delta.as_str();
    let newest_delta = files.iter().filter(|f| f.0 == delta).map(|f| f.1).max();
    let mut fulls: Vec<NaiveDate> = files.iter().filter(|f| f.0 != delta).map(|f| f.1).collect();
    fulls.sort_unstable_by(|a, b| b.cmp(a));
    let oldest_full_kept = fulls.get(retention.fulls_kept.saturating_sub(1)).copied();
    files
        .iter()
        .filter(|(kind, day, _)| {
            if *kind == delta {
                newest_delta.is_some_and(|n| (n - *day).num_days() >= retention.delta_days)
            } else {
                oldest_full_kept.is_some_and(|o| *day < o)
            }
        })
        .map(|f| f.2)
        .collect()
}

/// Counts and hashes what passes through, so the file is hashed while it is written.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Write a file through `write`, flush and fsync it; returns its size and SHA-256.
fn write_file(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> Result<()>,
) -> Result<(u64, String)> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = HashingWriter {
        inner: io::BufWriter::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
        size: 0,
    };
    write(&mut out)?;
    out.flush()?;
    let file = out.inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
        .with_context(|| format!("fsync {}", path.display()))?;
    Ok((out.size, hex::encode(out.hasher.finalize())))
}

/// Write a small file atomically: temporary name, fsync, rename, fsync directory.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let temp = dir.join(format!("{TEMP_PREFIX}{name}"));
    write_file(&temp, |w| Ok(w.write_all(bytes)?))?;
    fs::rename(&temp, dir.join(name)).with_context(|| format!("renaming into {name}"))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync directory {}", dir.display()))
}

/// SHA-256 of a file, lowercase hex.
pub fn sha256_of(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, d).unwrap()
    }

    fn offsets() -> BTreeMap<i32, i64> {
        BTreeMap::from([(0, 10), (1, 20)])
    }

    fn publish_bytes(
        p: &mut Publisher,
        kind: ExtractKind,
        d: u32,
        bytes: &[u8],
    ) -> Result<ManifestEntry> {
        p.publish(kind, day(d), 3, offsets(), |w| Ok(w.write_all(bytes)?))
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n != LOCK_FILE)
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_published_file_has_a_sidecar_sha256sum_accepts_and_a_manifest_entry() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Publisher::open(dir.path(), Retention::default()).unwrap();
        let e = publish_bytes(&mut p, ExtractKind::Full, 1, b"full bytes").unwrap();
        assert_eq!(e.name, "SMKIKR_FULL_2026-11-01.xml.gz");
        assert_eq!(e.size, 10);
        assert_eq!(
            names(dir.path()),
            vec![
                "SMKIKR_FULL_2026-11-01.xml.gz",
                "SMKIKR_FULL_2026-11-01.xml.gz.sha256",
                "manifest.json"
            ]
        );
        // An independent tool checks the sidecar.
        let status = std::process::Command::new("sha256sum")
            .args(["-c", "--status", "SMKIKR_FULL_2026-11-01.xml.gz.sha256"])
            .current_dir(dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        let manifest: Manifest =
            serde_json::from_slice(&fs::read(dir.path().join(MANIFEST)).unwrap()).unwrap();
        assert_eq!(manifest.files, vec![e.clone()]);
        assert_eq!(manifest.files[0].offsets, offsets());
        // A second publisher on the same directory is refused while the first lives.
        let err = Publisher::open(dir.path(), Retention::default())
            .err()
            .unwrap();
        assert!(err.to_string().contains("in use by another"), "{err}");
        drop(p);
        // Reopening reads the same manifest.
        assert_eq!(
            Publisher::open(dir.path(), Retention::default())
                .unwrap()
                .manifest(),
            &manifest
        );
    }

    #[test]
    fn republishing_needs_identical_bytes_and_names_both_hashes_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Publisher::open(dir.path(), Retention::default()).unwrap();
        let first = publish_bytes(&mut p, ExtractKind::Delta, 2, b"abc").unwrap();
        assert_eq!(
            publish_bytes(&mut p, ExtractKind::Delta, 2, b"abc").unwrap(),
            first
        );
        let err = format!(
            "{:#}",
            publish_bytes(&mut p, ExtractKind::Delta, 2, b"abd").unwrap_err()
        );
        assert!(err.contains(&first.sha256), "{err}");
        assert!(err.contains(&hex::encode(Sha256::digest(b"abd"))), "{err}");
        assert_eq!(fs::read(dir.path().join(&first.name)).unwrap(), b"abc");
        assert!(!names(dir.path()).iter().any(|n| n.starts_with(TEMP_PREFIX)));
    }

    #[test]
    fn a_failed_write_leaves_nothing_visible_and_stale_temp_files_are_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Publisher::open(dir.path(), Retention::default()).unwrap();
        let err = p
            .publish(ExtractKind::Full, day(3), 1, offsets(), |w| {
                w.write_all(b"half a file")?;
                bail!("disk full")
            })
            .unwrap_err();
        assert!(format!("{err:#}").contains("disk full"));
        assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
        assert!(p.manifest().files.is_empty());
        // A crash mid-write leaves a temporary file: never listed, removed at the next open.
        fs::write(
            dir.path()
                .join(format!("{TEMP_PREFIX}SMKIKR_FULL_2026-11-03.xml.gz")),
            b"x",
        )
        .unwrap();
        drop(p);
        let p = Publisher::open(dir.path(), Retention::default()).unwrap();
        assert!(names(dir.path()).is_empty());
        assert!(p.manifest().files.is_empty());
    }

    #[test]
    fn deltas_go_when_one_seven_days_newer_is_published_and_two_fulls_stay() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Publisher::open(dir.path(), Retention::default()).unwrap();
        for d in 1..=15 {
            publish_bytes(
                &mut p,
                ExtractKind::Delta,
                d,
                format!("delta {d}").as_bytes(),
            )
            .unwrap();
            if d % 7 == 1 {
                publish_bytes(&mut p, ExtractKind::Full, d, format!("full {d}").as_bytes())
                    .unwrap();
            }
        }
        let listed: Vec<String> = p.manifest().files.iter().map(|f| f.name.clone()).collect();
        let mut want: Vec<String> = vec![
            "SMKIKR_FULL_2026-11-08.xml.gz".into(),
            "SMKIKR_FULL_2026-11-15.xml.gz".into(),
        ];
        want.extend((9..=15).map(|d| format!("SMKIKR_DELT_2026-11-{d:02}.xml.gz")));
        assert_eq!(listed, want);
        // The directory holds exactly the listed files, their sidecars and the manifest.
        let mut expected_files: Vec<String> = want
            .iter()
            .flat_map(|n| [n.clone(), format!("{n}.sha256")])
            .collect();
        expected_files.push(MANIFEST.into());
        expected_files.sort();
        assert_eq!(names(dir.path()), expected_files);
        // What retention would drop at once is known before writing (on-demand commands
        // refuse it); what it keeps, or a newer file, is fine.
        let nov = |d| NaiveDate::from_ymd_opt(2026, 11, d).unwrap();
        assert!(
            !p.would_keep(ExtractKind::Delta, nov(8)),
            "7 days older than the 15th"
        );
        assert!(p.would_keep(ExtractKind::Delta, nov(9)));
        assert!(p.would_keep(ExtractKind::Delta, nov(20)));
        assert!(
            !p.would_keep(ExtractKind::Full, nov(1)),
            "older than the 2 fulls kept"
        );
        assert!(
            p.would_keep(ExtractKind::Full, nov(8)),
            "already listed: kept"
        );
        assert!(p.would_keep(ExtractKind::Full, nov(10)));
    }

    /// The building blocks together: records from the real fixtures → streaming XML →
    /// parallel gzip → atomic publication; then independent readers check the published
    /// file: `gzip -t`, `sha256sum -c`, and `xmllint --schema` on what `zcat` gives.
    #[test]
    fn xml_through_parallel_gzip_publishes_a_file_independent_tools_accept() {
        use crate::extract::gzip::{GzOptions, ParallelGzWriter};
        use crate::extract::xml::ExtractWriter;
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gbcs-test-certs");
        let mut records = Vec::new();
        let mut paths: Vec<PathBuf> = fs::read_dir(&fixtures)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        paths.sort();
        for path in paths {
            let der =
                crate::certificate::der_from_pem(&fs::read_to_string(&path).unwrap()).unwrap();
            let info = crate::certificate::parse(&der).unwrap();
            let mut rec = crate::ingest::record_for(
                &info,
                crate::contract::CertificateStatus::InUse,
                false,
                "e",
                0,
            );
            rec.certificate_der = der;
            records.push(rec);
        }
        let dir = tempfile::tempdir().unwrap();
        let mut p = Publisher::open(dir.path(), Retention::default()).unwrap();
        let opts = GzOptions {
            chunk_size: 64 << 10,
            level: 6,
            threads: 2,
        };
        let entry = p
            .publish(
                ExtractKind::Full,
                day(8),
                records.len() as u64,
                offsets(),
                |out| {
                    let gz = ParallelGzWriter::new(out, opts)?;
                    let mut xml =
                        ExtractWriter::new(gz, ExtractKind::Full, day(8), records.len() as u64)?;
                    for r in &records {
                        xml.write_record(r)?;
                    }
                    xml.finish()?.finish()?;
                    Ok(())
                },
            )
            .unwrap();
        assert_eq!(entry.records, 419);
        let file = dir.path().join(&entry.name);
        let ok = |cmd: &str| {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .current_dir(dir.path())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{cmd}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ok(&format!("gzip -t {}", entry.name));
        ok(&format!("sha256sum -c --status {}.sha256", entry.name));
        let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/smki-extract-v1.xsd");
        ok(&format!(
            "zcat {} > extract.xml && xmllint --noout --schema {} extract.xml",
            entry.name,
            schema.display()
        ));
        assert!(fs::metadata(&file).unwrap().len() > 0);
    }
}
