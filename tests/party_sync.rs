//! The Party side end to end (issue 4): a generated 20-day history (DST change, late
//! deliveries, duplicates, bad events) through the real pipeline (`consumer::run` on the
//! in-process mock cluster), whose published directory a Party then syncs with the
//! `smki-extract` binary.
//!
//! - `sync_reaches_the_state_of_the_services_store`: first from a directory as it stood two
//!   days earlier (the newest full and its first deltas), then from the real one, which
//!   applies only what is new, then again (nothing). The copy then holds exactly the
//!   store's state at the close of the last published day: the same In-use set, and for
//!   every certificate it holds — every one of every applied file — the same status.
//!   `lookup` by Device ID, Entity ID and serial, `export` to CSV and PEM (read back by
//!   openssl) and `verify` of every file complete it.
//! - `corruption_catalogue`: flipped byte, truncated gzip, wrong SHA-256 (sidecar and
//!   manifest), missing delta, a delta older than the full under a later name, duplicate
//!   day (the same delta under two names, a manifest listing a file twice, an applied day
//!   republished with other bytes), XML that only the XSD rejects: each refused with an
//!   error naming the file, and the local copy unchanged, both for a first sync and for a
//!   copy that has synced before; `verify` flags each defective file.

#[path = "common/embedded.rs"]
mod embedded;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use chrono::NaiveDate;
use sha2::{Digest, Sha256};
use smki_extract::contract::{record_key, CertificateStatus, StoredType};
use smki_extract::day::day_of_date;
use smki_extract::extract::gzip::GzOptions;
use smki_extract::extract::publish::{Manifest, Publisher, Retention, MANIFEST};
use smki_extract::extract::xml::ExtractKind;
use smki_extract::gen::{history, output};
use smki_extract::metrics::Metrics;
use smki_extract::party::copy::{open_read_only, status_of};
use smki_extract::publication::publish_one;
use smki_extract::store::Store;

const DAYS: u32 = 20;

/// The published directory and the store of one pipeline run, shared by the tests.
struct Fixture {
    out: PathBuf,
    store: PathBuf,
    root: PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("warn")
            .with_test_writer()
            .try_init();
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("party_sync");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let spec = history::Spec {
            seed: 44,
            devices: 400,
            days: DAYS,
            start: NaiveDate::from_ymd_opt(2026, 10, 19).unwrap(),
            tz: chrono_tz::Europe::London,
            invalid_per_mille: 10,
            duplicate_per_mille: 10,
            late_per_mille: 40,
            threads: 2,
        };
        let h = history::generate(&spec).unwrap();
        let (_kafka, mut config) = embedded::service(4, "party", &root);
        config.ingest.batch_max_records = 250;
        output::produce(&h.records, &config.kafka.client_config(), "certs", |_| {}).unwrap();
        let last_day = day_of_date(spec.start) + DAYS - 1;
        let summary = embedded::run_past(&config, last_day, Metrics::new());
        assert_eq!(summary.applied, h.expected.applied);
        assert!(summary.days_closed >= u64::from(DAYS));
        Fixture {
            out: config.output.dir.clone(),
            store: config.store.path.clone(),
            root,
        }
    })
}

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_smki-extract"))
}

/// Runs the binary; returns (success, stdout, stderr).
fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin())
        .args(args)
        .env("SMKI_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sync(dir: &Path, copy: &Path) -> (bool, serde_json::Value, String) {
    let (ok, stdout, stderr) = run(&[
        "sync",
        "--dir",
        dir.to_str().unwrap(),
        "--copy",
        copy.to_str().unwrap(),
    ]);
    let json = if ok {
        serde_json::from_str(stdout.trim()).unwrap()
    } else {
        serde_json::Value::Null
    };
    (ok, json, stderr)
}

fn manifest(dir: &Path) -> Manifest {
    serde_json::from_slice(&std::fs::read(dir.join(MANIFEST)).unwrap()).unwrap()
}

fn save_manifest(dir: &Path, m: &Manifest) {
    std::fs::write(dir.join(MANIFEST), serde_json::to_vec_pretty(m).unwrap()).unwrap();
}

