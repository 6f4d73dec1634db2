//! Checking one published extract file completely, in one streaming pass: what both
//! `verify FILE…` and `sync` (before it applies anything of a file) rely on.
//!
//! A file passes when all of these hold:
//! - its name is `SMKIKR_FULL_YYYY-MM-DD.xml.gz` or `SMKIKR_DELT_YYYY-MM-DD.xml.gz`;
//! - its SHA-256 and size equal its `<file>.sha256` sidecar and its `manifest.json` entry;
//! - it is a complete gzip stream (every member's CRC-32 and length, multi-member files
//!   included) with nothing after the last member;
//! - the document inside is valid against the XSD (`xmllint`, see [`super::schema`]), and
//!   our reader accepts it: its root says the kind and date of the file name, and the number
//!   of records equals `recordCount` and the manifest's count;
//! - every certificate parses (`x509-parser`, GBCS profile) and says what its record says:
//!   serial, issuer hash, type, Device ID / Entity ID, role, usage; a full lists only `I`.
//!
//! The bytes are read once: a hashing reader under the gzip decoder, a tee to `xmllint`
//! above it, the record reader on top, and each record handed to a sink (the local copy's
//! pending batch for `sync`, nothing for `verify`). The caller acts on the records only if
//! the whole file passed.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, ensure, Result};
use chrono::NaiveDate;
use flate2::read::MultiGzDecoder;
use sha2::{Digest, Sha256};

use super::schema::{Schema, TeeToValidator};
use crate::certificate::{self, CertificateType, Usage};
use crate::contract::{issuer_hash, CertificateStatus, StoredType, StoredUsage};
use crate::extract::publish::{sha256_of, Manifest, ManifestEntry, MANIFEST};
use crate::extract::xml::{ExtractKind, ExtractReader, ParsedRecord};

/// Size of the buffer between the decompressor and the XML reader (also the chunk size the
/// validator is fed in).
const XML_BUFFER: usize = 256 * 1024;

/// What a file's name says it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileName {
    /// FULL or DELTA.
    pub kind: ExtractKind,
    /// Its day.
    pub date: NaiveDate,
}

impl FileName {
    /// Parses `SMKIKR_FULL_2026-11-01.xml.gz` / `SMKIKR_DELT_…`; `None` for anything else.
    pub fn parse(name: &str) -> Option<FileName> {
        let rest = name.strip_prefix("SMKIKR_")?.strip_suffix(".xml.gz")?;
        let (tag, date) = rest.split_once('_')?;
        let kind = match tag {
            "FULL" => ExtractKind::Full,
            "DELT" => ExtractKind::Delta,
            _ => return None,
        };
        let date = NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
        (kind.file_name(date) == name).then_some(FileName { kind, date })
    }
}

/// What was found in a file that passed (or as far as a failing one got).
#[derive(Clone, Debug, Default)]
pub struct FileSummary {
    /// Records read.
    pub records: u64,
    /// Records by status, in [`CertificateStatus::ALL`] order (P I N E R).
    pub by_status: [u64; 5],
    /// Size of the file in bytes.
    pub size: u64,
    /// SHA-256 of the file, lowercase hex.
    pub sha256: String,
    /// Uncompressed XML bytes.
    pub xml_bytes: u64,
}

impl FileSummary {
    /// `I 2137, N 158, P 2330` — statuses present, in code order.
    pub fn statuses(&self) -> String {
        let parts: Vec<String> = CertificateStatus::ALL
            .iter()
            .zip(self.by_status)
            .filter(|(_, n)| *n > 0)
            .map(|(s, n)| format!("{} {n}", s.code()))
            .collect();
        if parts.is_empty() {
            "no records".into()
        } else {
            parts.join(", ")
        }
    }
}

/// Everything wrong with one file, each defect a sentence.
#[derive(Debug)]
pub struct Defects {
    /// The file.
    pub file: PathBuf,
    /// What is wrong, most fundamental first.
    pub defects: Vec<String>,
}

