//! Helpers of the observability tests: the real Prometheus server (Debian `prometheus`) and
//! `promtool`, a plain HTTP/1.0 GET over loopback, and parsing of the text exposition and
//! of PromQL metric names. Included with `#[path]` by the tests that need it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `name` on PATH, or a panic saying how to get it.
pub fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` not found on PATH: these tests need the Debian package `prometheus` \
                 (scripts/setup installs it: apt-get install prometheus)"
            )
        })
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `path` from `addr` (HTTP/1.0: the server closes and never chunks). Status and body,
/// or `None` if nothing answers.
pub fn try_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let out = String::from_utf8_lossy(&out).into_owned();
    let status = out.get(9..12)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// [`try_get`] that must get an answer.
pub fn get(addr: &str, path: &str) -> (u16, String) {
    try_get(addr, path).unwrap_or_else(|| panic!("no HTTP answer from {addr}{path}"))
}

/// Wait until `f` gives `Some`, at most `limit` (a bound against hanging, not a timing
/// assertion); panics with `what` and the last value seen otherwise.
pub fn wait_for<T, D: std::fmt::Debug>(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> Result<T, D>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("gave up waiting for {what} after {limit:?}; last: {last:?}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Percent-encoding of a query-string value.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Metric names in a text exposition (every sample line's name).
pub fn exposed_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            l.split(|c: char| c == '{' || c == ' ')
                .next()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// Names of this service's metrics a PromQL expression reads (`smki_*`, `process_*`).
pub fn promql_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut word = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else {
            if word.starts_with("smki_") || word.starts_with("process_") {
                out.insert(std::mem::take(&mut word));
            }
            word.clear();
        }
    }
    out
}

/// Run `promtool` with `args` (and `stdin`), requiring success; returns its output.
pub fn promtool(args: &[&str], dir: &Path, stdin: Option<&str>) -> String {
    let mut child = Command::new(tool("promtool"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// One sample of a query result: its labels and value.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Labels, `__name__` included when the query kept it.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

/// A Prometheus server process scraping given targets every second; killed when dropped.
pub struct Prometheus {
    child: Child,
    /// `127.0.0.1:port` of its HTTP API.
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Start Prometheus on a free loopback port with a generated configuration scraping
    /// `targets` as job `smki-extract`, and wait until it is ready.
    pub fn start(targets: &[SocketAddr]) -> Prometheus {
        let bin = tool("prometheus");
        let dir = tempfile::tempdir().unwrap();
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: smki-extract\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(bin)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let p = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        wait_for(
            "Prometheus to be ready",
            Duration::from_secs(60),
            || match try_get(&p.addr, "/-/ready") {
                Some((200, _)) => Ok(()),
                other => Err(other),
            },
        );
        p
    }

    /// Evaluate an instant query; `Err` carries Prometheus's error (e.g. bad PromQL).
    pub fn try_query(&self, q: &str) -> Result<Vec<Sample>, String> {
        let (status, body) = get(
            &self.addr,
            &format!("/api/v1/query?query={}", url_encode(q)),
        );
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("{status}: {e}: {body}"))?;
        if v["status"] != "success" {
            return Err(format!("{q}: {body}"));
        }
        let result = &v["data"]["result"];
        let samples = match v["data"]["resultType"].as_str() {
            Some("vector") => result.as_array().cloned().unwrap_or_default(),
            Some("scalar") => vec![serde_json::json!({"metric": {}, "value": result})],
            other => return Err(format!("{q}: result type {other:?}")),
        };
        Ok(samples
            .iter()
            .map(|s| Sample {
                labels: serde_json::from_value(s["metric"].clone()).unwrap_or_default(),
                value: s["value"][1].as_str().unwrap().parse().unwrap(),
            })
            .collect())
    }

    /// Evaluate an instant query that must succeed.
    pub fn query(&self, q: &str) -> Vec<Sample> {
        self.try_query(q)
            .unwrap_or_else(|e| panic!("query failed: {e}"))
    }

    /// The single value of a query (which must give exactly one sample).
    pub fn value(&self, q: &str) -> f64 {
        let r = self.query(q);
        assert_eq!(r.len(), 1, "{q} gave {r:?}");
        r[0].value
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
