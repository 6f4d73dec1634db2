//! Shared harness of the integration tests: the real tansu broker process, the independent
//! Python Kafka client, and the `smki-extract` binary as a child process.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod files;
mod tansu;
#[allow(unused_imports)]
pub use files::*;
pub use tansu::*;

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_smki-extract"))
}

/// Python with confluent-kafka.
pub fn python() -> PathBuf {
    tool("SMKI_PYTHON", cache().join("venv/bin/python"))
}

impl Tansu {
    /// Create topics (`name:partitions`) with the Python admin client.
    pub fn create_topics(&self, specs: &[&str]) {
        let mut args = vec!["create-topics", self.bootstrap.as_str()];
        args.extend_from_slice(specs);
        kafka_tool(&args);
    }

    /// Produce every record of an events file with the Python client.
    pub fn produce_file(&self, topic: &str, file: &Path) {
        kafka_tool(&["produce", &self.bootstrap, topic, file.to_str().unwrap()]);
    }
}

/// Run `tests/support/kafka_tool.py` and require success.
pub fn kafka_tool(args: &[&str]) {
    kafka_tool_output(args);
}

/// Run `smki-extract gen` into an events file plus expectations; returns the expectations.
pub fn gen_file(
    dir: &Path,
    seed: u64,
    devices: usize,
    days: u32,
    invalid_per_mille: u32,
) -> (PathBuf, serde_json::Value) {
    let events = dir.join("events.bin");
    let expect = dir.join("expected.json");
    let out = Command::new(bin())
        .args([
            "gen",
            "--seed",
            &seed.to_string(),
            "--devices",
            &devices.to_string(),
        ])
        .args([
            "--days",
            &days.to_string(),
            "--invalid-per-mille",
            &invalid_per_mille.to_string(),
        ])
        .arg("--out")
        .arg(&events)
        .arg("--expect")
        .arg(&expect)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&expect).unwrap()).unwrap();
    (events, expected)
}

/// Args that point `run` at a broker, topic, group and store, with test-friendly timeouts.
pub fn run_args(bootstrap: &str, topic: &str, group: &str, store: &Path) -> Vec<String> {
    vec![
        "run".into(),
        "--bootstrap-servers".into(),
        bootstrap.into(),
        "--topic".into(),
        topic.into(),
        "--group-id".into(),
        group.into(),
        "--store".into(),
        store.to_str().unwrap().into(),
        // Files of closed days go beside the store, never into the working directory.
        "--output-dir".into(),
        store.with_extension("out").to_str().unwrap().into(),
        "-X".into(),
        "session.timeout.ms=6000".into(),
        "-X".into(),
        "heartbeat.interval.ms=500".into(),
        "-X".into(),
        "topic.metadata.refresh.interval.ms=1000".into(),
    ]
}

/// Start `smki-extract` with `args`, logging to `log`.
pub fn spawn(args: &[String], log: &Path) -> Child {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(bin())
        .args(args)
        .env("SMKI_LOG", "info,smki_extract::consumer=debug")
        .env("SMKI_BATCH_MAX_RECORDS", "500")
        // Instances run side by side: each serves its endpoint on a free port.
        .env("SMKI_HTTP_ADDRESS", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(f)
        .spawn()
        .unwrap()
}

/// Run to completion and require success.
pub fn run_ok(args: &[String], log: &Path) {
    let status = spawn(args, log).wait().unwrap();
    assert!(
        status.success(),
        "smki-extract {args:?} failed; log:\n{}",
        tail(log)
    );
}

/// Run to completion within `limit`; `false` if it had to be killed (a broker that stopped
/// answering), a panic if it failed.
pub fn run_ok_within(args: &[String], log: &Path, limit: Duration) -> bool {
    let mut child = spawn(args, log);
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                status.success(),
                "smki-extract {args:?} failed; log:\n{}",
                tail(log)
            );
            return true;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Last lines of a log file (assertion messages).
pub fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// `smki-extract inspect --records`: per-certificate (status, events) and the census line.
pub fn inspect(
    store: &Path,
    topic: &str,
) -> (
    std::collections::BTreeMap<String, (String, u64)>,
    serde_json::Value,
) {
    let out = Command::new(bin())
        .args(["inspect", "--records", "--topic", topic, "--store"])
        .arg(store)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "inspect failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut certs = std::collections::BTreeMap::new();
    let mut summary = serde_json::Value::Null;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(key) = v.get("key") {
            certs.insert(
                key.as_str().unwrap().to_string(),
                (
                    v["status"].as_str().unwrap().to_string(),
                    v["events"].as_u64().unwrap(),
                ),
            );
        } else {
            summary = v;
        }
    }
    (certs, summary)
}

/// Expected per-certificate (status, events) from a gen expectations file.
pub fn expected_certs(
    expected: &serde_json::Value,
) -> std::collections::BTreeMap<String, (String, u64)> {
    expected["certificates"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                (
                    v["status"].as_str().unwrap().to_string(),
                    v["events"].as_u64().unwrap(),
                ),
            )
        })
        .collect()
}

/// Compare stored and expected certificates; the message lists the first differences.
pub fn assert_same_certs(
    got: &std::collections::BTreeMap<String, (String, u64)>,
    want: &std::collections::BTreeMap<String, (String, u64)>,
) {
    if got == want {
        return;
    }
    let mut diffs = Vec::new();
    for (k, v) in want {
        match got.get(k) {
            Some(g) if g == v => {}
            other => diffs.push(format!("{k}: want {v:?}, got {other:?}")),
        }
    }
    for k in got.keys() {
        if !want.contains_key(k) {
            diffs.push(format!("{k}: unexpected"));
        }
    }
    panic!(
        "{} of {} certificates differ (got {}), e.g.:\n{}",
        diffs.len(),
        want.len(),
        got.len(),
        diffs[..diffs.len().min(10)].join("\n")
    );
}

/// Run `tests/support/kafka_tool.py` and return its stdout.
pub fn kafka_tool_output(args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/kafka_tool.py");
    let out = Command::new(python())
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kafka_tool {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Dead letters on a topic, read by the independent client: (reason, partition, offset).
pub fn dead_letters(bootstrap: &str, topic: &str) -> Vec<(String, i64, i64)> {
    kafka_tool_output(&["dump-dlq", bootstrap, topic])
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["reason"].as_str().unwrap().to_string(),
                v["partition"].as_i64().unwrap(),
                v["offset"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Dead letters by reason, counting each origin (partition, offset) once: delivery to the
/// dead-letter topic is at-least-once, so a crash may repeat one.
pub fn dead_letter_counts(
    letters: &[(String, i64, i64)],
) -> std::collections::BTreeMap<String, u64> {
    let unique: std::collections::BTreeSet<&(String, i64, i64)> = letters.iter().collect();
    let mut out = std::collections::BTreeMap::new();
    for (reason, _, _) in unique {
        *out.entry(reason.clone()).or_default() += 1;
    }
    out
}

/// Expected dead letters by reason from a gen expectations file.
pub fn expected_dead_letters(
    expected: &serde_json::Value,
) -> std::collections::BTreeMap<String, u64> {
    expected["dead_letters"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect()
}
