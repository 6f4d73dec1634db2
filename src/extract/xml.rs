//! The XML of the extract files: a streaming writer, and a reader for tests and Parties.
//!
//! Every extract file (`SMKIKR_FULL_YYYY-MM-DD.xml.gz`, `SMKIKR_DELT_YYYY-MM-DD.xml.gz`) is a
//! gzip of ONE XML document in namespace [`NAMESPACE`], defined by the project's own schema
//! `schema/smki-extract-v1.xsd` (no public copy of SEC Appendix O Annex B exists; DESIGN §6).
//! Records use the element names of the SMKI Repository web service's `CertificateResponse`,
//! followed by what a Party needs that the web service leaves implicit:
//!
//! ```xml
//! <?xml version="1.0" encoding="UTF-8"?>
//! <SMKIRepositoryExtract xmlns="urn:smki-extract:v1" formatVersion="1" extractType="DELTA" extractDate="2025-01-05" recordCount="2">
//! <Certificate><CertificateSubjectAltName>00-DB-12-34-56-78-90-01</CertificateSubjectAltName><CertificateSerial>71C56392CE9985DD1B78BE2EB23D610B</CertificateSerial><CertificateStatus>P</CertificateStatus><CertificateBody>MIIB…</CertificateBody><CertificateUsage>DS</CertificateUsage><ManufacturingFlag>true</ManufacturingFlag><CertificateType>Device</CertificateType><CertificateIssuer>CN=E357</CertificateIssuer><CertificateIssuerHash>33f7c1cce14a0a2f</CertificateIssuerHash></Certificate>
//! <Certificate><CertificateSubjectName>OU=02, uniqueIdentifier=0090B3D51F30000002</CertificateSubjectName><CertificateSerial>…</CertificateSerial><CertificateStatus>I</CertificateStatus><CertificateBody>…</CertificateBody><CertificateRole>2</CertificateRole><CertificateUsage>KA</CertificateUsage><ManufacturingFlag>false</ManufacturingFlag><CertificateType>Organisation</CertificateType><CertificateIssuer>OU=07, CN=Z1</CertificateIssuer><CertificateIssuerHash>35d29f5bebe90789</CertificateIssuerHash><EntityId>90-B3-D5-1F-30-00-00-02</EntityId></Certificate>
//! </SMKIRepositoryExtract>
//! ```
//!
//! - Root attributes: `formatVersion` (`1`), `extractType` (`FULL` | `DELTA`), `extractDate`
//!   (`xs:date`, the day described, as in the file name) and `recordCount`. Nothing else:
//!   no wall-clock time, so the same records give byte-identical files.
//! - One `Certificate` element per line, its children in the fixed order of the schema:
//!   `CertificateSubjectName` (OCA, DCA, Organisation) or `CertificateSubjectAltName`
//!   (Device ID of a Device), `CertificateSerial` (uppercase hex), `CertificateStatus`
//!   (`P I N E R`), `CertificateBody` (Base64 DER on one line, no PEM armour),
//!   `CertificateRole` (decimal Remote Party Role, when the certificate has one),
//!   `CertificateUsage` (`DS KA CA`), `ManufacturingFlag` (always written), `CertificateType`
//!   (`OCA DCA Organisation Device`), `CertificateIssuer` (text DN), `CertificateIssuerHash`
//!   (the issuer half of the certificate id, see [`crate::contract::record_key`]) and
//!   `EntityId` (non-device certificates that carry one).
//!
//! [`ExtractWriter`] streams: it holds one bounded buffer (about [`FLUSH_AT`] bytes) however
//! many records pass through, so a 100-million-certificate full extract costs no more memory
//! than a delta. [`ExtractReader`] streams too; [`read_extract`] collects for small files.

use std::borrow::Cow;
use std::io::{self, BufRead, Write};

use anyhow::{anyhow, bail, ensure, Context};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chrono::{Datelike, NaiveDate};
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, Event};
use quick_xml::name::{Namespace, ResolveResult};
use quick_xml::reader::NsReader;

use crate::contract::{issuer_hash, CertificateRecord, CertificateStatus, StoredType, StoredUsage};
use crate::eui64::Eui64;

/// XML namespace of format version 1. It names the major version: a change that can break a
/// v1 reader gets a new namespace and a new schema file.
pub const NAMESPACE: &str = "urn:smki-extract:v1";

/// Value of the root's `formatVersion` attribute, so that a reader can check the version
/// without resolving namespaces.
pub const FORMAT_VERSION: &str = "1";

/// Path of the XSD that every extract file validates against, relative to the repository root
/// (tests and tools join it to `CARGO_MANIFEST_DIR` or the install location).
pub const SCHEMA_PATH: &str = "schema/smki-extract-v1.xsd";

/// Name of the root element (one per file).
pub const ROOT_ELEMENT: &str = "SMKIRepositoryExtract";

/// Name of the element holding one certificate record.
pub const RECORD_ELEMENT: &str = "Certificate";

/// The writer hands its buffer to the output once it holds this many bytes: large enough that
/// an unbuffered `File` or a gzip encoder sees few, big writes; small enough that memory does
/// not depend on the size of the extract.
pub const FLUSH_AT: usize = 64 * 1024;

/// Which of the two extract files a document is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExtractKind {
    /// Weekly `SMKIKR_FULL_*`: every certificate In use.
    Full,
    /// Daily `SMKIKR_DELT_*`: every certificate lodged or changed on the day.
    Delta,
}

impl ExtractKind {
    /// Value of the root's `extractType` attribute: `FULL` or `DELTA`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExtractKind::Full => "FULL",
            ExtractKind::Delta => "DELTA",
        }
    }

    /// The tag in the file name, which the SEC abbreviates: `FULL` or `DELT`.
    pub fn file_tag(self) -> &'static str {
        match self {
            ExtractKind::Full => "FULL",
            ExtractKind::Delta => "DELT",
        }
    }

    /// The published file name, e.g. `SMKIKR_DELT_2025-01-05.xml.gz`.
    pub fn file_name(self, date: NaiveDate) -> String {
        format!(
            "SMKIKR_{}_{}.xml.gz",
            self.file_tag(),
            date.format("%Y-%m-%d")
        )
    }

    /// Parses an `extractType` attribute value.
    pub fn from_attr(value: &str) -> Option<ExtractKind> {
        match value {
            "FULL" => Some(ExtractKind::Full),
            "DELTA" => Some(ExtractKind::Delta),
            _ => None,
        }
    }
}

// ------------------------------------------------------------------------------- writer

/// Writes one extract document to any [`Write`], one record at a time.
///
/// The XML is produced with quick-xml's [`quick_xml::Writer`] over an internal buffer that is
/// handed to the output whenever it passes [`FLUSH_AT`] bytes, so the output sees large writes
/// (no `BufWriter` needed) and memory stays bounded. The root and its attributes go through
/// quick-xml's event API; record content that cannot need escaping (hex, Base64, enumeration
/// codes) is appended as raw bytes, and DN text is escaped. Deterministic: the same records in
/// the same order give the same bytes.
///
/// `W` is not flushed or finished here: [`ExtractWriter::finish`] returns it so that the caller
/// can finish its gzip encoder, flush and sync its file.
pub struct ExtractWriter<W: Write> {
    xml: quick_xml::Writer<Vec<u8>>,
    out: W,
    declared: u64,
    written: u64,
    bytes_out: u64,
    issuer: IssuerHashCache,
    /// Set when a write to `out` failed: the document is broken and every later call errors.
    failed: bool,
}

