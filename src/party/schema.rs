//! XSD validation of extract documents, streaming, by `xmllint` in a child process.
//!
//! Why `xmllint` (libxml2's own command-line tool) rather than the `libxml` crate: the
//! crate's safe API validates a parsed DOM document, which for a 16 GB full extract means
//! 16 GB of tree in memory; streaming validation (libxml2's reader or
//! `xmlSchemaValidateStream`) is reachable only through its raw, unsafe bindings and would
//! add `libxml2-dev` and bindgen to the build. `xmllint --stream --schema` is the
//! validator DESIGN §6 already names as the independent check of every file, streams in
//! constant memory, and runs in a process of its own — so validation proceeds on another
//! core in parallel with our own decompression, parsing and writes, and a libxml2 fault
//! cannot take the Party's copy down with it. The price: `xmllint` (Debian
//! `libxml2-utils`) must be installed where `sync`/`verify` run; when it is absent the
//! error says so and how to fix it.
//!
//! The schema is compiled into the binary ([`SCHEMA_XSD`]) and written to a private
//! temporary file for `xmllint`, so the tools need no repository checkout at run time.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;

use anyhow::{bail, Context, Result};

/// The extract schema (`schema/smki-extract-v1.xsd`), embedded at build time.
pub const SCHEMA_XSD: &str = include_str!("../../schema/smki-extract-v1.xsd");

/// Environment variable naming the `xmllint` to use (default: the one on `PATH`).
pub const XMLLINT_ENV: &str = "SMKI_XMLLINT";

/// Chunks of decompressed XML queued for the validator before the reader waits for it.
const QUEUE_CHUNKS: usize = 32;

/// Most bytes of `xmllint`'s error output kept for the message.
const STDERR_KEPT: usize = 4096;

/// A usable validator: the `xmllint` binary and the schema written where it can read it.
/// The schema file is removed when this is dropped.
pub struct Schema {
    xmllint: PathBuf,
    schema_file: PathBuf,
}

impl Schema {
    /// Find `xmllint` (`$SMKI_XMLLINT`, else `PATH`) and write the embedded schema to a
    /// temporary file. Fails with a message saying what to install when `xmllint` is absent.
    pub fn load() -> Result<Schema> {
        let xmllint = find_xmllint()?;
        let schema_file = std::env::temp_dir().join(format!(
            "smki-extract-v1-{}-{}.xsd",
            std::process::id(),
            unique()
        ));
        std::fs::write(&schema_file, SCHEMA_XSD)
            .with_context(|| format!("writing the schema to {}", schema_file.display()))?;
        Ok(Schema {
            xmllint,
            schema_file,
        })
    }

    /// The `xmllint` in use.
    pub fn xmllint(&self) -> &Path {
        &self.xmllint
    }

    /// Start validating one document: feed its bytes with [`Validation::feed`], then
    /// [`Validation::finish`].
    pub fn start(&self) -> Result<Validation> {
        let mut child = Command::new(&self.xmllint)
            .arg("--noout")
            .arg("--stream")
            .arg("--schema")
            .arg(&self.schema_file)
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", self.xmllint.display()))?;
        let stdin = child.stdin.take().expect("piped stdin");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE_CHUNKS);
        let feeder = std::thread::Builder::new()
            .name("xmllint-feed".into())
            .spawn(move || feed_all(stdin, rx))?;
        let errors = std::thread::Builder::new()
            .name("xmllint-err".into())
            .spawn(move || {
                let mut kept = Vec::new();
                let mut buf = [0u8; 8192];
                while let Ok(n) = stderr.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let room = STDERR_KEPT.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
                String::from_utf8_lossy(&kept).into_owned()
            })?;
        Ok(Validation {
            child,
            tx: Some(tx),
            feeder: Some(feeder),
            errors: Some(errors),
        })
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.schema_file);
    }
}

/// One document being validated by a running `xmllint`.
pub struct Validation {
    child: Child,
    tx: Option<SyncSender<Vec<u8>>>,
    feeder: Option<JoinHandle<()>>,
    errors: Option<JoinHandle<String>>,
}

impl Validation {
    /// Queue the next bytes of the document (blocks only when the validator is
    /// [`QUEUE_CHUNKS`] chunks behind). Once `xmllint` has stopped reading — it found the
    /// document invalid — further bytes are dropped; [`finish`](Self::finish) reports why.
    pub fn feed(&mut self, bytes: &[u8]) {
        if let Some(tx) = &self.tx {
            if tx.send(bytes.to_vec()).is_err() {
                self.tx = None;
            }
        }
    }

