//! The `smki-extract` binary: one command with subcommands (DESIGN §8).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{Datelike, NaiveDate};
use clap::{Args, Parser, Subcommand};

use smki_extract::config::{Config, Overrides};
use smki_extract::consumer::{self, RunOptions};
use smki_extract::demo::{self, DemoOptions};
use smki_extract::extract::publish::Publisher;
use smki_extract::extract::xml::ExtractKind;
use smki_extract::gen::{history, output};
use smki_extract::metrics::Metrics;
use smki_extract::party;
use smki_extract::publication;
use smki_extract::store::Store;

/// Publishes the GB SMKI Repository extracts from a Kafka stream of certificate events.
#[derive(Parser)]
#[command(name = "smki-extract", version, about)]
struct Cli {
    /// Log format: human or json (overrides the config file's log.format).
    #[arg(long, global = true, env = "SMKI_LOG_FORMAT")]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: consume certificate events into the state store.
    Run(RunArgs),
    /// Generate a realistic, deterministic certificate event history.
    Gen(GenArgs),
    /// The whole pipeline on an embedded Kafka broker, with zero set-up.
    Demo(DemoArgs),
    /// Report what a state store holds (JSON on stdout).
    Inspect(InspectArgs),
    /// (Re)write the delta file of a closed day from the state store.
    Delta(DeltaArgs),
    /// (Re)write the full extract as of a closed day from the state store.
    Full(FullArgs),
    /// Rebuild the state store from the topic into an empty directory.
    Replay(ReplayArgs),
    /// Party: bring a local copy up to date from a directory of published files.
    Sync(party::cli::SyncArgs),
    /// Party: check published files (sha256, gzip, XSD, certificates, counts).
    Verify(party::cli::VerifyArgs),
    /// Party: find certificates in a local copy by Device ID, Entity ID or serial.
    Lookup(party::cli::LookupArgs),
    /// Party: export a local copy to PEM files or CSV.
    Export(party::cli::ExportArgs),
}

#[derive(Args)]
struct ReplayArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Stop partitions before these offsets (PARTITION=OFFSET, comma-separated); the rest
    /// are read to the end they had when the replay started.
    #[arg(long, value_delimiter = ',', value_name = "P=OFFSET")]
    until_offsets: Vec<String>,
    /// Stop each partition at its first record whose Kafka timestamp is after this instant.
    #[arg(long, value_name = "RFC3339")]
    until: Option<chrono::DateTime<chrono::FixedOffset>>,
}

/// Where the configuration comes from; shared by commands that talk to Kafka.
#[derive(Args, Clone)]
struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, short = 'c', env = "SMKI_CONFIG")]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers.
    #[arg(long)]
    bootstrap_servers: Option<String>,
    /// Certificate-events topic.
    #[arg(long)]
    topic: Option<String>,
    /// Consumer group id.
    #[arg(long)]
    group_id: Option<String>,
    /// Dead-letter topic (default <topic>.dlq).
    #[arg(long)]
    dead_letter_topic: Option<String>,
    /// State store directory.
    #[arg(long)]
    store: Option<PathBuf>,
    /// IANA time zone of the extract calendar.
    #[arg(long)]
    time_zone: Option<String>,
    /// Output directory of the published files.
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// Any librdkafka property, as key=value (repeatable), e.g. -X security.protocol=SSL.
    #[arg(short = 'X', value_name = "KEY=VALUE")]
    properties: Vec<String>,
    /// Serve /metrics, /healthz and /readyz on host:port ("" disables).
    #[arg(long)]
    http_address: Option<String>,
}

