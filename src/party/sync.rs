//! `sync`: bring a Party's local copy up to date from a directory of published files (a
//! local copy of the output directory, or an SFTP mount of it).
//!
//! The plan follows the SEC's recovery rule (DESIGN §1, §5.4): a copy that has synced
//! before continues with every delta after the day it reached; an empty copy — or one that
//! fell behind past the 7 days of deltas kept — loads the newest full extract and then every
//! later delta, in date order. Every day between the starting point and the newest delta must
//! be there: a missing one is refused with an error naming the file, never skipped.
//!
//! A run is all or nothing: every file is checked completely ([`super::verify`]: SHA-256
//! against sidecar and manifest, gzip, XSD, certificates, counts, name against content)
//! while its records are staged, and the copy changes only after every file of the run
//! passed. A load from a full goes into a new database generation that replaces the old
//! one atomically; deltas on top of an existing copy are staged as one WriteBatch each
//! (with the state that records them) and written once all of them passed. Re-running
//! applies only what is new; a day already applied whose file now has other bytes is an
//! error (a republished day).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use chrono::NaiveDate;

use super::copy::{AppliedFile, LocalCopy, PendingBatch, SyncState, COPY_FORMAT};
use super::schema::Schema;
use super::verify::{check_file, load_manifest, FileName, FileSummary};
use crate::extract::publish::{Manifest, MANIFEST};
use crate::extract::xml::ExtractKind;

/// A full is written into its new generation in WriteBatches of about this size.
const FULL_CHUNK_BYTES: usize = 32 << 20;

/// What a sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// The full loaded, when the run (re)started the copy from one.
    pub full: Option<AppliedFile>,
    /// Deltas applied, in order.
    pub deltas: Vec<AppliedFile>,
    /// Why the copy was rebuilt from a full, when it had synced before.
    pub restart_reason: Option<String>,
    /// The day the copy describes now.
    pub last_day: Option<NaiveDate>,
}

impl SyncReport {
    /// Whether the run changed nothing (the copy was up to date).
    pub fn up_to_date(&self) -> bool {
        self.full.is_none() && self.deltas.is_empty()
    }
}

/// What to apply, decided before any file is read.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    UpToDate,
    /// Deltas on top of the live copy.
    Continue(Vec<String>),
    /// A new generation from this full, then these deltas.
    Restart {
        full: String,
        deltas: Vec<String>,
        reason: Option<String>,
    },
}

/// The published files as the manifest lists them, by kind and day.
struct Available {
    fulls: BTreeMap<NaiveDate, String>,
    deltas: BTreeMap<NaiveDate, String>,
}

impl Available {
    fn of(dir: &Path, manifest: &Manifest) -> Result<Available> {
        let mut fulls = BTreeMap::new();
        let mut deltas = BTreeMap::new();
        let mut seen = HashSet::new();
        for f in &manifest.files {
            if !seen.insert(f.name.as_str()) {
                bail!(
                    "{}: {MANIFEST} lists {} twice",
                    dir.join(MANIFEST).display(),
                    f.name
                );
            }
            let n = FileName::parse(&f.name).ok_or_else(|| {
                anyhow!(
                    "{}: {MANIFEST} lists {:?}, which is not an extract file name",
                    dir.join(MANIFEST).display(),
                    f.name
                )
            })?;
            if n.kind.as_str() != f.kind || n.date != f.day {
                bail!(
                    "{}: {MANIFEST} lists {} as {} {}",
                    dir.join(MANIFEST).display(),
                    f.name,
                    f.kind,
                    f.day
                );
            }
            let slot = match n.kind {
                ExtractKind::Full => &mut fulls,
                ExtractKind::Delta => &mut deltas,
            };
            slot.insert(n.date, f.name.clone());
        }
        Ok(Available { fulls, deltas })
    }

    /// The deltas of every day after `from` up to `to`, or the name of each missing one.
    fn deltas_between(
        &self,
        from: NaiveDate,
        to: NaiveDate,
    ) -> std::result::Result<Vec<String>, Vec<String>> {
        let mut found = Vec::new();
        let mut missing = Vec::new();
        let mut d = from.succ_opt().expect("date in range");
        while d <= to {
            match self.deltas.get(&d) {
                Some(name) => found.push(name.clone()),
                None => missing.push(ExtractKind::Delta.file_name(d)),
            }
            d = d.succ_opt().expect("date in range");
        }
        if missing.is_empty() {
            Ok(found)
        } else {
            Err(missing)
        }
    }
}

