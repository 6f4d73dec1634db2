//! The real broker of the integration lane: a tansu process with SQLite storage on a free
//! loopback port, and the tools `scripts/setup` installs. Shared by the integration tests
//! (through `tests/common`) and the ingest benchmark (by path), which cannot use the rest
//! of the test harness.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Where `scripts/setup` caches what it installs.
pub fn cache() -> PathBuf {
    std::env::var_os("SMKI_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/smki-extract")
        })
}

/// Path of a tool installed by `scripts/setup`, or a panic that says how to get it.
pub fn tool(env: &str, default: PathBuf) -> PathBuf {
    let path = std::env::var_os(env).map(PathBuf::from).unwrap_or(default);
    assert!(
        path.exists(),
        "{} not found ({env}); run the suite with scripts/test, which installs it",
        path.display()
    );
    path
}

/// The tansu binary, if installed (benchmarks skip the broker lane without it).
pub fn tansu_binary() -> Option<PathBuf> {
    let path = std::env::var_os("SMKI_TANSU")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache().join("tansu-0.6.0/bin/tansu"));
    path.exists().then_some(path)
}

/// A free loopback TCP port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A tansu broker process with SQLite storage on a free loopback port; killed on drop.
pub struct Tansu {
    child: Child,
    /// `bootstrap.servers`.
    pub bootstrap: String,
    _dir: tempfile::TempDir,
}

impl Tansu {
    /// Start and wait until it accepts connections.
    pub fn start() -> Tansu {
        let exe = tool("SMKI_TANSU", cache().join("tansu-0.6.0/bin/tansu"));
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("tansu.log")).unwrap();
        let child = Command::new(exe)
            .current_dir(dir.path())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .env_remove("STORAGE_ENGINE")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting tansu");
        let bootstrap = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&bootstrap).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not start listening on {bootstrap}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Tansu {
            child,
            bootstrap,
            _dir: dir,
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
