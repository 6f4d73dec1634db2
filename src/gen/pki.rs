//! Deterministic synthesis of GB SMKI certificates for the test-data generator.
//!
//! `smki-extract gen` needs millions of certificates that look like the real ones (the GBCS
//! profile of the public test PKIs, see `shared/fixtures/gbcs-test-certs/`) and that are
//! **reproducible**: the same seeds give byte-identical DER, so generated event streams, and the
//! extract files produced from them, can be compared byte for byte across runs and machines.
//!
//! Reproducibility rests on two things:
//! - every private key is drawn from a [`ChaCha20Rng`] seeded with a caller-supplied `u64`
//!   (`ChaCha20Rng::seed_from_u64`, a portable derivation), and
//! - signatures are ECDSA P-256 with deterministic nonces (RFC 6979), as computed by
//!   [`p256::ecdsa::SigningKey`].
//!
//! Outputs are byte-identical for the same inputs *and the same versions* of `p256` and
//! `rand_chacha` (a new major version of `p256` may sample scalars differently).
//!
//! # Encoding
//! The certificates are encoded here rather than with `rcgen`, because `rcgen` cannot express the
//! GBCS profile: its `DnValue` has no BIT STRING variant (needed for `x500UniqueIdentifier`
//! in Organisation Certificate subjects) and it fixes the order of the extensions it writes
//! (authorityKeyIdentifier first), whereas the real certificates use the order
//! keyUsage, subjectKeyIdentifier, subjectAltName, certificatePolicies, authorityKeyIdentifier.
//! Every primitive (OIDs, integers, strings, times, BIT/OCTET STRINGs, tag/length headers) is
//! encoded by the `der` crate (`RustCrypto`, reached through `p256::pkcs8::der`); this module only
//! concatenates the already-encoded parts of constructed values.
//!
//! # Profile
//! - All certificates: X.509 v3, ECDSA P-256 (`prime256v1`), `ecdsa-with-SHA256`, a 16-byte
//!   serial number (see [`normalize_serial`]), keyUsage critical, 8-byte key identifiers.
//! - Device Certificate ([`issue_device`]): empty subject; critical subjectAltName with one
//!   `otherName` of type id-on-hardwareModuleName (RFC 4108) carrying the 8-byte Device ID;
//!   notAfter `99991231235959Z`.
//! - Organisation Certificate ([`issue_organisation`]): subject `[CN,] OU = role, x500UniqueIdentifier
//!   = Entity ID`.
//! - CA certificates ([`Hierarchy`]): basicConstraints critical `CA:TRUE`, keyUsage critical
//!   keyCertSign + cRLSign.

use std::fmt;

use anyhow::{ensure, Context, Result};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::der::asn1::{
    BitStringRef, GeneralizedTime, OctetStringRef, PrintableStringRef, UintRef, UtcTime,
    Utf8StringRef,
};
use p256::pkcs8::der::{self, DateTime, Encode, Header, Tag, TagNumber};
use p256::pkcs8::{EncodePublicKey, ObjectIdentifier};
use p256::{PublicKey, SecretKey};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use sha2::{Digest, Sha256};
use time::{Date, Month, OffsetDateTime, UtcOffset};

/// Common name of the synthetic Root OCA (subject `OU=00, CN=Root OCA`).
pub const ROOT_OCA_CN: &str = "Root OCA";
/// Common name of the synthetic Issuing OCA (subject `OU=07, CN=Z9`), in the style of the test
/// PKI's `OU=07, CN=Z1`; a different name so synthetic data is never mistaken for the fixtures.
pub const ISSUING_OCA_CN: &str = "Z9";
/// Common name of the synthetic Root DCA (subject `CN=Root DCA`).
pub const ROOT_DCA_CN: &str = "Root DCA";
/// Common name of the synthetic Issuing DCA (subject `CN=E999`), in the style of the test PKI's
/// `CN=E357`.
pub const ISSUING_DCA_CN: &str = "E999";

/// Object identifiers used by the profile.
mod oid {
    use super::ObjectIdentifier;

    pub const ECDSA_WITH_SHA256: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");

    pub const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
    pub const ORGANIZATIONAL_UNIT: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.11");
    pub const X500_UNIQUE_IDENTIFIER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.45");

    pub const SUBJECT_KEY_IDENTIFIER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.14");
    pub const KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
    pub const SUBJECT_ALT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");
    pub const BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
    pub const CERTIFICATE_POLICIES: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.32");
    pub const AUTHORITY_KEY_IDENTIFIER: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("2.5.29.35");

    /// id-on-hardwareModuleName (RFC 4108): the otherName type of a Device Certificate's SAN.
    pub const ON_HARDWARE_MODULE_NAME: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.8.4");
    /// `hwType` of the `HardwareModuleName`, as in the test PKI's device certificates.
    pub const GBCS_HW_TYPE: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.2.826.0.1.8641679.1.2.2.1");
    /// Certificate policy of the test PKI's Device Certificates (issuer `CN=E357`).
    pub const DEVICE_POLICY: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.2.826.0.1.1800000.1.2.1.4");
    /// Certificate policy of the test PKI's Organisation Certificates (issuer `OU=07, CN=Z1`).
    pub const ORGANISATION_POLICY: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.2.826.0.1.8641679.1.2.1.4");
}

/// Usage of an end-entity key: GBCS gives every device and organisation one Digital Signing and
/// one Key Agreement certificate, and the keyUsage extension holds exactly one of the two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Usage {
    /// keyUsage `digitalSignature` (usage code `DS`).
    DigitalSignature,
    /// keyUsage `keyAgreement` (usage code `KA`).
    KeyAgreement,
}

/// The keyUsage bits a certificate asserts, as a DER named-bit BIT STRING
/// (`unused bits`, `bytes`, trailing zero bits removed).
#[derive(Clone, Copy)]
enum KeyUsageBits {
    DigitalSignature,
    KeyAgreement,
    CertificateAuthority,
}

impl KeyUsageBits {
    fn bit_string(self) -> der::Result<BitStringRef<'static>> {
        match self {
            // bit 0
            Self::DigitalSignature => BitStringRef::new(7, &[0x80]),
            // bit 4
            Self::KeyAgreement => BitStringRef::new(3, &[0x08]),
            // bits 5 (keyCertSign) and 6 (cRLSign)
            Self::CertificateAuthority => BitStringRef::new(1, &[0x06]),
        }
    }
}

impl From<Usage> for KeyUsageBits {
    fn from(usage: Usage) -> Self {
        match usage {
            Usage::DigitalSignature => Self::DigitalSignature,
            Usage::KeyAgreement => Self::KeyAgreement,
        }
    }
}

/// A CA of the synthetic hierarchy, able to issue certificates.
///
/// It keeps everything that is constant across the certificates it signs (signing key, the DER of
/// its subject name, which becomes their issuer name, and its key identifier), so issuing a
/// certificate only encodes what is specific to that certificate.
pub struct Authority {
    signing_key: SigningKey,
    /// DER `Name` of this CA: the subject of its own certificate and the issuer of those it signs.
    name: Vec<u8>,
    /// subjectKeyIdentifier of this CA, authorityKeyIdentifier of the certificates it signs.
    key_id: [u8; 8],
    certificate: Vec<u8>,
}