/// The newest full and, in order, the deltas after it.
fn full_and_later_deltas(m: &Manifest) -> (String, NaiveDate, Vec<String>) {
    let full = m
        .files
        .iter()
        .filter(|f| f.kind == "FULL")
        .max_by_key(|f| f.day)
        .unwrap();
    let mut deltas: Vec<_> = m
        .files
        .iter()
        .filter(|f| f.kind == "DELTA" && f.day > full.day)
        .collect();
    deltas.sort_by_key(|f| f.day);
    (
        full.name.clone(),
        full.day,
        deltas.iter().map(|f| f.name.clone()).collect(),
    )
}

/// A copy of the published directory holding only `names` (and a manifest of just them).
fn directory_with(names: &[String], to: &Path) {
    let f = fixture();
    std::fs::create_dir_all(to).unwrap();
    for n in names {
        for file in [n.clone(), format!("{n}.sha256")] {
            std::fs::copy(f.out.join(&file), to.join(&file)).unwrap();
        }
    }
    let mut m = manifest(&f.out);
    m.files.retain(|e| names.contains(&e.name));
    save_manifest(to, &m);
}

/// A copy of the whole published directory.
fn whole_directory(to: &Path) -> Vec<String> {
    let names: Vec<String> = manifest(&fixture().out)
        .files
        .iter()
        .map(|f| f.name.clone())
        .collect();
    directory_with(&names, to);
    names
}

/// A copy's state (JSON) and its records as (key, status, source file).
type Dump = (String, Vec<(String, String, String)>);

/// Everything a copy holds, for before/after comparisons (`None`: no copy yet).
fn dump(copy: &Path) -> Option<Dump> {
    if !copy.join("CURRENT").exists() {
        return None;
    }
    let db = open_read_only(copy).unwrap();
    let state = serde_json::to_string(&db.state().unwrap()).unwrap();
    let records = db
        .records()
        .map(|r| {
            let r = r.unwrap();
            (r.key(), r.status.clone(), r.source.clone())
        })
        .collect();
    Some((state, records))
}