impl fmt::Display for Defects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.defects.join("; "))
    }
}

impl std::error::Error for Defects {}

/// Loads `manifest.json` from a directory of published files.
pub fn load_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST);
    let bytes = std::fs::read(&path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            anyhow!(
                "{} not found: {} is not a directory of published extract files",
                path.display(),
                dir.display()
            )
        } else {
            anyhow!("reading {}: {e}", path.display())
        }
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| anyhow!("{} is not a valid manifest: {e}", path.display()))
}

/// Reads `<file>.sha256` (`sha256sum` format) and returns the hash it gives for `name`.
pub fn read_sidecar(file: &Path) -> Result<String> {
    let name = file_name(file);
    let sidecar = PathBuf::from(format!("{}.sha256", file.display()));
    let text = std::fs::read_to_string(&sidecar).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            anyhow!("no sidecar {name}.sha256")
        } else {
            anyhow!("reading {name}.sha256: {e}")
        }
    })?;
    let line = text.lines().next().unwrap_or_default();
    let (hash, listed) = line
        .split_once("  ")
        .or_else(|| line.split_once(" *"))
        .ok_or_else(|| anyhow!("{name}.sha256 is not in sha256sum format: {line:?}"))?;
    ensure!(listed == name, "{name}.sha256 names {listed:?}, not {name}");
    ensure!(
        hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "{name}.sha256 holds {hash:?}, not a SHA-256"
    );
    Ok(hash.to_ascii_lowercase())
}

/// Checks one file completely (see the module documentation), handing each record to
/// `sink` as it is read. `manifest` is the directory's manifest (`None`: absent, itself a
/// defect). `Ok` only when the file has no defect at all; otherwise every defect found.
pub fn check_file(
    schema: &Schema,
    path: &Path,
    manifest: Option<&Manifest>,
    sink: &mut dyn FnMut(&ParsedRecord) -> Result<()>,
) -> std::result::Result<FileSummary, Defects> {
    let name = file_name(path);
    let mut defects = Vec::new();
    let expected = FileName::parse(&name);
    if expected.is_none() {
        defects.push(
            "the name is not SMKIKR_FULL_YYYY-MM-DD.xml.gz or SMKIKR_DELT_YYYY-MM-DD.xml.gz".into(),
        );
    }
    let sidecar = read_sidecar(path)
        .map_err(|e| defects.push(e.to_string()))
        .ok();
    let entry: Option<&ManifestEntry> = match manifest {
        None => {
            defects.push(format!("no {MANIFEST} beside it"));
            None
        }
        Some(m) => {
            let found: Vec<&ManifestEntry> = m.files.iter().filter(|f| f.name == name).collect();
            match found.len() {
                0 => defects.push(format!("not listed in {MANIFEST}")),
                1 => {}
                n => defects.push(format!("listed {n} times in {MANIFEST}")),
            }
            found.first().copied()
        }
    };
    if let (Some(e), Some(n)) = (entry, expected) {
        if e.kind != n.kind.as_str() || e.day != n.date {
            defects.push(format!(
                "{MANIFEST} lists it as {} {}, its name says {} {}",
                e.kind,
                e.day,
                n.kind.as_str(),
                n.date
            ));
        }
    }

    let mut summary = FileSummary::default();
    let streamed = stream(schema, path, expected, &mut summary, sink);
    if summary.sha256.is_empty() {
        // The stream stopped before the end of the file: hash it whole for the comparisons.
        match sha256_of(path) {
            Ok(h) => summary.sha256 = h,
            Err(e) => defects.push(format!("cannot read it: {e:#}")),
        }
        summary.size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    }
    // Hash and size first: when they disagree, that explains everything after.
    let mut hash_defects = Vec::new();
    if let Some(h) = &sidecar {
        if !summary.sha256.is_empty() && *h != summary.sha256 {
            hash_defects.push(format!(
                "SHA-256 mismatch: the file's is {}, its sidecar {name}.sha256 says {h}",
                summary.sha256
            ));
        }
    }
    if let Some(e) = entry {
        if !summary.sha256.is_empty() && e.sha256 != summary.sha256 {
            hash_defects.push(format!(
                "SHA-256 mismatch: the file's is {}, {MANIFEST} says {}",
                summary.sha256, e.sha256
            ));
        }
        if e.size != summary.size {
            hash_defects.push(format!(
                "size is {} bytes, {MANIFEST} says {}",
                summary.size, e.size
            ));
        }
    }
    defects.splice(0..0, hash_defects);
    match streamed {
        Err(e) => defects.push(format!("{e:#}")),
        Ok(()) => {
            if let Some(e) = entry {
                if e.records != summary.records {
                    defects.push(format!(
                        "holds {} records, {MANIFEST} says {}",
                        summary.records, e.records
                    ));
                }
            }
        }
    }
    if defects.is_empty() {
        Ok(summary)
    } else {
        Err(Defects {
            file: path.to_path_buf(),
            defects,
        })
    }
}