impl Authority {
    /// The DER encoding of this CA's own certificate, which the generator publishes as an
    /// OCA/DCA certificate and which verifies the certificates this CA issues.
    #[must_use]
    pub fn certificate_der(&self) -> &[u8] {
        &self.certificate
    }

    /// Creates a CA certificate with a fresh key drawn from `rng`, self-signed when `issuer` is
    /// `None`.
    fn new(
        rng: &mut ChaCha20Rng,
        subject: &[NameAttribute<'_>],
        path_len: Option<u8>,
        policy: ObjectIdentifier,
        issuer: Option<&Authority>,
    ) -> Result<Self> {
        let signing_key = SigningKey::random(rng);
        let key = SubjectKey::new(&PublicKey::from(signing_key.verifying_key()))?;
        let mut serial = [0u8; 16];
        rng.fill_bytes(&mut serial);
        let name = encode(|out| write_name(out, subject))?;

        let spec = CertSpec {
            serial,
            not_before: ca_not_before()?,
            not_after: max_not_after()?,
            subject: &name,
            spki: &key.spki,
        };
        let ca_extensions = |out: &mut Vec<u8>, authority_key_id: Option<[u8; 8]>| {
            write_key_usage(out, KeyUsageBits::CertificateAuthority)?;
            write_basic_constraints(out, path_len)?;
            write_subject_key_id(out, key.key_id)?;
            write_certificate_policies(out, policy)?;
            authority_key_id.map_or(Ok(()), |id| write_authority_key_id(out, id))
        };
        let certificate = match issuer {
            Some(issuer) => issuer.sign(&spec, |out| ca_extensions(out, Some(issuer.key_id)))?,
            // A self-signed root: issuer = subject, signed with its own key, no AKI.
            None => sign_certificate(&signing_key, &name, &spec, |out| ca_extensions(out, None))?,
        };
        Ok(Self {
            signing_key,
            name,
            key_id: key.key_id,
            certificate,
        })
    }

    /// Signs a certificate issued by this CA.
    fn sign(
        &self,
        spec: &CertSpec<'_>,
        write_extensions: impl FnOnce(&mut Vec<u8>) -> der::Result<()>,
    ) -> Result<Vec<u8>> {
        sign_certificate(&self.signing_key, &self.name, spec, write_extensions)
    }
}

impl fmt::Debug for Authority {
    /// Shows the CA's identity, never its private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority")
            .field("key_id", &HexBytes(&self.key_id))
            .field("name_der", &HexBytes(&self.name))
            .field("certificate_len", &self.certificate.len())
            .finish_non_exhaustive()
    }
}

/// Formats bytes as uppercase hex in `Debug` output.
struct HexBytes<'a>(&'a [u8]);

impl fmt::Debug for HexBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02X}"))
    }
}

/// The synthetic SMKI hierarchy: Root OCA (self-signed), Issuing OCA (signed by Root OCA),
/// Root DCA (self-signed), Issuing DCA (signed by Root DCA).
///
/// Organisation Certificates are issued by [`Hierarchy::issuing_oca`], Device Certificates by
/// [`Hierarchy::issuing_dca`]. All CA certificates are valid from 2020-01-01T00:00:00Z to
/// 9999-12-31T23:59:59Z.
#[derive(Debug)]
pub struct Hierarchy {
    /// Self-signed root of the organisation branch, subject `OU=00, CN=Root OCA`.
    pub root_oca: Authority,
    /// Issuer of Organisation Certificates, subject `OU=07, CN=Z9`, signed by the Root OCA.
    pub issuing_oca: Authority,
    /// Self-signed root of the device branch, subject `CN=Root DCA`.
    pub root_dca: Authority,
    /// Issuer of Device Certificates, subject `CN=E999`, signed by the Root DCA.
    pub issuing_dca: Authority,
}

impl Hierarchy {
    /// Generates the four CAs; deterministic for a seed (keys and serial numbers are drawn, in
    /// a fixed order, from a `ChaCha20Rng` seeded with `seed`).
    ///
    /// Roots have no path length constraint and issuing CAs `pathLenConstraint = 0`; each CA
    /// asserts the certificate policy of the certificates issued in its branch.
    ///
    /// # Errors
    /// Only if encoding fails, which the fixed inputs rule out.
    pub fn generate(seed: u64) -> Result<Hierarchy> {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let root_oca = Authority::new(
            &mut rng,
            &[
                NameAttribute::printable(oid::ORGANIZATIONAL_UNIT, "00"),
                NameAttribute::printable(oid::COMMON_NAME, ROOT_OCA_CN),
            ],
            None,
            oid::ORGANISATION_POLICY,
            None,
        )
        .context("generating the Root OCA")?;
        let issuing_oca = Authority::new(
            &mut rng,
            &[
                NameAttribute::printable(oid::ORGANIZATIONAL_UNIT, "07"),
                NameAttribute::printable(oid::COMMON_NAME, ISSUING_OCA_CN),
            ],
            Some(0),
            oid::ORGANISATION_POLICY,
            Some(&root_oca),
        )
        .context("generating the Issuing OCA")?;
        let root_dca = Authority::new(
            &mut rng,
            &[NameAttribute::printable(oid::COMMON_NAME, ROOT_DCA_CN)],
            None,
            oid::DEVICE_POLICY,
            None,
        )
        .context("generating the Root DCA")?;
        let issuing_dca = Authority::new(
            &mut rng,
            &[NameAttribute::printable(oid::COMMON_NAME, ISSUING_DCA_CN)],
            Some(0),
            oid::DEVICE_POLICY,
            Some(&root_dca),
        )
        .context("generating the Issuing DCA")?;
        Ok(Hierarchy {
            root_oca,
            issuing_oca,
            root_dca,
            issuing_dca,
        })
    }
}

/// Makes 16 caller-supplied bytes a valid 16-byte serial number, exactly as the issue functions
/// do, so the caller can know the serial that ends up in the certificate (a certificate is
/// identified by issuer + serial).
///
/// The first byte is forced into `0x10..=0x7F`, like every serial of the real test certificates:
/// its top bit is cleared (so the DER INTEGER is positive without a leading `0x00`), and if the
/// result is below `0x10`, bit 4 is set (so the INTEGER is exactly 16 bytes and its hex form
/// never starts with `0`). The other 15 bytes are kept as given.
#[must_use]
pub fn normalize_serial(mut serial: [u8; 16]) -> [u8; 16] {
    serial[0] &= 0x7F;
    if serial[0] < 0x10 {
        serial[0] |= 0x10;
    }
    serial
}