fn names(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn sync_reaches_the_state_of_the_services_store() {
    let f = fixture();
    let scratch = tempfile::tempdir().unwrap();
    let m = manifest(&f.out);
    let (full, full_day, later) = full_and_later_deltas(&m);
    assert!(
        later.len() >= 4,
        "the history leaves several deltas after the full: {later:?}"
    );

    // The directory as it stood two days ago: the full and all but the last two deltas.
    let earlier = scratch.path().join("earlier");
    let mut first_names = vec![full.clone()];
    first_names.extend(later[..later.len() - 2].iter().cloned());
    directory_with(&first_names, &earlier);
    let copy = scratch.path().join("copy");
    let (ok, report, err) = sync(&earlier, &copy);
    assert!(ok, "{err}");
    assert_eq!(report["full_loaded"], full.as_str());
    assert_eq!(names(&report["deltas_applied"]), later[..later.len() - 2]);

    // Today's directory: only the two new deltas are applied; then nothing.
    let (ok, report, err) = sync(&f.out, &copy);
    assert!(ok, "{err}");
    assert!(report["full_loaded"].is_null(), "{report}");
    assert_eq!(names(&report["deltas_applied"]), later[later.len() - 2..]);
    let (ok, report, err) = sync(&f.out, &copy);
    assert!(ok, "{err}");
    assert_eq!(report["up_to_date"], true, "{report}");
    // A fresh copy from today's directory gets the same result in one run.
    let fresh = scratch.path().join("fresh");
    let (ok, report, err) = sync(&f.out, &fresh);
    assert!(ok, "{err}");
    assert_eq!(names(&report["deltas_applied"]), later);

    // The service's store at the close of the newest published day.
    let last = m.files.iter().map(|e| e.day).max().unwrap();
    assert!(last > full_day);
    assert_eq!(report["copy_day"], last.to_string());
    let store = Store::open_read_only(&f.store, "certs").unwrap();
    let snap = store.snapshot();
    // key → (status, certificate type, subject id)
    type Service = BTreeMap<String, (CertificateStatus, i32, Vec<u8>)>;
    let service: Service = snap
        .as_of(day_of_date(last))
        .map(|r| r.unwrap().1)
        .map(|r| {
            (
                record_key(&r.issuer_name_der, &r.serial),
                (
                    CertificateStatus::try_from(r.status).unwrap(),
                    r.certificate_type,
                    r.subject_id.clone(),
                ),
            )
        })
        .collect();
    let db = open_read_only(&copy).unwrap();
    let party: BTreeMap<String, CertificateStatus> = db
        .records()
        .map(|r| {
            let r = r.unwrap();
            (r.key(), status_of(&r).unwrap())
        })
        .collect();
    let in_use = |m: &BTreeMap<String, CertificateStatus>| -> BTreeSet<String> {
        m.iter()
            .filter(|(_, s)| **s == CertificateStatus::InUse)
            .map(|(k, _)| k.clone())
            .collect()
    };
    let service_status: BTreeMap<String, CertificateStatus> =
        service.iter().map(|(k, v)| (k.clone(), v.0)).collect();
    assert_eq!(in_use(&party), in_use(&service_status), "In-use sets");
    // Every certificate the copy holds has the service's status; every certificate of every
    // applied delta is there.
    for (k, s) in &party {
        assert_eq!(Some(s), service_status.get(k), "status of {k}");
    }
    let mut in_deltas = BTreeSet::new();
    for name in &later {
        let file = std::fs::File::open(f.out.join(name)).unwrap();
        let gz = flate2::read::MultiGzDecoder::new(std::io::BufReader::new(file));
        let (_, recs) =
            smki_extract::extract::xml::read_extract(std::io::BufReader::new(gz)).unwrap();
        in_deltas.extend(recs.into_iter().map(|r| r.record_key()));
    }
    assert!(in_deltas.iter().all(|k| party.contains_key(k)));
    let non_in_use = party
        .values()
        .filter(|s| **s != CertificateStatus::InUse)
        .count();
    assert!(non_in_use > 0, "the deltas carry P, N and R records too");
    // The fresh copy holds the same.
    let fresh_db = open_read_only(&fresh).unwrap();
    assert_eq!(fresh_db.records().count(), party.len());

    // lookup by Device ID: the device's certificates, as the service has them.
    let (key, (status, _, device_id)) = service
        .iter()
        .find(|(k, (_, t, _))| *t == StoredType::Device as i32 && party.contains_key(*k))
        .unwrap();
    let id = smki_extract::eui64::Eui64::from_slice(device_id)
        .unwrap()
        .to_string();
    let (ok, out, err) = run(&[
        "lookup",
        "--copy",
        copy.to_str().unwrap(),
        "--device-id",
        &id,
    ]);
    assert!(ok, "{err}");
    let found: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let want: BTreeSet<&String> = service
        .iter()
        .filter(|(k, (_, t, sid))| {
            *t == StoredType::Device as i32 && sid == device_id && party.contains_key(*k)
        })
        .map(|(k, _)| k)
        .collect();
    let got: BTreeSet<String> = found
        .iter()
        .map(|v| v["key"].as_str().unwrap().into())
        .collect();
    assert_eq!(got.iter().collect::<BTreeSet<_>>(), want);
    let mine = found.iter().find(|v| v["key"] == key.as_str()).unwrap();
    assert_eq!(mine["status"], status.code());
    assert_eq!(mine["device_id"], id.as_str());
    // ...by serial, and by Entity ID of an organisation.
    let serial = key.split_once('-').unwrap().1;
    let (ok, out, _) = run(&[
        "lookup",
        "--copy",
        copy.to_str().unwrap(),
        "--serial",
        serial,
    ]);
    assert!(ok && out.contains(key.as_str()), "{out}");
    let (org_key, (_, _, entity)) = service
        .iter()
        .find(|(k, (s, t, sid))| {
            *t == StoredType::Organisation as i32
                && *s == CertificateStatus::InUse
                && sid.len() == 8
                && party.contains_key(*k)
        })
        .unwrap();
    let eid = smki_extract::eui64::Eui64::from_slice(entity)
        .unwrap()
        .to_string();
    let (ok, out, err) = run(&[
        "lookup",
        "--copy",
        copy.to_str().unwrap(),
        "--entity-id",
        &eid,
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains(org_key.as_str()) && out.contains("\"type\":\"Organisation\""),
        "{out}"
    );
    // Nothing under an unknown Device ID: exit non-zero.
    let (ok, _, err) = run(&[
        "lookup",
        "--copy",
        copy.to_str().unwrap(),
        "--device-id",
        "FF-FF-FF-FF-FF-FF-FF-FF",
    ]);
    assert!(!ok && err.contains("no certificate"), "{err}");

    // export: CSV with one line per certificate; PEM files openssl reads.
    let csv = scratch.path().join("copy.csv");
    let (ok, _, err) = run(&[
        "export",
        "--copy",
        copy.to_str().unwrap(),
        "--format",
        "csv",
        "--out",
        csv.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(text.lines().count(), party.len() + 1);
    assert!(text.contains(&format!("{key},Device,{}", status.code())));
    let pem_dir = scratch.path().join("pem");
    let (ok, _, err) = run(&[
        "export",
        "--copy",
        copy.to_str().unwrap(),
        "--format",
        "pem",
        "--out",
        pem_dir.to_str().unwrap(),
        "--status",
        "I",
        "--type",
        "Organisation",
    ]);
    assert!(ok, "{err}");
    let orgs_in_use = service
        .iter()
        .filter(|(k, (s, t, _))| {
            *t == StoredType::Organisation as i32
                && *s == CertificateStatus::InUse
                && party.contains_key(*k)
        })
        .count();
    let pems: Vec<_> = std::fs::read_dir(&pem_dir).unwrap().collect();
    assert_eq!(pems.len(), orgs_in_use);
    let org_pem = pem_dir.join(format!("{org_key}.pem"));
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(&org_pem)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("serial={}", org_key.split_once('-').unwrap().1)
    );

    // verify: every published file passes.
    let files: Vec<String> = m
        .files
        .iter()
        .map(|e| f.out.join(&e.name).to_str().unwrap().to_string())
        .collect();
    let mut args = vec!["verify"];
    args.extend(files.iter().map(String::as_str));
    let (ok, out, err) = run(&args);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&format!(
            "{0} file(s) checked: {0} ok, 0 with defects",
            files.len()
        )),
        "{out}"
    );
    let _ = &f.root;
}

// ------------------------------------------------------------------- corruption catalogue

fn sha_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Rewrites `name` in `dir` with `bytes`, and its sidecar and manifest entry to match (so
/// that only the checks behind SHA-256 can notice); `records` updates the manifest's count.
fn replace_consistently(dir: &Path, name: &str, bytes: &[u8], records: Option<u64>) {
    std::fs::write(dir.join(name), bytes).unwrap();
    let sha = sha_hex(bytes);
    std::fs::write(
        dir.join(format!("{name}.sha256")),
        format!("{sha}  {name}\n"),
    )
    .unwrap();
    let mut m = manifest(dir);
    let e = m.files.iter_mut().find(|e| e.name == name).unwrap();
    e.sha256 = sha;
    e.size = bytes.len() as u64;
    if let Some(r) = records {
        e.records = r;
    }
    save_manifest(dir, &m);
}

fn gunzip(bytes: &[u8]) -> String {
    let mut s = String::new();
    flate2::read::MultiGzDecoder::new(bytes)
        .read_to_string(&mut s)
        .unwrap();
    s
}

fn gzip(text: &str) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(text.as_bytes()).unwrap();
    e.finish().unwrap()
}

/// Damages a directory; returns the file the error must name.
type Damage = Box<dyn Fn(&Path, &Ctx) -> String>;

struct Case {
    what: &'static str,
    damage: Damage,
    /// Words the error must contain.
    says: &'static [&'static str],
    /// Whether `verify` of the named file must flag it (file-level defects).
    file_defect: bool,
}

