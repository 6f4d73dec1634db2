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
    let (events, expected) = gen_file(dir.path(), 20261204, 60_000, 15, 10);
    let total = expected["records"].as_u64().unwrap();
    assert!(total >= 200_000, "the history has only {total} records");

    let tansu = Tansu::start();
    tansu.create_topics(&["certs:4", "certs.dlq:1", "certs.closes:1"]);
    tansu.produce_file("certs", &events);

    let store = dir.path().join("store");
    let log = dir.path().join("run.log");
    // A fresh consumer group per restart: the service never trusts Kafka's committed offsets,
    // so this changes nothing for correctness, and it spares each restart from waiting for
    // the broker to expire the killed member (which tansu sometimes never does).
    let args_for = |run: usize| {
        run_args(
            &tansu.bootstrap,
            "certs",
            &format!("crash-test-{run}"),
            &store,
        )
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    let mut kills = 0;
    let mut progress = Vec::new();
    let commits = |log: &std::path::Path| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches("batch committed")
            .count()
    };
    while kills < 22 {
        let before = commits(&log);
        let mut child = spawn(&args_for(kills), &log);
        // Kill while records are flowing: a random instant after the first batch of this run
        // reached the store (small batches, so kills land before, inside and between them).
        // A run with nothing left to write is killed after a while all the same.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while commits(&log) == before && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..600)));
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
    // The kills must have landed while records were being consumed: count the runs that
    // made progress and were still short of the end when killed.
    let mid = progress
        .windows(2)
        .filter(|w| w[1] > w[0] && (w[1] as u64) < total)
        .count();
    assert!(
        mid >= 15,
        "only {mid} kills landed mid-stream: {progress:?}"
    );

    // The last run goes to the end. tansu 0.6's group coordinator sometimes never answers a
    // rejoin after a session timeout; such a run is killed and retried in a fresh group
    // (one more crash, which the store must survive like the others).
    let mut finished = false;
    for attempt in 0..3 {
        let mut final_args = args_for(kills + attempt);
        final_args.push("--stop-at-end".into());
        if run_ok_within(&final_args, &log, Duration::from_secs(150)) {
            finished = true;
            break;
        }
        eprintln!("final run {attempt} stalled on the broker; retrying in a fresh group");
    }
    assert!(finished, "no final run reached the end:\n{}", tail(&log));

    let (got, summary) = inspect(&store, "certs");
    assert_same_certs(&got, &expected_certs(&expected));
    let consumed: i64 = summary["offsets"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_i64().unwrap())
        .sum();
    assert_eq!(consumed as u64, total, "offsets cover every record");
    let letters = dead_letters(&tansu.bootstrap, "certs.dlq");
    assert_eq!(
        dead_letter_counts(&letters),
        expected_dead_letters(&expected)
    );
    eprintln!("{kills} kills; store offsets after each: {progress:?}");
    // The files published across the kills (output beside the store) are whole and valid.
    assert_published_files_valid(&store.with_extension("out"));
}
