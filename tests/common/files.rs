//! Every file a test's run published is read back by tools nobody here wrote: `gzip -t`,
//! `pigz -t`, `gzip -dc | xmllint --schema` against the project's XSD, Python's `gzip` and
//! XML parser (`tests/support/read_extracts.py`: every member, `recordCount` against the
//! records), `openssl` on every `CertificateBody` (all of them as one PEM bundle, the first
//! and last also as DER with `openssl x509 -inform DER`) and `sha256sum -c` of the sidecars.

use std::path::Path;
use std::process::Command;

/// Check every `*.xml.gz` in `dir` (a run's output directory); nothing to check when the run
/// published nothing (no directory, or no file).
pub fn assert_published_files_valid(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<String> = entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".xml.gz") && !n.starts_with('.'))
        .collect();
    files.sort();
    if files.is_empty() {
        return;
    }
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/smki-extract-v1.xsd");
    let run = |cmd: &mut Command, what: &str| {
        let out = cmd
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| panic!("{what}: {e} (scripts/setup installs the tools)"));
        assert!(
            out.status.success(),
            "{what} refused a file in {}: {}{}",
            dir.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(Command::new("gzip").arg("-t").args(&files), "gzip -t");
    run(Command::new("pigz").arg("-t").args(&files), "pigz -t");
    // Decompressed by gzip first: libxml2's own gzip reader stops making sense at the first
    // member boundary of a multi-member file (seen here: a 2-member full), so xmllint is
    // given the XML.
    let scratch = tempfile::tempdir().unwrap();
    let mut xml = Vec::new();
    for f in &files {
        let out = scratch.path().join(f.trim_end_matches(".gz"));
        let file = std::fs::File::create(&out).unwrap();
        run(
            Command::new("gzip").arg("-dc").arg(f).stdout(file),
            "gzip -dc",
        );
        xml.push(out);
    }
    run(
        Command::new("xmllint")
            .args(["--noout", "--schema"])
            .arg(&schema)
            .args(&xml),
        "xmllint --schema",
    );
    // Python's gzip and XML parser, then openssl on every certificate body.
    let support = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/read_extracts.py");
    let py = Command::new("python3")
        .arg(&support)
        .arg(scratch.path())
        .args(&files)
        .current_dir(dir)
        .output()
        .expect("python3");
    assert!(
        py.status.success(),
        "Python's gzip/XML reader refused a file in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&py.stderr)
    );
    let read: serde_json::Value = serde_json::from_slice(&py.stdout).unwrap();
    let bodies = read["bodies"].as_u64().unwrap();
    if bodies > 0 {
        let printed = Command::new("sh")
            .arg("-c")
            .arg(
                "openssl crl2pkcs7 -nocrl -certfile bodies.pem \
                 | openssl pkcs7 -print_certs -noout | grep -c '^subject='",
            )
            .current_dir(scratch.path())
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&printed.stdout).trim(),
            bodies.to_string(),
            "openssl parsed fewer certificates than the files in {} hold: {}",
            dir.display(),
            String::from_utf8_lossy(&printed.stderr)
        );
        for der in ["first.der", "last.der"] {
            run(
                Command::new("openssl")
                    .args(["x509", "-inform", "DER", "-noout", "-in"])
                    .arg(scratch.path().join(der)),
                "openssl x509 -inform DER",
            );
        }
    }
    let sidecars: Vec<String> = files.iter().map(|f| format!("{f}.sha256")).collect();
    run(
        Command::new("sha256sum")
            .args(["-c", "--quiet"])
            .args(&sidecars),
        "sha256sum -c",
    );
}