struct Ctx {
    later: Vec<String>,
    /// A delta of a day before the newest full, and its record count.
    older_delta: (PathBuf, u64),
}

fn cases() -> Vec<Case> {
    let target = |c: &Ctx| c.later[2].clone();
    vec![
        Case {
            what: "flipped byte",
            damage: Box::new(move |dir, c| {
                let name = target(c);
                let mut b = std::fs::read(dir.join(&name)).unwrap();
                let i = b.len() / 2;
                b[i] ^= 0x01;
                std::fs::write(dir.join(&name), b).unwrap();
                name
            }),
            says: &["SHA-256 mismatch", "sidecar"],
            file_defect: true,
        },
        Case {
            what: "flipped byte, sidecar and manifest re-hashed",
            damage: Box::new(move |dir, c| {
                let name = target(c);
                let mut b = std::fs::read(dir.join(&name)).unwrap();
                let i = b.len() / 2;
                b[i] ^= 0x01;
                replace_consistently(dir, &name, &b, None);
                name
            }),
            says: &["not a valid gzip file"],
            file_defect: true,
        },
        Case {
            what: "truncated gzip (re-hashed)",
            damage: Box::new(move |dir, c| {
                let name = target(c);
                let b = std::fs::read(dir.join(&name)).unwrap();
                replace_consistently(dir, &name, &b[..b.len() * 3 / 5], None);
                name
            }),
            says: &["not a valid gzip file", "truncated"],
            file_defect: true,
        },
        Case {
            what: "gzip trailer cut off (re-hashed)",
            damage: Box::new(move |dir, c| {
                let name = target(c);
                let b = std::fs::read(dir.join(&name)).unwrap();
                replace_consistently(dir, &name, &b[..b.len() - 4], None);
                name
            }),
            says: &["not a valid gzip file"],
            file_defect: true,
        },
        Case {
            what: "wrong sha256 in the sidecar",
            damage: Box::new(move |dir, c| {
                let name = target(c);
                let side = dir.join(format!("{name}.sha256"));
                std::fs::write(&side, format!("{}  {name}\n", "ab".repeat(32))).unwrap();
                name
            }),
            says: &["SHA-256 mismatch", "sidecar"],
            file_defect: true,
        },
        Case {
            what: "wrong sha256 in the manifest",
            damage: Box::new(move |dir, c| {
                let name = target(c);
                let mut m = manifest(dir);
                m.files.iter_mut().find(|e| e.name == name).unwrap().sha256 = "cd".repeat(32);
                save_manifest(dir, &m);
                name
            }),
            says: &["SHA-256 mismatch", "manifest.json says"],
            file_defect: true,
        },
        Case {
            what: "missing delta",
            damage: Box::new(move |dir, c| {
                let name = target(c);
                std::fs::remove_file(dir.join(&name)).unwrap();
                std::fs::remove_file(dir.join(format!("{name}.sha256"))).unwrap();
                let mut m = manifest(dir);
                m.files.retain(|e| e.name != name);
                save_manifest(dir, &m);
                name
            }),
            says: &["missing", "gap"],
            file_defect: false,
        },
        Case {
            what: "delta older than the full under a later day's name",
            damage: Box::new(move |dir, c| {
                let name = target(c);
                let old = std::fs::read(&c.older_delta.0).unwrap();
                replace_consistently(dir, &name, &old, Some(c.older_delta.1));
                name
            }),
            says: &[
                "its root says extractType DELTA extractDate",
                "its name says",
            ],
            file_defect: true,
        },
        Case {
            what: "duplicate day: the same delta under the next day's name",
            damage: Box::new(move |dir, c| {
                let name = c.later[3].clone();
                let dup = std::fs::read(dir.join(&c.later[2])).unwrap();
                let records = manifest(dir)
                    .files
                    .iter()
                    .find(|e| e.name == c.later[2])
                    .unwrap()
                    .records;
                replace_consistently(dir, &name, &dup, Some(records));
                name
            }),
            says: &[
                "its root says extractType DELTA extractDate",
                "its name says",
            ],
            file_defect: true,
        },
        Case {
            what: "duplicate day: the manifest lists a delta twice",
            damage: Box::new(move |dir, c| {
                let name = target(c);
                let mut m = manifest(dir);
                let e = m.files.iter().find(|e| e.name == name).unwrap().clone();
                m.files.push(e);
                save_manifest(dir, &m);
                name
            }),
            says: &["twice"],
            file_defect: true,
        },
        Case {
            what: "XML that only the XSD rejects (lowercase Device ID)",
            damage: Box::new(move |dir, c| {
                let name = target(c);
                let text = gunzip(&std::fs::read(dir.join(&name)).unwrap());
                let start = text.find("<CertificateSubjectAltName>").unwrap() + 27;
                let end = start + 23;
                let mut bad = text.clone();
                bad.replace_range(start..end, &text[start..end].to_lowercase());
                assert_ne!(bad, text, "the Device ID has letters to lowercase");
                replace_consistently(dir, &name, &gzip(&bad), None);
                name
            }),
            says: &[
                "not valid against the extract schema",
                "xmllint",
                "CertificateSubjectAltName",
            ],
            file_defect: true,
        },
    ]
}