/// Issues a GBCS Device Certificate, the certificate of a meter, hub or other device.
///
/// - `device_id`: the Device ID (EUI-64), written as `hwSerialNum` of the subjectAltName.
/// - `serial`: normalised with [`normalize_serial`].
/// - `not_before`: fractional seconds are dropped; notAfter is always `99991231235959Z`.
/// - `key_seed`: the device key pair is `SecretKey::random(ChaCha20Rng::seed_from_u64(key_seed))`.
///
/// Realistic data passes the [`Hierarchy::issuing_dca`]; any [`Authority`] is accepted.
///
/// # Errors
/// If `not_before` is not before notAfter or is outside 1970..=9999.
pub fn issue_device(
    dca: &Authority,
    device_id: [u8; 8],
    usage: Usage,
    serial: [u8; 16],
    not_before: OffsetDateTime,
    key_seed: u64,
) -> Result<Vec<u8>> {
    let not_after = max_not_after()?;
    ensure!(
        not_before < not_after,
        "device certificate notBefore {not_before} is not before notAfter {not_after}"
    );
    let key = SubjectKey::derive(key_seed)?;
    let subject = encode(|out| write_name(out, &[]))?;
    let spec = CertSpec {
        serial,
        not_before,
        not_after,
        subject: &subject,
        spki: &key.spki,
    };
    dca.sign(&spec, |out| {
        write_key_usage(out, usage.into())?;
        write_subject_key_id(out, key.key_id)?;
        write_hardware_module_name(out, device_id)?;
        write_certificate_policies(out, oid::DEVICE_POLICY)?;
        write_authority_key_id(out, dca.key_id)
    })
}

/// Issues a GBCS Organisation Certificate, the certificate of a Party (supplier, network
/// operator, ...) or of a DCC service.
///
/// - `entity_id`: the Entity ID (EUI-64), the subject's `x500UniqueIdentifier` (a BIT STRING).
/// - `role`: the Remote Party Role, the subject's `OU` as two uppercase hex digits (`2` → `"02"`,
///   `0x87` → `"87"`).
/// - `common_name`: optional subject `CN` (1 to 64 characters). As in the real certificates it
///   is the first attribute of the subject: `CN, OU, x500UniqueIdentifier`.
/// - `serial`: normalised with [`normalize_serial`].
/// - `not_before`, `not_after`: fractional seconds are dropped; `UTCTime` before 2050,
///   `GeneralizedTime` from 2050 (RFC 5280).
/// - `key_seed`: the key pair is `SecretKey::random(ChaCha20Rng::seed_from_u64(key_seed))`.
///
/// Realistic data passes the [`Hierarchy::issuing_oca`]; any [`Authority`] is accepted.
///
/// # Errors
/// If `not_before` is not before `not_after`, a time is outside 1970..=9999, or the CN is
/// empty or longer than 64 characters.
#[allow(clippy::too_many_arguments)] // the brief fixes this signature
pub fn issue_organisation(
    oca: &Authority,
    entity_id: [u8; 8],
    role: u8,
    common_name: Option<&str>,
    usage: Usage,
    serial: [u8; 16],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    key_seed: u64,
) -> Result<Vec<u8>> {
    ensure!(
        not_before < not_after,
        "organisation certificate notBefore {not_before} is not before notAfter {not_after}"
    );
    if let Some(cn) = common_name {
        let chars = cn.chars().count();
        ensure!(
            (1..=64).contains(&chars),
            "organisation certificate CN must have 1 to 64 characters, got {chars}"
        );
    }
    let key = SubjectKey::derive(key_seed)?;
    let role_hex = format!("{role:02X}");
    let mut attributes = Vec::with_capacity(3);
    if let Some(cn) = common_name {
        attributes.push(NameAttribute::utf8(oid::COMMON_NAME, cn));
    }
    attributes.push(NameAttribute::utf8(oid::ORGANIZATIONAL_UNIT, &role_hex));
    attributes.push(NameAttribute {
        oid: oid::X500_UNIQUE_IDENTIFIER,
        value: AttributeValue::BitString(&entity_id),
    });
    let subject = encode(|out| write_name(out, &attributes))?;
    let spec = CertSpec {
        serial,
        not_before,
        not_after,
        subject: &subject,
        spki: &key.spki,
    };
    oca.sign(&spec, |out| {
        write_key_usage(out, usage.into())?;
        write_subject_key_id(out, key.key_id)?;
        write_certificate_policies(out, oid::ORGANISATION_POLICY)?;
        write_authority_key_id(out, oca.key_id)
    })
}

/// The public half of a certificate subject's key, in the forms a certificate needs.
struct SubjectKey {
    /// DER `SubjectPublicKeyInfo` (`id-ecPublicKey`, `namedCurve prime256v1`).
    spki: Vec<u8>,
    /// subjectKeyIdentifier, see [`key_identifier`].
    key_id: [u8; 8],
}

impl SubjectKey {
    /// Derives the end-entity key pair for `key_seed` and returns its public half.
    fn derive(key_seed: u64) -> Result<Self> {
        let mut rng = ChaCha20Rng::seed_from_u64(key_seed);
        Self::new(&SecretKey::random(&mut rng).public_key())
    }

    fn new(public_key: &PublicKey) -> Result<Self> {
        let spki = public_key
            .to_public_key_der()
            .context("encoding a SubjectPublicKeyInfo")?
            .into_vec();
        let key_id = key_identifier(public_key.to_encoded_point(false).as_bytes());
        Ok(Self { spki, key_id })
    }
}

/// The 8-byte key identifier of a public key, shaped like those of the real certificates, which
/// use RFC 5280 §4.2.1.2 method (2): the 4-bit type `0100` followed by the least significant
/// 60 bits of a hash of the subjectPublicKey bits. The real ones hash with SHA-1; this uses
/// SHA-256 (the only hash at hand), so identifiers have the same form but other values.
fn key_identifier(subject_public_key: &[u8]) -> [u8; 8] {
    let digest = Sha256::digest(subject_public_key);
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[digest.len() - 8..]);
    id[0] = 0x40 | (id[0] & 0x0F);
    id
}

/// The fields of a `TBSCertificate` that vary between certificates (issuer name and extensions are
/// supplied by the signer).
struct CertSpec<'a> {
    /// Raw serial bytes; normalised with [`normalize_serial`] when encoded.
    serial: [u8; 16],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    /// DER `Name`.
    subject: &'a [u8],
    /// DER `SubjectPublicKeyInfo`.
    spki: &'a [u8],
}

/// Encodes and signs a certificate: `Certificate ::= SEQUENCE { tbsCertificate,
/// signatureAlgorithm, signatureValue }` with an ECDSA P-256 / SHA-256 RFC 6979 signature.
fn sign_certificate(
    key: &SigningKey,
    issuer: &[u8],
    spec: &CertSpec<'_>,
    write_extensions: impl FnOnce(&mut Vec<u8>) -> der::Result<()>,
) -> Result<Vec<u8>> {
    let serial = normalize_serial(spec.serial);
    let not_before = der_time(spec.not_before).context("notBefore")?;
    let not_after = der_time(spec.not_after).context("notAfter")?;
    let der = encode(|out| {
        write_sequence(out, |out| {
            let tbs_start = out.len();
            write_sequence(out, |out| {
                // version [0] EXPLICIT: v3
                write_constructed(out, context_tag(0), |out| put(out, &2u8))?;
                put(out, &UintRef::new(&serial)?)?;
                write_signature_algorithm(out)?;
                out.extend_from_slice(issuer);
                write_sequence(out, |out| {
                    write_time(out, not_before)?;
                    write_time(out, not_after)
                })?;
                out.extend_from_slice(spec.subject);
                out.extend_from_slice(spec.spki);
                // extensions [3] EXPLICIT
                write_constructed(out, context_tag(3), |out| {
                    write_sequence(out, write_extensions)
                })
            })?;
            let signature: Signature = key.sign(&out[tbs_start..]);
            write_signature_algorithm(out)?;
            put(
                out,
                &BitStringRef::from_bytes(signature.to_der().as_bytes())?,
            )
        })
    })?;
    Ok(der)
}