fn plan(dir: &Path, manifest: &Manifest, available: &Available, state: &SyncState) -> Result<Plan> {
    let newest_delta = available.deltas.keys().next_back().copied();
    let newest_full = available.fulls.iter().next_back();
    let gap = |from: &str, day: NaiveDate, to: NaiveDate, missing: &[String]| {
        anyhow!(
            "{}: missing {} — {from} {day} needs every delta from {} to the newest, {to}; \
             {} not in {MANIFEST} (a gap in the published days: refusing to sync past it)",
            dir.display(),
            missing.join(", "),
            day.succ_opt().expect("date"),
            if missing.len() == 1 {
                "it is"
            } else {
                "they are"
            }
        )
    };
    let restart = |reason: Option<String>| -> Result<Plan> {
        let (full_day, full) = newest_full.ok_or_else(|| {
            anyhow!(
                "{}: {MANIFEST} lists no full extract (SMKIKR_FULL_*) to start from",
                dir.display()
            )
        })?;
        let deltas = match newest_delta {
            Some(to) if to > *full_day => available
                .deltas_between(*full_day, to)
                .map_err(|m| gap(&format!("the full {full}"), *full_day, to, &m))?,
            _ => Vec::new(),
        };
        Ok(Plan::Restart {
            full: full.clone(),
            deltas,
            reason,
        })
    };
    let Some(last) = state.last_day() else {
        return restart(None);
    };
    let newest = newest_delta
        .into_iter()
        .chain(newest_full.map(|(d, _)| *d))
        .max();
    match newest {
        None => bail!("{}: {MANIFEST} lists no extract files", dir.display()),
        Some(n) if n < last => bail!(
            "{}: the newest file there is of {n}, but this copy already holds {last} \
             ({}): is it an old or wrong directory?",
            dir.display(),
            state.applied(last).map(|a| a.name.as_str()).unwrap_or("?")
        ),
        Some(_) => {}
    }
    // A day the copy applied must not have been republished with other bytes.
    for a in state.full.iter().chain(&state.deltas) {
        let n = FileName::parse(&a.name).expect("applied names are valid");
        let listed = match n.kind {
            ExtractKind::Full => available.fulls.get(&a.day),
            ExtractKind::Delta => available.deltas.get(&a.day),
        };
        if listed.is_some() {
            if let Some(e) = manifest.files.iter().find(|f| f.name == a.name) {
                if e.sha256 != a.sha256 {
                    bail!(
                        "{}: {} was applied to this copy with SHA-256 {}, the directory now \
                         holds it with SHA-256 {}: a day published twice with different content",
                        dir.display(),
                        a.name,
                        a.sha256,
                        e.sha256
                    );
                }
            }
        }
    }
    let Some(to) = newest_delta.filter(|to| *to > last) else {
        return Ok(Plan::UpToDate);
    };
    match available.deltas_between(last, to) {
        Ok(deltas) => Ok(Plan::Continue(deltas)),
        Err(missing) => match newest_full {
            Some((full_day, full)) if *full_day > last => restart(Some(format!(
                "the copy holds {last}, but {} {} no longer published: reloading from {full}",
                missing.join(", "),
                if missing.len() == 1 { "is" } else { "are" }
            ))),
            _ => Err(gap("the copy's last day", last, to, &missing)),
        },
    }
}

