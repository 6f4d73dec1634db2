//! Guarantee 2 over Kafka protocol (in-process mock cluster): every kind of bad event ends in
//! the dead-letter topic with the right reason and its origin partition/offset in headers,
//! while the good events around it are applied; a repeated event_id is applied once.

#[path = "common/files.rs"]
mod files;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use smki_extract::certificate;
use smki_extract::config::Config;
use smki_extract::consumer::{self, RunOptions};
use smki_extract::contract::*;
use smki_extract::metrics::Metrics;
use smki_extract::mock::EmbeddedKafka;
use smki_extract::store::{CertKey, Store};

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    certificate::der_from_pem(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn openssl_cert(curve: &str, key_usage: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("c.der");
    let status = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg(format!("ec_paramgen_curve:{curve}"))
        .args([
            "-nodes",
            "-subj",
            "/OU=02/CN=bad",
            "-days",
            "1",
            "-outform",
            "DER",
        ])
        .arg("-keyout")
        .arg(dir.path().join("k.pem"))
        .arg("-out")
        .arg(&out)
        .args(["-addext", &format!("keyUsage=critical,{key_usage}")])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read(out).unwrap()
}

fn ts(secs: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: secs,
        nanos: 0,
    })
}

fn issued(id: &str, der: &[u8], status: CertificateStatus) -> CertificateEvent {
    CertificateEvent {
        event_id: id.into(),
        occurred_at: ts(1_790_000_000),
        source: "test".into(),
        body: Some(Body::Issued(CertificateIssued {
            certificate_der: der.to_vec(),
            initial_status: status as i32,
            manufacturing_flag: false,
        })),
    }
}

fn changed(id: &str, der: &[u8], status: CertificateStatus) -> CertificateEvent {
    let info = certificate::parse(der).unwrap();
    CertificateEvent {
        event_id: id.into(),
        occurred_at: ts(1_790_000_100),
        source: "test".into(),
        body: Some(Body::StatusChanged(StatusChanged {
            certificate: Some(CertificateId {
                issuer_name_der: info.issuer_name_der,
                serial: info.serial,
            }),
            new_status: status as i32,
            reason: "test".into(),
        })),
    }
}

/// The record key of any certificate, read with x509-parser directly (profile violations
/// included, which `certificate::parse` rejects).
fn key_of(der: &[u8]) -> String {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).unwrap();
    record_key(
        cert.issuer().as_raw(),
        &certificate::canonical_serial(cert.raw_serial()),
    )
}

