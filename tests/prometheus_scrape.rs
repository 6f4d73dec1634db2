//! Issue 5, shown end to end: a real Prometheus server (Debian `prometheus`) scrapes a running
//! `run` — in process, on the in-process mock Kafka cluster, with the endpoint started
//! exactly as `main` starts it — while a known workload (a generated history with
//! duplicates and bad events of several reasons) is consumed; the key series are then read
//! back through Prometheus's HTTP query API and compared with the generator's own
//! expectations. The same running service's `/metrics` passes `promtool check metrics`, and
//! every metric the Grafana dashboard and the alert rules read exists in it (and every
//! dashboard query is valid PromQL for this Prometheus).
//!
//! The window clock and the publisher run inside `run` (six days close and their files are
//! published); replay is another command, so the test sets the replay series through their
//! documented `Metrics` methods and checks what Prometheus sees of them.
//!
//! The second test runs the binary itself (`smki-extract run --http-address …`) and checks
//! `/healthz`, `/readyz` and `/metrics` of the child process, and a clean SIGTERM exit.

#[path = "common/files.rs"]
mod files;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;
use smki_extract::config::Config;
use smki_extract::consumer::{self, RunOptions};
use smki_extract::gen::{history, output};
use smki_extract::ingest::Reason;
use smki_extract::metrics::{exposed_value, Metrics};
use smki_extract::mock::EmbeddedKafka;

#[path = "common/prom.rs"]
mod prom;
use prom::*;

const PARTITIONS: i32 = 4;
const WAIT: Duration = Duration::from_secs(180);