/// The single pass: raw bytes → SHA-256 → gzip → (tee to xmllint) → records → checks → sink.
fn stream(
    schema: &Schema,
    path: &Path,
    expected: Option<FileName>,
    summary: &mut FileSummary,
    sink: &mut dyn FnMut(&ParsedRecord) -> Result<()>,
) -> Result<()> {
    let file = File::open(path).map_err(|e| anyhow!("cannot open it: {e}"))?;
    let hashed = Arc::new(Mutex::new(HashState::default()));
    let raw = HashingReader {
        inner: file,
        state: hashed.clone(),
    };
    let gzip_error = Arc::new(Mutex::new(None::<String>));
    let gz = GzipErrors {
        inner: MultiGzDecoder::new(BufReader::with_capacity(XML_BUFFER, raw)),
        error: gzip_error.clone(),
        bytes: 0,
    };
    let mut validation = schema.start()?;
    let result = {
        let tee = TeeToValidator {
            inner: gz,
            validation: &mut validation,
        };
        let mut input = BufReader::with_capacity(XML_BUFFER, tee);
        let r = read_records(&mut input, expected, summary, sink);
        // Whatever the XML reader left (nothing, for a good file) must still be valid gzip.
        let rest = r.and_then(|()| {
            let extra = io::copy(&mut input, &mut io::sink())?;
            ensure!(
                extra == 0,
                "{extra} bytes after the end of the XML document"
            );
            Ok(())
        });
        summary.xml_bytes = input.get_ref().inner.bytes;
        rest
    };
    if let Some(g) = gzip_error.lock().unwrap().take() {
        validation.abort();
        bail!("not a valid gzip file: {g}");
    }
    if let Err(e) = result {
        validation.abort();
        return Err(e);
    }
    if let Err(why) = validation.finish() {
        bail!("not valid against the extract schema smki-extract-v1.xsd (xmllint): {why}");
    }
    let state = hashed.lock().unwrap();
    summary.size = state.size;
    summary.sha256 = hex::encode(state.hasher.clone().finalize());
    Ok(())
}

