//! Understanding a certificate from its DER: what kind of SMKI certificate it is, whom it
//! names, and whether it fits the GBCS profile (DESIGN §3).
//!
//! Everything the service publishes about a certificate is derived here, never taken from the
//! event that carried it. Parsing uses the maintained `x509-parser` crate; this module only
//! applies the SMKI rules on top of the parsed structure.

use std::fmt;

use x509_parser::asn1_rs::{Any, FromDer, Oid, Sequence};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry;
use x509_parser::x509::X509Version;

use crate::eui64::Eui64;

/// The four kinds of certificate in the SMKI Repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CertificateType {
    /// Organisation Certificate Authority (Root or Issuing OCA): a CA whose subject carries a
    /// Remote Party Role (`OU`).
    Oca,
    /// Device Certificate Authority: a CA without a Remote Party Role.
    Dca,
    /// Organisation Certificate of a Party (`OU` role + `x500UniqueIdentifier` entity id).
    Organisation,
    /// Device Certificate (empty subject, Device ID in a hardwareModuleName SAN).
    Device,
}

impl CertificateType {
    /// The name used in files and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            CertificateType::Oca => "OCA",
            CertificateType::Dca => "DCA",
            CertificateType::Organisation => "Organisation",
            CertificateType::Device => "Device",
        }
    }
}

impl fmt::Display for CertificateType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Key usage of a certificate as the SMKI web service reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Usage {
    /// `DS`: digitalSignature.
    DigitalSignature,
    /// `KA`: keyAgreement.
    KeyAgreement,
    /// A CA key used only to sign certificates and CRLs.
    CertSign,
}

impl Usage {
    /// The code used in files (`DS`, `KA`, `CA`).
    pub fn code(self) -> &'static str {
        match self {
            Usage::DigitalSignature => "DS",
            Usage::KeyAgreement => "KA",
            Usage::CertSign => "CA",
        }
    }
}

/// Everything the service derives from a certificate's DER.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateInfo {
    /// OCA, DCA, Organisation or Device.
    pub cert_type: CertificateType,
    /// Device ID (devices) or Entity ID (organisations, and CAs that carry one).
    pub subject_id: Option<Eui64>,
    /// Remote Party Role from the subject `OU` (organisation and OCA certificates).
    pub role: Option<u8>,
    /// DS, KA or (CAs) certificate signing.
    pub usage: Usage,
    /// DER of the issuer Name, byte for byte: half of the certificate id.
    pub issuer_name_der: Vec<u8>,
    /// Serial number as an unsigned big-endian integer without leading zero bytes: the other half.
    pub serial: Vec<u8>,
    /// Issuer as text (RFC 4514 style), for people.
    pub issuer: String,
    /// Subject as text (empty for device certificates).
    pub subject: String,
    /// notBefore, Unix seconds.
    pub not_before: i64,
    /// notAfter, Unix seconds.
    pub not_after: i64,
}

impl CertificateInfo {
    /// The serial as the files and the web service show it: uppercase hex, no separators.
    pub fn serial_hex(&self) -> String {
        hex::encode_upper(&self.serial)
    }
}

/// Why a certificate was not accepted. The `reason` code is what goes into dead-letter headers
/// and metrics labels; the message says what exactly was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    /// The bytes are not a DER X.509 certificate.
    #[error("not a DER X.509 certificate: {0}")]
    Unparseable(String),
    /// A certificate, but not one the GBCS profile allows.
    #[error("certificate outside the GBCS profile: {0}")]
    Profile(String),
    /// A profile-conforming certificate whose SMKI type cannot be determined.
    #[error("cannot tell what kind of SMKI certificate this is: {0}")]
    Unclassifiable(String),
}

impl CertificateError {
    /// Short stable code for headers and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            CertificateError::Unparseable(_) => "certificate_unparseable",
            CertificateError::Profile(_) => "certificate_profile",
            CertificateError::Unclassifiable(_) => "certificate_unclassifiable",
        }
    }
}

/// id-on-hardwareModuleName (RFC 4108): the otherName carrying the Device ID.
const OID_HARDWARE_MODULE_NAME: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 8, 4];
/// x500UniqueIdentifier (2.5.4.45): carries the Entity ID of organisations.
const OID_X500_UNIQUE_IDENTIFIER: &[u64] = &[2, 5, 4, 45];
/// organizationalUnitName (2.5.4.11): carries the Remote Party Role.
const OID_ORGANIZATIONAL_UNIT: &[u64] = &[2, 5, 4, 11];

