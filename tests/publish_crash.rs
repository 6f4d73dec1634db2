//! Guarantee 6 under crashes: `smki-extract full` and `delta` are SIGKILLed at random
//! instants while they write into an output directory. After every kill, nothing partial is
//! visible: the manifest lists only complete files (size and SHA-256 match, sidecar too), no
//! temporary file is listed, and any file under a final name is byte-identical to the one a
//! clean run writes. A run after the crashes completes and writes exactly the clean bytes.

#[path = "common/embedded.rs"]
mod embedded;
#[path = "common/files.rs"]
mod files;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use rand::{Rng, SeedableRng};
use smki_extract::config::Config;
use smki_extract::consumer::{self, RunOptions};
use smki_extract::day::day_of_date;
use smki_extract::extract::publish::{sha256_of, Manifest, MANIFEST};
use smki_extract::gen::{history, output};
use smki_extract::metrics::Metrics;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_smki-extract")
}

/// A store with every day of a generated history closed.
fn build_store(dir: &Path) -> Config {
    let spec = history::Spec {
        seed: 5,
        devices: 8_000,
        days: 8,
        start: NaiveDate::from_ymd_opt(2026, 10, 26).unwrap(),
        tz: chrono_tz::Europe::London,
        invalid_per_mille: 0,
        duplicate_per_mille: 0,
        late_per_mille: 0,
        threads: 2,
    };
    let h = history::generate(&spec).unwrap();
    let (_kafka, mut config) = embedded::service(4, "smki-extract", dir);
    config.output.dir = dir.join("service-output");
    output::produce(&h.records, &config.kafka.client_config(), "certs", |_| {}).unwrap();
    let window = config.window_config().unwrap();
    let last = day_of_date(spec.start) + spec.days - 1;
    consumer::run(
        &config,
        Arc::new(AtomicBool::new(false)),
        RunOptions {
            stop_at_end: true,
            end_grace: Duration::from_millis(300),
            simulated_now_ms: Some(window.end_of_day_ms(last) + window.deadline_ms + 1),
        },
        Metrics::new(),
    )
    .unwrap();
    config
}

fn command(config: &Config, out: &Path, file: &(String, String)) -> Command {
    let mut c = Command::new(bin());
    c.args([
        file.0.as_str(),
        if file.0 == "full" { "--as-of" } else { "--day" },
    ])
    .arg(&file.1)
    .args(["--topic", "certs", "--store"])
    .arg(&config.store.path)
    .arg("--output-dir")
    .arg(out)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    c
}

/// What a Party could see in `dir` now must be complete and correct.
fn check_nothing_partial(dir: &Path, clean: &BTreeMap<String, String>) {
    if !dir.exists() {
        return; // killed before it created the directory
    }
    if let Ok(bytes) = std::fs::read(dir.join(MANIFEST)) {
        let m: Manifest = serde_json::from_slice(&bytes).expect("manifest is always whole");
        for f in &m.files {
            assert!(
                !f.name.starts_with('.'),
                "temporary file listed: {}",
                f.name
            );
            let path = dir.join(&f.name);
            assert_eq!(
                std::fs::metadata(&path).unwrap().len(),
                f.size,
                "{}",
                f.name
            );
            assert_eq!(sha256_of(&path).unwrap(), f.sha256, "{}", f.name);
            assert_eq!(
                &f.sha256, &clean[&f.name],
                "{} differs from a clean run",
                f.name
            );
        }
    }
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.starts_with("SMKIKR_") && name.ends_with(".xml.gz") {
            assert_eq!(
                sha256_of(&dir.join(&name)).unwrap(),
                clean[&name],
                "{name} is visible under its final name but incomplete"
            );
        }
        if let Some(file) = name
            .strip_suffix(".sha256")
            .filter(|_| !name.starts_with('.'))
        {
            let text = std::fs::read_to_string(dir.join(&name)).unwrap();
            assert_eq!(text, format!("{}  {file}\n", clean[file]), "sidecar {name}");
        }
    }
}