    /// End of the document: wait for the verdict. `Err` carries `xmllint`'s explanation,
    /// with its `-:LINE:` prefixes turned into "line LINE:" (lines of the decompressed XML).
    pub fn finish(mut self) -> std::result::Result<(), String> {
        self.tx = None;
        if let Some(f) = self.feeder.take() {
            let _ = f.join();
        }
        let status = self.child.wait();
        let stderr = self
            .errors
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        match status {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(explain(&stderr, &format!("xmllint exited with {s}"))),
            Err(e) => Err(format!("waiting for xmllint: {e}")),
        }
    }

    /// Stop validating (the document failed another check first).
    pub fn abort(mut self) {
        self.tx = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(f) = self.feeder.take() {
            let _ = f.join();
        }
        if let Some(e) = self.errors.take() {
            let _ = e.join();
        }
    }
}

impl Drop for Validation {
    fn drop(&mut self) {
        if self.feeder.is_some() {
            self.tx = None;
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn feed_all(mut stdin: ChildStdin, rx: std::sync::mpsc::Receiver<Vec<u8>>) {
    for chunk in rx {
        if stdin.write_all(&chunk).is_err() {
            // xmllint stopped reading (it exits at the first fatal error): drain the queue
            // so the reader is never blocked, and let finish() report the verdict.
            break;
        }
    }
    drop(stdin);
}

/// The useful lines of xmllint's complaint: its validity errors, without the closing
/// "- fails to validate" line, and with positions as lines of the document.
fn explain(stderr: &str, fallback: &str) -> String {
    let lines: Vec<String> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.ends_with("fails to validate"))
        .take(3)
        .map(|l| match l.strip_prefix("-:") {
            Some(rest) => format!("line {rest}"),
            None => l.to_string(),
        })
        .collect();
    if lines.is_empty() {
        fallback.to_string()
    } else {
        lines.join("; ")
    }
}

fn find_xmllint() -> Result<PathBuf> {
    find_xmllint_from(
        std::env::var_os(XMLLINT_ENV),
        std::env::var_os("PATH").unwrap_or_default(),
    )
}

fn find_xmllint_from(
    explicit: Option<std::ffi::OsString>,
    path: std::ffi::OsString,
) -> Result<PathBuf> {
    if let Some(p) = explicit {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!(
            "{XMLLINT_ENV}={} is not a file: XSD validation needs xmllint",
            p.display()
        );
    }
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("xmllint");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "XSD validation of the extract files needs xmllint, which is not on PATH: install \
         it (Debian/Ubuntu: apt-get install libxml2-utils) or set {XMLLINT_ENV} to its path"
    )
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A reader that hands a copy of everything read through it to a [`Validation`].
pub struct TeeToValidator<'a, R: Read> {
    /// The source (the decompressed document).
    pub inner: R,
    /// Where the copy goes.
    pub validation: &'a mut Validation,
}

impl<R: Read> Read for TeeToValidator<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.validation.feed(&buf[..n]);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(doc: &str) -> std::result::Result<(), String> {
        let schema = Schema::load().expect("xmllint installed (scripts/setup)");
        let mut v = schema.start().unwrap();
        for chunk in doc.as_bytes().chunks(7) {
            v.feed(chunk);
        }
        v.finish()
    }

    const EMPTY_DELTA: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
        <SMKIRepositoryExtract xmlns=\"urn:smki-extract:v1\" formatVersion=\"1\" \
        extractType=\"DELTA\" extractDate=\"2026-11-02\" recordCount=\"0\">\n\
        </SMKIRepositoryExtract>\n";

    #[test]
    fn a_valid_document_passes_and_an_invalid_one_is_explained() {
        validate(EMPTY_DELTA).unwrap();
        let bad = EMPTY_DELTA.replace("DELTA", "WEEKLY");
        let err = validate(&bad).unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("extractType"), "{err}");
        // A document that stops in the middle.
        let err = validate(&EMPTY_DELTA[..EMPTY_DELTA.len() - 10]).unwrap_err();
        assert!(!err.is_empty());
    }

    #[test]
    fn a_large_invalid_document_does_not_block_the_feeder() {
        // xmllint gives up early; the rest of the bytes must not deadlock us.
        let schema = Schema::load().unwrap();
        let mut v = schema.start().unwrap();
        v.feed(b"<not-xml");
        let junk = vec![b'x'; 1 << 20];
        for _ in 0..64 {
            v.feed(&junk);
        }
        assert!(v.finish().is_err());
    }

    #[test]
    fn a_missing_xmllint_is_named_with_what_to_install() {
        let err = find_xmllint_from(None, "/nonexistent:/also-not".into())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not on PATH"), "{err}");
        assert!(err.contains("libxml2-utils"), "{err}");
        let err = find_xmllint_from(Some("/nonexistent/xmllint".into()), "".into())
            .unwrap_err()
            .to_string();
        assert!(err.contains(XMLLINT_ENV), "{err}");
        let found = find_xmllint_from(None, "/nonexistent:/usr/bin".into()).unwrap();
        assert_eq!(found, Path::new("/usr/bin/xmllint"));
    }
}