// ---------------------------------------------------------------------------------------------
// DER composition. Primitive values are encoded by `der`; constructed values are written by
// appending their contents to the output and then inserting the tag/length header in front.
// ---------------------------------------------------------------------------------------------

/// Runs `write` on an empty buffer and returns the encoding.
fn encode(write: impl FnOnce(&mut Vec<u8>) -> der::Result<()>) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(512);
    write(&mut out).context("DER encoding")?;
    Ok(out)
}

/// Appends the DER encoding of a primitive value.
fn put(out: &mut Vec<u8>, value: &impl Encode) -> der::Result<()> {
    value.encode_to_vec(out).map(drop)
}

/// Appends a value with tag `tag` whose contents are what `write_contents` appends.
fn write_constructed(
    out: &mut Vec<u8>,
    tag: Tag,
    write_contents: impl FnOnce(&mut Vec<u8>) -> der::Result<()>,
) -> der::Result<()> {
    let start = out.len();
    write_contents(out)?;
    let mut header = [0u8; 8];
    let header = Header::new(tag, out.len() - start)?.encode_to_slice(&mut header)?;
    out.splice(start..start, header.iter().copied());
    Ok(())
}

fn write_sequence(
    out: &mut Vec<u8>,
    write_contents: impl FnOnce(&mut Vec<u8>) -> der::Result<()>,
) -> der::Result<()> {
    write_constructed(out, Tag::Sequence, write_contents)
}

/// A constructed context-specific tag `[n]`.
fn context_tag(n: u8) -> Tag {
    Tag::ContextSpecific {
        constructed: true,
        number: TagNumber::new(n),
    }
}

/// `AlgorithmIdentifier { ecdsa-with-SHA256 }` (parameters absent, RFC 5758).
fn write_signature_algorithm(out: &mut Vec<u8>) -> der::Result<()> {
    write_sequence(out, |out| put(out, &oid::ECDSA_WITH_SHA256))
}

