//! Extract-file benchmarks (issue 3), sizes stated, each measured as a child process
//! (wall time and peak RSS from `wait4`), side by side in one run:
//!
//! (a) the full extract of a store of `BENCH_FULL_CERTS` (default 2 000 000) device
//!     certificates (100 000 distinct real ones, repeated under distinct serials), end to end (open the store, count, stream history + bodies, XML,
//!     parallel gzip, fsync, rename, manifest), next to `pigz -p 2 -6` compressing the same
//!     finished XML (decompressed from our file) into a file;
//! (b) the delta of a day with `BENCH_DELTA_CHANGES` (default 50 000) changed certificates
//!     from a store of 0.5 M and of 5 M certificates (the changed ones real; the rest, on
//!     earlier days, clones of a pool of real certificates under distinct keys).
//!
//! Stores are built once per size under `$CARGO_TARGET_DIR/bench-data` (outside the clone)
//! and reused. `cargo bench --bench extract` (scripts/setup first: pigz).

#[path = "common/measure.rs"]
mod measure;
use measure::measure;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use smki_extract::certificate;
use smki_extract::contract::{issuer_hash, CertificateStatus, DayClose};
use smki_extract::extract::gzip::GzOptions;
use smki_extract::extract::publish::{Publisher, Retention};
use smki_extract::extract::xml::ExtractKind;
use smki_extract::gen::pki::{self, Hierarchy, Usage};
use smki_extract::ingest::record_for;
use smki_extract::publication::publish_one;
use smki_extract::store::{CertKey, Store, StoreBatch};

/// The day every benchmark file is written for (a Sunday).
fn day() -> u32 {
    smki_extract::day::day_of_date(chrono::NaiveDate::from_ymd_opt(2026, 11, 1).unwrap())
}

fn bench_dir() -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"))
        .join("bench-data");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// `n` real device certificates signed by the hierarchy's DCA, made on two threads,
/// handed over in chunks so memory stays bounded.
fn real_certificates(h: &Hierarchy, from: usize, n: usize, mut sink: impl FnMut(Vec<Vec<u8>>)) {
    let chunk = 20_000;
    let nb = time::OffsetDateTime::from_unix_timestamp(1_790_000_000).unwrap();
    let mut start = from;
    while start < from + n {
        let end = (start + chunk).min(from + n);
        let half = (start + end) / 2;
        let make = |a: usize, b: usize| -> Vec<Vec<u8>> {
            (a..b)
                .map(|i| {
                    let id = (i as u64).to_be_bytes();
                    let device = [0x00, 0xDB, id[2], id[3], id[4], id[5], id[6], id[7]];
                    let mut serial = [0u8; 16];
                    serial[0] = 0x42;
                    serial[8..].copy_from_slice(&(i as u64).to_be_bytes());
                    let usage = if i % 2 == 0 {
                        Usage::DigitalSignature
                    } else {
                        Usage::KeyAgreement
                    };
                    pki::issue_device(&h.issuing_dca, device, usage, serial, nb, i as u64).unwrap()
                })
                .collect()
        };
        let (mut a, b) = std::thread::scope(|s| {
            let t = s.spawn(|| make(half, end));
            (make(start, half), t.join().unwrap())
        });
        a.extend(b);
        sink(a);
        start = end;
    }
}

/// Write certificates into the store as ingest would have: record, body, and version of
/// `delta_day`, spread over 8 partitions. With `serial_override`, the key and serial are
/// synthetic (filler clones of a pool certificate).
fn put_certificates(
    store: &Store,
    ders: &[Vec<u8>],
    delta_day: u32,
    first_index: u64,
    synthetic_serials: bool,
    count: usize,
) {
    let mut batch = StoreBatch::default();
    let infos: Vec<_> = ders
        .iter()
        .map(|d| certificate::parse(d).unwrap())
        .collect();
    for i in 0..count {
        let n = first_index + i as u64;
        let der = &ders[i % ders.len()];
        let mut info = infos[i % ders.len()].clone();
        if synthetic_serials {
            let mut s = vec![0x7f; 8];
            s.extend_from_slice(&n.to_be_bytes());
            info.serial = s;
        }
        let hash = issuer_hash(&info.issuer_name_der);
        let key = CertKey::new((n % 8) as i32, &hash, &info.serial);
        let mut rec = record_for(&info, CertificateStatus::InUse, false, "bench", 0);
        rec.delta_day = delta_day;
        batch.put_version(&key, delta_day, &rec);
        batch.put_cert(key.clone(), &rec);
        batch.put_body(key, der.clone());
        if batch_len(i) {
            store.write(std::mem::take(&mut batch)).unwrap();
        }
    }
    for p in 0..8 {
        batch.put_offset(p, 1);
    }
    store.write(batch).unwrap();
}

