//! Which files are due, and publishing them: the link between closed days in the store and
//! the output directory Parties read.
//!
//! The files that should exist follow from the store alone: the delta of every closed day
//! within the retention window, and the full of the configured weekday for the newest
//! `fulls_kept` such days. [`publish_due`] publishes every one of them the manifest does not
//! list yet, oldest first. That one rule covers normal operation (a day just closed), a crash
//! between a close and its files (the files are written after restart) and an outage (the
//! days closed during catch-up), and because a closed day's content never changes, a file
//! written late is byte-identical to one written on time.
//!
//! [`PublicationWorker`] runs it on a thread of its own, so ingest goes on while a full
//! extract is written (the file is read from a RocksDB snapshot).

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use chrono::{Datelike, Weekday};

use crate::config::OutputConfig;
use crate::contract::DayClose;
use crate::day::date_of_day;
use crate::extract::files;
use crate::extract::gzip::GzOptions;
use crate::extract::publish::{ManifestEntry, Publisher, Retention};
use crate::extract::xml::ExtractKind;
use crate::metrics::{FileKind, Metrics};
use crate::store::Store;

/// Settings of publication, resolved from [`OutputConfig`].
#[derive(Clone, Debug)]
pub struct PublishSettings {
    /// Weekday whose close produces the full extract.
    pub full_weekday: Weekday,
    /// Retention of published files.
    pub retention: Retention,
    /// gzip settings.
    pub gzip: GzOptions,
}

impl PublishSettings {
    /// Resolve the configuration (validated already by [`crate::config::Config::validate`]).
    pub fn from_config(c: &OutputConfig) -> Result<PublishSettings> {
        Ok(PublishSettings {
            full_weekday: c.full_weekday()?,
            retention: c.retention(),
            gzip: c.gzip(),
        })
    }
}

/// One file that should exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Due {
    /// Delta or full.
    pub kind: ExtractKind,
    /// Its day.
    pub day: u32,
}

/// Every file that should exist given the closed days whose close the close log has
/// acknowledged ([`Store::close_log_mark`]), oldest first (a day's delta before its full).
/// A day closed in the store but not yet in the close log has no file: a replay could not
/// reproduce it if the store were lost.
pub fn files_that_should_exist(store: &Store, settings: &PublishSettings) -> Result<Vec<Due>> {
    let (Some(first), Some(closed), Some(logged)) = (
        store.first_day()?,
        store.last_closed_day()?,
        store.close_log_mark()?,
    ) else {
        return Ok(Vec::new());
    };
    let last = closed.min(logged);
    if last < first {
        return Ok(Vec::new());
    }
    let keep = settings.retention.delta_days.max(1) as u32;
    let oldest_delta = first.max(last.saturating_sub(keep - 1));
    let mut fulls: Vec<u32> = (first..=last)
        .rev()
        .filter(|d| date_of_day(*d).weekday() == settings.full_weekday)
        .take(settings.retention.fulls_kept.max(1))
        .collect();
    fulls.reverse();
    let mut due = Vec::new();
    for day in oldest_delta.min(fulls.first().copied().unwrap_or(u32::MAX))..=last {
        if day >= oldest_delta {
            due.push(Due {
                kind: ExtractKind::Delta,
                day,
            });
        }
        if fulls.contains(&day) {
            due.push(Due {
                kind: ExtractKind::Full,
                day,
            });
        }
    }
    Ok(due)
}

/// Publish one file from the store: count and write it from one snapshot, into the
/// publisher (temp file → fsync → rename → manifest). The day must have closed.
pub fn publish_one(
    store: &Store,
    publisher: &mut Publisher,
    kind: ExtractKind,
    day: u32,
    gzip: GzOptions,
) -> Result<ManifestEntry> {
    let close: DayClose = store.close_of(day)?.ok_or_else(|| {
        anyhow!(
            "{} has not closed yet in state store {}: its {} file cannot be written",
            date_of_day(day),
            store.path().display(),
            kind.as_str()
        )
    })?;
    let snap = store.snapshot();
    let records = match kind {
        ExtractKind::Delta => files::count_delta(&snap, day)?,
        ExtractKind::Full => files::count_full(&snap, day)?,
    };
    publisher.publish(kind, date_of_day(day), records, close.offsets, |out| {
        match kind {
            ExtractKind::Delta => files::write_delta(&snap, day, records, out, gzip)?,
            ExtractKind::Full => files::write_full(&snap, day, records, out, gzip)?,
        };
        Ok(())
    })
}

/// Publish every due file the manifest does not list yet, counting each in `metrics`.
/// Returns what was published.
pub fn publish_due(
    store: &Store,
    publisher: &mut Publisher,
    settings: &PublishSettings,
    metrics: &Metrics,
) -> Result<Vec<ManifestEntry>> {
    let mut out = Vec::new();
    for due in files_that_should_exist(store, settings)? {
        if publisher.has(due.kind, date_of_day(due.day)) {
            continue;
        }
        let started = Instant::now();
        let kind = FileKind::from(due.kind);
        let entry = match publish_one(store, publisher, due.kind, due.day, settings.gzip) {
            Ok(e) => e,
            Err(e) => {
                metrics.file_publish_failed(kind);
                return Err(e.context(format!(
                    "publishing {}",
                    due.kind.file_name(date_of_day(due.day))
                )));
            }
        };
        metrics.file_published(kind, entry.size, entry.records, started.elapsed());
        tracing::info!(
            file = %entry.name,
            records = entry.records,
            bytes = entry.size,
            elapsed = ?started.elapsed(),
            "published"
        );
        out.push(entry);
    }
    Ok(out)
}