fn oid_is(oid: &Oid<'_>, arcs: &[u64]) -> bool {
    oid.iter()
        .map(|it| it.eq(arcs.iter().copied()))
        .unwrap_or(false)
}

/// Parse and classify a DER certificate, checking it against the GBCS profile.
///
/// Rejects trailing bytes after the certificate, anything that is not X.509 v3 with an ECDSA
/// P-256 key signed with ecdsa-with-SHA256, and end-entity certificates whose critical
/// keyUsage is not exactly one of digitalSignature or keyAgreement.
pub fn parse(der: &[u8]) -> Result<CertificateInfo, CertificateError> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| CertificateError::Unparseable(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CertificateError::Unparseable(format!(
            "{} trailing bytes after the certificate",
            rest.len()
        )));
    }
    check_crypto_profile(&cert)?;
    let serial = canonical_serial(cert.raw_serial());
    if serial.len() > MAX_SERIAL_LEN {
        return Err(CertificateError::Profile(format!(
            "serial of {} octets (RFC 5280 allows at most {MAX_SERIAL_LEN})",
            serial.len()
        )));
    }

    let is_ca = cert
        .basic_constraints()
        .map_err(|e| CertificateError::Profile(format!("basicConstraints: {e}")))?
        .map(|bc| bc.value.ca)
        .unwrap_or(false);
    let usage = usage_of(&cert, is_ca)?;
    let (role, entity_id) = subject_role_and_entity(&cert)?;
    let device_id = device_id_of(&cert)?;
    // RFC 5280 §4.1.2.4: the issuer is never empty. Only device certificates may have an
    // empty subject (their identity is the SAN); every other kind is named by its subject.
    if cert.issuer().iter().next().is_none() {
        return Err(CertificateError::Profile("empty issuer name".into()));
    }
    if device_id.is_none() && cert.subject().iter().next().is_none() {
        return Err(CertificateError::Profile(
            "empty subject on a certificate that is not a device certificate".into(),
        ));
    }

    let cert_type = if is_ca {
        if device_id.is_some() {
            return Err(CertificateError::Unclassifiable(
                "a CA certificate carrying a Device ID".into(),
            ));
        }
        if role.is_some() {
            CertificateType::Oca
        } else {
            CertificateType::Dca
        }
    } else if let Some(_id) = device_id {
        if !cert.subject().as_raw().is_empty() && cert.subject().iter().next().is_some() {
            return Err(CertificateError::Profile(
                "device certificate with a non-empty subject".into(),
            ));
        }
        CertificateType::Device
    } else if entity_id.is_some() {
        if role.is_none() {
            return Err(CertificateError::Unclassifiable(
                "organisation certificate without a Remote Party Role (OU)".into(),
            ));
        }
        CertificateType::Organisation
    } else {
        return Err(CertificateError::Unclassifiable(
            "end-entity certificate with neither a hardwareModuleName SAN nor an x500UniqueIdentifier"
                .into(),
        ));
    };

    let subject_id = match cert_type {
        CertificateType::Device => device_id,
        _ => entity_id,
    };
    let validity = cert.validity();
    Ok(CertificateInfo {
        cert_type,
        subject_id,
        role,
        usage,
        issuer_name_der: cert.issuer().as_raw().to_vec(),
        serial,
        issuer: cert.issuer().to_string(),
        subject: cert.subject().to_string(),
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
    })
}

/// Longest serial (octets) a certificate may have (RFC 5280 §4.1.2.2); store keys rely on it.
pub const MAX_SERIAL_LEN: usize = 20;

/// A serial number's unsigned magnitude without leading zero bytes (at least one byte).
pub fn canonical_serial(raw: &[u8]) -> Vec<u8> {
    let start = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    raw[start..].to_vec()
}

fn check_crypto_profile(cert: &X509Certificate<'_>) -> Result<(), CertificateError> {
    if cert.version() != X509Version::V3 {
        return Err(CertificateError::Profile(format!(
            "version {} instead of v3",
            cert.version().0 + 1
        )));
    }
    let spki = cert.public_key();
    if spki.algorithm.algorithm != oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY {
        return Err(CertificateError::Profile(format!(
            "public key algorithm {} instead of id-ecPublicKey",
            spki.algorithm.algorithm
        )));
    }
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    if curve.as_ref() != Some(&oid_registry::OID_EC_P256) {
        return Err(CertificateError::Profile(format!(
            "EC key on curve {} instead of P-256",
            curve
                .map(|c| c.to_id_string())
                .unwrap_or_else(|| "?".into())
        )));
    }
    if cert.signature_algorithm.algorithm != oid_registry::OID_SIG_ECDSA_WITH_SHA256 {
        return Err(CertificateError::Profile(format!(
            "signature algorithm {} instead of ecdsa-with-SHA256",
            cert.signature_algorithm.algorithm
        )));
    }
    Ok(())
}