fn read_records(
    input: &mut impl BufRead,
    expected: Option<FileName>,
    summary: &mut FileSummary,
    sink: &mut dyn FnMut(&ParsedRecord) -> Result<()>,
) -> Result<()> {
    let mut reader = ExtractReader::new(input)?;
    let header = reader.header().clone();
    if let Some(n) = expected {
        ensure!(
            header.kind == n.kind && header.date == n.date,
            "its root says extractType {} extractDate {}, its name says {} {}: {} under this name",
            header.kind.as_str(),
            header.date,
            n.kind.as_str(),
            n.date,
            if header.kind != n.kind {
                "the other kind of extract".to_string()
            } else if header.date < n.date {
                format!(
                    "an older {} (of {}) republished",
                    header.kind.as_str(),
                    header.date
                )
            } else {
                format!("a newer {} (of {})", header.kind.as_str(), header.date)
            }
        );
    }
    while let Some(rec) = reader.next_record()? {
        let no = summary.records + 1;
        check_certificate(&rec, header.kind)
            .map_err(|e| anyhow!("record {no} ({}): {e}", rec.record_key()))?;
        sink(&rec).map_err(|e| anyhow!("record {no} ({}): {e:#}", rec.record_key()))?;
        summary.records += 1;
        let slot = CertificateStatus::ALL
            .iter()
            .position(|s| *s == rec.status)
            .expect("reader gives known statuses");
        summary.by_status[slot] += 1;
    }
    Ok(())
}

/// The certificate in `CertificateBody` parses and says what the record says.
pub fn check_certificate(rec: &ParsedRecord, kind: ExtractKind) -> Result<()> {
    if kind == ExtractKind::Full {
        ensure!(
            rec.status == CertificateStatus::InUse,
            "status {} in a full extract, which lists only I",
            rec.status.code()
        );
    }
    let info =
        certificate::parse(&rec.certificate_der).map_err(|e| anyhow!("CertificateBody: {e}"))?;
    ensure!(
        info.serial == rec.serial,
        "CertificateSerial {} but the certificate's serial is {}",
        hex::encode_upper(&rec.serial),
        info.serial_hex()
    );
    let hash = issuer_hash(&info.issuer_name_der);
    ensure!(
        hash == rec.issuer_hash,
        "CertificateIssuerHash {} but the certificate's issuer hashes to {}",
        hex::encode(rec.issuer_hash),
        hex::encode(hash)
    );
    let stored_type = match info.cert_type {
        CertificateType::Oca => StoredType::Oca,
        CertificateType::Dca => StoredType::Dca,
        CertificateType::Organisation => StoredType::Organisation,
        CertificateType::Device => StoredType::Device,
    };
    ensure!(
        stored_type == rec.certificate_type,
        "CertificateType {:?} but the certificate is {}",
        rec.certificate_type,
        info.cert_type
    );
    let id = if info.cert_type == CertificateType::Device {
        rec.subject_alt_name
    } else {
        rec.entity_id
    };
    ensure!(
        id == info.subject_id,
        "Device/Entity ID {} but the certificate's is {}",
        id.map(|i| i.to_string()).unwrap_or_else(|| "absent".into()),
        info.subject_id
            .map(|i| i.to_string())
            .unwrap_or_else(|| "absent".into())
    );
    ensure!(
        rec.role == info.role,
        "CertificateRole {:?} but the certificate's is {:?}",
        rec.role,
        info.role
    );
    let usage = match info.usage {
        Usage::DigitalSignature => StoredUsage::DigitalSignature,
        Usage::KeyAgreement => StoredUsage::KeyAgreement,
        Usage::CertSign => StoredUsage::CertSign,
    };
    ensure!(
        usage == rec.usage,
        "CertificateUsage {:?} but the certificate's is {}",
        rec.usage,
        info.usage.code()
    );
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

#[derive(Default)]
struct HashState {
    hasher: Sha256,
    size: u64,
}

/// Hashes and counts the raw (compressed) bytes as the decoder pulls them.
struct HashingReader {
    inner: File,
    state: Arc<Mutex<HashState>>,
}

impl Read for HashingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut s = self.state.lock().unwrap();
        s.hasher.update(&buf[..n]);
        s.size += n as u64;
        Ok(n)
    }
}

/// Remembers an error of the gzip decoder, so that it is reported as a gzip defect rather
/// than as whatever the XML reader made of it.
struct GzipErrors<R: Read> {
    inner: R,
    error: Arc<Mutex<Option<String>>>,
    bytes: u64,
}