impl<W: Write> ExtractWriter<W> {
    /// Starts the document: XML declaration and root start tag (buffered, not yet written to
    /// `out`). `record_count` goes into the root's `recordCount` attribute, so the caller must
    /// count the records first; it is enforced by [`write_record`](Self::write_record) (no
    /// more) and [`finish`](Self::finish) (no fewer). The date must have a four-digit year.
    pub fn new(out: W, kind: ExtractKind, date: NaiveDate, record_count: u64) -> io::Result<Self> {
        if !(1..=9999).contains(&date.year()) {
            return Err(invalid_input(format!(
                "extract date {date} is outside the years 0001..9999 that xs:date files use"
            )));
        }
        let mut xml = quick_xml::Writer::new(Vec::with_capacity(FLUSH_AT + 8 * 1024));
        xml.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
        xml.get_mut().push(b'\n');
        let date_text = date.format("%Y-%m-%d").to_string();
        let count_text = record_count.to_string();
        let root = BytesStart::new(ROOT_ELEMENT).with_attributes([
            ("xmlns", NAMESPACE),
            ("formatVersion", FORMAT_VERSION),
            ("extractType", kind.as_str()),
            ("extractDate", date_text.as_str()),
            ("recordCount", count_text.as_str()),
        ]);
        xml.write_event(Event::Start(root))?;
        xml.get_mut().push(b'\n');
        Ok(ExtractWriter {
            xml,
            out,
            declared: record_count,
            written: 0,
            bytes_out: 0,
            issuer: IssuerHashCache::default(),
            failed: false,
        })
    }

    /// Appends one certificate record.
    ///
    /// A record the format cannot represent (unspecified status, type or usage, empty DER or
    /// serial, a Device without an 8-byte Device ID, a non-device without a subject, an empty
    /// issuer, a role outside 0..=255) is refused with [`io::ErrorKind::InvalidInput`] before
    /// anything is written, so the document stays valid; so is a record beyond the declared
    /// count. Any other error comes from the output, after which the writer refuses all calls.
    pub fn write_record(&mut self, rec: &CertificateRecord) -> io::Result<()> {
        self.check_usable()?;
        if self.written >= self.declared {
            return Err(invalid_input(format!(
                "record {} written to an extract declared with recordCount {}",
                self.written + 1,
                self.declared
            )));
        }
        let v = Validated::of(rec)?;
        let issuer_hash_hex = *self.issuer.hex_for(&rec.issuer_name_der);
        let buf = self.xml.get_mut();

        buf.extend_from_slice(b"<Certificate>");
        if v.cert_type == StoredType::Device {
            buf.extend_from_slice(b"<CertificateSubjectAltName>");
            push_eui64(buf, v.subject_id.expect("validated: devices have an id"));
            buf.extend_from_slice(b"</CertificateSubjectAltName>");
        } else {
            buf.extend_from_slice(b"<CertificateSubjectName>");
            push_text(buf, &rec.subject);
            buf.extend_from_slice(b"</CertificateSubjectName>");
        }
        buf.extend_from_slice(b"<CertificateSerial>");
        push_hex_upper(buf, &rec.serial);
        buf.extend_from_slice(b"</CertificateSerial><CertificateStatus>");
        buf.extend_from_slice(v.status.code().as_bytes());
        buf.extend_from_slice(b"</CertificateStatus><CertificateBody>");
        push_base64(buf, &rec.certificate_der);
        buf.extend_from_slice(b"</CertificateBody>");
        if let Some(role) = v.role {
            buf.extend_from_slice(b"<CertificateRole>");
            push_decimal_u8(buf, role);
            buf.extend_from_slice(b"</CertificateRole>");
        }
        buf.extend_from_slice(b"<CertificateUsage>");
        buf.extend_from_slice(usage_code(v.usage).as_bytes());
        buf.extend_from_slice(b"</CertificateUsage><ManufacturingFlag>");
        buf.extend_from_slice(if rec.manufacturing_flag {
            b"true"
        } else {
            b"false"
        });
        buf.extend_from_slice(b"</ManufacturingFlag><CertificateType>");
        buf.extend_from_slice(type_name(v.cert_type).as_bytes());
        buf.extend_from_slice(b"</CertificateType><CertificateIssuer>");
        push_text(buf, &rec.issuer);
        buf.extend_from_slice(b"</CertificateIssuer><CertificateIssuerHash>");
        buf.extend_from_slice(&issuer_hash_hex);
        buf.extend_from_slice(b"</CertificateIssuerHash>");
        if v.cert_type != StoredType::Device {
            if let Some(id) = v.subject_id {
                buf.extend_from_slice(b"<EntityId>");
                push_eui64(buf, id);
                buf.extend_from_slice(b"</EntityId>");
            }
        }
        buf.extend_from_slice(b"</Certificate>\n");

        self.written += 1;
        if self.xml.get_ref().len() >= FLUSH_AT {
            self.flush_buffer()?;
        }
        Ok(())
    }

    /// Closes the root element, hands every buffered byte to the output and returns it (not
    /// flushed: finish the encoder or flush the file yourself). Fails with
    /// [`io::ErrorKind::InvalidData`], writing no end tag, if fewer records were written than
    /// declared: a reader would otherwise see a complete-looking file with records missing.
    pub fn finish(mut self) -> io::Result<W> {
        self.check_usable()?;
        if self.written != self.declared {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "extract declared recordCount {} but {} records were written",
                    self.declared, self.written
                ),
            ));
        }
        self.xml
            .write_event(Event::End(BytesEnd::new(ROOT_ELEMENT)))?;
        self.xml.get_mut().push(b'\n');
        self.flush_buffer()?;
        Ok(self.out)
    }

    /// Records written so far (progress reporting).
    pub fn records_written(&self) -> u64 {
        self.written
    }

    /// Uncompressed XML bytes produced so far, including those still buffered (metrics).
    pub fn bytes_written(&self) -> u64 {
        self.bytes_out + self.xml.get_ref().len() as u64
    }

    fn check_usable(&self) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other(
                "an earlier write of this extract failed; the document is incomplete",
            ));
        }
        Ok(())
    }

    fn flush_buffer(&mut self) -> io::Result<()> {
        let buf = self.xml.get_mut();
        if let Err(e) = self.out.write_all(buf) {
            self.failed = true;
            return Err(e);
        }
        self.bytes_out += buf.len() as u64;
        buf.clear();
        Ok(())
    }
}

/// The checked, decoded view of a record's enum and optional fields.
struct Validated {
    status: CertificateStatus,
    cert_type: StoredType,
    usage: StoredUsage,
    role: Option<u8>,
    subject_id: Option<[u8; 8]>,
}