fn repo_file(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A generated history from 2026-10-20 (London), with bad and duplicate events per mille.
fn history_of(seed: u64, devices: usize, days: u32, bad: u32, duplicates: u32) -> history::History {
    history::generate(&history::Spec {
        seed,
        devices,
        days,
        start: NaiveDate::from_ymd_opt(2026, 10, 20).unwrap(),
        tz: "Europe/London".parse().unwrap(),
        invalid_per_mille: bad,
        duplicate_per_mille: duplicates,
        late_per_mille: 0,
        threads: 2,
    })
    .unwrap()
}

fn workload() -> history::History {
    let h = history_of(11, 400, 6, 30, 20);
    assert!(
        h.expected.duplicates > 0,
        "the workload must hold duplicates"
    );
    assert!(
        h.expected.dead_letters.len() >= 3,
        "the workload must hold bad events of several reasons: {:?}",
        h.expected.dead_letters
    );
    h
}

fn mock_config(kafka: &EmbeddedKafka, dir: &Path) -> Config {
    kafka.create_topic("certs", PARTITIONS).unwrap();
    kafka.create_topic("certs.dlq", 1).unwrap();
    kafka.create_topic("certs.closes", 1).unwrap();
    let mut config = Config::default();
    config.kafka.bootstrap_servers = kafka.bootstrap_servers();
    config.kafka.topic = "certs".into();
    config.kafka.group_id = "observed".into();
    config.store.path = dir.join("store");
    config.output.dir = dir.join("output");
    config
        .kafka
        .properties
        .insert("session.timeout.ms".into(), "6000".into());
    config.http.address = "127.0.0.1:0".into();
    config.http.ready_max_lag_records = 0;
    config.http.store_census_interval_s = 1;
    config
}

/// Expected value of one query, and the query.
fn expect_value(prom: &Prometheus, q: &str, want: f64) {
    let got = prom.value(q);
    assert_eq!(got, want, "{q}");
}

#[test]
fn prometheus_sees_the_workload_and_the_dashboard_and_rules_read_real_series() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info,librdkafka=warn,rdkafka=warn")
        .with_test_writer()
        .try_init();
    // Fail early and clearly when the tools are missing.
    tool("prometheus");
    tool("promtool");
    let h = workload();
    let kafka = EmbeddedKafka::start(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = mock_config(&kafka, dir.path());
    output::produce(&h.records, &config.kafka.client_config(), "certs", |_| {}).unwrap();

    // The endpoint as `main` starts it for `run`.
    let metrics = Metrics::new();
    let server = smki_extract::http::serve_configured(&config.http, &metrics)
        .unwrap()
        .expect("an address is configured");
    let addr = server.local_addr().to_string();
    assert_eq!(get(&addr, "/healthz").0, 200);
    let (status, body) = get(&addr, "/readyz");
    assert_eq!(
        (status, body.contains("store")),
        (503, true),
        "ready before the store is open: {body}"
    );

    let prometheus = Prometheus::start(&[server.local_addr()]);
    let stop = Arc::new(AtomicBool::new(false));
    let service = {
        let (config, stop, metrics) = (config.clone(), stop.clone(), metrics.clone());
        // The history's six days (20–25 Oct) are past: the window clock's wall-clock rules
        // see an instant just after the last one's deadline, so exactly those days close.
        let window = config.window_config().unwrap();
        let last = smki_extract::day::day_of_date(NaiveDate::from_ymd_opt(2026, 10, 25).unwrap());
        let opts = RunOptions {
            simulated_now_ms: Some(window.end_of_day_ms(last) + window.deadline_ms + 60_000),
            ..RunOptions::default()
        };
        std::thread::spawn(move || consumer::run(&config, stop, opts, metrics).unwrap())
    };

    // Caught up, as Prometheus sees it: everything applied, no lag, a census taken after.
    let applied = h.expected.applied as f64;
    wait_for("Prometheus to see the workload applied", WAIT, || {
        let first = |q: &str| prometheus.query(q).first().map(|s| s.value);
        let seen = (
            first("smki_events_applied_total"),
            first("sum(smki_partition_lag_records)"),
            first("sum(smki_store_certificates)"),
        );
        let want = (
            Some(applied),
            Some(0.0),
            Some(h.expected.certificates.len() as f64),
        );
        if seen == want {
            Ok(())
        } else {
            Err(seen)
        }
    });
    wait_for("/readyz to say ready", WAIT, || {
        match get(&addr, "/readyz") {
            (200, _) => Ok(()),
            other => Err(other),
        }
    });

    // Replay is not part of `run`: stand in for it.
    metrics.replay_started(1000);
    metrics.replay_progress(400);
    wait_for("Prometheus to see the publications", WAIT, || {
        let r = prometheus.query(
            "smki_files_published_total{kind=\"delta\"} == 6 and on() smki_replay_in_progress == 1",
        );
        let w = prometheus.query("count(smki_partition_event_time_watermark_seconds)");
        if r.len() == 1 && w.first().map(|s| s.value) == Some(f64::from(PARTITIONS)) {
            Ok(())
        } else {
            Err((r, w))
        }
    });

    // Ingest, as the generator says it must be.
    expect_value(&prometheus, "up{job=\"smki-extract\"}", 1.0);
    expect_value(
        &prometheus,
        "smki_events_consumed_total",
        h.expected.records as f64,
    );
    expect_value(&prometheus, "smki_events_applied_total", applied);
    expect_value(
        &prometheus,
        "smki_events_duplicate_total",
        h.expected.duplicates as f64,
    );
    let bad: u64 = h.expected.dead_letters.values().sum();
    expect_value(
        &prometheus,
        "sum(smki_events_dead_lettered_total)",
        bad as f64,
    );
    let by_reason: BTreeMap<String, f64> = prometheus
        .query("smki_events_dead_lettered_total")
        .into_iter()
        .map(|s| (s.labels["reason"].clone(), s.value))
        .collect();
    assert_eq!(
        by_reason.len(),
        Reason::ALL.len(),
        "every reason pre-registered"
    );
    for r in Reason::ALL {
        let want = h.expected.dead_letters.get(r.code()).copied().unwrap_or(0);
        assert_eq!(by_reason[r.code()], want as f64, "reason {}", r.code());
    }
    expect_value(&prometheus, "smki_records_skipped_total", 0.0);
    assert!(prometheus.value("smki_store_batches_committed_total") >= 1.0);

    // Lag and partitions.
    expect_value(
        &prometheus,
        "smki_partitions_assigned",
        f64::from(PARTITIONS),
    );
    let lags = prometheus.query("smki_partition_lag_records");
    assert_eq!(lags.len(), PARTITIONS as usize, "{lags:?}");
    assert!(lags.iter().all(|s| s.value == 0.0), "{lags:?}");

    // Store: certificates by status against the generator, RocksDB figures present.
    let mut want_status: BTreeMap<String, f64> = BTreeMap::new();
    for c in h.expected.certificates.values() {
        *want_status.entry(c.status.clone()).or_default() += 1.0;
    }
    let got_status: BTreeMap<String, f64> = prometheus
        .query("sum by (status) (smki_store_certificates)")
        .into_iter()
        .filter(|s| s.value > 0.0)
        .map(|s| (s.labels["status"].clone(), s.value))
        .collect();
    assert_eq!(got_status, want_status);
    assert!(prometheus.value("smki_store_estimated_keys{cf=\"certs\"}") > 0.0);
    expect_value(&prometheus, "smki_store_open", 1.0);
    assert_eq!(
        prometheus.query("smki_store_live_sst_bytes").len(),
        9,
        "one series per column family"
    );
    prometheus.value("smki_store_pending_compaction_bytes{cf=\"certs\"}");
    prometheus.value("smki_store_block_cache_usage_bytes");
    assert!(prometheus.value("smki_store_census_timestamp_seconds") > 0.0);

    // Build and process.
    expect_value(
        &prometheus,
        &format!(
            "smki_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        ),
        1.0,
    );
    assert!(prometheus.value("process_resident_memory_bytes") > 1e6);
    assert!(prometheus.value("process_open_fds") > 3.0);
    // Whole seconds in this collector: a short test may not have used one yet.
    assert!(prometheus.value("process_cpu_seconds_total") >= 0.0);
    assert!(prometheus.value("process_start_time_seconds") > 1.7e9);

    // What the window clock and publisher reported: the six days closed, six deltas and the
    // full of Sunday 25 Oct published, as the manifest lists them.
    expect_value(&prometheus, "smki_events_late_total", 0.0);
    expect_value(
        &prometheus,
        "smki_window_last_closed_day_timestamp_seconds",
        1_792_882_800.0, // 2026-10-25 00:00 BST
    );
    expect_value(
        &prometheus,
        "smki_window_open_day_timestamp_seconds",
        1_792_972_800.0, // 2026-10-26 00:00 GMT: 25 hours later
    );
    let watermarks = prometheus.query("smki_partition_event_time_watermark_seconds");
    assert_eq!(watermarks.len(), PARTITIONS as usize, "{watermarks:?}");
    assert!(watermarks
        .iter()
        .all(|s| s.value > 1.79e9 && s.value < 1.7931e9));
    assert!(prometheus.value("smki_partition_event_time_lag_seconds{partition=\"2\"}") > 0.0);
    let manifest: smki_extract::extract::publish::Manifest =
        serde_json::from_slice(&std::fs::read(config.output.dir.join("manifest.json")).unwrap())
            .unwrap();
    let full = manifest.files.iter().find(|f| f.kind == "FULL").unwrap();
    let newest_delta = manifest
        .files
        .iter()
        .filter(|f| f.kind == "DELTA")
        .last()
        .unwrap();
    expect_value(
        &prometheus,
        "smki_files_published_total{kind=\"full\"}",
        1.0,
    );
    expect_value(
        &prometheus,
        "smki_file_bytes{kind=\"full\"}",
        full.size as f64,
    );
    expect_value(
        &prometheus,
        "smki_file_records{kind=\"full\"}",
        full.records as f64,
    );
    expect_value(
        &prometheus,
        "smki_file_records{kind=\"delta\"}",
        newest_delta.records as f64,
    );
    expect_value(
        &prometheus,
        "smki_file_publish_duration_seconds_count{kind=\"delta\"}",
        6.0,
    );
    expect_value(
        &prometheus,
        "smki_file_publish_failures_total{kind=\"full\"}",
        0.0,
    );
    assert!(prometheus.value("smki_file_last_success_timestamp_seconds{kind=\"delta\"}") > 1.7e9);
    expect_value(&prometheus, "smki_replay_in_progress", 1.0);
    expect_value(&prometheus, "smki_replay_done_records", 400.0);
    expect_value(&prometheus, "smki_replay_target_records", 1000.0);

    // The exposition itself passes promtool's linter.
    let (status, exposition) = get(&addr, "/metrics");
    assert_eq!(status, 200);
    promtool(&["check", "metrics"], dir.path(), Some(&exposition));
    files::assert_published_files_valid(&config.output.dir);
    let exposed = exposed_names(&exposition);

    // The dashboard: valid JSON, every query valid PromQL here, every metric it reads exposed.
    let dashboard_path = repo_file("helm/smki-extract/files/smki-extract-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&dashboard_path).unwrap())
            .expect("the dashboard is valid JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(
        exprs.len() >= 20,
        "only {} queries in the dashboard",
        exprs.len()
    );
    let mut read = std::collections::BTreeSet::new();
    for e in &exprs {
        let concrete = e
            .replace("$__rate_interval", "1m")
            .replace("$__range", "5m")
            .replace("$job", ".*")
            .replace("$instance", ".*");
        if let Err(err) = prometheus.try_query(&concrete) {
            panic!("dashboard query is not valid PromQL: {err}");
        }
        read.extend(promql_names(e));
    }
    let missing: Vec<_> = read.iter().filter(|n| !exposed.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard reads metrics the service does not expose: {missing:?}"
    );
    for needed in [
        "smki_events_consumed_total",
        "smki_events_dead_lettered_total",
        "smki_events_late_total",
        "smki_partition_lag_records",
        "smki_window_last_closed_day_timestamp_seconds",
        "smki_files_published_total",
        "smki_store_live_sst_bytes",
        "process_resident_memory_bytes",
    ] {
        assert!(read.contains(needed), "the dashboard shows no {needed}");
    }

    // The alert rules read only exposed metrics too.
    let rules =
        std::fs::read_to_string(repo_file("helm/smki-extract/files/smki-extract.rules.yml"))
            .unwrap();
    let rule_names: Vec<_> = rules
        .lines()
        .filter(|l| {
            !l.trim_start().starts_with('#')
                && !l.contains("summary:")
                && !l.contains("description:")
        })
        .flat_map(|l| promql_names(l))
        .filter(|n| !exposed.contains(n))
        .collect();
    assert!(
        rule_names.is_empty(),
        "the alert rules read unexposed metrics: {rule_names:?}"
    );

    stop.store(true, Ordering::SeqCst);
    let summary = service.join().unwrap();
    assert_eq!(summary.applied, h.expected.applied);
    // The store is closed when `run` returns: readiness says so.
    let (status, body) = get(&addr, "/readyz");
    assert_eq!(status, 503, "{body}");
}

/// Every `"expr"` string in a dashboard.
fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

#[test]
fn the_binary_serves_health_readiness_and_metrics_and_stops_on_sigterm() {
    tool("promtool");
    let kafka = EmbeddedKafka::start(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = mock_config(&kafka, dir.path());
    let h = history_of(3, 50, 2, 0, 0);
    output::produce(&h.records, &config.kafka.client_config(), "certs", |_| {}).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_smki-extract"))
        .args(["run", "--topic", "certs", "--group-id", "bin"])
        .args(["--bootstrap-servers", &config.kafka.bootstrap_servers])
        .arg("--store")
        .arg(&config.store.path)
        .arg("--output-dir")
        .arg(&config.output.dir)
        .args(["-X", "session.timeout.ms=6000", "--http-address", &addr])
        .env("SMKI_HTTP_READY_MAX_LAG_RECORDS", "0")
        .env("SMKI_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the child's /healthz", WAIT, || {
        match try_get(&addr, "/healthz") {
            Some((200, body)) if body == "ok\n" => Ok(()),
            other => Err(other),
        }
    });
    wait_for("the child's /readyz", WAIT, || {
        match get(&addr, "/readyz") {
            (200, _) => Ok(()),
            other => Err(other),
        }
    });
    let text = wait_for("the child to apply everything", WAIT, || {
        let (_, text) = get(&addr, "/metrics");
        match exposed_value(&text, "smki_events_applied_total") {
            Some(v) if v == h.expected.applied as f64 => Ok(text),
            other => Err(other),
        }
    });
    assert_eq!(
        exposed_value(&text, "smki_partitions_assigned"),
        Some(f64::from(PARTITIONS))
    );
    promtool(&["check", "metrics"], dir.path(), Some(&text));
    assert_eq!(get(&addr, "/nothing-here").0, 404);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "exit after SIGTERM: {status}");
    assert!(
        try_get(&addr, "/healthz").is_none(),
        "still serving after exit"
    );
}
