//! Reading a Party's local copy: `lookup` of certificates by Device ID, Entity ID, serial or
//! certificate id, and `export` of the copy to PEM files or CSV.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use super::copy::{Database, LocalRecord};
use crate::eui64::Eui64;

/// What to look a certificate up by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    /// Device certificates of this Device ID (usually a DS and a KA one).
    DeviceId(Eui64),
    /// Organisation (and CA) certificates of this Entity ID.
    EntityId(Eui64),
    /// Certificates with this serial (of any issuer).
    Serial(Vec<u8>),
    /// The certificate id `<issuer-hash>-<SERIAL>`.
    Key(String),
}

/// The records matching a query, in key order.
pub fn lookup(db: &Database, query: &Query) -> Result<Vec<LocalRecord>> {
    Ok(match query {
        Query::DeviceId(id) => db.by_id(true, *id)?,
        Query::EntityId(id) => db.by_id(false, *id)?,
        Query::Serial(s) => db.by_serial(s)?,
        Query::Key(k) => db.get(k)?.into_iter().collect(),
    })
}

/// One record as a JSON object (what `lookup` prints, one per line); `with_der` adds the
/// certificate as Base64 DER.
pub fn to_json(r: &LocalRecord, with_der: bool) -> serde_json::Value {
    let mut v = serde_json::json!({
        "key": r.key(),
        "type": r.certificate_type,
        "status": r.status,
        "serial": hex::encode_upper(&r.serial),
        "issuer": r.issuer,
        "usage": r.usage,
        "manufacturing_flag": r.manufacturing_flag,
        "source": r.source,
    });
    let o = v.as_object_mut().expect("object");
    if let Some(id) = r.device_id() {
        o.insert("device_id".into(), id.to_string().into());
    }
    if let Some(id) = r.entity_id() {
        o.insert("entity_id".into(), id.to_string().into());
    }
    if !r.subject_name.is_empty() {
        o.insert("subject".into(), r.subject_name.clone().into());
    }
    if r.role >= 0 {
        o.insert("role".into(), r.role.into());
    }
    if with_der {
        o.insert("der_base64".into(), BASE64.encode(&r.der).into());
    }
    v
}

/// A certificate in PEM armour (64-column Base64 lines).
pub fn pem(der: &[u8]) -> String {
    let b64 = BASE64.encode(der);
    let mut s = String::with_capacity(b64.len() + b64.len() / 64 + 60);
    s.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        s.push('\n');
    }
    s.push_str("-----END CERTIFICATE-----\n");
    s
}

/// Which records an export includes.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only these status codes (`I`, …); empty: all.
    pub statuses: Vec<String>,
    /// Only this certificate type (`Device`, `Organisation`, `OCA`, `DCA`); `None`: all.
    pub certificate_type: Option<String>,
}

impl Filter {
    fn admits(&self, r: &LocalRecord) -> bool {
        (self.statuses.is_empty() || self.statuses.contains(&r.status))
            && self
                .certificate_type
                .as_ref()
                .is_none_or(|t| t.eq_ignore_ascii_case(&r.certificate_type))
    }
}

/// The CSV header `export --format csv` writes.
pub const CSV_HEADER: &str =
    "key,type,status,serial,device_id,entity_id,role,usage,manufacturing_flag,issuer,subject,source";

/// Writes the admitted records as CSV (RFC 4180 quoting); returns how many.
pub fn export_csv(db: &Database, filter: &Filter, out: &mut dyn Write) -> Result<u64> {
    writeln!(out, "{CSV_HEADER}")?;
    let mut n = 0;
    for r in db.records() {
        let r = r?;
        if !filter.admits(&r) {
            continue;
        }
        let fields = [
            r.key(),
            r.certificate_type.clone(),
            r.status.clone(),
            hex::encode_upper(&r.serial),
            r.device_id().map(|i| i.to_string()).unwrap_or_default(),
            r.entity_id().map(|i| i.to_string()).unwrap_or_default(),
            if r.role >= 0 {
                r.role.to_string()
            } else {
                String::new()
            },
            r.usage.clone(),
            r.manufacturing_flag.to_string(),
            r.issuer.clone(),
            r.subject_name.clone(),
            r.source.clone(),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        writeln!(out, "{}", line.join(","))?;
        n += 1;
    }
    Ok(n)
}

fn csv_field(f: &str) -> String {
    if f.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", f.replace('"', "\"\""))
    } else {
        f.to_string()
    }
}

/// Writes each admitted certificate to `<dir>/<key>.pem`; returns how many.
pub fn export_pem(db: &Database, filter: &Filter, dir: &Path) -> Result<u64> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut n = 0;
    for r in db.records() {
        let r = r?;
        if !filter.admits(&r) {
            continue;
        }
        let path = dir.join(format!("{}.pem", r.key()));
        std::fs::write(&path, pem(&r.der))
            .with_context(|| format!("writing {}", path.display()))?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("CN=Z1"), "CN=Z1");
        assert_eq!(csv_field("OU=07, CN=Z1"), "\"OU=07, CN=Z1\"");
        assert_eq!(csv_field("a\"b"), "\"a\"\"b\"");
        assert_eq!(CSV_HEADER.split(',').count(), 12);
    }

    #[test]
    fn pem_is_what_openssl_reads() {
        let pem_text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/gbcs-test-certs/00db123456789001-ds.pem"
        ))
        .unwrap();
        let der = crate::certificate::der_from_pem(&pem_text).unwrap();
        let ours = pem(&der);
        assert!(ours.lines().all(|l| l.len() <= 64));
        assert_eq!(crate::certificate::der_from_pem(&ours).unwrap(), der);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.pem");
        std::fs::write(&f, &ours).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-serial", "-in"])
            .arg(&f)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let serial = crate::certificate::parse(&der).unwrap().serial_hex();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("serial={serial}")
        );
    }
}