impl Validated {
    fn of(rec: &CertificateRecord) -> io::Result<Validated> {
        let bad = |what: &str| {
            invalid_input(format!(
                "certificate {} serial {} cannot be written to an extract: {what}",
                rec.issuer,
                hex::encode_upper(&rec.serial)
            ))
        };
        let status = match CertificateStatus::try_from(rec.status) {
            Ok(CertificateStatus::Unspecified) | Err(_) => {
                return Err(bad(&format!(
                    "status {} is not one of P I N E R",
                    rec.status
                )))
            }
            Ok(s) => s,
        };
        let cert_type = match StoredType::try_from(rec.certificate_type) {
            Ok(StoredType::Unspecified) | Err(_) => {
                return Err(bad(&format!("certificate type {}", rec.certificate_type)))
            }
            Ok(t) => t,
        };
        let usage = match StoredUsage::try_from(rec.usage) {
            Ok(StoredUsage::Unspecified) | Err(_) => {
                return Err(bad(&format!("key usage {}", rec.usage)))
            }
            Ok(u) => u,
        };
        let role = match rec.role {
            -1 => None,
            r => Some(u8::try_from(r).map_err(|_| bad(&format!("role {r} is not 0..=255")))?),
        };
        let subject_id = match rec.subject_id.len() {
            0 => None,
            8 => Some(rec.subject_id[..].try_into().expect("8 bytes")),
            n => return Err(bad(&format!("subject id of {n} bytes instead of 8"))),
        };
        if rec.certificate_der.is_empty() {
            return Err(bad("empty certificate DER"));
        }
        if rec.serial.is_empty() {
            return Err(bad("empty serial"));
        }
        if rec.issuer.is_empty() {
            return Err(bad("empty issuer name"));
        }
        if cert_type == StoredType::Device {
            if subject_id.is_none() {
                return Err(bad("device certificate without a Device ID"));
            }
        } else if rec.subject.is_empty() {
            return Err(bad("non-device certificate with an empty subject"));
        }
        Ok(Validated {
            status,
            cert_type,
            usage,
            role,
            subject_id,
        })
    }
}

/// Hex of the issuer hash of the last issuer seen: consecutive records mostly share an issuer
/// (a few DCAs issue almost every certificate), so SHA-256 runs once per change of issuer.
#[derive(Default)]
struct IssuerHashCache {
    der: Vec<u8>,
    hex: [u8; 16],
    valid: bool,
}

impl IssuerHashCache {
    fn hex_for(&mut self, issuer_name_der: &[u8]) -> &[u8; 16] {
        if !self.valid || self.der != issuer_name_der {
            hex::encode_to_slice(issuer_hash(issuer_name_der), &mut self.hex)
                .expect("16 hex digits for 8 bytes");
            self.der.clear();
            self.der.extend_from_slice(issuer_name_der);
            self.valid = true;
        }
        &self.hex
    }
}

fn invalid_input(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn push_hex_upper(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.reserve(bytes.len() * 2);
    for b in bytes {
        buf.push(HEX_UPPER[usize::from(b >> 4)]);
        buf.push(HEX_UPPER[usize::from(b & 0x0f)]);
    }
}

/// `90-B3-D5-1F-30-00-00-01`, as [`Eui64`]'s `Display` writes it, without formatting machinery.
fn push_eui64(buf: &mut Vec<u8>, id: [u8; 8]) {
    for (i, b) in id.iter().enumerate() {
        if i > 0 {
            buf.push(b'-');
        }
        buf.push(HEX_UPPER[usize::from(b >> 4)]);
        buf.push(HEX_UPPER[usize::from(b & 0x0f)]);
    }
}

fn push_decimal_u8(buf: &mut Vec<u8>, v: u8) {
    if v >= 100 {
        buf.push(b'0' + v / 100);
    }
    if v >= 10 {
        buf.push(b'0' + v / 10 % 10);
    }
    buf.push(b'0' + v % 10);
}

/// Base64 (standard alphabet, padded, one line) encoded straight into the buffer's tail.
fn push_base64(buf: &mut Vec<u8>, der: &[u8]) {
    let start = buf.len();
    let len = base64::encoded_len(der.len(), true).expect("certificate size fits in usize");
    buf.resize(start + len, 0);
    let written = BASE64
        .encode_slice(der, &mut buf[start..])
        .expect("buffer sized by encoded_len");
    debug_assert_eq!(written, len);
}

/// Element text: XML markup characters escaped by quick-xml; characters XML 1.0 forbids or
/// normalises (C0 controls, U+FFFE, U+FFFF) written as `\XX` per UTF-8 octet first, the
/// RFC 4514 hex escape, since no XML escape can carry them. The common case (plain ASCII DN)
/// is one scan and one copy.
fn push_text(buf: &mut Vec<u8>, text: &str) {
    let plain = text
        .bytes()
        .all(|b| b >= 0x20 && !matches!(b, b'<' | b'>' | b'&' | b'"' | b'\''))
        && (text.is_ascii() || !text.contains(['\u{FFFE}', '\u{FFFF}']));
    if plain {
        buf.extend_from_slice(text.as_bytes());
        return;
    }
    let xml_safe = hex_escape_non_xml_chars(text);
    buf.extend_from_slice(quick_xml::escape::escape(xml_safe.as_ref()).as_bytes());
}

fn is_non_xml_char(c: char) -> bool {
    (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}'
}

fn hex_escape_non_xml_chars(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_non_xml_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_non_xml_char(c) {
            let mut utf8 = [0u8; 4];
            for b in c.encode_utf8(&mut utf8).bytes() {
                out.push('\\');
                out.push(char::from(HEX_UPPER[usize::from(b >> 4)]));
                out.push(char::from(HEX_UPPER[usize::from(b & 0x0f)]));
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn usage_code(usage: StoredUsage) -> &'static str {
    match usage {
        StoredUsage::DigitalSignature => "DS",
        StoredUsage::KeyAgreement => "KA",
        StoredUsage::CertSign => "CA",
        StoredUsage::Unspecified => unreachable!("validated"),
    }
}

fn usage_from_code(code: &str) -> Option<StoredUsage> {
    Some(match code {
        "DS" => StoredUsage::DigitalSignature,
        "KA" => StoredUsage::KeyAgreement,
        "CA" => StoredUsage::CertSign,
        _ => return None,
    })
}

fn type_name(t: StoredType) -> &'static str {
    match t {
        StoredType::Oca => "OCA",
        StoredType::Dca => "DCA",
        StoredType::Organisation => "Organisation",
        StoredType::Device => "Device",
        StoredType::Unspecified => unreachable!("validated"),
    }
}

fn type_from_name(name: &str) -> Option<StoredType> {
    Some(match name {
        "OCA" => StoredType::Oca,
        "DCA" => StoredType::Dca,
        "Organisation" => StoredType::Organisation,
        "Device" => StoredType::Device,
        _ => return None,
    })
}

fn status_from_code(code: &str) -> Option<CertificateStatus> {
    CertificateStatus::ALL
        .into_iter()
        .find(|s| s.code() == code)
}

// ------------------------------------------------------------------------------- reader

/// The root attributes of an extract document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// FULL or DELTA.
    pub kind: ExtractKind,
    /// The day the extract describes.
    pub date: NaiveDate,
    /// Number of records the document declares (checked against those read).
    pub record_count: u64,
}

/// One `Certificate` record as read from a file: what a Party's copy of the Repository keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedRecord {
    /// `CertificateSubjectName`: subject DN text (OCA, DCA and Organisation certificates).
    pub subject_name: Option<String>,
    /// `CertificateSubjectAltName`: the Device ID (Device certificates).
    pub subject_alt_name: Option<Eui64>,
    /// `CertificateSerial`, as bytes (unsigned big-endian, no leading zero bytes).
    pub serial: Vec<u8>,
    /// `CertificateStatus`.
    pub status: CertificateStatus,
    /// `CertificateBody`, decoded: the certificate's DER.
    pub certificate_der: Vec<u8>,
    /// `CertificateRole`: the Remote Party Role, when present.
    pub role: Option<u8>,
    /// `CertificateUsage`.
    pub usage: StoredUsage,
    /// `ManufacturingFlag`.
    pub manufacturing_flag: bool,
    /// `CertificateType`.
    pub certificate_type: StoredType,
    /// `CertificateIssuer`: issuer DN text.
    pub issuer: String,
    /// `CertificateIssuerHash`: first 8 bytes of SHA-256 over the issuer Name DER.
    pub issuer_hash: [u8; 8],
    /// `EntityId`, when present.
    pub entity_id: Option<Eui64>,
}