impl ConfigArgs {
    fn load(&self) -> Result<Config> {
        let flags = Overrides {
            bootstrap_servers: self.bootstrap_servers.clone(),
            topic: self.topic.clone(),
            group_id: self.group_id.clone(),
            dead_letter_topic: self.dead_letter_topic.clone(),
            store_path: self.store.clone(),
            time_zone: self.time_zone.clone(),
            output_dir: self.output_dir.clone(),
            properties: self.properties.clone(),
            http_address: self.http_address.clone(),
        };
        Config::load(self.config.as_deref(), |k| std::env::var(k).ok(), &flags)
    }
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Exit once every assigned partition is consumed to its end (catch-up runs, tests).
    #[arg(long)]
    stop_at_end: bool,
    /// With --stop-at-end: how long the end must stay quiet first (milliseconds).
    #[arg(long, default_value_t = 1000)]
    end_grace_ms: u64,
    /// Evaluate the window clock's wall-clock rules (idle partitions, deadline) as if it were
    /// always this instant (RFC 3339), e.g. to replay an old history in a test or a demo.
    #[arg(long, value_name = "RFC3339")]
    simulated_now: Option<chrono::DateTime<chrono::FixedOffset>>,
}

#[derive(Args)]
struct DeltaArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The day (YYYY-MM-DD); it must have closed.
    #[arg(long)]
    day: NaiveDate,
}

#[derive(Args)]
struct FullArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The day (YYYY-MM-DD) whose end state the extract lists; it must have closed.
    #[arg(long)]
    as_of: NaiveDate,
    /// Write a full of a day that is not the configured full weekday (into a directory of
    /// its own: next to the weekly fulls it would count as one of the fulls kept).
    #[arg(long)]
    any_weekday: bool,
}

#[derive(Args)]
struct GenArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Seed: the same seed gives the same certificates and events, byte for byte.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of devices (two certificates each).
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Days of history.
    #[arg(long, default_value_t = 15)]
    days: u32,
    /// First day (YYYY-MM-DD).
    #[arg(long, default_value = "2026-10-19")]
    start: NaiveDate,
    /// Invalid events per thousand valid ones.
    #[arg(long, default_value_t = 10)]
    invalid_per_mille: u32,
    /// Duplicate re-sends per thousand valid events.
    #[arg(long, default_value_t = 5)]
    duplicate_per_mille: u32,
    /// Device status changes per thousand delivered 1–36 hours late.
    #[arg(long, default_value_t = 10)]
    late_per_mille: u32,
    /// Signing threads (output does not depend on it).
    #[arg(long)]
    threads: Option<usize>,
    /// Write the records to this events file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Produce the records to the configured topic.
    #[arg(long)]
    produce: bool,
    /// Write the expected end state (JSON) here.
    #[arg(long)]
    expect: Option<PathBuf>,
}

#[derive(Args)]
struct DemoArgs {
    /// Directory for the store and generated files (must be empty or absent).
    #[arg(long, default_value = "./smki-demo")]
    dir: PathBuf,
    /// Devices in the history.
    #[arg(long, default_value_t = 2000)]
    devices: usize,
    /// Days of history.
    #[arg(long, default_value_t = 15)]
    days: u32,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Partitions of the events topic.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
}

#[derive(Args)]
struct InspectArgs {
    /// State store directory.
    #[arg(long)]
    store: PathBuf,
    /// Topic the store was built from.
    #[arg(long, default_value = "smki.certificate-events")]
    topic: String,
    /// Also print one JSON line per certificate (key, status, events applied).
    #[arg(long)]
    records: bool,
}

