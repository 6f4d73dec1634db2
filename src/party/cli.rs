//! The `sync`, `verify`, `lookup` and `export` subcommands: their flags (clap) and what
//! each prints, kept here so that `main.rs` only dispatches.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::copy;
use super::lookup::{self, Filter, Query};
use crate::eui64::Eui64;

/// `sync --dir DIR --copy DIR`.
#[derive(Args)]
pub struct SyncArgs {
    /// Directory of published files (a local copy of the output directory, or an SFTP mount).
    #[arg(long)]
    pub dir: PathBuf,
    /// The local copy (created on first use).
    #[arg(long)]
    pub copy: PathBuf,
    /// Serve /metrics (smki_sync_*, process figures) on host:port while syncing.
    #[arg(long)]
    pub http_address: Option<String>,
}

/// `verify FILE…`.
#[derive(Args)]
pub struct VerifyArgs {
    /// Published files; each is checked against its sidecar and the manifest.json beside it.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// `lookup --copy DIR (--device-id | --entity-id | --serial | --key)`.
#[derive(Args)]
#[command(group(clap::ArgGroup::new("by").required(true).args(["device_id", "entity_id", "serial", "key"])))]
pub struct LookupArgs {
    /// The local copy.
    #[arg(long)]
    pub copy: PathBuf,
    /// Device ID (EUI-64, e.g. 00-DB-12-34-56-78-90-01).
    #[arg(long)]
    pub device_id: Option<Eui64>,
    /// Entity ID (EUI-64) of an organisation.
    #[arg(long)]
    pub entity_id: Option<Eui64>,
    /// Certificate serial, hex.
    #[arg(long)]
    pub serial: Option<String>,
    /// Certificate id `<issuer-hash>-<SERIAL>`.
    #[arg(long)]
    pub key: Option<String>,
    /// Also print each certificate as PEM.
    #[arg(long)]
    pub pem: bool,
}

/// `export --copy DIR --format pem|csv --out PATH`.
#[derive(Args)]
pub struct ExportArgs {
    /// The local copy.
    #[arg(long)]
    pub copy: PathBuf,
    /// `csv` (one file; `-` for stdout) or `pem` (a directory, one `<key>.pem` per certificate).
    #[arg(long, value_parser = ["csv", "pem"])]
    pub format: String,
    /// Output file (csv) or directory (pem).
    #[arg(long)]
    pub out: PathBuf,
    /// Only certificates with this status (P I N E R; repeatable).
    #[arg(long)]
    pub status: Vec<String>,
    /// Only certificates of this type (OCA, DCA, Organisation, Device).
    #[arg(long = "type")]
    pub certificate_type: Option<String>,
}

/// `sync`: one JSON summary on stdout; exit non-zero (with the reason) on any refusal.
pub fn run_sync(args: &SyncArgs) -> Result<()> {
    let t = Instant::now();
    let metrics = crate::metrics::Metrics::new();
    let _http = match args.http_address.as_deref() {
        Some(addr) => Some(crate::http::HttpServer::start(addr, metrics.clone(), 0)?),
        None => None,
    };
    metrics.sync_started();
    let report = match super::sync::sync(&args.dir, &args.copy) {
        Ok(r) => r,
        Err(e) => {
            metrics.sync_finished(None);
            return Err(e);
        }
    };
    let applied: Vec<(crate::metrics::FileKind, u64)> = report
        .full
        .iter()
        .map(|f| (crate::metrics::FileKind::Full, f.records))
        .chain(
            report
                .deltas
                .iter()
                .map(|f| (crate::metrics::FileKind::Delta, f.records)),
        )
        .collect();
    metrics.sync_finished(Some(&applied));
    let names =
        |v: &[copy::AppliedFile]| -> Vec<String> { v.iter().map(|f| f.name.clone()).collect() };
    println!(
        "{}",
        serde_json::json!({
            "up_to_date": report.up_to_date(),
            "full_loaded": report.full.as_ref().map(|f| f.name.clone()),
            "restart_reason": report.restart_reason,
            "deltas_applied": names(&report.deltas),
            "records_applied": report.full.iter().chain(&report.deltas).map(|f| f.records).sum::<u64>(),
            "copy_day": report.last_day.map(|d| d.to_string()),
            "seconds": t.elapsed().as_secs_f64(),
        })
    );
    Ok(())
}

/// `verify`: a line per file, a total; `Err` (exit 1) when any file has a defect.
pub fn run_verify(args: &VerifyArgs) -> Result<()> {
    let stdout = std::io::stdout();
    let bad = super::verify::verify_files(&args.files, &mut stdout.lock())?;
    if bad > 0 {
        bail!(
            "{bad} of {} file(s) have defects (see above)",
            args.files.len()
        );
    }
    Ok(())
}

/// `lookup`: one JSON line per matching certificate; exit 1 when none matches.
pub fn run_lookup(args: &LookupArgs) -> Result<()> {
    let query = if let Some(id) = args.device_id {
        Query::DeviceId(id)
    } else if let Some(id) = args.entity_id {
        Query::EntityId(id)
    } else if let Some(s) = &args.serial {
        let s: String = s.chars().filter(|c| !matches!(c, ':' | ' ')).collect();
        let bytes = hex::decode(&s).with_context(|| format!("--serial {s:?} is not hex"))?;
        Query::Serial(crate::certificate::canonical_serial(&bytes))
    } else {
        Query::Key(args.key.clone().expect("clap requires one"))
    };
    let db = copy::open_read_only(&args.copy)?;
    let found = lookup::lookup(&db, &query)?;
    let mut out = std::io::stdout().lock();
    for r in &found {
        writeln!(out, "{}", lookup::to_json(r, false))?;
        if args.pem {
            write!(out, "{}", lookup::pem(&r.der))?;
        }
    }
    if found.is_empty() {
        bail!(
            "no certificate in {} matches {query:?}",
            args.copy.display()
        );
    }
    Ok(())
}

/// `export`: writes the file(s), prints how many certificates on stderr.
pub fn run_export(args: &ExportArgs) -> Result<()> {
    let db = copy::open_read_only(&args.copy)?;
    let filter = Filter {
        statuses: args.status.iter().map(|s| s.to_ascii_uppercase()).collect(),
        certificate_type: args.certificate_type.clone(),
    };
    let n = if args.format == "csv" {
        if args.out.as_os_str() == "-" {
            lookup::export_csv(&db, &filter, &mut std::io::stdout().lock())?
        } else {
            let f = std::fs::File::create(&args.out)
                .with_context(|| format!("creating {}", args.out.display()))?;
            let mut w = std::io::BufWriter::new(f);
            let n = lookup::export_csv(&db, &filter, &mut w)?;
            w.flush()?;
            n
        }
    } else {
        lookup::export_pem(&db, &filter, &args.out)?
    };
    eprintln!("exported {n} certificate(s) to {}", args.out.display());
    Ok(())
}