impl ParsedRecord {
    /// The certificate id `<issuer-hash>-<SERIAL>` used by smki-extract and the event contract
    /// ([`crate::contract::record_key`]): the key under which a Party replaces its record.
    pub fn record_key(&self) -> String {
        format!(
            "{}-{}",
            hex::encode(self.issuer_hash),
            hex::encode_upper(&self.serial)
        )
    }
}

/// Reads an extract document record by record, in constant memory: for the Party-side
/// `sync` tool on a 16 GB full extract, and for tests. It checks what a Party must be able to
/// rely on — namespace and format version, every required field present and well-formed, and
/// that the number of records equals `recordCount` (so a truncated file is an error, never a
/// silently shorter copy) — but it is not a schema validator: use xmllint with
/// [`SCHEMA_PATH`] for that.
pub struct ExtractReader<R: BufRead> {
    reader: NsReader<R>,
    buf: Vec<u8>,
    text: String,
    header: Header,
    read: u64,
    /// The root element has been closed (or an error was returned): no more records.
    done: bool,
}

impl<R: BufRead> ExtractReader<R> {
    /// Reads up to and including the root start tag and checks its attributes.
    pub fn new(input: R) -> anyhow::Result<Self> {
        let mut reader = NsReader::from_reader(input);
        reader.config_mut().expand_empty_elements = true;
        let mut buf = Vec::new();
        let header = loop {
            buf.clear();
            let pos = reader.buffer_position();
            let (ns, event) = reader
                .read_resolved_event_into(&mut buf)
                .with_context(|| format!("XML error near byte {pos}"))?;
            match event {
                Event::Decl(_) | Event::Comment(_) | Event::PI(_) => {}
                Event::Text(t) if is_xml_whitespace(&t) => {}
                Event::Start(e) => {
                    ensure!(
                        is_ours(&ns) && e.local_name().as_ref() == ROOT_ELEMENT.as_bytes(),
                        "root element is {:?} (namespace {:?}), not {ROOT_ELEMENT} in {NAMESPACE}",
                        String::from_utf8_lossy(e.name().as_ref()),
                        ns
                    );
                    break parse_header(&e)?;
                }
                Event::Eof => bail!("no {ROOT_ELEMENT} element: empty or truncated document"),
                other => bail!("unexpected {other:?} before the root element"),
            }
        };
        Ok(ExtractReader {
            reader,
            buf,
            text: String::new(),
            header,
            read: 0,
            done: false,
        })
    }

    /// The root attributes.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The next record, or `None` after the root element closed with exactly `recordCount`
    /// records read (and nothing but whitespace or comments after it).
    pub fn next_record(&mut self) -> anyhow::Result<Option<ParsedRecord>> {
        if self.done {
            return Ok(None);
        }
        let result = self.read_record();
        if !matches!(result, Ok(Some(_))) {
            self.done = true;
        }
        result
    }

    fn read_record(&mut self) -> anyhow::Result<Option<ParsedRecord>> {
        let mut record: Option<RecordBuilder> = None;
        let mut field: Option<Field> = None;
        loop {
            self.buf.clear();
            let pos = self.reader.buffer_position();
            let (ns, event) = self
                .reader
                .read_resolved_event_into(&mut self.buf)
                .with_context(|| format!("XML error near byte {pos}"))?;
            let record_no = self.read + 1;
            match event {
                Event::Start(e) => {
                    let local = e.local_name();
                    let name = String::from_utf8_lossy(local.as_ref());
                    ensure!(is_ours(&ns), "element {name} near byte {pos} is not in {NAMESPACE}");
                    match (&record, field) {
                        (None, _) => {
                            ensure!(
                                name == RECORD_ELEMENT,
                                "unexpected element {name} in {ROOT_ELEMENT} near byte {pos}"
                            );
                            record = Some(RecordBuilder::default());
                        }
                        (Some(_), None) => {
                            field = Some(Field::from_name(&name).ok_or_else(|| {
                                anyhow!("record {record_no}: unknown element {name}")
                            })?);
                            self.text.clear();
                        }
                        (Some(_), Some(f)) => {
                            bail!("record {record_no}: element {name} inside {f:?}")
                        }
                    }
                }
                Event::End(_) => match (record.as_mut(), field.take()) {
                    (Some(r), Some(f)) => r
                        .set(f, &self.text)
                        .with_context(|| format!("record {record_no}: {f:?}"))?,
                    (Some(_), None) => {
                        let parsed = record
                            .take()
                            .expect("inside a record")
                            .build()
                            .with_context(|| format!("record {record_no}"))?;
                        self.read += 1;
                        ensure!(
                            self.read <= self.header.record_count,
                            "more records than the declared recordCount {}",
                            self.header.record_count
                        );
                        return Ok(Some(parsed));
                    }
                    (None, _) => {
                        ensure!(
                            self.read == self.header.record_count,
                            "document declares recordCount {} but holds {} records",
                            self.header.record_count,
                            self.read
                        );
                        self.expect_end_of_document()?;
                        return Ok(None);
                    }
                },
                Event::Text(t) => {
                    if field.is_some() {
                        self.text.push_str(&t.xml10_content()?);
                    } else {
                        ensure!(
                            is_xml_whitespace(&t),
                            "record {record_no}: text outside a field near byte {pos}"
                        );
                    }
                }
                Event::GeneralRef(r) => {
                    ensure!(field.is_some(), "entity reference outside a field near byte {pos}");
                    match r.resolve_char_ref()? {
                        Some(c) => self.text.push(c),
                        None => {
                            let name = r.decode()?;
                            let value = quick_xml::escape::resolve_predefined_entity(&name)
                                .ok_or_else(|| anyhow!("unknown entity &{name}; near byte {pos}"))?;
                            self.text.push_str(value);
                        }
                    }
                }
                Event::CData(c) => {
                    ensure!(field.is_some(), "CDATA outside a field near byte {pos}");
                    self.text.push_str(&c.decode()?);
                }
                Event::Comment(_) | Event::PI(_) => {}
                Event::Eof => bail!(
                    "document ends after {} of {} records without closing {ROOT_ELEMENT}: truncated",
                    self.read,
                    self.header.record_count
                ),
                other => bail!("unexpected {other:?} near byte {pos}"),
            }
        }
    }

    fn expect_end_of_document(&mut self) -> anyhow::Result<()> {
        loop {
            self.buf.clear();
            match self.reader.read_event_into(&mut self.buf)? {
                Event::Eof => return Ok(()),
                Event::Comment(_) | Event::PI(_) => {}
                Event::Text(t) if is_xml_whitespace(&t) => {}
                other => bail!("unexpected {other:?} after the root element"),
            }
        }
    }
}

impl<R: BufRead> Iterator for ExtractReader<R> {
    type Item = anyhow::Result<ParsedRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
}

/// Reads a whole (decompressed) extract document into memory: for tests and small deltas.
/// Use [`ExtractReader`] for full extracts.
pub fn read_extract(input: impl BufRead) -> anyhow::Result<(Header, Vec<ParsedRecord>)> {
    let mut reader = ExtractReader::new(input)?;
    let mut records = Vec::new();
    while let Some(rec) = reader.next_record()? {
        records.push(rec);
    }
    Ok((reader.header, records))
}