impl<R: Read> Read for GzipErrors<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.bytes += n as u64;
                Ok(n)
            }
            Err(e) => {
                let what = if e.kind() == io::ErrorKind::UnexpectedEof {
                    format!("truncated: it ends inside a gzip member ({e})")
                } else {
                    format!("{e} after {} bytes of XML", self.bytes)
                };
                *self.error.lock().unwrap() = Some(what);
                Err(e)
            }
        }
    }
}

/// `verify FILE…`: check each file, print one line per file (and its defects), and return
/// how many files had defects.
pub fn verify_files(files: &[PathBuf], out: &mut dyn io::Write) -> Result<usize> {
    let schema = Schema::load()?;
    let mut bad = 0;
    let mut manifests: std::collections::HashMap<PathBuf, Option<Manifest>> = Default::default();
    for path in files {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let manifest = manifests.entry(dir.clone()).or_insert_with(|| {
            if dir.join(MANIFEST).exists() {
                load_manifest(&dir).ok()
            } else {
                None
            }
        });
        match check_file(&schema, path, manifest.as_ref(), &mut |_| Ok(())) {
            Ok(s) => writeln!(
                out,
                "OK      {}: {} records ({}), {} bytes, {} bytes of XML; SHA-256 matches sidecar \
                 and {MANIFEST}; gzip, XSD, certificates and counts ok",
                file_name(path),
                s.records,
                s.statuses(),
                s.size,
                s.xml_bytes
            )?,
            Err(d) => {
                bad += 1;
                writeln!(out, "DEFECT  {}:", file_name(path))?;
                for defect in &d.defects {
                    writeln!(out, "        - {defect}")?;
                }
            }
        }
    }
    writeln!(
        out,
        "{} file(s) checked: {} ok, {bad} with defects",
        files.len(),
        files.len() - bad
    )?;
    Ok(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_parsed_strictly() {
        let n = FileName::parse("SMKIKR_DELT_2026-11-02.xml.gz").unwrap();
        assert_eq!(n.kind, ExtractKind::Delta);
        assert_eq!(n.date, NaiveDate::from_ymd_opt(2026, 11, 2).unwrap());
        assert_eq!(
            FileName::parse("SMKIKR_FULL_2026-11-01.xml.gz")
                .unwrap()
                .kind,
            ExtractKind::Full
        );
        for bad in [
            "SMKIKR_DELTA_2026-11-02.xml.gz",
            "SMKIKR_DELT_2026-11-2.xml.gz",
            "SMKIKR_DELT_2026-13-02.xml.gz",
            "SMKIKR_DELT_2026-11-02.xml",
            "smkikr_delt_2026-11-02.xml.gz",
        ] {
            assert_eq!(FileName::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn sidecars_must_name_the_file_and_hold_a_hash() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("SMKIKR_DELT_2026-11-02.xml.gz");
        std::fs::write(&f, b"x").unwrap();
        let side = dir.path().join("SMKIKR_DELT_2026-11-02.xml.gz.sha256");
        let hash = "ab".repeat(32);
        assert!(read_sidecar(&f)
            .unwrap_err()
            .to_string()
            .contains("no sidecar"));
        std::fs::write(&side, format!("{hash}  SMKIKR_DELT_2026-11-02.xml.gz\n")).unwrap();
        assert_eq!(read_sidecar(&f).unwrap(), hash);
        std::fs::write(&side, format!("{hash}  SMKIKR_DELT_2026-11-03.xml.gz\n")).unwrap();
        assert!(read_sidecar(&f).unwrap_err().to_string().contains("names"));
        std::fs::write(&side, "abc  SMKIKR_DELT_2026-11-02.xml.gz\n").unwrap();
        assert!(read_sidecar(&f)
            .unwrap_err()
            .to_string()
            .contains("not a SHA-256"));
    }
}