fn usage_of(cert: &X509Certificate<'_>, is_ca: bool) -> Result<Usage, CertificateError> {
    let ku = cert
        .key_usage()
        .map_err(|e| CertificateError::Profile(format!("keyUsage: {e}")))?
        .ok_or_else(|| CertificateError::Profile("no keyUsage extension".into()))?;
    if !ku.critical {
        return Err(CertificateError::Profile("keyUsage is not critical".into()));
    }
    let ds = ku.value.digital_signature();
    let ka = ku.value.key_agreement();
    if is_ca {
        if !ku.value.key_cert_sign() {
            return Err(CertificateError::Profile(
                "CA certificate without keyCertSign".into(),
            ));
        }
        return Ok(match (ds, ka) {
            (true, false) => Usage::DigitalSignature,
            (false, true) => Usage::KeyAgreement,
            _ => Usage::CertSign,
        });
    }
    // End-entity: exactly one of DS/KA and nothing else.
    let others = ku.value.flags & !(1 << 0 | 1 << 4);
    match (ds, ka, others) {
        (true, false, 0) => Ok(Usage::DigitalSignature),
        (false, true, 0) => Ok(Usage::KeyAgreement),
        _ => Err(CertificateError::Profile(format!(
            "keyUsage must be exactly one of digitalSignature or keyAgreement, found {}",
            ku.value
        ))),
    }
}

/// Remote Party Role (subject `OU`, hex) and Entity ID (subject `x500UniqueIdentifier`).
fn subject_role_and_entity(
    cert: &X509Certificate<'_>,
) -> Result<(Option<u8>, Option<Eui64>), CertificateError> {
    let mut role = None;
    let mut entity = None;
    for attr in cert.subject().iter_attributes() {
        let oid = attr.attr_type();
        if oid_is(oid, OID_ORGANIZATIONAL_UNIT) {
            let text = attr.as_str().map_err(|e| {
                CertificateError::Profile(format!("subject OU is not a string: {e}"))
            })?;
            let value = u8::from_str_radix(text.trim(), 16).map_err(|_| {
                CertificateError::Profile(format!(
                    "subject OU {text:?} is not a Remote Party Role in hex"
                ))
            })?;
            role = Some(value);
        } else if oid_is(oid, OID_X500_UNIQUE_IDENTIFIER) {
            let bits = attr.attr_value().as_bitstring().map_err(|e| {
                CertificateError::Profile(format!("x500UniqueIdentifier is not a BIT STRING: {e}"))
            })?;
            let bytes: &[u8] = bits.as_ref();
            entity = Some(Eui64::from_slice(bytes).ok_or_else(|| {
                CertificateError::Profile(format!(
                    "x500UniqueIdentifier holds {} bytes, not an 8-byte Entity ID",
                    bytes.len()
                ))
            })?);
        }
    }
    Ok((role, entity))
}

/// Device ID from a critical subjectAltName otherName id-on-hardwareModuleName.
fn device_id_of(cert: &X509Certificate<'_>) -> Result<Option<Eui64>, CertificateError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CertificateError::Profile(format!("subjectAltName: {e}")))?;
    let Some(san) = san else { return Ok(None) };
    let mut found = None;
    for name in &san.value.general_names {
        if let GeneralName::OtherName(oid, value) = name {
            if oid_is(oid, OID_HARDWARE_MODULE_NAME) {
                if !san.critical {
                    return Err(CertificateError::Profile(
                        "subjectAltName with a Device ID is not critical".into(),
                    ));
                }
                found = Some(parse_hardware_module_name(value)?);
            }
        }
    }
    Ok(found)
}

