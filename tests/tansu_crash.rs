//! Guarantee 1 under crashes, against a real broker process: while `run` ingests ≥ 200k
//! events from tansu (produced by the independent Python client), it is killed with SIGKILL
//! at 20+ random instants and restarted each time. At the end the store must hold exactly
//! the generator's expected state: every certificate's status AND its count of applied
//! events (a double-applied or skipped event changes the count), and every bad event must be
//! in the dead-letter topic.

mod common;

use std::time::Duration;

use common::*;
use rand::{Rng, SeedableRng};

#[test]
fn sigkill_at_random_instants_loses_nothing_and_applies_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (events, expected) = gen_file(dir.path(), 20261204, 55_000, 15, 10);
    let total = expected["records"].as_u64().unwrap();
    assert!(total >= 200_000, "the history has only {total} records");

    let tansu = Tansu::start();
    tansu.create_topics(&["certs:4", "certs.dlq:1"]);
    tansu.produce_file("certs", &events);

    let store = dir.path().join("store");
    let log = dir.path().join("run.log");
    let args = run_args(&tansu.bootstrap, "certs", "crash-test", &store);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    let mut kills = 0;
    let mut progress = Vec::new();
    while kills < 22 {
        let mut child = spawn(&args, &log);
        let wait = Duration::from_millis(rng.gen_range(800..7_000));
        std::thread::sleep(wait);
        if child.try_wait().unwrap().is_some() {
            panic!("run exited by itself; log:\n{}", tail(&log));
        }
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
        kills += 1;
        let (_, summary) = inspect(&store, "certs");
        let done: i64 = summary["offsets"]
            .as_object()
            .map(|o| o.values().map(|v| v.as_i64().unwrap()).sum())
            .unwrap_or(0);
        progress.push(done);
    }
    // The kills must have landed while records were being consumed, not all before or after.
    let mid = progress.iter().filter(|&&d| d > 0 && (d as u64) < total).count();
    assert!(mid >= 5, "only {mid} kills landed mid-stream: {progress:?}");

    let mut final_args = args.clone();
    final_args.push("--stop-at-end".into());
    run_ok(&final_args, &log);

    let (got, summary) = inspect(&store, "certs");
    assert_same_certs(&got, &expected_certs(&expected));
    let consumed: i64 = summary["offsets"].as_object().unwrap().values().map(|v| v.as_i64().unwrap()).sum();
    assert_eq!(consumed as u64, total, "offsets cover every record");
    let letters = dead_letters(&tansu.bootstrap, "certs.dlq");
    assert_eq!(dead_letter_counts(&letters), expected_dead_letters(&expected));
    eprintln!("{kills} kills; store offsets after each: {progress:?}");
}