/// Logs go to stderr; `SMKI_LOG` (tracing EnvFilter syntax) overrides `default_level`.
fn init_logging(format: &str, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("SMKI_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// mimalloc instead of glibc malloc: ingest allocates and frees small records at a high
/// rate, and replay frees on one thread what it allocated on another, where glibc spends a
/// third of the applying thread in `free` (measured with perf).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    if let Err(e) = real_main(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main(cli: Cli) -> Result<()> {
    let log_format = cli.log_format.clone();
    match cli.command {
        Command::Run(args) => {
            let config = args.config.load()?;
            init_logging(log_format.as_deref().unwrap_or(&config.log.format), "info");
            let stop = Arc::new(AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                signal_hook::flag::register(sig, stop.clone())
                    .context("installing signal handler")?;
            }
            let metrics = Metrics::new();
            let _http = smki_extract::http::serve_configured(&config.http, &metrics)?;
            consumer::run(
                &config,
                stop,
                RunOptions {
                    stop_at_end: args.stop_at_end,
                    end_grace: Duration::from_millis(args.end_grace_ms),
                    simulated_now_ms: args.simulated_now.map(|t| t.timestamp_millis()),
                },
                metrics,
            )?;
            Ok(())
        }
        Command::Gen(args) => {
            init_logging(log_format.as_deref().unwrap_or("human"), "info");
            gen(args)
        }
        Command::Demo(args) => {
            // The demo prints its own report on stdout; only problems are logged.
            init_logging(log_format.as_deref().unwrap_or("human"), "warn");
            demo::run(&DemoOptions {
                dir: args.dir,
                devices: args.devices,
                days: args.days,
                seed: args.seed,
                partitions: args.partitions,
            })
        }
        Command::Inspect(args) => inspect(args),
        Command::Replay(args) => {
            let config = args.config.load()?;
            init_logging(log_format.as_deref().unwrap_or(&config.log.format), "info");
            let mut limits = smki_extract::replay::ReplayLimits {
                until_ms: args.until.map(|t| t.timestamp_millis()),
                ..Default::default()
            };
            for item in &args.until_offsets {
                let (p, o) = item.split_once('=').with_context(|| {
                    format!("--until-offsets {item:?}: expected PARTITION=OFFSET")
                })?;
                let p: i32 = p
                    .trim()
                    .parse()
                    .with_context(|| format!("partition in {item:?}"))?;
                let o: i64 = o
                    .trim()
                    .parse()
                    .with_context(|| format!("offset in {item:?}"))?;
                limits.until_offsets.insert(p, o);
            }
            let metrics = Metrics::new();
            let _http = if args.config.http_address.is_some() {
                smki_extract::http::serve_configured(&config.http, &metrics)?
            } else {
                None
            };
            let s = smki_extract::replay::replay(&config, &limits, metrics)?;
            println!(
                "{}",
                serde_json::json!({
                    "store": config.store.path,
                    "records": s.records,
                    "applied": s.applied,
                    "dead_lettered_not_resent": s.dead_lettered,
                    "days_closed": s.days_closed,
                    "forced_cuts_reproduced": s.cuts_applied,
                    "ingest_seconds": s.ingest_time.as_secs_f64(),
                    "total_seconds": s.total_time.as_secs_f64(),
                    "records_per_second": s.records as f64 / s.ingest_time.as_secs_f64().max(1e-9),
                })
            );
            Ok(())
        }
        Command::Delta(args) => write_on_demand(
            &args.config,
            log_format,
            ExtractKind::Delta,
            args.day,
            false,
        ),
        Command::Full(args) => write_on_demand(
            &args.config,
            log_format,
            ExtractKind::Full,
            args.as_of,
            args.any_weekday,
        ),
        Command::Sync(args) => {
            init_logging(log_format.as_deref().unwrap_or("human"), "info");
            party::cli::run_sync(&args)
        }
        Command::Verify(args) => party::cli::run_verify(&args),
        Command::Lookup(args) => party::cli::run_lookup(&args),
        Command::Export(args) => party::cli::run_export(&args),
    }
}

/// `delta` / `full`: write one file of a closed day from the store (opened read-only, so the
/// service may keep running on it) into the output directory. Rewriting a published file is
/// allowed only with identical bytes.
fn write_on_demand(
    args: &ConfigArgs,
    log_format: Option<String>,
    kind: ExtractKind,
    date: NaiveDate,
    any_weekday: bool,
) -> Result<()> {
    let config = &args.load()?;
    let full_weekday = config.output.full_weekday()?;
    if kind == ExtractKind::Full && !any_weekday && date.weekday() != full_weekday {
        anyhow::bail!(
            "{date} is a {:?}; full extracts are as of {full_weekday:?} (output.full_weekday). \
             Beside the weekly fulls a full of another day would count as one of the \
             output.fulls_kept and push a weekly one out: write it into a directory of its \
             own with --output-dir DIR --any-weekday",
            date.weekday()
        );
    }
    init_logging(log_format.as_deref().unwrap_or(&config.log.format), "info");
    let metrics = Metrics::new();
    let _http = match &args.http_address {
        Some(_) => smki_extract::http::serve_configured(&config.http, &metrics)?,
        None => None,
    };
    let store = Store::open_read_only(&config.store.path, &config.kafka.topic)?;
    let mut publisher = Publisher::open(&config.output.dir, config.output.retention())?;
    if !publisher.would_keep(kind, date) {
        anyhow::bail!(
            "{} is older than {} keeps (output.delta_retention_days, output.fulls_kept): \
             retention would remove it as soon as it is written. Write it into a directory of \
             its own with --output-dir DIR",
            kind.file_name(date),
            config.output.dir.display()
        );
    }
    let t = Instant::now();
    let entry = publication::publish_one(
        &store,
        &mut publisher,
        kind,
        smki_extract::day::day_of_date(date),
        config.output.gzip(),
    )?;
    metrics.file_published(kind.into(), entry.size, entry.records, t.elapsed());
    println!(
        "{}",
        serde_json::json!({
            "file": config.output.dir.join(&entry.name),
            "records": entry.records,
            "bytes": entry.size,
            "sha256": entry.sha256,
            "seconds": t.elapsed().as_secs_f64(),
        })
    );
    Ok(())
}

fn gen(args: GenArgs) -> Result<()> {
    if args.out.is_none() && !args.produce {
        anyhow::bail!("say where the events go: --out FILE and/or --produce");
    }
    let config = args.config.load()?;
    let tz = smki_extract::day::parse_time_zone(&config.ingest.time_zone)?;
    let t = Instant::now();
    let spec = history::Spec {
        seed: args.seed,
        devices: args.devices,
        days: args.days,
        start: args.start,
        tz,
        invalid_per_mille: args.invalid_per_mille,
        duplicate_per_mille: args.duplicate_per_mille,
        late_per_mille: args.late_per_mille,
        threads: args.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }),
    };
    let h = history::generate(&spec)?;
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "generated {} events ({} certificates) in {secs:.1}s: {:.0} events/s",
        h.records.len(),
        h.expected.certificates.len(),
        h.records.len() as f64 / secs
    );
    if let Some(path) = &args.expect {
        output::write_expectations(&h.expected, path)?;
    }
    if let Some(path) = &args.out {
        output::write_file(&h.records, path)?;
        eprintln!("wrote {}", path.display());
    }
    if args.produce {
        let t = Instant::now();
        let total = h.records.len();
        output::produce(
            &h.records,
            &config.kafka.client_config(),
            &config.kafka.topic,
            |n| {
                if n % 100_000 == 0 || n == total {
                    eprintln!(
                        "produced {n}/{total} ({:.0}/s)",
                        n as f64 / t.elapsed().as_secs_f64()
                    );
                }
            },
        )?;
    }
    Ok(())
}