/// Runs `sync` of the copy at `copy_dir` from the published files in `dir`.
pub fn sync(dir: &Path, copy_dir: &Path) -> Result<SyncReport> {
    let schema = Schema::load()?;
    let manifest = load_manifest(dir)?;
    let available = Available::of(dir, &manifest)?;
    let mut copy = LocalCopy::open(copy_dir)?;
    let state = copy.state()?;
    let plan = plan(dir, &manifest, &available, &state)?;
    tracing::info!(?plan, "sync plan");
    let path = |name: &str| -> PathBuf { dir.join(name) };
    match plan {
        Plan::UpToDate => Ok(SyncReport {
            last_day: state.last_day(),
            ..Default::default()
        }),
        Plan::Continue(deltas) => {
            let db = copy.live().expect("a copy with a state has a database");
            let mut staged = Vec::new();
            for name in &deltas {
                let mut batch = PendingBatch::default();
                let t = Instant::now();
                let summary = check_file(&schema, &path(name), Some(&manifest), &mut |rec| {
                    batch.put(db, rec, name);
                    Ok(())
                })?;
                tracing::info!(file = %name, records = summary.records, secs = t.elapsed().as_secs_f64(), "checked and staged");
                staged.push((applied(name, &summary), batch));
            }
            // Every file passed: write them in date order, each with the state after it.
            let mut new_state = state.clone();
            let mut report = SyncReport::default();
            for (file, batch) in staged {
                new_state.deltas.push(file.clone());
                db.commit(batch, &new_state)
                    .with_context(|| format!("applying {}", file.name))?;
                report.deltas.push(file);
            }
            report.last_day = new_state.last_day();
            Ok(report)
        }
        Plan::Restart {
            full,
            deltas,
            reason,
        } => {
            if let Some(r) = &reason {
                tracing::warn!("{r}");
            }
            let rebuild = copy.begin_rebuild()?;
            let db = rebuild.db();
            let t = Instant::now();
            let mut batch = PendingBatch::default();
            let mut write_error = None;
            let mut loaded = 0u64;
            let full_summary = check_file(&schema, &path(&full), Some(&manifest), &mut |rec| {
                batch.put(db, rec, &full);
                loaded += 1;
                if batch.size_in_bytes() >= FULL_CHUNK_BYTES {
                    if let Err(e) = rebuild.write(std::mem::take(&mut batch)) {
                        write_error = Some(format!("{e:#}"));
                        return Err(e);
                    }
                    tracing::info!(file = %full, records_so_far = loaded, "loading");
                }
                Ok(())
            })?;
            if let Some(e) = write_error {
                bail!("loading {full}: {e}");
            }
            rebuild.write(batch)?;
            tracing::info!(file = %full, records = full_summary.records, secs = t.elapsed().as_secs_f64(), "checked and loaded");
            let mut new_state = SyncState {
                format: COPY_FORMAT,
                full: Some(applied(&full, &full_summary)),
                deltas: Vec::new(),
            };
            let mut report = SyncReport {
                full: new_state.full.clone(),
                restart_reason: reason,
                ..Default::default()
            };
            for name in &deltas {
                let mut batch = PendingBatch::default();
                let t = Instant::now();
                let summary = check_file(&schema, &path(name), Some(&manifest), &mut |rec| {
                    batch.put(db, rec, name);
                    Ok(())
                })?;
                rebuild.write(batch)?;
                tracing::info!(file = %name, records = summary.records, secs = t.elapsed().as_secs_f64(), "checked and applied");
                let a = applied(name, &summary);
                new_state.deltas.push(a.clone());
                report.deltas.push(a);
            }
            copy.switch(rebuild, &new_state)?;
            report.last_day = new_state.last_day();
            Ok(report)
        }
    }
}

