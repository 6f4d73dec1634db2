//! Rebalancing between two instances of one group, against a real broker: A starts alone,
//! B joins late while events are still being produced, A leaves mid-stream (SIGTERM). At the
//! end B owns every partition and must hold exactly the expected state (it rebuilt A's
//! partitions from the topic); A's store must hold no certificate with more events applied
//! than exist (nothing applied twice).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn lag(bootstrap: &str) -> i64 {
    kafka_tool_output(&["lag", bootstrap, "rebalance-test", "certs"])
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn late_join_and_mid_stream_leave_keep_every_store_exact() {
    let dir = tempfile::tempdir().unwrap();
    let (events, expected) = gen_file(dir.path(), 77, 30_000, 10, 10);
    let want = expected_certs(&expected);
    let tansu = Tansu::start();
    tansu.create_topics(&["certs:6", "certs.dlq:1", "certs.closes:1"]);

    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/kafka_tool.py");
    let mut producer = Command::new(python())
        .arg(&script)
        .args([
            "produce",
            &tansu.bootstrap,
            "certs",
            events.to_str().unwrap(),
        ])
        .spawn()
        .unwrap();

    let (store_a, store_b) = (dir.path().join("a"), dir.path().join("b"));
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let mut a = spawn(
        &run_args(&tansu.bootstrap, "certs", "rebalance-test", &store_a),
        &log_a,
    );
    std::thread::sleep(Duration::from_secs(6));
    let mut b = spawn(
        &run_args(&tansu.bootstrap, "certs", "rebalance-test", &store_b),
        &log_b,
    );
    std::thread::sleep(Duration::from_secs(8));
    unsafe { libc::kill(a.id() as i32, libc::SIGTERM) };
    let status = a.wait().unwrap();
    assert!(
        status.success(),
        "A did not stop cleanly:\n{}",
        tail(&log_a)
    );
    assert!(producer.wait().unwrap().success(), "producer failed");

    // Caught up: the group's committed offsets are at the end (informational), and B's own
    // store — which is what counts — covers every record (B re-reads A's partitions from
    // their beginning, since its store never held them).
    let produced: i64 = expected["records"].as_i64().unwrap();
    let stored = |store: &std::path::Path| -> i64 {
        let (_, summary) = inspect(store, "certs");
        summary["offsets"]
            .as_object()
            .map_or(0, |o| o.values().map(|v| v.as_i64().unwrap()).sum())
    };
    let deadline = Instant::now() + Duration::from_secs(240);
    while lag(&tansu.bootstrap) > 0 || stored(&store_b) < produced {
        assert!(
            Instant::now() < deadline,
            "B did not catch up:\n{}",
            tail(&log_b)
        );
        assert!(b.try_wait().unwrap().is_none(), "B died:\n{}", tail(&log_b));
        std::thread::sleep(Duration::from_millis(500));
    }
    unsafe { libc::kill(b.id() as i32, libc::SIGTERM) };
    assert!(
        b.wait().unwrap().success(),
        "B did not stop cleanly:\n{}",
        tail(&log_b)
    );

    // A had all 6 partitions, then a share when B joined; B had a share, then all 6 when A
    // left: each logged more than 6 assignments, or the rebalances did not happen.
    let assignments = |log: &std::path::Path| {
        std::fs::read_to_string(log)
            .unwrap()
            .matches("assigned; starting")
            .count()
    };
    let (a_assigned, b_assigned) = (assignments(&log_a), assignments(&log_b));
    assert!(
        a_assigned > 6,
        "A was assigned {a_assigned} partitions in all:\n{}",
        tail(&log_a)
    );
    assert!(
        b_assigned > 6,
        "B was assigned {b_assigned} partitions in all:\n{}",
        tail(&log_b)
    );

    let (got_b, _) = inspect(&store_b, "certs");
    assert_same_certs(&got_b, &want);

    let (got_a, _) = inspect(&store_a, "certs");
    assert!(!got_a.is_empty(), "A consumed nothing before leaving");
    for (key, (_, events)) in &got_a {
        let (_, want_events) = &want[key];
        assert!(
            events <= want_events,
            "{key}: A applied {events} events of {want_events}"
        );
    }
    let letters = dead_letters(&tansu.bootstrap, "certs.dlq");
    // A and B may both have dead-lettered the same record (B rebuilt A's partitions);
    // counted once per origin, the reasons are exactly the generator's.
    assert_eq!(
        dead_letter_counts(&letters),
        expected_dead_letters(&expected)
    );
    assert_published_files_valid(&store_b.with_extension("out"));
    assert_published_files_valid(&store_a.with_extension("out"));
}