/// The value of one attribute of a distinguished name.
#[derive(Clone, Copy)]
enum AttributeValue<'a> {
    Printable(&'a str),
    Utf8(&'a str),
    BitString(&'a [u8]),
}

/// One attribute of a distinguished name (each in its own RDN, as in the real certificates).
struct NameAttribute<'a> {
    oid: ObjectIdentifier,
    value: AttributeValue<'a>,
}

impl<'a> NameAttribute<'a> {
    /// A `PrintableString` attribute, as in the CA names of the real certificates.
    fn printable(oid: ObjectIdentifier, value: &'a str) -> Self {
        Self {
            oid,
            value: AttributeValue::Printable(value),
        }
    }

    /// A `UTF8String` attribute, as in the Organisation Certificate subjects.
    fn utf8(oid: ObjectIdentifier, value: &'a str) -> Self {
        Self {
            oid,
            value: AttributeValue::Utf8(value),
        }
    }
}

/// `Name ::= SEQUENCE OF SET OF SEQUENCE { type, value }`, one attribute per RDN; an empty slice
/// gives the empty Name of Device Certificates.
fn write_name(out: &mut Vec<u8>, attributes: &[NameAttribute<'_>]) -> der::Result<()> {
    write_sequence(out, |out| {
        attributes.iter().try_for_each(|attribute| {
            write_constructed(out, Tag::Set, |out| {
                write_sequence(out, |out| {
                    put(out, &attribute.oid)?;
                    match attribute.value {
                        AttributeValue::Printable(s) => put(out, &PrintableStringRef::new(s)?),
                        AttributeValue::Utf8(s) => put(out, &Utf8StringRef::new(s)?),
                        AttributeValue::BitString(bytes) => {
                            put(out, &BitStringRef::from_bytes(bytes)?)
                        }
                    }
                })
            })
        })
    })
}

/// Converts a validity bound to a `der` date-time (UTC, whole seconds, years 1970..=9999).
fn der_time(t: OffsetDateTime) -> Result<DateTime> {
    let t = t.to_offset(UtcOffset::UTC);
    let year = u16::try_from(t.year()).with_context(|| format!("year of {t} out of range"))?;
    DateTime::new(
        year,
        t.month().into(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
    )
    .with_context(|| format!("{t} cannot be encoded in a certificate"))
}

/// `Time`: `UTCTime` through 2049, `GeneralizedTime` from 2050 (RFC 5280 §4.1.2.5).
fn write_time(out: &mut Vec<u8>, t: DateTime) -> der::Result<()> {
    if t.year() <= UtcTime::MAX_YEAR {
        put(out, &UtcTime::from_date_time(t)?)
    } else {
        put(out, &GeneralizedTime::from_date_time(t))
    }
}

/// 2020-01-01T00:00:00Z, notBefore of the CA certificates.
fn ca_not_before() -> Result<OffsetDateTime> {
    Ok(Date::from_calendar_date(2020, Month::January, 1)?
        .midnight()
        .assume_utc())
}

/// 9999-12-31T23:59:59Z (`99991231235959Z`): "no well-defined expiration date" (RFC 5280),
/// notAfter of Device and CA certificates.
fn max_not_after() -> Result<OffsetDateTime> {
    Ok(Date::from_calendar_date(9999, Month::December, 31)?
        .with_hms(23, 59, 59)?
        .assume_utc())
}

/// `Extension ::= SEQUENCE { extnID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING }`;
/// `write_value` appends the DER carried in extnValue.
fn write_extension(
    out: &mut Vec<u8>,
    extn_id: ObjectIdentifier,
    critical: bool,
    write_value: impl FnOnce(&mut Vec<u8>) -> der::Result<()>,
) -> der::Result<()> {
    write_sequence(out, |out| {
        put(out, &extn_id)?;
        if critical {
            put(out, &true)?;
        }
        write_constructed(out, Tag::OctetString, write_value)
    })
}

/// keyUsage, critical.
fn write_key_usage(out: &mut Vec<u8>, bits: KeyUsageBits) -> der::Result<()> {
    write_extension(out, oid::KEY_USAGE, true, |out| {
        put(out, &bits.bit_string()?)
    })
}

/// subjectKeyIdentifier, not critical.
fn write_subject_key_id(out: &mut Vec<u8>, key_id: [u8; 8]) -> der::Result<()> {
    write_extension(out, oid::SUBJECT_KEY_IDENTIFIER, false, |out| {
        put(out, &OctetStringRef::new(&key_id)?)
    })
}

/// authorityKeyIdentifier `SEQUENCE { keyIdentifier [0] IMPLICIT OCTET STRING }`, not critical.
fn write_authority_key_id(out: &mut Vec<u8>, key_id: [u8; 8]) -> der::Result<()> {
    write_extension(out, oid::AUTHORITY_KEY_IDENTIFIER, false, |out| {
        write_sequence(out, |out| {
            let tag = Tag::ContextSpecific {
                constructed: false,
                number: TagNumber::N0,
            };
            put(out, &Header::new(tag, key_id.len())?)?;
            out.extend_from_slice(&key_id);
            Ok(())
        })
    })
}

/// certificatePolicies with a single policy and no qualifiers, critical.
fn write_certificate_policies(out: &mut Vec<u8>, policy: ObjectIdentifier) -> der::Result<()> {
    write_extension(out, oid::CERTIFICATE_POLICIES, true, |out| {
        write_sequence(out, |out| write_sequence(out, |out| put(out, &policy)))
    })
}

/// basicConstraints `CA:TRUE` with an optional pathLenConstraint, critical.
fn write_basic_constraints(out: &mut Vec<u8>, path_len: Option<u8>) -> der::Result<()> {
    write_extension(out, oid::BASIC_CONSTRAINTS, true, |out| {
        write_sequence(out, |out| {
            put(out, &true)?;
            path_len.map_or(Ok(()), |n| put(out, &n))
        })
    })
}

/// subjectAltName, critical (the subject is empty), holding one
/// `otherName [0] { id-on-hardwareModuleName, [0] EXPLICIT HardwareModuleName }` with
/// `HardwareModuleName ::= SEQUENCE { hwType OBJECT IDENTIFIER, hwSerialNum OCTET STRING }`.
fn write_hardware_module_name(out: &mut Vec<u8>, device_id: [u8; 8]) -> der::Result<()> {
    write_extension(out, oid::SUBJECT_ALT_NAME, true, |out| {
        write_sequence(out, |out| {
            // GeneralName otherName: [0] IMPLICIT OtherName (a SEQUENCE, hence constructed)
            write_constructed(out, context_tag(0), |out| {
                put(out, &oid::ON_HARDWARE_MODULE_NAME)?;
                write_constructed(out, context_tag(0), |out| {
                    write_sequence(out, |out| {
                        put(out, &oid::GBCS_HW_TYPE)?;
                        put(out, &OctetStringRef::new(&device_id)?)
                    })
                })
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier;
    use p256::ecdsa::VerifyingKey;
    use x509_parser::certificate::X509Certificate;
    use x509_parser::der_parser::asn1_rs::Tag as ParsedTag;
    use x509_parser::extensions::{GeneralName, ParsedExtension, X509Extension};
    use x509_parser::prelude::FromDer;
    use x509_parser::x509::X509Name;

    /// `shared/fixtures/gbcs-test-certs/00db123456789001-ds.pem`: a Device Certificate of the
    /// public GBCS test PKI (SmartDCCInnovation/gbcs-parser, test/rtds/keystore).
    const FIXTURE_DEVICE: &str = "-----BEGIN CERTIFICATE-----
MIIBoDCCAUagAwIBAgIQccVjks6Zhd0beL4usj1hCzAKBggqhkjOPQQDAjAPMQ0w
CwYDVQQDEwRFMzU3MCAXDTE2MDQwNjAwMDAwMFoYDzk5OTkxMjMxMjM1OTU5WjAA
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAExfrGZr79Tk517Klu9E2Y4V/g+q/4
+Lf5UxzOhtbGDKWNb8DdyjDI2vDceQDu6AiL+xCcuaPsuOq2dkHKT//o2KOBkDCB
jTAOBgNVHQ8BAf8EBAMCB4AwEQYDVR0OBAoECEMcmM4/cHsDMDUGA1UdEQEB/wQr
MCmgJwYIKwYBBQUHCASgGzAZBg0qhjoAAYSPuQ8BAgIBBAgA2xI0VniQATAcBgNV
HSABAf8EEjAQMA4GDCqGOgAB7e5AAQIBBDATBgNVHSMEDDAKgAhH1ArzQSkEoDAK
BggqhkjOPQQDAgNIADBFAiEAwdfjqFqhXJR3q90nfveJCdExWWaI69gJZhbexq+s
mZ4CIB90oIYxK2OgqTwxXz0RpoKAzAOyJJkIt4jnkarfvfpD
-----END CERTIFICATE-----";

    /// `shared/fixtures/gbcs-test-certs/90b3d51f30000001-ds.pem`: an Organisation Certificate
    /// without CN of the public GBCS test PKI (SmartDCCInnovation/gbcs-parser).
    const FIXTURE_ORGANISATION: &str = "-----BEGIN CERTIFICATE-----
MIIBkjCCATigAwIBAgIQRpr+wufAyq7IpAB2m3AryDAKBggqhkjOPQQDAjAaMQsw
CQYDVQQLEwIwNzELMAkGA1UEAxMCWjEwHhcNMTUxMDMwMDAwMDAwWhcNMjUxMDI5
MjM1OTU5WjAhMQswCQYDVQQLDAIwMTESMBAGA1UELQMJAJCz1R8wAAABMFkwEwYH
KoZIzj0CAQYIKoZIzj0DAQcDQgAEX9CL9uFDiw2je8JkE1vpZfLVIrsqJmM1OgI5
7QIKhacanY2F2HzDikhNorxT729KFo0M6IYcQKVDxM0VsnZm+aNZMFcwDgYDVR0P
AQH/BAQDAgeAMBEGA1UdDgQKBAhB+supVvg9hzAdBgNVHSABAf8EEzARMA8GDSqG
OgABhI+5DwECAQQwEwYDVR0jBAwwCoAIT1aI1+yTO+IwCgYIKoZIzj0EAwIDSAAw
RQIgFUzuFGjfksF5+XNiopwuwpQJobd1GmBl9SKG+6d7y9oCIQCLDPSUJlfX4clm
ZOLPpTSroslJqBT+gh8fKXK0Rhbbtw==
-----END CERTIFICATE-----";

    /// `shared/fixtures/gbcs-test-certs/dccboxed-sample-6.pem`: an Organisation Certificate with
    /// CN from the DCC Boxed test environment (SmartDCCInnovation/dccboxed-keystore).
    const FIXTURE_ORGANISATION_CN: &str = "-----BEGIN CERTIFICATE-----
MIIBrDCCAVKgAwIBAgIQSge8AdklO1H68B9+x9pbLzAKBggqhkjOPQQDAjAaMQsw
CQYDVQQLEwIwNzELMAkGA1UEAxMCWjEwHhcNMTYwMTEwMDAwMDAwWhcNMjYwMTA5
MjM1OTU5WjA7MRgwFgYDVQQDDA9HSVRURVNUU1VQUExJRVIxCzAJBgNVBAsMAjAy
MRIwEAYDVQQtAwkAkLPVHzABAAAwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAT6
b7/6HJpOQvSjzWWfO+uQoxtWWu17p5F3SLpoT+TGACE8vp0lgh+ngNlHuXXJMPN3
q6EhApAEQmR6maNlIIiwo1kwVzAOBgNVHQ8BAf8EBAMCB4AwEQYDVR0OBAoECEME
a0+3xPEbMB0GA1UdIAEB/wQTMBEwDwYNKoY6AAGEj7kPAQIBBDATBgNVHSMEDDAK
gAhPVojX7JM74jAKBggqhkjOPQQDAgNIADBFAiEAvXvJRsABv/3nyEO/DVW5np3W
TPuHhsJQfc4fIpxRBmUCIH+0LzbjIIn8tTVK5fnRmV/wHfG0cjU7E6excCnrDULy
-----END CERTIFICATE-----";

    const DEVICE_ID: [u8; 8] = [0x00, 0xDB, 0x12, 0x34, 0x56, 0x78, 0x90, 0x01];
    const ENTITY_ID: [u8; 8] = [0x90, 0xB3, 0xD5, 0x1F, 0x30, 0x00, 0x00, 0x01];
    const SERIAL: [u8; 16] = [
        0x71, 0xC5, 0x63, 0x92, 0xCE, 0x99, 0x85, 0xDD, 0x1B, 0x78, 0xBE, 0x2E, 0xB2, 0x3D, 0x61,
        0x0B,
    ];

    fn pem_to_der(pem: &str) -> Vec<u8> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("fixture PEM");
        pem.contents
    }

    fn parse(der: &[u8]) -> X509Certificate<'_> {
        let (rest, cert) = X509Certificate::from_der(der).expect("certificate parses");
        assert!(rest.is_empty(), "trailing bytes after the certificate");
        cert
    }

    fn utc(year: i32, month: Month, day: u8, h: u8, m: u8, s: u8) -> OffsetDateTime {
        Date::from_calendar_date(year, month, day)
            .unwrap()
            .with_hms(h, m, s)
            .unwrap()
            .assume_utc()
    }

    fn device(h: &Hierarchy, usage: Usage, key_seed: u64) -> Vec<u8> {
        let not_before = utc(2016, Month::April, 6, 0, 0, 0);
        issue_device(
            &h.issuing_dca,
            DEVICE_ID,
            usage,
            SERIAL,
            not_before,
            key_seed,
        )
        .unwrap()
    }

    fn organisation(h: &Hierarchy, cn: Option<&str>, usage: Usage, key_seed: u64) -> Vec<u8> {
        let not_before = utc(2015, Month::October, 30, 0, 0, 0);
        let not_after = utc(2025, Month::October, 29, 23, 59, 59);
        issue_organisation(
            &h.issuing_oca,
            ENTITY_ID,
            0x01,
            cn,
            usage,
            SERIAL,
            not_before,
            not_after,
            key_seed,
        )
        .unwrap()
    }

    /// Everything except keys, key ids, names and signatures: what "same structure" means.
    #[derive(Debug, PartialEq)]
    struct Shape {
        version: u32,
        serial_len: usize,
        signature_algorithm: String,
        validity_tags: (ParsedTag, ParsedTag),
        subject: Vec<(String, ParsedTag)>,
        spki_algorithm: String,
        spki_curve: String,
        /// (OID, critical, value when it does not depend on keys)
        extensions: Vec<(String, bool, Option<Vec<u8>>)>,
        outer_signature_algorithm: String,
    }

    fn shape(der: &[u8]) -> Shape {
        let cert = parse(der);
        let tbs = &cert.tbs_certificate;
        let key_dependent = ["2.5.29.14", "2.5.29.35"];
        Shape {
            version: tbs.version.0,
            serial_len: tbs.raw_serial().len(),
            signature_algorithm: tbs.signature.algorithm.to_id_string(),
            validity_tags: validity_tags(&cert),
            subject: name_shape(&tbs.subject),
            spki_algorithm: tbs.subject_pki.algorithm.algorithm.to_id_string(),
            spki_curve: tbs
                .subject_pki
                .algorithm
                .parameters
                .as_ref()
                .unwrap()
                .as_oid()
                .unwrap()
                .to_id_string(),
            extensions: tbs
                .extensions()
                .iter()
                .map(|e| {
                    let oid = e.oid.to_id_string();
                    let value = (!key_dependent.contains(&oid.as_str())).then(|| e.value.to_vec());
                    (oid, e.critical, value)
                })
                .collect(),
            outer_signature_algorithm: cert.signature_algorithm.algorithm.to_id_string(),
        }
    }

    /// The ASN.1 types (`UTCTime` or `GeneralizedTime`) of notBefore and notAfter.
    fn validity_tags(cert: &X509Certificate<'_>) -> (ParsedTag, ParsedTag) {
        let (_, tbs) = x509_parser::der_parser::der::parse_der(cert.tbs_certificate.as_ref())
            .expect("TBS parses");
        // version, serialNumber, signature, issuer, validity, ...
        let validity = tbs.as_sequence().unwrap()[4].as_sequence().unwrap();
        (validity[0].header.tag(), validity[1].header.tag())
    }

    fn name_shape(name: &X509Name<'_>) -> Vec<(String, ParsedTag)> {
        name.iter()
            .map(|rdn| {
                let attrs: Vec<_> = rdn.iter().collect();
                assert_eq!(attrs.len(), 1, "one attribute per RDN");
                let a = attrs[0];
                (a.attr_type().to_id_string(), a.attr_value().header.tag())
            })
            .collect()
    }

    /// Verifies `der`'s signature over its TBS bytes with `issuer_der`'s public key.
    fn assert_signed_by(der: &[u8], issuer_der: &[u8]) {
        let cert = parse(der);
        let issuer = parse(issuer_der);
        assert_eq!(
            cert.tbs_certificate.issuer.as_raw(),
            issuer.tbs_certificate.subject.as_raw(),
            "issuer name is the issuer's subject name"
        );
        let key = VerifyingKey::from_sec1_bytes(
            &issuer.tbs_certificate.subject_pki.subject_public_key.data,
        )
        .unwrap();
        let signature = Signature::from_der(&cert.signature_value.data).unwrap();
        key.verify(cert.tbs_certificate.as_ref(), &signature)
            .expect("signature verifies with the issuer's key");
        let ski = |c: &X509Certificate<'_>| match c
            .get_extension_unique(&x509_parser::oid_registry::OID_X509_EXT_SUBJECT_KEY_IDENTIFIER)
            .unwrap()
            .map(X509Extension::parsed_extension)
        {
            Some(ParsedExtension::SubjectKeyIdentifier(id)) => id.0.to_vec(),
            other => panic!("no subjectKeyIdentifier: {other:?}"),
        };
        let aki = cert
            .get_extension_unique(&x509_parser::oid_registry::OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER)
            .unwrap();
        match aki.map(X509Extension::parsed_extension) {
            Some(ParsedExtension::AuthorityKeyIdentifier(aki)) => {
                assert_eq!(aki.key_identifier.as_ref().unwrap().0, ski(&issuer));
            }
            // Only a self-signed root has no authorityKeyIdentifier.
            None => assert_eq!(der, issuer_der),
            other => panic!("unexpected authorityKeyIdentifier {other:?}"),
        }
    }

    fn key_usage(cert: &X509Certificate<'_>) -> (bool, u16) {
        let ku = cert.key_usage().unwrap().expect("keyUsage present");
        (ku.critical, ku.value.flags)
    }

    const KU_DIGITAL_SIGNATURE: u16 = 1 << 0;
    const KU_KEY_AGREEMENT: u16 = 1 << 4;
    const KU_KEY_CERT_SIGN: u16 = 1 << 5;
    const KU_CRL_SIGN: u16 = 1 << 6;

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let a = Hierarchy::generate(7).unwrap();
        let b = Hierarchy::generate(7).unwrap();
        let c = Hierarchy::generate(8).unwrap();
        for (x, y, z) in [
            (&a.root_oca, &b.root_oca, &c.root_oca),
            (&a.issuing_oca, &b.issuing_oca, &c.issuing_oca),
            (&a.root_dca, &b.root_dca, &c.root_dca),
            (&a.issuing_dca, &b.issuing_dca, &c.issuing_dca),
        ] {
            assert_eq!(x.certificate_der(), y.certificate_der());
            assert_ne!(x.certificate_der(), z.certificate_der());
        }

        for usage in [Usage::DigitalSignature, Usage::KeyAgreement] {
            assert_eq!(device(&a, usage, 42), device(&b, usage, 42));
            assert_ne!(
                device(&a, usage, 42),
                device(&a, usage, 43),
                "key seed matters"
            );
            assert_ne!(
                device(&a, usage, 42),
                device(&c, usage, 42),
                "issuer matters"
            );
            assert_eq!(
                organisation(&a, Some("ACME"), usage, 42),
                organisation(&b, Some("ACME"), usage, 42)
            );
            assert_ne!(
                organisation(&a, None, usage, 42),
                organisation(&a, None, usage, 43)
            );
        }
        // Same key seed, same public key, whatever the certificate.
        let spki = |der: &[u8]| parse(der).tbs_certificate.subject_pki.raw.to_vec();
        assert_eq!(
            spki(&device(&a, Usage::DigitalSignature, 42)),
            spki(&organisation(&c, None, Usage::KeyAgreement, 42))
        );
    }

    #[test]
    fn authorities_can_be_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Authority>();
        assert_send_sync::<Hierarchy>();
    }

    #[test]
    fn hierarchy_is_a_valid_chain_of_cas() {
        let h = Hierarchy::generate(1).unwrap();
        let cases = [
            (&h.root_oca, &h.root_oca, "OU=00, CN=Root OCA", None),
            (&h.issuing_oca, &h.root_oca, "OU=07, CN=Z9", Some(0)),
            (&h.root_dca, &h.root_dca, "CN=Root DCA", None),
            (&h.issuing_dca, &h.root_dca, "CN=E999", Some(0)),
        ];
        for (ca, issuer, subject, path_len) in cases {
            let der = ca.certificate_der();
            let cert = parse(der);
            assert_eq!(cert.subject().to_string(), subject);
            let bc = cert.basic_constraints().unwrap().expect("basicConstraints");
            assert!(bc.critical);
            assert!(bc.value.ca);
            assert_eq!(bc.value.path_len_constraint, path_len);
            assert_eq!(key_usage(&cert), (true, KU_KEY_CERT_SIGN | KU_CRL_SIGN));
            let has_ou = cert.subject().iter_organizational_unit().next().is_some();
            assert_eq!(has_ou, subject.starts_with("OU="), "only OCAs have an OU");
            assert_eq!(cert.tbs_certificate.raw_serial().len(), 16);
            assert_eq!(
                cert.validity().not_before.to_datetime(),
                ca_not_before().unwrap()
            );
            assert_eq!(
                cert.validity().not_after.to_datetime(),
                max_not_after().unwrap()
            );
            assert_signed_by(der, issuer.certificate_der());
        }
    }

    #[test]
    fn device_certificates_follow_the_profile() {
        let h = Hierarchy::generate(3).unwrap();
        for (usage, flag) in [
            (Usage::DigitalSignature, KU_DIGITAL_SIGNATURE),
            (Usage::KeyAgreement, KU_KEY_AGREEMENT),
        ] {
            let der = device(&h, usage, 99);
            let cert = parse(&der);
            assert_eq!(key_usage(&cert), (true, flag));
            assert!(cert.subject().as_raw() == [0x30, 0x00], "empty subject");
            assert_eq!(cert.validity().not_after.to_datetime().year(), 9999);
            assert!(cert.basic_constraints().unwrap().is_none());

            let san = cert.subject_alternative_name().unwrap().expect("SAN");
            assert!(san.critical);
            let [GeneralName::OtherName(oid, value)] = san.value.general_names.as_slice() else {
                panic!("one otherName expected: {:?}", san.value.general_names);
            };
            assert_eq!(oid.to_id_string(), "1.3.6.1.5.5.7.8.4");
            // [0] EXPLICIT HardwareModuleName { hwType, hwSerialNum = Device ID }
            let (_, explicit) = x509_parser::der_parser::der::parse_der(value).unwrap();
            let hmn = x509_parser::der_parser::der::parse_der(explicit.as_slice().unwrap())
                .unwrap()
                .1;
            let fields = hmn.as_sequence().unwrap();
            assert_eq!(
                fields[0].as_oid().unwrap().to_id_string(),
                "1.2.826.0.1.8641679.1.2.2.1"
            );
            assert_eq!(fields[1].as_slice().unwrap(), DEVICE_ID);

            assert_signed_by(&der, h.issuing_dca.certificate_der());
        }
    }

    #[test]
    fn organisation_certificates_follow_the_profile() {
        let h = Hierarchy::generate(4).unwrap();
        for (usage, flag) in [
            (Usage::DigitalSignature, KU_DIGITAL_SIGNATURE),
            (Usage::KeyAgreement, KU_KEY_AGREEMENT),
        ] {
            for cn in [None, Some("GITTESTSUPPLIER")] {
                let der = organisation(&h, cn, usage, 5);
                let cert = parse(&der);
                assert_eq!(key_usage(&cert), (true, flag));
                let subject = cert.subject();
                let ou: Vec<_> = subject
                    .iter_organizational_unit()
                    .map(|a| a.as_str().unwrap())
                    .collect();
                assert_eq!(ou, ["01"]);
                let uid: Vec<_> = subject
                    .iter_by_oid(&x509_parser::oid_registry::OID_X509_UNIQUE_IDENTIFIER)
                    .collect();
                assert_eq!(uid.len(), 1);
                let value = uid[0].attr_value();
                assert_eq!(value.header.tag(), ParsedTag::BitString);
                // BIT STRING with 0 unused bits, then the Entity ID
                assert_eq!(value.data, [&[0u8][..], &ENTITY_ID].concat());
                let cns: Vec<_> = subject
                    .iter_common_name()
                    .map(|a| a.as_str().unwrap())
                    .collect();
                assert_eq!(cns, cn.into_iter().collect::<Vec<_>>());
                assert!(cert.subject_alternative_name().unwrap().is_none());
                assert_signed_by(&der, h.issuing_oca.certificate_der());
            }
        }
    }

    #[test]
    fn device_certificate_has_the_structure_of_the_real_ones() {
        let h = Hierarchy::generate(5).unwrap();
        let fixture = pem_to_der(FIXTURE_DEVICE);
        let ours = device(&h, Usage::DigitalSignature, 1);
        assert_eq!(shape(&ours), shape(&fixture));
        // Same serial, validity and subject bytes as the real certificate.
        let (a, b) = (parse(&ours), parse(&fixture));
        assert_eq!(
            a.tbs_certificate.raw_serial(),
            b.tbs_certificate.raw_serial()
        );
        assert_eq!(a.validity(), b.validity());
        assert_eq!(a.subject().as_raw(), b.subject().as_raw());
    }

    #[test]
    fn organisation_certificates_have_the_structure_of_the_real_ones() {
        let h = Hierarchy::generate(6).unwrap();
        let ours = organisation(&h, None, Usage::DigitalSignature, 1);
        let fixture = pem_to_der(FIXTURE_ORGANISATION);
        assert_eq!(shape(&ours), shape(&fixture));
        assert_eq!(
            parse(&ours).subject().as_raw(),
            parse(&fixture).subject().as_raw()
        );

        let fixture = pem_to_der(FIXTURE_ORGANISATION_CN);
        let fixture_cert = parse(&fixture);
        let ours = issue_organisation(
            &h.issuing_oca,
            [0x90, 0xB3, 0xD5, 0x1F, 0x30, 0x01, 0x00, 0x00],
            0x02,
            Some("GITTESTSUPPLIER"),
            Usage::DigitalSignature,
            fixture_cert
                .tbs_certificate
                .raw_serial()
                .try_into()
                .unwrap(),
            fixture_cert.validity().not_before.to_datetime(),
            fixture_cert.validity().not_after.to_datetime(),
            1,
        )
        .unwrap();
        assert_eq!(shape(&ours), shape(&fixture));
        assert_eq!(
            parse(&ours).subject().as_raw(),
            fixture_cert.subject().as_raw()
        );
        assert_eq!(parse(&ours).validity(), fixture_cert.validity());
    }

    #[test]
    fn serial_is_16_positive_bytes_starting_at_0x10() {
        assert_eq!(normalize_serial([0xFF; 16])[0], 0x7F);
        assert_eq!(normalize_serial([0x00; 16])[0], 0x10);
        assert_eq!(normalize_serial([0x80; 16])[0], 0x10);
        assert_eq!(normalize_serial([0x85; 16])[0], 0x15);
        assert_eq!(normalize_serial(SERIAL), SERIAL);
        assert_eq!(normalize_serial([0x00; 16])[1..], [0x00; 15]);

        let h = Hierarchy::generate(9).unwrap();
        let not_before = utc(2024, Month::March, 1, 12, 0, 0);
        for first in [0x00, 0x0F, 0x80, 0xFF] {
            let mut serial = [0u8; 16];
            serial[0] = first;
            let der = issue_device(
                &h.issuing_dca,
                DEVICE_ID,
                Usage::KeyAgreement,
                serial,
                not_before,
                1,
            )
            .unwrap();
            let cert = parse(&der);
            assert_eq!(cert.tbs_certificate.raw_serial(), normalize_serial(serial));
        }
    }

    #[test]
    fn times_are_encoded_per_rfc_5280() {
        let h = Hierarchy::generate(10).unwrap();
        let not_before =
            utc(2049, Month::December, 31, 23, 59, 59) + time::Duration::milliseconds(700);
        let not_after = utc(2050, Month::January, 1, 0, 0, 0);
        let der = issue_organisation(
            &h.issuing_oca,
            ENTITY_ID,
            0x87,
            None,
            Usage::DigitalSignature,
            SERIAL,
            not_before,
            not_after,
            3,
        )
        .unwrap();
        let cert = parse(&der);
        assert_eq!(
            cert.validity().not_before.to_datetime(),
            utc(2049, Month::December, 31, 23, 59, 59),
            "fractional seconds dropped"
        );
        assert_eq!(cert.validity().not_after.to_datetime(), not_after);
        assert_eq!(
            validity_tags(&cert),
            (ParsedTag::UtcTime, ParsedTag::GeneralizedTime),
            "UTCTime through 2049, GeneralizedTime from 2050"
        );
        let ou: Vec<_> = cert
            .subject()
            .iter_organizational_unit()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(ou, ["87"], "role in uppercase hex");
    }

    #[test]
    fn invalid_inputs_are_rejected() {
        let h = Hierarchy::generate(11).unwrap();
        let t = utc(2024, Month::January, 1, 0, 0, 0);
        let org = |cn: Option<&str>, not_after| {
            issue_organisation(
                &h.issuing_oca,
                ENTITY_ID,
                2,
                cn,
                Usage::DigitalSignature,
                SERIAL,
                t,
                not_after,
                1,
            )
        };
        assert!(org(None, t).is_err(), "empty validity");
        assert!(
            org(Some(""), t + time::Duration::days(1)).is_err(),
            "empty CN"
        );
        assert!(
            org(Some(&"X".repeat(65)), t + time::Duration::days(1)).is_err(),
            "long CN"
        );
        assert!(org(Some(&"X".repeat(64)), t + time::Duration::days(1)).is_ok());
        let before_1970 = utc(1969, Month::December, 31, 0, 0, 0);
        assert!(issue_device(
            &h.issuing_dca,
            DEVICE_ID,
            Usage::KeyAgreement,
            SERIAL,
            before_1970,
            1
        )
        .is_err());
    }

    /// Signing rate, single thread: `cargo test --release --lib gen::pki -- --ignored --nocapture`.
    #[test]
    #[ignore = "benchmark"]
    fn signing_rate() {
        let h = Hierarchy::generate(1).unwrap();
        let not_before = utc(2024, Month::January, 1, 0, 0, 0);
        let n = 20_000u64;
        let start = std::time::Instant::now();
        let mut bytes = 0;
        for i in 0..n {
            let mut serial = [0u8; 16];
            serial[8..].copy_from_slice(&i.to_be_bytes());
            let usage = if i % 2 == 0 {
                Usage::DigitalSignature
            } else {
                Usage::KeyAgreement
            };
            bytes += issue_device(
                &h.issuing_dca,
                i.to_be_bytes(),
                usage,
                serial,
                not_before,
                i,
            )
            .unwrap()
            .len();
        }
        let elapsed = start.elapsed();
        println!(
            "{n} device certificates in {elapsed:?}: {:.0} certs/s ({bytes} bytes)",
            f64::from(u32::try_from(n).unwrap()) / elapsed.as_secs_f64()
        );
    }
}