#[test]
fn every_bad_event_is_dead_lettered_with_its_reason_and_good_ones_are_applied() {
    use CertificateStatus::*;
    let a = fixture("gbcs-test-certs/00db123456789001-ds.pem");
    let b = fixture("gbcs-test-certs/00db123456789002-ka.pem");
    let org = fixture("gbcs-test-certs/90b3d51f30000002-ds.pem");
    let public_key_der = {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/bad-input/public-key-not-a-certificate.pem"),
        )
        .unwrap();
        x509_parser::pem::parse_x509_pem(text.as_bytes())
            .unwrap()
            .1
            .contents
    };
    let p384 = openssl_cert("secp384r1", "digitalSignature");
    let both_usages = openssl_cert("prime256v1", "digitalSignature,keyAgreement");
    let mut a_other = a.clone();
    let n = a_other.len();
    a_other[n - 1] ^= 1;

    // (key, value, expected dead-letter reason or None for a good event)
    let ka = key_of(&a);
    let kb = key_of(&b);
    let ko = key_of(&org);
    let ghost_key = "0000000000000000-01";
    let mut ghost = changed("g1", &a, InUse);
    if let Some(Body::StatusChanged(c)) = &mut ghost.body {
        c.certificate.as_mut().unwrap().serial = vec![1];
        c.certificate.as_mut().unwrap().issuer_name_der = vec![0x30, 0x00];
    }
    let ghost_key_real = record_key(&[0x30, 0x00], &[1]);
    let _ = ghost_key;
    let cases: Vec<(String, Vec<u8>, Option<&str>)> = vec![
        (ka.clone(), issued("a1", &a, Pending).encode_to_vec(), None),
        (
            ka.clone(),
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01garbage".to_vec(),
            Some("undecodable"),
        ),
        (ko.clone(), issued("o1", &org, InUse).encode_to_vec(), None),
        (
            ka.clone(),
            issued("x1", &public_key_der, Pending).encode_to_vec(),
            Some("certificate_unparseable"),
        ),
        (
            key_of(&p384),
            issued("x2", &p384, Pending).encode_to_vec(),
            Some("certificate_profile"),
        ),
        (
            key_of(&both_usages),
            issued("x3", &both_usages, Pending).encode_to_vec(),
            Some("certificate_profile"),
        ),
        (
            ghost_key_real,
            ghost.encode_to_vec(),
            Some("unknown_certificate"),
        ),
        (ka.clone(), changed("a2", &a, InUse).encode_to_vec(), None),
        (ka.clone(), changed("a2", &a, InUse).encode_to_vec(), None), // duplicate event id
        (
            ka.clone(),
            issued("x4", &a_other, Pending).encode_to_vec(),
            Some("conflicting_certificate"),
        ),
        (
            ka.clone(),
            issued("x5", &a, Pending).encode_to_vec(),
            Some("already_lodged"),
        ),
        (kb.clone(), issued("b1", &b, Pending).encode_to_vec(), None),
        (
            kb.clone(),
            changed("x6", &b, NotInUse).encode_to_vec(),
            Some("invalid_transition"),
        ),
        (
            ka.clone(),
            changed("x7", &b, Revoked).encode_to_vec(),
            Some("key_mismatch"),
        ),
        (
            ko.clone(),
            changed("o2", &org, Revoked).encode_to_vec(),
            None,
        ),
        (
            ko.clone(),
            changed("x8", &org, InUse).encode_to_vec(),
            Some("transition_from_final"),
        ),
        (
            kb.clone(),
            issued("x9", &b, Unspecified).encode_to_vec(),
            Some("invalid_status"),
        ),
        (
            kb.clone(),
            CertificateEvent {
                event_id: String::new(),
                ..issued("", &b, Pending)
            }
            .encode_to_vec(),
            Some("invalid_event_id"),
        ),
        (
            kb.clone(),
            CertificateEvent {
                occurred_at: None,
                ..issued("x10", &b, Pending)
            }
            .encode_to_vec(),
            Some("missing_occurred_at"),
        ),
        (
            kb.clone(),
            CertificateEvent {
                // Two days ahead of the record's timestamp (the time it is produced).
                occurred_at: ts(chrono::Utc::now().timestamp() + 2 * 86_400),
                ..issued("x11", &b, Pending)
            }
            .encode_to_vec(),
            Some("occurred_at_in_future"),
        ),
        (kb.clone(), changed("b2", &b, InUse).encode_to_vec(), None),
    ];

    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic("certs", 1).unwrap();
    kafka.create_topic("certs.dlq", 1).unwrap();
    kafka.create_topic("certs.closes", 1).unwrap();
    let mut config = Config::default();
    config.kafka.bootstrap_servers = kafka.bootstrap_servers();
    config.kafka.topic = "certs".into();
    config.kafka.group_id = "bad-input".into();
    let dir = tempfile::tempdir().unwrap();
    config.store.path = dir.path().join("store");
    config.output.dir = dir.path().join("output");

    let producer: BaseProducer = config.kafka.client_config().create().unwrap();
    for (key, value, _) in &cases {
        producer
            .send(
                BaseRecord::<str, [u8]>::to("certs")
                    .key(key.as_str())
                    .payload(&value[..])
                    .partition(0),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    let metrics = Metrics::new();
    let summary = consumer::run(
        &config,
        Arc::new(AtomicBool::new(false)),
        RunOptions {
            stop_at_end: true,
            end_grace: Duration::from_millis(300),
            simulated_now_ms: None,
        },
        metrics.clone(),
    )
    .unwrap();

    let want: Vec<(String, i64)> = cases
        .iter()
        .enumerate()
        .filter_map(|(i, (_, _, r))| r.map(|r| (r.to_string(), i as i64)))
        .collect();
    let letters = smki_extract::deadletter::read_all(
        &config.kafka.client_config(),
        "certs.dlq",
        Duration::from_secs(20),
    )
    .unwrap();
    let got: Vec<(String, i64)> = letters
        .iter()
        .map(|l| (l.reason.clone(), l.offset))
        .collect();
    assert_eq!(got, want, "dead letters (reason, origin offset)");
    assert!(letters
        .iter()
        .all(|l| l.partition == 0 && !l.detail.is_empty()));
    assert_eq!(summary.dead_lettered as usize, want.len());
    assert_eq!(summary.duplicates, 1);
    assert_eq!(summary.applied, 6);
    assert_eq!(
        metrics
            .events_dead_lettered
            .with_label_values(&["certificate_profile"])
            .get(),
        2
    );

    let store = Store::open(&config.store.path, "certs").unwrap();
    let status_of = |der: &[u8]| {
        let info = certificate::parse(der).unwrap();
        let key = CertKey::new(0, &issuer_hash(&info.issuer_name_der), &info.serial);
        let rec = store.get_cert(&key).unwrap().expect("stored");
        (
            CertificateStatus::try_from(rec.status).unwrap(),
            rec.applied_events,
        )
    };
    assert_eq!(status_of(&a), (InUse, 2));
    assert_eq!(status_of(&b), (InUse, 2));
    assert_eq!(status_of(&org), (Revoked, 2));
    assert_eq!(store.offsets().unwrap()[&0], cases.len() as i64);
    files::assert_published_files_valid(&config.output.dir);
}