fn batch_len(i: usize) -> bool {
    i % 20_000 == 19_999
}

fn close_days(store: &Store, first: u32, last: u32) {
    let mut b = StoreBatch::default();
    b.set_first_day(first);
    for d in first..=last {
        b.put_close(&DayClose {
            day: d,
            ..Default::default()
        });
    }
    store.write(b).unwrap();
}

/// A store built once and kept: `name` under the bench directory, complete when its marker
/// file exists.
fn cached_store(name: &str, build: impl FnOnce(&Store)) -> PathBuf {
    let path = bench_dir().join(format!(
        "{name}-format{}",
        smki_extract::store::FORMAT_VERSION
    ));
    let marker = path.join("BENCH-COMPLETE");
    if !marker.exists() {
        let _ = std::fs::remove_dir_all(&path);
        let t = Instant::now();
        let store = Store::open(&path, "certs").unwrap();
        build(&store);
        // As a long-running store is: in SST files, compacted (not in a WAL to replay).
        store.flush_and_compact().unwrap();
        drop(store);
        std::fs::write(&marker, b"").unwrap();
        eprintln!("built {} in {:.0?}", path.display(), t.elapsed());
    }
    path
}

/// Distinct real certificates in the full-extract store; the store repeats them under
/// distinct serials up to its size (signing 2 M certificates would take most of an hour on
/// two cores). A repeat is ~100 MB of XML after its original: far outside deflate's 32 KiB
/// window, so it compresses like a new certificate.
const FULL_POOL: usize = 100_000;

fn full_store(certs: usize) -> PathBuf {
    cached_store(&format!("full-{certs}"), |store| {
        let h = Hierarchy::generate(3).unwrap();
        let mut pool = Vec::new();
        real_certificates(&h, 0, FULL_POOL.min(certs), |ders| {
            pool.extend(ders);
            eprint!(
                "\r  {}/{} distinct certificates",
                pool.len(),
                FULL_POOL.min(certs)
            );
        });
        eprintln!();
        let mut done = 0;
        while done < certs {
            let n = (certs - done).min(200_000);
            put_certificates(store, &pool, day(), done as u64, true, n);
            done += n;
            eprint!("\r  {done}/{certs} records");
        }
        eprintln!();
        close_days(store, day(), day());
    })
}

fn delta_store(total: usize, changes: usize) -> PathBuf {
    cached_store(&format!("delta-{total}-{changes}"), |store| {
        let h = Hierarchy::generate(4).unwrap();
        let mut pool = Vec::new();
        real_certificates(&h, 10_000_000, 2_000, |d| pool.extend(d));
        let filler = total - changes;
        let mut done = 0;
        while done < filler {
            let n = (filler - done).min(200_000);
            put_certificates(store, &pool, day() - 1, done as u64, true, n);
            done += n;
            eprint!("\r  {done}/{filler} filler certificates");
        }
        eprintln!();
        let mut done = 0;
        real_certificates(&h, 0, changes, |ders| {
            put_certificates(store, &ders, day(), done as u64, false, ders.len());
            done += ders.len();
        });
        close_days(store, day() - 1, day());
    })
}

/// This benchmark binary again, as a child that writes one file (so its RSS is its own).
fn child(kind: &str, store: &Path, out: &Path) -> Command {
    let _ = std::fs::remove_dir_all(out);
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.arg("--child").arg(kind).arg(store).arg(out);
    c
}