fn is_ours(ns: &ResolveResult<'_>) -> bool {
    matches!(ns, ResolveResult::Bound(Namespace(n)) if *n == NAMESPACE.as_bytes())
}

fn is_xml_whitespace(text: &[u8]) -> bool {
    text.iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

fn parse_header(root: &BytesStart<'_>) -> anyhow::Result<Header> {
    let (mut version, mut kind, mut date, mut count) = (None, None, None, None);
    for attr in root.attributes() {
        let attr = attr.context("root attributes")?;
        let key = attr.key.as_ref();
        if key == b"xmlns" || key.starts_with(b"xmlns:") || key.starts_with(b"xsi:") {
            continue;
        }
        let value = attr.unescape_value()?.into_owned();
        match key {
            b"formatVersion" => version = Some(value),
            b"extractType" => {
                kind = Some(
                    ExtractKind::from_attr(&value)
                        .ok_or_else(|| anyhow!("extractType {value:?} is not FULL or DELTA"))?,
                )
            }
            b"extractDate" => {
                date = Some(
                    NaiveDate::parse_from_str(&value, "%Y-%m-%d")
                        .with_context(|| format!("extractDate {value:?}"))?,
                )
            }
            b"recordCount" => {
                count = Some(
                    value
                        .parse::<u64>()
                        .with_context(|| format!("recordCount {value:?}"))?,
                )
            }
            other => bail!("unknown root attribute {}", String::from_utf8_lossy(other)),
        }
    }
    let version = version.ok_or_else(|| anyhow!("root without formatVersion"))?;
    ensure!(
        version == FORMAT_VERSION,
        "formatVersion {version:?}; this reader knows {FORMAT_VERSION:?}"
    );
    Ok(Header {
        kind: kind.ok_or_else(|| anyhow!("root without extractType"))?,
        date: date.ok_or_else(|| anyhow!("root without extractDate"))?,
        record_count: count.ok_or_else(|| anyhow!("root without recordCount"))?,
    })
}

/// The child elements of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    SubjectName,
    SubjectAltName,
    Serial,
    Status,
    Body,
    Role,
    Usage,
    ManufacturingFlag,
    Type,
    Issuer,
    IssuerHash,
    EntityId,
}

impl Field {
    fn from_name(name: &str) -> Option<Field> {
        Some(match name {
            "CertificateSubjectName" => Field::SubjectName,
            "CertificateSubjectAltName" => Field::SubjectAltName,
            "CertificateSerial" => Field::Serial,
            "CertificateStatus" => Field::Status,
            "CertificateBody" => Field::Body,
            "CertificateRole" => Field::Role,
            "CertificateUsage" => Field::Usage,
            "ManufacturingFlag" => Field::ManufacturingFlag,
            "CertificateType" => Field::Type,
            "CertificateIssuer" => Field::Issuer,
            "CertificateIssuerHash" => Field::IssuerHash,
            "EntityId" => Field::EntityId,
            _ => return None,
        })
    }
}

#[derive(Default)]
struct RecordBuilder {
    subject_name: Option<String>,
    subject_alt_name: Option<Eui64>,
    serial: Option<Vec<u8>>,
    status: Option<CertificateStatus>,
    certificate_der: Option<Vec<u8>>,
    role: Option<u8>,
    usage: Option<StoredUsage>,
    manufacturing_flag: Option<bool>,
    certificate_type: Option<StoredType>,
    issuer: Option<String>,
    issuer_hash: Option<[u8; 8]>,
    entity_id: Option<Eui64>,
}

fn set_once<T>(slot: &mut Option<T>, value: T) -> anyhow::Result<()> {
    ensure!(slot.is_none(), "appears twice");
    *slot = Some(value);
    Ok(())
}

impl RecordBuilder {
    fn set(&mut self, field: Field, text: &str) -> anyhow::Result<()> {
        // DNs are kept as written; every other value is a token.
        let token = text.trim_matches(|c| matches!(c, ' ' | '\t' | '\r' | '\n'));
        match field {
            Field::SubjectName => set_once(&mut self.subject_name, text.to_owned()),
            Field::Issuer => set_once(&mut self.issuer, text.to_owned()),
            Field::SubjectAltName => set_once(&mut self.subject_alt_name, token.parse()?),
            Field::EntityId => set_once(&mut self.entity_id, token.parse()?),
            Field::Serial => {
                let serial = hex::decode(token).with_context(|| format!("{token:?} is not hex"))?;
                ensure!(!serial.is_empty(), "empty serial");
                set_once(&mut self.serial, serial)
            }
            Field::Status => set_once(
                &mut self.status,
                status_from_code(token).ok_or_else(|| anyhow!("unknown status {token:?}"))?,
            ),
            Field::Body => {
                let compact: Vec<u8> = token.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
                let der = BASE64.decode(compact).context("not Base64")?;
                ensure!(!der.is_empty(), "empty certificate");
                set_once(&mut self.certificate_der, der)
            }
            Field::Role => set_once(
                &mut self.role,
                token
                    .parse()
                    .with_context(|| format!("role {token:?} is not 0..=255"))?,
            ),
            Field::Usage => set_once(
                &mut self.usage,
                usage_from_code(token).ok_or_else(|| anyhow!("unknown usage {token:?}"))?,
            ),
            Field::ManufacturingFlag => set_once(
                &mut self.manufacturing_flag,
                match token {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => bail!("{token:?} is not an xs:boolean"),
                },
            ),
            Field::Type => set_once(
                &mut self.certificate_type,
                type_from_name(token).ok_or_else(|| anyhow!("unknown type {token:?}"))?,
            ),
            Field::IssuerHash => {
                let mut hash = [0u8; 8];
                hex::decode_to_slice(token, &mut hash)
                    .with_context(|| format!("{token:?} is not 16 hex digits"))?;
                set_once(&mut self.issuer_hash, hash)
            }
        }
    }

    fn build(self) -> anyhow::Result<ParsedRecord> {
        fn need<T>(value: Option<T>, name: &str) -> anyhow::Result<T> {
            value.ok_or_else(|| anyhow!("missing {name}"))
        }
        ensure!(
            self.subject_name.is_some() != self.subject_alt_name.is_some(),
            "needs exactly one of CertificateSubjectName and CertificateSubjectAltName"
        );
        Ok(ParsedRecord {
            subject_name: self.subject_name,
            subject_alt_name: self.subject_alt_name,
            serial: need(self.serial, "CertificateSerial")?,
            status: need(self.status, "CertificateStatus")?,
            certificate_der: need(self.certificate_der, "CertificateBody")?,
            role: self.role,
            usage: need(self.usage, "CertificateUsage")?,
            manufacturing_flag: need(self.manufacturing_flag, "ManufacturingFlag")?,
            certificate_type: need(self.certificate_type, "CertificateType")?,
            issuer: need(self.issuer, "CertificateIssuer")?,
            issuer_hash: need(self.issuer_hash, "CertificateIssuerHash")?,
            entity_id: self.entity_id,
        })
    }
}

