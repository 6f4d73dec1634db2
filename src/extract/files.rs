//! The two extract files, written from a snapshot of the state store (DESIGN §5.4–5.7):
//!
//! - `SMKIKR_DELT_D`: every certificate in the delta index of day D, each as its version at the
//!   close of D, partition by partition in key order. Its cost follows the day's changes (a
//!   range scan of the index plus one lookup per change), not the size of the store.
//! - `SMKIKR_FULL_D`: every certificate whose version at the close of D has status `I`,
//!   streamed in key order from the `history` column family joined with the `bodies` column
//!   family in one sequential pass each; memory does not grow with the number of certificates.
//!
//! Both are counted first and written second from the same snapshot (the root element states
//! the record count). Versions of a closed day never change, so the same day gives the same
//! bytes whenever it is written: at the close, after a crash, or on demand weeks later.

use std::io::Write;

use anyhow::{Context, Result};

use super::gzip::{GzOptions, GzStats, ParallelGzWriter};
use super::xml::{ExtractKind, ExtractWriter};
use crate::contract::{CertificateRecord, CertificateStatus};
use crate::day::date_of_day;
use crate::store::StoreSnapshot;

/// What writing one file produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Certificate records in the file.
    pub records: u64,
    /// Uncompressed XML bytes.
    pub xml_bytes: u64,
    /// The gzip members written.
    pub gzip: GzStats,
}

/// Records of the delta of `day` (the first pass).
pub fn count_delta(snap: &StoreSnapshot<'_>, day: u32) -> Result<u64> {
    let mut n = 0;
    for p in snap.partitions()? {
        for key in snap.changes_on(p, day) {
            key?;
            n += 1;
        }
    }
    Ok(n)
}

/// Records of the full extract as of `day` (the first pass): certificates In use then.
pub fn count_full(snap: &StoreSnapshot<'_>, day: u32) -> Result<u64> {
    snap.count_in_use_as_of(day)
}

/// Write the gzip-compressed delta of `day`, declared with `records` (from [`count_delta`] on
/// the same snapshot), into `out`.
pub fn write_delta(
    snap: &StoreSnapshot<'_>,
    day: u32,
    records: u64,
    out: &mut dyn Write,
    gzip: GzOptions,
) -> Result<Written> {
    let gz = ParallelGzWriter::new(out, gzip)?;
    let mut xml = ExtractWriter::new(gz, ExtractKind::Delta, date_of_day(day), records)?;
    for p in snap.partitions()? {
        for key in snap.changes_on(p, day) {
            let key = key?;
            let mut rec = snap.version(&key, day)?.with_context(|| {
                format!(
                    "the delta index of {} lists key {} but its version of that day is missing",
                    date_of_day(day),
                    hex::encode(key.as_bytes())
                )
            })?;
            rec.certificate_der = snap
                .body(&key)?
                .with_context(|| format!("no body for key {}", hex::encode(key.as_bytes())))?;
            xml.write_record(&rec)?;
        }
    }
    finish(xml)
}

/// Write the gzip-compressed full extract as of `day`, declared with `records` (from
/// [`count_full`] on the same snapshot), into `out`.
pub fn write_full(
    snap: &StoreSnapshot<'_>,
    day: u32,
    records: u64,
    out: &mut dyn Write,
    gzip: GzOptions,
) -> Result<Written> {
    let gz = ParallelGzWriter::new(out, gzip)?;
    let mut xml = ExtractWriter::new(gz, ExtractKind::Full, date_of_day(day), records)?;
    let mut bodies = snap.bodies_in_order();
    for item in snap.as_of(day) {
        let (key, mut rec) = item?;
        if !is_in_use(&rec) {
            continue;
        }
        rec.certificate_der = bodies.body_of(&key)?;
        xml.write_record(&rec)?;
    }
    finish(xml)
}

fn finish(xml: ExtractWriter<ParallelGzWriter<&mut dyn Write>>) -> Result<Written> {
    let records = xml.records_written();
    let xml_bytes = xml.bytes_written();
    let gz = xml.finish()?;
    let (_, gzip) = gz.finish()?;
    Ok(Written {
        records,
        xml_bytes,
        gzip,
    })
}

fn is_in_use(rec: &CertificateRecord) -> bool {
    rec.status == CertificateStatus::InUse as i32
}