/// `[0] EXPLICIT HardwareModuleName ::= SEQUENCE { hwType OID, hwSerialNum OCTET STRING }`.
fn parse_hardware_module_name(value: &[u8]) -> Result<Eui64, CertificateError> {
    let bad = |what: String| CertificateError::Profile(format!("hardwareModuleName: {what}"));
    let (_, explicit) = Any::from_der(value).map_err(|e| bad(e.to_string()))?;
    let (_, seq) = Sequence::from_der(explicit.data).map_err(|e| bad(e.to_string()))?;
    let (rest, _hw_type) = Oid::from_der(&seq.content).map_err(|e| bad(e.to_string()))?;
    let (_, serial) =
        x509_parser::asn1_rs::OctetString::from_der(rest).map_err(|e| bad(e.to_string()))?;
    Eui64::from_slice(serial.as_ref()).ok_or_else(|| {
        bad(format!(
            "hwSerialNum holds {} bytes, not an 8-byte Device ID",
            serial.as_ref().len()
        ))
    })
}

/// Decode the first certificate of a PEM text (tests, `gen` output checks, tools).
pub fn der_from_pem(pem_text: &str) -> Result<Vec<u8>, CertificateError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes())
        .map_err(|e| CertificateError::Unparseable(format!("PEM: {e}")))?;
    if pem.label != "CERTIFICATE" {
        return Err(CertificateError::Unparseable(format!(
            "PEM block is a {:?}, not a CERTIFICATE",
            pem.label
        )));
    }
    Ok(pem.contents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
    }

    fn load(name: &str) -> Vec<u8> {
        let text = std::fs::read_to_string(fixtures().join("gbcs-test-certs").join(name)).unwrap();
        der_from_pem(&text).unwrap()
    }

    #[test]
    fn every_device_fixture_is_a_device_with_the_id_in_its_name() {
        let dir = fixtures().join("gbcs-test-certs");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            if !name.starts_with("00db") {
                continue;
            }
            let info = parse(&der_from_pem(&std::fs::read_to_string(&path).unwrap()).unwrap())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(info.cert_type, CertificateType::Device, "{name}");
            let id = info
                .subject_id
                .unwrap()
                .to_string()
                .replace('-', "")
                .to_lowercase();
            assert_eq!(id, &name[..16], "{name}");
            let expected = if name.ends_with("-ds.pem") {
                Usage::DigitalSignature
            } else {
                Usage::KeyAgreement
            };
            assert_eq!(info.usage, expected, "{name}");
            assert_eq!(info.issuer, "CN=E357");
            assert_eq!(info.role, None);
            assert_eq!(info.subject, "");
            assert_eq!(info.serial.len(), 16, "{name}");
            // 9999-12-31T23:59:59Z
            assert_eq!(info.not_after, 253402300799, "{name}");
            seen += 1;
        }
        assert_eq!(seen, 400);
    }

    /// The subject of a fixture as `openssl x509` reads it (the independent oracle).
    fn openssl_subject(path: &Path) -> String {
        let out = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in"])
            .arg(path)
            .output()
            .expect("openssl is installed (scripts/setup)");
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    #[test]
    fn every_organisation_fixture_has_the_role_and_entity_id_openssl_reads() {
        // The file name is not trusted: 90b3d51f30000007-ka.pem holds Entity ID
        // 90B3D51F30030000 according to its subject.
        let dir = fixtures().join("gbcs-test-certs");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            if !name.starts_with("90b3") {
                continue;
            }
            let info = parse(&der_from_pem(&std::fs::read_to_string(&path).unwrap()).unwrap())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(info.cert_type, CertificateType::Organisation, "{name}");
            // e.g. subject=x500UniqueIdentifier=#03090090B3D51F30000001,OU=01
            let subject = openssl_subject(&path);
            let uid = subject
                .split("x500UniqueIdentifier=#030900")
                .nth(1)
                .unwrap();
            let id = info.subject_id.unwrap().to_string().replace('-', "");
            assert_eq!(id, &uid[..16], "{name}: {subject}");
            let ou = subject.split("OU=").nth(1).unwrap();
            assert_eq!(
                info.role,
                Some(u8::from_str_radix(&ou[..2], 16).unwrap()),
                "{name}"
            );
            assert_eq!(info.issuer, "OU=07, CN=Z1", "{name}");
            let expected = if name.contains("-ds") {
                Usage::DigitalSignature
            } else {
                Usage::KeyAgreement
            };
            assert_eq!(info.usage, expected, "{name}");
            seen += 1;
        }
        assert_eq!(seen, 15);
    }

    #[test]
    fn organisation_fixture_fields_match_openssl_reading() {
        // openssl x509 -noout -text on 90b3d51f30000001-ds.pem:
        // Serial 46:9a:fe:c2:e7:c0:ca:ae:c8:a4:00:76:9b:70:2b:c8,
        // Subject OU = 01, x500UniqueIdentifier = #03090090B3D51F30000001,
        // Not Before Oct 30 00:00:00 2015 GMT, Not After Oct 29 23:59:59 2025 GMT.
        let info = parse(&load("90b3d51f30000001-ds.pem")).unwrap();
        assert_eq!(info.serial_hex(), "469AFEC2E7C0CAAEC8A400769B702BC8");
        assert_eq!(info.role, Some(1));
        assert_eq!(
            info.subject_id.unwrap().to_string(),
            "90-B3-D5-1F-30-00-00-01"
        );
        assert_eq!(info.not_before, 1446163200);
        assert_eq!(info.not_after, 1761782399);
        assert_eq!(info.usage.code(), "DS");
    }

    #[test]
    fn dccboxed_samples_are_understood() {
        for n in [2, 3, 6, 7] {
            let name = format!("dccboxed-sample-{n}.pem");
            let info = parse(&load(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                matches!(
                    info.cert_type,
                    CertificateType::Device | CertificateType::Organisation
                ),
                "{name}: {info:?}"
            );
            assert!(info.subject_id.is_some(), "{name}");
        }
    }

    #[test]
    fn a_public_key_is_not_a_certificate() {
        let text =
            std::fs::read_to_string(fixtures().join("bad-input/public-key-not-a-certificate.pem"))
                .unwrap();
        let err = der_from_pem(&text).unwrap_err();
        assert!(err.to_string().contains("PUBLIC KEY"), "{err}");
        // And its DER, offered as a certificate, is rejected by the parser.
        let (_, pem) = x509_parser::pem::parse_x509_pem(text.as_bytes()).unwrap();
        let err = parse(&pem.contents).unwrap_err();
        assert_eq!(err.reason(), "certificate_unparseable");
    }

    #[test]
    fn garbage_and_trailing_bytes_are_rejected() {
        assert_eq!(
            parse(b"hello").unwrap_err().reason(),
            "certificate_unparseable"
        );
        let mut der = load("00db123456789001-ds.pem");
        der.push(0);
        let err = parse(&der).unwrap_err();
        assert!(err.to_string().contains("trailing"), "{err}");
    }

    /// Run openssl in `dir`, requiring success.
    fn openssl(dir: &Path, args: &[&str]) {
        let status = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl is installed (scripts/setup)");
        assert!(status.success(), "openssl {args:?}");
    }

    #[test]
    fn only_device_certificates_may_have_an_empty_subject_and_none_an_empty_issuer() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        std::fs::write(
            d.join("ext.cnf"),
            "keyUsage=critical,digitalSignature\nbasicConstraints=critical,CA:FALSE\n",
        )
        .unwrap();
        // A P-256 end entity with an empty subject and no Device ID, issued by a named CA.
        openssl(
            d,
            &[
                &["req", "-x509"][..],
                &ec,
                &[
                    "-subj",
                    "/CN=Test CA",
                    "-days",
                    "1",
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                ],
            ]
            .concat(),
        );
        openssl(
            d,
            &[
                &["req", "-new"][..],
                &ec,
                &["-subj", "/", "-keyout", "l.key", "-out", "l.csr"],
            ]
            .concat(),
        );
        openssl(
            d,
            &[
                "x509", "-req", "-in", "l.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-days", "1",
                "-outform", "DER", "-out", "l.der", "-extfile", "ext.cnf",
            ],
        );
        let err = parse(&std::fs::read(d.join("l.der")).unwrap()).unwrap_err();
        assert_eq!(err.reason(), "certificate_profile", "{err}");
        assert!(err.to_string().contains("empty subject"), "{err}");
        // Self-signed with an empty name: the issuer is empty too.
        openssl(
            d,
            &[
                &["req", "-x509"][..],
                &ec,
                &[
                    "-subj",
                    "/",
                    "-days",
                    "1",
                    "-keyout",
                    "s.key",
                    "-out",
                    "s.der",
                    "-outform",
                    "DER",
                    "-addext",
                    "keyUsage=critical,digitalSignature",
                    "-addext",
                    "basicConstraints=critical,CA:FALSE",
                ],
            ]
            .concat(),
        );
        let err = parse(&std::fs::read(d.join("s.der")).unwrap()).unwrap_err();
        assert!(err.to_string().contains("empty issuer"), "{err}");
    }

    #[test]
    fn serial_is_canonicalised() {
        assert_eq!(canonical_serial(&[0, 0x80, 1]), vec![0x80, 1]);
        assert_eq!(canonical_serial(&[0]), vec![0]);
        assert_eq!(canonical_serial(&[5]), vec![5]);
    }
}