fn applied(name: &str, s: &FileSummary) -> AppliedFile {
    AppliedFile {
        name: name.to_string(),
        day: FileName::parse(name).expect("planned names are valid").date,
        sha256: s.sha256.clone(),
        records: s.records,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::publish::ManifestEntry;

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, d).unwrap()
    }

    fn manifest(fulls: &[u32], deltas: &[u32]) -> Manifest {
        let entry = |kind: ExtractKind, d: u32| ManifestEntry {
            name: kind.file_name(day(d)),
            kind: kind.as_str().into(),
            day: day(d),
            size: 1,
            sha256: format!("{d:064}"),
            records: 1,
            offsets: Default::default(),
        };
        Manifest {
            format: 1,
            files: fulls
                .iter()
                .map(|d| entry(ExtractKind::Full, *d))
                .chain(deltas.iter().map(|d| entry(ExtractKind::Delta, *d)))
                .collect(),
        }
    }

    fn state(full: u32, deltas: &[u32]) -> SyncState {
        let a = |kind: ExtractKind, d: u32| AppliedFile {
            name: kind.file_name(day(d)),
            day: day(d),
            sha256: format!("{d:064}"),
            records: 1,
        };
        SyncState {
            format: COPY_FORMAT,
            full: Some(a(ExtractKind::Full, full)),
            deltas: deltas.iter().map(|d| a(ExtractKind::Delta, *d)).collect(),
        }
    }

    fn plan_of(m: &Manifest, s: &SyncState) -> Result<Plan> {
        let dir = Path::new("/published");
        plan(dir, m, &Available::of(dir, m)?, s)
    }

    fn d(n: u32) -> String {
        ExtractKind::Delta.file_name(day(n))
    }

    #[test]
    fn an_empty_copy_starts_from_the_newest_full_and_takes_every_later_delta() {
        let m = manifest(&[1, 8], &[4, 5, 6, 7, 8, 9, 10]);
        let p = plan_of(&m, &SyncState::default()).unwrap();
        assert_eq!(
            p,
            Plan::Restart {
                full: ExtractKind::Full.file_name(day(8)),
                deltas: vec![d(9), d(10)],
                reason: None
            }
        );
        // Only a full: nothing after it.
        let p = plan_of(&manifest(&[8], &[2, 3]), &SyncState::default()).unwrap();
        assert!(matches!(p, Plan::Restart { deltas, .. } if deltas.is_empty()));
        // No full at all.
        let err = plan_of(&manifest(&[], &[2, 3]), &SyncState::default()).unwrap_err();
        assert!(err.to_string().contains("no full extract"), "{err}");
    }

    #[test]
    fn a_missing_day_is_refused_naming_the_file() {
        let m = manifest(&[1, 8], &[4, 5, 6, 7, 8, 9, 11, 13]);
        let err = plan_of(&m, &SyncState::default()).unwrap_err().to_string();
        assert!(err.contains(&d(10)) && err.contains(&d(12)), "{err}");
        assert!(!err.contains(&d(11)), "{err}");
        // The same for a copy continuing from day 9 (no newer full to restart from).
        let err = plan_of(&m, &state(8, &[9])).unwrap_err().to_string();
        assert!(err.contains(&d(10)), "{err}");
    }

    #[test]
    fn a_copy_continues_from_its_last_day_and_applies_only_what_is_new() {
        let m = manifest(&[1, 8], &[4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(
            plan_of(&m, &state(1, &[2, 3, 4, 5])).unwrap(),
            Plan::Continue(vec![d(6), d(7), d(8), d(9), d(10)])
        );
        assert_eq!(plan_of(&m, &state(8, &[9, 10])).unwrap(), Plan::UpToDate);
        // Fell behind past the kept deltas: reload from the newest full.
        let m = manifest(&[8, 15], &[12, 13, 14, 15, 16]);
        let p = plan_of(&m, &state(1, &[2, 3])).unwrap();
        match p {
            Plan::Restart {
                full,
                deltas,
                reason,
            } => {
                assert_eq!(full, ExtractKind::Full.file_name(day(15)));
                assert_eq!(deltas, vec![d(16)]);
                assert!(reason.unwrap().contains(&d(4)));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_directory_behind_the_copy_or_a_republished_day_is_refused() {
        let m = manifest(&[1], &[2, 3]);
        let err = plan_of(&m, &state(1, &[2, 3, 4])).unwrap_err().to_string();
        assert!(err.contains("old or wrong directory"), "{err}");
        let mut s = state(1, &[2, 3]);
        s.deltas[1].sha256 = "f".repeat(64);
        let err = plan_of(&m, &s).unwrap_err().to_string();
        assert!(
            err.contains(&d(3)) && err.contains("different content"),
            "{err}"
        );
    }

    #[test]
    fn a_manifest_listing_a_file_twice_is_refused() {
        let mut m = manifest(&[1], &[2, 3]);
        m.files.push(m.files[1].clone());
        let err = plan_of(&m, &SyncState::default()).unwrap_err().to_string();
        assert!(err.contains("twice") && err.contains(&d(2)), "{err}");
    }
}
