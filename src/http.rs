//! The observability endpoint: `/metrics` (Prometheus text format), `/healthz` (the process
//! is alive and serving) and `/readyz` (partitions assigned, store open, within
//! `http.ready_max_lag_records` of the head).
//!
//! Served by hyper 1.x on a single-threaded tokio runtime in a thread of its own, so the
//! synchronous poll loop of [`crate::consumer::run`] never waits for a scrape, and a scrape
//! never waits for the poll loop: everything it reads is atomics, a few short locks and
//! RocksDB's in-memory properties.

use std::convert::Infallible;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use anyhow::{anyhow, Context, Result};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use tracing::{debug, info, warn};

use crate::metrics::Metrics;

/// Why the service is not ready, or `Ok` when it is.
pub fn readiness(metrics: &Metrics, max_lag_records: u64) -> Result<(), String> {
    if !metrics.status.store_open.load(Ordering::SeqCst) {
        return Err("the state store is not open".into());
    }
    if metrics.partitions_assigned.get() <= 0 {
        return Err("no partition assigned".into());
    }
    match metrics.status.lag_records.load(Ordering::SeqCst) {
        l if l < 0 => Err("lag not known yet (no high watermark from the broker)".into()),
        l if l as u64 > max_lag_records => Err(format!(
            "{l} records behind the head (ready at most {max_lag_records})"
        )),
        _ => Ok(()),
    }
}

/// Start the endpoint `config` describes, or nothing when its address is empty.
///
/// `run` serves by default; a long one-shot command (`replay`, `full`, `sync`) should call
/// this only when the operator passed `--http-address` (`Overrides::http_address`), so that
/// a command run beside the service does not fight it for the port.
pub fn serve_configured(
    config: &crate::config::HttpConfig,
    metrics: &Metrics,
) -> Result<Option<HttpServer>> {
    if config.address.is_empty() {
        return Ok(None);
    }
    HttpServer::start(
        &config.address,
        metrics.clone(),
        config.ready_max_lag_records,
    )
    .map(Some)
}

/// A running endpoint; stops when dropped.
pub struct HttpServer {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Bind `address` (`host:port`; port 0 picks a free one) and serve `metrics`.
    /// Binding happens here, so a taken or invalid address fails at start with its name.
    pub fn start(address: &str, metrics: Metrics, ready_max_lag_records: u64) -> Result<Self> {
        let addr = address
            .to_socket_addrs()
            .with_context(|| format!("http.address {address:?} is not host:port"))?
            .next()
            .ok_or_else(|| anyhow!("http.address {address:?} resolves to nothing"))?;
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("binding the HTTP endpoint to {addr}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the HTTP runtime")?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("smki-http".into())
            .spawn(move || {
                runtime.block_on(serve(listener, metrics, ready_max_lag_records, rx));
            })
            .context("spawning the HTTP thread")?;
        info!(%addr, "serving /metrics, /healthz and /readyz");
        Ok(HttpServer {
            addr,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// The address actually bound (tells the port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    metrics: Metrics,
    max_lag: u64,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            warn!("HTTP endpoint: {e}");
            return;
        }
    };
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    debug!("HTTP accept: {e}");
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let response = respond(&req, &metrics, max_lag);
                async move { Ok::<_, Infallible>(response) }
            });
            // The timer makes hyper's default 30 s header-read timeout effective.
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
            {
                debug!("HTTP connection: {e}");
            }
        });
    }
}

fn respond(req: &Request<Incoming>, metrics: &Metrics, max_lag: u64) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from(body)))
            .expect("valid response")
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" => Response::builder()
            .header("content-type", prometheus::TEXT_FORMAT)
            .body(Full::new(Bytes::from(metrics.render())))
            .expect("valid response"),
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match readiness(metrics, max_lag) {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out[9..12].parse().unwrap();
        let body = out.split_once("\r\n\r\n").unwrap().1.to_string();
        (status, body)
    }

    #[test]
    fn readiness_needs_store_partitions_and_small_lag() {
        let m = Metrics::new();
        assert!(readiness(&m, 10).unwrap_err().contains("store"));
        m.status.store_open.store(true, Ordering::SeqCst);
        assert!(readiness(&m, 10).unwrap_err().contains("partition"));
        m.partitions_assigned.set(2);
        assert!(readiness(&m, 10).unwrap_err().contains("not known"));
        m.status.lag_records.store(11, Ordering::SeqCst);
        assert!(readiness(&m, 10).unwrap_err().contains("11 records behind"));
        m.status.lag_records.store(10, Ordering::SeqCst);
        assert_eq!(readiness(&m, 10), Ok(()));
    }

    #[test]
    fn serves_the_three_paths_and_stops_when_dropped() {
        let m = Metrics::new();
        let server = HttpServer::start("127.0.0.1:0", m.clone(), 0).unwrap();
        let addr = server.local_addr();
        assert_eq!(get(addr, "/healthz"), (200, "ok\n".into()));
        let (status, body) = get(addr, "/readyz");
        assert_eq!(status, 503);
        assert!(body.contains("not ready"), "{body}");
        m.events_applied.inc_by(3);
        let (status, body) = get(addr, "/metrics");
        assert_eq!(status, 200);
        assert!(body.contains("smki_events_applied_total 3"), "{body}");
        assert_eq!(get(addr, "/nope").0, 404);
        drop(server);
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "still listening"
        );
    }

    #[test]
    fn a_bad_or_taken_address_fails_at_start_naming_it() {
        let m = Metrics::new();
        let err = HttpServer::start("nonsense", m.clone(), 0).err().unwrap();
        assert!(format!("{err:#}").contains("nonsense"), "{err:#}");
        let first = HttpServer::start("127.0.0.1:0", m.clone(), 0).unwrap();
        let taken = first.local_addr().to_string();
        let err = HttpServer::start(&taken, m, 0).err().unwrap();
        assert!(format!("{err:#}").contains(&taken), "{err:#}");
    }
}