fn run_child(args: &[String]) {
    match args[0].as_str() {
        "build-full" => {
            full_store(args[1].parse().unwrap());
            return;
        }
        "build-delta" => {
            delta_store(args[1].parse().unwrap(), args[2].parse().unwrap());
            return;
        }
        _ => {}
    }
    let kind = match args[0].as_str() {
        "full" => ExtractKind::Full,
        _ => ExtractKind::Delta,
    };
    let store = Store::open_read_only(Path::new(&args[1]), "certs").unwrap();
    let mut p = Publisher::open(Path::new(&args[2]), Retention::default()).unwrap();
    let e = publish_one(&store, &mut p, kind, day(), GzOptions::default()).unwrap();
    println!("{} {} {}", e.name, e.records, e.size);
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Build (once) in a child process, so this process stays small: a forked child's peak RSS
/// counts the pages it shared with its parent.
fn built(args: &[&str]) {
    let status = Command::new(std::env::current_exe().unwrap())
        .arg("--child")
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "building a bench store failed");
}

fn bench_full() {
    let certs = env_usize("BENCH_FULL_CERTS", 2_000_000);
    built(&["build-full", &certs.to_string()]);
    let store = full_store(certs);
    let work = bench_dir().join("full-run");
    std::fs::create_dir_all(&work).unwrap();
    let out = work.join("out");
    let file = out.join(ExtractKind::Full.file_name(smki_extract::day::date_of_day(day())));
    let xml = work.join("full.xml");
    let (mut ours, mut pigz, mut ours_rss, mut pigz_rss) = (vec![], vec![], 0f64, 0f64);
    for round in 0..3 {
        let (t, rss) = measure(child("full", &store, &out));
        ours.push(t.as_secs_f64());
        ours_rss = ours_rss.max(rss);
        if round == 0 {
            let status = Command::new("sh")
                .arg("-c")
                .arg(format!("zcat {} > {}", file.display(), xml.display()))
                .status()
                .unwrap();
            assert!(status.success());
        }
        let mut p = Command::new("sh");
        p.arg("-c").arg(format!(
            "pigz -p 2 -6 -c {} > {}",
            xml.display(),
            work.join("pigz.gz").display()
        ));
        let (t, rss) = measure(p);
        pigz.push(t.as_secs_f64());
        pigz_rss = pigz_rss.max(rss);
    }
    let xml_mb = std::fs::metadata(&xml).unwrap().len() as f64 / 1e6;
    let gz_mb = std::fs::metadata(&file).unwrap().len() as f64 / 1e6;
    let pigz_mb = std::fs::metadata(work.join("pigz.gz")).unwrap().len() as f64 / 1e6;
    let (o, p) = (median(ours), median(pigz));
    println!(
        "(a) full extract, {certs} certificates, {xml_mb:.0} MB XML → {gz_mb:.0} MB gzip \
         (pigz: {pigz_mb:.0} MB)"
    );
    println!(
        "    smki-extract full (store → file): {o:.2} s, peak RSS {ours_rss:.0} MB; \
         pigz -p 2 -6 on the same XML: {p:.2} s, peak RSS {pigz_rss:.0} MB; ratio {:.2}",
        o / p
    );
    let _ = std::fs::remove_file(&xml);
}

fn bench_delta() {
    let changes = env_usize("BENCH_DELTA_CHANGES", 50_000);
    let mut results = Vec::new();
    for total in [500_000, 5_000_000] {
        built(&["build-delta", &total.to_string(), &changes.to_string()]);
        let store = delta_store(total, changes);
        let out = bench_dir().join(format!("delta-run-{total}"));
        let mut times = vec![];
        let mut peak = 0f64;
        for _ in 0..3 {
            let (t, rss) = measure(child("delta", &store, &out));
            times.push(t.as_secs_f64());
            peak = peak.max(rss);
        }
        results.push((total, median(times), peak));
    }
    println!("(b) delta of {changes} changes:");
    for (total, t, rss) in &results {
        println!("    store of {total} certificates: {t:.2} s, peak RSS {rss:.0} MB");
    }
    println!("    ratio 5M / 0.5M: {:.2}", results[1].1 / results[0].1);
}

/// The service's allocator (see `src/main.rs`), so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        return run_child(&args[1..]);
    }
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "full" {
        bench_full();
    }
    if only.is_empty() || only == "delta" {
        bench_delta();
    }
}