enum Job {
    Check,
    Stop,
}

/// Publishes due files on a thread of its own while ingest goes on.
pub struct PublicationWorker {
    tx: Sender<Job>,
    handle: Option<JoinHandle<Result<Vec<ManifestEntry>>>>,
}

/// How often the worker looks again after a failure (e.g. a full disk).
const RETRY_EVERY: Duration = Duration::from_secs(30);

impl PublicationWorker {
    /// Open the output directory (taking its lock) and start the worker; it first publishes
    /// whatever is due already (files a crash or an outage left unwritten).
    pub fn start(
        store: Arc<Store>,
        output_dir: &std::path::Path,
        settings: PublishSettings,
        metrics: Metrics,
    ) -> Result<PublicationWorker> {
        let mut publisher = Publisher::open(output_dir, settings.retention)?;
        let (tx, rx) = mpsc::channel::<Job>();
        let handle = std::thread::Builder::new()
            .name("smki-publish".into())
            .spawn(move || {
                let mut published = Vec::new();
                let mut stop = false;
                loop {
                    let last_error = match publish_due(&store, &mut publisher, &settings, &metrics)
                    {
                        Ok(done) => {
                            published.extend(done);
                            None
                        }
                        Err(e) => {
                            tracing::error!("publication failed (retrying): {e:#}");
                            Some(e)
                        }
                    };
                    if stop {
                        break match last_error {
                            Some(e) => Err(e),
                            None => Ok(published),
                        };
                    }
                    match rx.recv_timeout(RETRY_EVERY) {
                        Ok(Job::Check) | Err(RecvTimeoutError::Timeout) => {}
                        Ok(Job::Stop) | Err(RecvTimeoutError::Disconnected) => stop = true,
                    }
                }
            })
            .context("starting the publication thread")?;
        Ok(PublicationWorker {
            tx,
            handle: Some(handle),
        })
    }

    /// Days closed: look for due files now.
    pub fn notify(&self) {
        let _ = self.tx.send(Job::Check);
    }

    /// Publish what is still due, stop the worker, and return every file it published
    /// (or the error of its last attempt).
    pub fn finish(mut self) -> Result<Vec<ManifestEntry>> {
        let _ = self.tx.send(Job::Stop);
        self.handle
            .take()
            .expect("joined once")
            .join()
            .map_err(|_| anyhow!("the publication thread panicked"))?
    }
}

impl Drop for PublicationWorker {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = self.tx.send(Job::Stop);
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreBatch;

    fn settings() -> PublishSettings {
        PublishSettings {
            full_weekday: Weekday::Sun,
            retention: Retention::default(),
            gzip: GzOptions::default(),
        }
    }

    #[test]
    fn due_files_are_the_retained_deltas_and_the_newest_fulls_in_date_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "t").unwrap();
        assert!(files_that_should_exist(&store, &settings())
            .unwrap()
            .is_empty());
        // 2026-10-19 is a Monday; close 19 Oct .. 5 Nov (Sundays 25 Oct and 1 Nov).
        let first = crate::day::day_of_date(chrono::NaiveDate::from_ymd_opt(2026, 10, 19).unwrap());
        let mut b = StoreBatch::default();
        b.set_first_day(first);
        for d in first..first + 18 {
            b.put_close(&DayClose {
                day: d,
                ..Default::default()
            });
        }
        store.write(b).unwrap();
        assert!(
            files_that_should_exist(&store, &settings())
                .unwrap()
                .is_empty(),
            "closes the close log has not acknowledged have no files"
        );
        store.set_close_log_mark(first + 16).unwrap();
        let due = files_that_should_exist(&store, &settings()).unwrap();
        assert_eq!(
            due.last().map(|d| d.day),
            Some(first + 16),
            "only up to the close log's mark"
        );
        store.set_close_log_mark(first + 17).unwrap();
        let due = files_that_should_exist(&store, &settings()).unwrap();
        let names: Vec<String> = due
            .iter()
            .map(|d| d.kind.file_name(date_of_day(d.day)))
            .collect();
        assert_eq!(
            names,
            vec![
                "SMKIKR_FULL_2026-10-25.xml.gz",
                "SMKIKR_DELT_2026-10-30.xml.gz",
                "SMKIKR_DELT_2026-10-31.xml.gz",
                "SMKIKR_DELT_2026-11-01.xml.gz",
                "SMKIKR_FULL_2026-11-01.xml.gz",
                "SMKIKR_DELT_2026-11-02.xml.gz",
                "SMKIKR_DELT_2026-11-03.xml.gz",
                "SMKIKR_DELT_2026-11-04.xml.gz",
                "SMKIKR_DELT_2026-11-05.xml.gz",
            ]
        );
        // A day that has not closed cannot be written.
        let out = tempfile::tempdir().unwrap();
        let mut p = Publisher::open(out.path(), Retention::default()).unwrap();
        let err = publish_one(
            &store,
            &mut p,
            ExtractKind::Delta,
            first + 30,
            GzOptions::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("has not closed"), "{err}");
    }
}