#[test]
fn corruption_catalogue() {
    let f = fixture();
    let m = manifest(&f.out);
    let (full, full_day, later) = full_and_later_deltas(&m);
    assert!(later.len() >= 4, "{later:?}");
    // The delta of a day before the full (retention removed it; the store rewrites it).
    let older_dir = tempfile::tempdir().unwrap();
    let older_delta = {
        let store = Store::open_read_only(&f.store, "certs").unwrap();
        let mut p = Publisher::open(older_dir.path(), Retention::default()).unwrap();
        let day = day_of_date(full_day) - 2;
        let e = publish_one(
            &store,
            &mut p,
            ExtractKind::Delta,
            day,
            GzOptions::default(),
        )
        .unwrap();
        assert!(e.records > 0);
        (older_dir.path().join(&e.name), e.records)
    };
    let ctx = Ctx {
        later: later.clone(),
        older_delta,
    };
    let scratch = tempfile::tempdir().unwrap();
    // A copy that synced the full and the first delta after it, kept as a template.
    let template = scratch.path().join("template-copy");
    let early = scratch.path().join("early");
    directory_with(&[full.clone(), later[0].clone()], &early);
    let (ok, _, err) = sync(&early, &template);
    assert!(ok, "{err}");

    for (i, case) in cases().iter().enumerate() {
        let dir = scratch.path().join(format!("dir-{i}"));
        whole_directory(&dir);
        let named = (case.damage)(&dir, &ctx);
        for synced_before in [false, true] {
            let copy = scratch.path().join(format!("copy-{i}-{synced_before}"));
            if synced_before {
                copy_dir(&template, &copy);
            }
            let before = dump(&copy);
            assert_eq!(before.is_some(), synced_before);
            let (ok, report, err) = sync(&dir, &copy);
            let ctx_msg = format!("{} (synced before: {synced_before})", case.what);
            assert!(!ok, "{ctx_msg}: sync accepted it: {report}");
            println!("{ctx_msg}:\n    {}", err.trim());
            assert!(
                err.contains(&named),
                "{ctx_msg}: the error names {named}: {err}"
            );
            for word in case.says {
                assert!(
                    err.contains(word),
                    "{ctx_msg}: the error says {word:?}: {err}"
                );
            }
            assert_eq!(dump(&copy), before, "{ctx_msg}: the copy changed");
            let stray: Vec<_> = std::fs::read_dir(&copy)
                .map(|d| {
                    d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                        .filter(|n| n.starts_with("db-"))
                        .collect()
                })
                .unwrap_or_default();
            assert!(
                stray.len() <= 1,
                "{ctx_msg}: an abandoned rebuild is left: {stray:?}"
            );
        }
        if case.file_defect {
            let (ok, out, _) = run(&["verify", dir.join(&named).to_str().unwrap()]);
            assert!(!ok, "{}: verify passed {named}: {out}", case.what);
            assert!(
                out.contains(&format!("DEFECT  {named}")),
                "{}: {out}",
                case.what
            );
        }
        // The same directory, repaired, syncs.
        if i == 0 {
            let repaired = scratch.path().join("repaired");
            whole_directory(&repaired);
            let copy = scratch.path().join("copy-repaired");
            copy_dir(&template, &copy);
            let (ok, report, err) = sync(&repaired, &copy);
            assert!(ok, "{err}");
            assert_eq!(names(&report["deltas_applied"]), later[1..]);
        }
    }

    // An applied day republished with other bytes: refused for the copy that applied it.
    let dir = scratch.path().join("republished");
    whole_directory(&dir);
    let other = std::fs::read(dir.join(&later[1])).unwrap();
    replace_consistently(&dir, &later[0], &other, None);
    let copy = scratch.path().join("copy-republished");
    copy_dir(&template, &copy);
    let before = dump(&copy);
    let (ok, _, err) = sync(&dir, &copy);
    assert!(!ok);
    assert!(
        err.contains(&later[0]) && err.contains("different content"),
        "{err}"
    );
    assert_eq!(dump(&copy), before);

    // A directory older than the copy (a stale mirror) is refused too.
    let (ok, _, err) = sync(&early, &{
        let c = scratch.path().join("copy-ahead");
        let d = scratch.path().join("whole");
        whole_directory(&d);
        let (ok, _, e) = sync(&d, &c);
        assert!(ok, "{e}");
        c
    });
    assert!(!ok);
    assert!(err.contains("old or wrong directory"), "{err}");
}

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}