#[test]
fn a_kill_at_any_instant_leaves_nothing_partial_and_the_rerun_is_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let config = build_store(dir.path());
    // 2026-11-01 is a Sunday (a full), 2026-10-30 an ordinary day.
    let files = [
        ("full".to_string(), "2026-11-01".to_string()),
        ("delta".to_string(), "2026-10-30".to_string()),
    ];
    let clean_dir = dir.path().join("clean");
    let mut clean = BTreeMap::new();
    let mut clean_secs = BTreeMap::new();
    for f in &files {
        let t = Instant::now();
        assert!(command(&config, &clean_dir, f).status().unwrap().success());
        clean_secs.insert(f.0.clone(), t.elapsed().as_secs_f64());
    }
    let m: Manifest =
        serde_json::from_slice(&std::fs::read(clean_dir.join(MANIFEST)).unwrap()).unwrap();
    for e in &m.files {
        clean.insert(e.name.clone(), e.sha256.clone());
        // What the service itself published at the close is the same file.
        let service = config.output.dir.join(&e.name);
        if service.exists() {
            assert_eq!(sha256_of(&service).unwrap(), e.sha256, "{}", e.name);
        }
    }
    assert_eq!(clean.len(), 2);
    assert!(m
        .files
        .iter()
        .any(|f| f.kind == "FULL" && f.records > 5_000));

    let crashed = dir.path().join("crashed");
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut killed_mid_write = 0;
    for i in 0..24 {
        let f = &files[i % 2];
        let mut child = command(&config, &crashed, f).spawn().unwrap();
        let at = rng.gen_range(0.0..clean_secs[&f.0] * 0.9);
        std::thread::sleep(Duration::from_secs_f64(at));
        let finished = child.try_wait().unwrap().is_some();
        if !finished {
            child.kill().unwrap(); // SIGKILL
            killed_mid_write += 1;
        }
        child.wait().unwrap();
        check_nothing_partial(&crashed, &clean);
    }
    assert!(
        killed_mid_write >= 12,
        "only {killed_mid_write} of 24 kills landed mid-run (clean runs: {clean_secs:?})"
    );
    for f in &files {
        assert!(command(&config, &crashed, f).status().unwrap().success());
    }
    check_nothing_partial(&crashed, &clean);
    let m: Manifest =
        serde_json::from_slice(&std::fs::read(crashed.join(MANIFEST)).unwrap()).unwrap();
    let got: BTreeMap<String, String> = m
        .files
        .iter()
        .map(|f| (f.name.clone(), f.sha256.clone()))
        .collect();
    assert_eq!(
        got, clean,
        "after the crashes the files are the clean run's bytes"
    );
    let temps: Vec<_> = std::fs::read_dir(&crashed)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-"))
        .collect();
    assert!(
        temps.is_empty(),
        "temporary files left after a clean run: {temps:?}"
    );
    for dir in [&clean_dir, &crashed, &config.output.dir] {
        files::assert_published_files_valid(dir);
    }

    // On-demand files that retention would remove at once, or a full of another weekday
    // beside the weekly ones, are refused with the reason, and the directory is unchanged.
    // The service's directory holds the deltas up to 2 Nov: 26 Oct is 7 days older.
    for (dir, args, says) in [
        (
            &crashed,
            ["full", "--as-of", "2026-10-30"],
            "full extracts are as of Sun",
        ),
        (
            &config.output.dir,
            ["delta", "--day", "2026-10-26"],
            "retention would remove it",
        ),
    ] {
        let before = std::fs::read(dir.join(MANIFEST)).unwrap();
        let out = Command::new(bin())
            .args(args)
            .args(["--topic", "certs", "--store"])
            .arg(&config.store.path)
            .arg("--output-dir")
            .arg(dir)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "{args:?}: {err}"
        );
        assert_eq!(
            std::fs::read(dir.join(MANIFEST)).unwrap(),
            before,
            "{args:?}"
        );
    }
}