fn inspect(args: InspectArgs) -> Result<()> {
    // Read-only: an operator may look at the store of a running service.
    let store = Store::open_read_only(&args.store, &args.topic)?;
    if args.records {
        for item in store.certificates() {
            let (_, rec) = item?;
            let status = smki_extract::contract::CertificateStatus::try_from(rec.status)
                .map(|s| s.code())
                .unwrap_or("?");
            println!(
                "{}",
                serde_json::json!({
                    "key": smki_extract::contract::record_key(&rec.issuer_name_der, &rec.serial),
                    "status": status,
                    "events": rec.applied_events,
                })
            );
        }
    }
    let census: serde_json::Map<String, serde_json::Value> = store
        .census()?
        .into_iter()
        .map(|((t, s), n)| (format!("{t}/{s}"), n.into()))
        .collect();
    let offsets: serde_json::Map<String, serde_json::Value> = store
        .offsets()?
        .into_iter()
        .map(|(p, o)| (p.to_string(), o.into()))
        .collect();
    let closed: Vec<String> = store
        .closes()?
        .iter()
        .map(|c| smki_extract::day::date_of_day(c.day).to_string())
        .collect();
    let first_day = store
        .first_day()?
        .map(|d| smki_extract::day::date_of_day(d).to_string());
    println!(
        "{}",
        serde_json::json!({
            "census": census,
            "offsets": offsets,
            "first_day": first_day,
            "closed_days": closed,
        })
    );
    Ok(())
}