// -------------------------------------------------------------------------------- tests

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certificate;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    fn manifest_dir() -> &'static Path {
        Path::new(env!("CARGO_MANIFEST_DIR"))
    }

    fn date() -> NaiveDate {
        NaiveDate::from_ymd_opt(2025, 1, 5).unwrap()
    }

    /// What the store holds for a certificate (built as ingest builds it), with its DER.
    fn record_from_der(der: Vec<u8>, status: CertificateStatus, mfg: bool) -> CertificateRecord {
        let info = certificate::parse(&der).unwrap();
        let mut record = crate::ingest::record_for(&info, status, mfg, "e1", 1_790_000_000_000);
        record.certificate_der = der;
        record
    }

    fn fixture_ders() -> Vec<(String, Vec<u8>)> {
        let dir = manifest_dir().join("tests/fixtures/gbcs-test-certs");
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "pem"))
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|p| {
                let der = certificate::der_from_pem(&std::fs::read_to_string(&p).unwrap()).unwrap();
                (p.file_name().unwrap().to_string_lossy().into_owned(), der)
            })
            .collect()
    }

    /// A hand-made OCA record (no DER parsing): role 0, Entity ID, and a DN with every XML
    /// markup character. Its body is a real CA certificate so that openssl can read it.
    fn synthetic_oca() -> CertificateRecord {
        let hierarchy = crate::gen::pki::Hierarchy::generate(11).unwrap();
        CertificateRecord {
            certificate_der: hierarchy.root_oca.certificate_der().to_vec(),
            status: CertificateStatus::InUse as i32,
            manufacturing_flag: false,
            certificate_type: StoredType::Oca as i32,
            subject_id: vec![0x90, 0xB3, 0xD5, 0x1F, 0x30, 0x00, 0x00, 0x00],
            role: 0,
            usage: StoredUsage::CertSign as i32,
            issuer_name_der: b"\x30\x0b synthetic".to_vec(),
            serial: vec![0x0A, 0xBC, 0x00],
            issuer: "OU=00, CN=Root & <Test> \"OCA\" 'x'".into(),
            subject: "OU=00, CN=Root & <Test> \"OCA\" 'x'".into(),
            ..Default::default()
        }
    }

    /// Every fixture certificate (devices and organisations) with statuses cycling through all
    /// five and alternating manufacturing flags, the four CA certificates of a generated
    /// hierarchy (real OCA and DCA DER) and the synthetic OCA record.
    fn sample_records() -> Vec<CertificateRecord> {
        let mut records: Vec<CertificateRecord> = fixture_ders()
            .into_iter()
            .enumerate()
            .map(|(i, (_, der))| record_from_der(der, CertificateStatus::ALL[i % 5], i % 2 == 0))
            .collect();
        let h = crate::gen::pki::Hierarchy::generate(7).unwrap();
        for ca in [&h.root_oca, &h.issuing_oca, &h.root_dca, &h.issuing_dca] {
            records.push(record_from_der(
                ca.certificate_der().to_vec(),
                CertificateStatus::InUse,
                false,
            ));
        }
        records.push(synthetic_oca());
        records
    }

    fn write_doc(kind: ExtractKind, records: &[CertificateRecord]) -> Vec<u8> {
        let mut w = ExtractWriter::new(Vec::new(), kind, date(), records.len() as u64).unwrap();
        for rec in records {
            w.write_record(rec).unwrap();
        }
        w.finish().unwrap()
    }

    /// Runs the independent validator; panics (pointing at scripts/setup) when it is missing.
    fn xmllint(doc: &[u8]) -> (bool, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("extract.xml");
        std::fs::write(&path, doc).unwrap();
        let schema = manifest_dir().join(SCHEMA_PATH);
        let out = Command::new("xmllint")
            .arg("--noout")
            .arg("--schema")
            .arg(&schema)
            .arg(&path)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run xmllint ({e}): install libxml2-utils, e.g. with scripts/setup")
            });
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn assert_valid(doc: &[u8]) {
        let (ok, stderr) = xmllint(doc);
        assert!(ok, "xmllint rejected the document:\n{stderr}");
    }

    /// What the file must say about `rec`, spelled out independently of the writer.
    fn assert_matches(parsed: &ParsedRecord, rec: &CertificateRecord) {
        let device = rec.certificate_type == StoredType::Device as i32;
        let id = Eui64::from_slice(&rec.subject_id);
        assert_eq!(parsed.subject_alt_name, if device { id } else { None });
        assert_eq!(parsed.subject_name, (!device).then(|| rec.subject.clone()));
        assert_eq!(parsed.entity_id, if device { None } else { id });
        assert_eq!(parsed.serial, rec.serial);
        assert_eq!(parsed.status as i32, rec.status);
        assert_eq!(parsed.certificate_der, rec.certificate_der);
        assert_eq!(parsed.role.map(i32::from).unwrap_or(-1), rec.role);
        assert_eq!(parsed.usage as i32, rec.usage);
        assert_eq!(parsed.manufacturing_flag, rec.manufacturing_flag);
        assert_eq!(parsed.certificate_type as i32, rec.certificate_type);
        assert_eq!(parsed.issuer, rec.issuer);
        assert_eq!(parsed.issuer_hash, issuer_hash(&rec.issuer_name_der));
        assert_eq!(
            parsed.record_key(),
            crate::contract::record_key(&rec.issuer_name_der, &rec.serial)
        );
    }

    #[test]
    fn round_trip_of_real_certificates() {
        let records = sample_records();
        assert!(records.len() > 400);
        let doc = write_doc(ExtractKind::Delta, &records);
        let (header, parsed) = read_extract(&doc[..]).unwrap();
        assert_eq!(
            header,
            Header {
                kind: ExtractKind::Delta,
                date: date(),
                record_count: records.len() as u64
            }
        );
        assert_eq!(parsed.len(), records.len());
        for (p, r) in parsed.iter().zip(&records) {
            assert_matches(p, r);
        }
        // Every kind of certificate is covered.
        for t in [
            StoredType::Oca,
            StoredType::Dca,
            StoredType::Organisation,
            StoredType::Device,
        ] {
            assert!(parsed.iter().any(|p| p.certificate_type == t), "{t:?}");
        }
        // Spot checks against the fixtures' documented facts.
        let dev = &parsed[0];
        assert_eq!(
            dev.subject_alt_name.unwrap().to_string(),
            "00-DB-12-34-56-78-90-01"
        );
        assert_eq!(dev.issuer, "CN=E357");
        let org = parsed
            .iter()
            .find(|p| p.certificate_type == StoredType::Organisation && p.role == Some(0x87))
            .expect("an XmlSign organisation certificate");
        assert!(org.entity_id.is_some());
        // One record per line, between the declaration + root line and the end tag.
        let text = std::str::from_utf8(&doc).unwrap();
        assert_eq!(text.lines().count(), records.len() + 3);
        assert!(text
            .lines()
            .nth(2)
            .unwrap()
            .starts_with("<Certificate><CertificateSubjectAltName>"));
    }

    #[test]
    fn documents_validate_with_xmllint() {
        let records = sample_records();
        let delta = write_doc(ExtractKind::Delta, &records);
        assert_valid(&delta);
        let in_use: Vec<_> = records
            .iter()
            .filter(|r| r.status == CertificateStatus::InUse as i32)
            .cloned()
            .collect();
        let full = write_doc(ExtractKind::Full, &in_use);
        assert_valid(&full);
        assert_valid(&write_doc(ExtractKind::Delta, &[]));
        let text = String::from_utf8(full).unwrap();
        assert!(text.starts_with(&format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<SMKIRepositoryExtract xmlns=\"urn:smki-extract:v1\" formatVersion=\"1\" extractType=\"FULL\" extractDate=\"2025-01-05\" recordCount=\"{}\">\n",
            in_use.len()
        )));
        assert!(text.ends_with("</SMKIRepositoryExtract>\n"));
    }

    fn replace_once(doc: &str, from: &str, to: &str) -> String {
        assert!(
            doc.contains(from),
            "mutation anchor {from:?} not in the document"
        );
        doc.replacen(from, to, 1)
    }

    #[test]
    fn schema_rejects_invalid_documents() {
        // A device (first fixture, status P) and an organisation certificate.
        let all = sample_records();
        let device = all[0].clone();
        let org = all
            .iter()
            .find(|r| r.certificate_type == StoredType::Organisation as i32)
            .unwrap()
            .clone();
        let doc = String::from_utf8(write_doc(ExtractKind::Delta, &[device.clone(), org])).unwrap();
        assert_valid(doc.as_bytes());

        let serial = hex::encode_upper(&device.serial);
        let body_start = doc.find("<CertificateBody>").unwrap();
        let body_end = doc.find("</CertificateBody>").unwrap() + "</CertificateBody>".len();
        let body = &doc[body_start..body_end];
        let m = |from: &str, to: &str| replace_once(&doc, from, to);
        let status_p = "<CertificateStatus>P</CertificateStatus>";
        let device_id = "00-DB-12-34-56-78-90-01";
        let alt_name = "<CertificateSubjectAltName>";
        let hash_start = doc.find("<CertificateIssuerHash>").unwrap() + 23;
        let hash = &doc[hash_start..hash_start + 16];
        let mutations: Vec<(&str, String)> = vec![
            (
                "status letter X",
                m(status_p, "<CertificateStatus>X</CertificateStatus>"),
            ),
            (
                "status as a word",
                m(status_p, "<CertificateStatus>Pending</CertificateStatus>"),
            ),
            ("lowercase serial", m(&serial, &serial.to_lowercase())),
            (
                "serial with a leading zero octet",
                m(&serial, &format!("00{serial}")),
            ),
            ("serial of odd length", m(&serial, &serial[1..])),
            (
                "serial with separators",
                m(&serial, &format!("{}:{}", &serial[..2], &serial[2..])),
            ),
            (
                "recordCount not a number",
                m("recordCount=\"2\"", "recordCount=\"two\""),
            ),
            (
                "recordCount negative",
                m("recordCount=\"2\"", "recordCount=\"-2\""),
            ),
            ("missing recordCount", m(" recordCount=\"2\"", "")),
            ("missing body", m(body, "")),
            (
                "body not Base64",
                m("<CertificateBody>", "<CertificateBody>*"),
            ),
            (
                "body with PEM armour",
                m(
                    "<CertificateBody>",
                    "<CertificateBody>-----BEGIN CERTIFICATE-----",
                ),
            ),
            (
                "body with a line break",
                m("<CertificateBody>MII", "<CertificateBody>MIIB\nAAAA"),
            ),
            ("empty body", m(body, "<CertificateBody></CertificateBody>")),
            (
                "lowercase Device ID",
                m(device_id, &device_id.to_lowercase()),
            ),
            (
                "Device ID without hyphens",
                m(device_id, &device_id.replace('-', "")),
            ),
            (
                "subject name and alt name",
                m(
                    alt_name,
                    &format!("<CertificateSubjectName>CN=x</CertificateSubjectName>{alt_name}"),
                ),
            ),
            (
                "fields out of order",
                replace_once(
                    &m(status_p, ""),
                    "<CertificateSerial>",
                    &format!("{status_p}<CertificateSerial>"),
                ),
            ),
            (
                "extract type WEEKLY",
                m("extractType=\"DELTA\"", "extractType=\"WEEKLY\""),
            ),
            (
                "file tag DELT as type",
                m("extractType=\"DELTA\"", "extractType=\"DELT\""),
            ),
            (
                "date with a time",
                m(
                    "extractDate=\"2025-01-05\"",
                    "extractDate=\"2025-01-05T00:00:00\"",
                ),
            ),
            (
                "format version 2",
                m("formatVersion=\"1\"", "formatVersion=\"2\""),
            ),
            (
                "another namespace",
                m("urn:smki-extract:v1", "urn:smki-extract:v2"),
            ),
            (
                "role 256",
                m(
                    "<CertificateUsage>",
                    "<CertificateRole>256</CertificateRole><CertificateUsage>",
                ),
            ),
            (
                "manufacturing flag yes",
                m("<ManufacturingFlag>true<", "<ManufacturingFlag>yes<"),
            ),
            (
                "missing manufacturing flag",
                m("<ManufacturingFlag>true</ManufacturingFlag>", ""),
            ),
            (
                "unknown certificate type",
                m("<CertificateType>Device<", "<CertificateType>Meter<"),
            ),
            (
                "unknown usage",
                m("<CertificateUsage>", "<CertificateUsage>X"),
            ),
            ("uppercase issuer hash", m(hash, "ABCDEF0123456789")),
            (
                "unknown element",
                m("</Certificate>", "<Comment>x</Comment></Certificate>"),
            ),
        ];
        for (what, bad) in &mutations {
            assert_ne!(bad, &doc, "{what}: mutation changed nothing");
            let (ok, _) = xmllint(bad.as_bytes());
            assert!(!ok, "xmllint accepted a document with {what}");
        }
        // The reader (no schema) refuses what would corrupt a Party's copy.
        for what in [
            "status letter X",
            "serial with separators",
            "recordCount not a number",
            "missing recordCount",
            "missing body",
            "body not Base64",
            "empty body",
            "subject name and alt name",
            "extract type WEEKLY",
            "format version 2",
            "another namespace",
            "role 256",
            "manufacturing flag yes",
            "missing manufacturing flag",
            "unknown certificate type",
            "unknown usage",
            "unknown element",
        ] {
            let (_, bad) = mutations.iter().find(|(w, _)| *w == what).unwrap();
            assert!(
                read_extract(bad.as_bytes()).is_err(),
                "reader accepted {what}"
            );
        }
    }

    #[test]
    fn certificate_body_is_der_that_openssl_reads() {
        let records = [sample_records()[0].clone(), synthetic_oca()];
        let doc = String::from_utf8(write_doc(ExtractKind::Delta, &records)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        // Taken from the XML text itself, not through the reader under test.
        for (i, chunk) in doc.split("<CertificateBody>").skip(1).enumerate() {
            let b64 = &chunk[..chunk.find("</CertificateBody>").unwrap()];
            let der = BASE64.decode(b64).unwrap();
            let path = dir.path().join(format!("cert{i}.der"));
            std::fs::write(&path, &der).unwrap();
            let out = Command::new("openssl")
                .args(["x509", "-inform", "DER", "-noout", "-serial", "-in"])
                .arg(&path)
                .output()
                .unwrap_or_else(|e| panic!("cannot run openssl ({e}): see scripts/setup"));
            assert!(
                out.status.success(),
                "openssl: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let expected = certificate::parse(&der).unwrap().serial_hex();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                format!("serial={expected}")
            );
        }
        // The device's CertificateSerial is the serial openssl sees.
        assert!(doc.contains(&format!(
            "<CertificateSerial>{}</CertificateSerial>",
            hex::encode_upper(&records[0].serial)
        )));
    }

    #[test]
    fn record_count_is_enforced() {
        let rec = sample_records().swap_remove(0);
        let mut w = ExtractWriter::new(Vec::new(), ExtractKind::Delta, date(), 2).unwrap();
        w.write_record(&rec).unwrap();
        let err = w.finish().expect_err("one record short");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        let mut w = ExtractWriter::new(Vec::new(), ExtractKind::Delta, date(), 1).unwrap();
        w.write_record(&rec).unwrap();
        let err = w.write_record(&rec).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        // The refused record left no trace: the document is still complete and valid.
        let doc = w.finish().unwrap();
        assert_valid(&doc);
        assert_eq!(read_extract(&doc[..]).unwrap().1.len(), 1);

        // The reader notices a wrong count and a truncated file.
        let text = String::from_utf8(doc).unwrap();
        let lied = text.replacen("recordCount=\"1\"", "recordCount=\"2\"", 1);
        assert!(read_extract(lied.as_bytes()).is_err());
        let cut = &text[..text.len() - 30];
        assert!(read_extract(cut.as_bytes()).is_err());
        let empty_claiming_one = write_doc(ExtractKind::Full, &[]);
        let lied = String::from_utf8(empty_claiming_one).unwrap().replacen(
            "recordCount=\"0\"",
            "recordCount=\"1\"",
            1,
        );
        assert!(read_extract(lied.as_bytes()).is_err());
    }

    #[test]
    fn invalid_records_are_refused_without_partial_output() {
        let good = sample_records().swap_remove(0);
        let mut bad_records = Vec::new();
        let mut r = good.clone();
        r.subject_id.truncate(7);
        bad_records.push(("7-byte Device ID", r));
        let mut r = good.clone();
        r.status = 0;
        bad_records.push(("unspecified status", r));
        let mut r = good.clone();
        r.status = 42;
        bad_records.push(("unknown status", r));
        let mut r = good.clone();
        r.usage = 0;
        bad_records.push(("unspecified usage", r));
        let mut r = good.clone();
        r.certificate_type = 0;
        bad_records.push(("unspecified type", r));
        let mut r = good.clone();
        r.role = 300;
        bad_records.push(("role 300", r));
        let mut r = good.clone();
        r.serial.clear();
        bad_records.push(("empty serial", r));
        let mut r = good.clone();
        r.certificate_der.clear();
        bad_records.push(("empty DER", r));
        let mut r = synthetic_oca();
        r.subject.clear();
        bad_records.push(("OCA without subject", r));

        let mut w = ExtractWriter::new(Vec::new(), ExtractKind::Delta, date(), 1).unwrap();
        for (what, rec) in &bad_records {
            let err = w.write_record(rec).expect_err(what);
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{what}");
        }
        w.write_record(&good).unwrap();
        let doc = w.finish().unwrap();
        assert_valid(&doc);
        assert_eq!(read_extract(&doc[..]).unwrap().1.len(), 1);
    }

    #[test]
    fn output_is_deterministic() {
        let records = sample_records();
        let a = write_doc(ExtractKind::Full, &records);
        let b = write_doc(ExtractKind::Full, &records);
        assert_eq!(a, b);
        // Through a writer that flushes several times (records > FLUSH_AT bytes).
        assert!(a.len() > 2 * FLUSH_AT);
        let mut chunks = Vec::new();
        let w = ExtractWriter::new(&mut chunks, ExtractKind::Full, date(), records.len() as u64);
        let mut w = w.unwrap();
        for r in &records {
            w.write_record(r).unwrap();
        }
        assert_eq!(
            w.bytes_written(),
            a.len() as u64 - "</SMKIRepositoryExtract>\n".len() as u64
        );
        w.finish().unwrap();
        assert_eq!(chunks, a);
    }

    #[test]
    fn distinguished_names_are_escaped_and_still_valid() {
        let mut oca = synthetic_oca();
        oca.subject = "CN=A&B <C> \"D\" 'E', O=tab\there".into();
        let doc = write_doc(ExtractKind::Delta, &[oca.clone()]);
        let text = std::str::from_utf8(&doc).unwrap();
        assert!(text.contains(
            "<CertificateSubjectName>CN=A&amp;B &lt;C&gt; &quot;D&quot; &apos;E&apos;, O=tab\\09here</CertificateSubjectName>"
        ));
        assert!(text.contains(
            "<CertificateIssuer>OU=00, CN=Root &amp; &lt;Test&gt; &quot;OCA&quot; &apos;x&apos;</CertificateIssuer>"
        ));
        assert_valid(&doc);
        let (_, parsed) = read_extract(&doc[..]).unwrap();
        assert_eq!(
            parsed[0].subject_name.as_deref(),
            Some("CN=A&B <C> \"D\" 'E', O=tab\\09here")
        );
        assert_eq!(parsed[0].issuer, oca.issuer);

        // Characters XML 1.0 cannot carry at all.
        oca.subject = "CN=nul\u{0}bell\u{7}nonchar\u{FFFF}ü".into();
        let doc = write_doc(ExtractKind::Delta, &[oca]);
        assert_valid(&doc);
        let (_, parsed) = read_extract(&doc[..]).unwrap();
        assert_eq!(
            parsed[0].subject_name.as_deref(),
            Some("CN=nul\\00bell\\07nonchar\\EF\\BF\\BFü")
        );
    }

    #[test]
    fn reader_accepts_other_spellings_of_the_same_document() {
        let doc = String::from_utf8(write_doc(ExtractKind::Delta, &[synthetic_oca()])).unwrap();
        let (_, expected) = read_extract(doc.as_bytes()).unwrap();
        // Prefixed namespace, CDATA, character references and comments mean the same.
        let prefixed = doc
            .replace('<', "<x:")
            .replace("<x:/", "</x:")
            .replace("<x:?", "<?")
            .replace("xmlns=", "xmlns:x=")
            .replace("&amp;", "<![CDATA[&]]>")
            .replace("&lt;", "&#60;")
            .replace("<x:Certificate>", "<!-- c --><x:Certificate>");
        assert!(prefixed.contains("<x:CertificateSerial>") && prefixed.contains("CDATA"));
        let (_, again) = read_extract(prefixed.as_bytes()).unwrap();
        assert_eq!(again, expected);
        // A document in another namespace is not ours.
        assert!(read_extract(doc.replace(NAMESPACE, "urn:other").as_bytes()).is_err());
    }

    #[test]
    fn file_names_follow_the_sec() {
        assert_eq!(
            ExtractKind::Full.file_name(date()),
            "SMKIKR_FULL_2025-01-05.xml.gz"
        );
        assert_eq!(
            ExtractKind::Delta.file_name(date()),
            "SMKIKR_DELT_2025-01-05.xml.gz"
        );
        assert_eq!(ExtractKind::from_attr("DELTA"), Some(ExtractKind::Delta));
        assert_eq!(ExtractKind::from_attr("DELT"), None);
    }

    /// Throughput of the XML writer alone (no compression) on device records, the bulk of a
    /// full extract. Run: `cargo test --release extract::xml -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn throughput_of_device_records() {
        const N: u64 = 500_000;
        let devices: Vec<CertificateRecord> = sample_records()
            .into_iter()
            .filter(|r| r.certificate_type == StoredType::Device as i32)
            .collect();
        for _ in 0..2 {
            let start = std::time::Instant::now();
            let mut w = ExtractWriter::new(io::sink(), ExtractKind::Full, date(), N).unwrap();
            for i in 0..N {
                w.write_record(&devices[i as usize % devices.len()])
                    .unwrap();
            }
            let bytes = w.bytes_written();
            w.finish().unwrap();
            let secs = start.elapsed().as_secs_f64();
            println!(
                "{N} device records, {:.1} MB of XML in {:.3} s: {:.0} MB/s, {:.2} M records/s",
                bytes as f64 / 1e6,
                secs,
                bytes as f64 / 1e6 / secs,
                N as f64 / 1e6 / secs
            );
        }
    }
}
