//! A static HTTP file server for a GOPROXY directory: the tests' upstream, and
//! the benchmark's reference.
//!
//! It runs on its own thread and tokio runtime (so a test that blocks its own
//! runtime cannot starve it), listens on `127.0.0.1:0`, streams files in 64 KiB
//! chunks, answers 404 for anything missing, counts requests per path, can be
//! told to delay every answer or throttle file bodies, can hold every zip
//! body at its half until released (a gate), and can be stopped (listener
//! and open connections closed).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::io::ReaderStream;

type Body = BoxBody<Bytes, std::io::Error>;

#[derive(Debug, Default)]
struct Shared {
    counts: Mutex<HashMap<String, u64>>,
    order: Mutex<Vec<String>>,
    delay_ms: AtomicU64,
    /// Bytes per second a file body is sent at (0: as fast as it goes).
    throttle: AtomicU64,
    /// 0: serve the files; [`HANG`]: never answer; else that status code.
    answer: AtomicU64,
    /// While set, zip bodies stop after their first half.
    zip_gate: std::sync::atomic::AtomicBool,
}

const HANG: u64 = u64::MAX;

/// How a [`StaticServer`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Serves the directory (the default).
    Files,
    /// Reads each request and never answers.
    Hang,
    /// Answers every request with this status and a short body.
    Status(u16),
}

/// A running static file server; stopped on [`StaticServer::stop`] or drop.
#[derive(Debug)]
pub struct StaticServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl StaticServer {
    /// Serves `root` on a fresh loopback port.
    pub fn start(root: &Path) -> Result<StaticServer> {
        Self::start_on(root, "127.0.0.1:0")
    }

    /// Serves `root` on `bind` (e.g. `0.0.0.0:0`, for containers that reach
    /// the host through their bridge).
    pub fn start_on(root: &Path, bind: &str) -> Result<StaticServer> {
        let root = root.to_path_buf();
        let std_listener = std::net::TcpListener::bind(bind)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let (stop_tx, stop_rx) = oneshot::channel();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("static-server")
            .enable_all()
            .build()?;
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("static-server-{}", addr.port()))
            .spawn(move || {
                rt.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).expect("listener");
                    serve(listener, root, s, stop_rx).await
                });
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .context("spawn server thread")?;
        Ok(StaticServer {
            addr,
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:<port>` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Delays every later answer by `d` (zero: no delay).
    pub fn set_delay(&self, d: Duration) {
        self.shared
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Sends every later file body at about `bytes_per_sec` (0: no limit),
    /// so a download stays in flight for a known time.
    pub fn set_throttle(&self, bytes_per_sec: u64) {
        self.shared.throttle.store(bytes_per_sec, Ordering::SeqCst);
    }

    /// While `closed`, every zip body (those already being sent included)
    /// sends its first half and then waits until the gate opens again.
    pub fn set_zip_gate(&self, closed: bool) {
        self.shared.zip_gate.store(closed, Ordering::SeqCst);
    }

    /// From now on answers as `a` says.
    pub fn set_answer(&self, a: Answer) {
        let v = match a {
            Answer::Files => 0,
            Answer::Hang => HANG,
            Answer::Status(code) => u64::from(code),
        };
        self.shared.answer.store(v, Ordering::SeqCst);
    }

    /// Every request's decoded path so far, in arrival order.
    pub fn requests(&self) -> Vec<String> {
        self.shared.order.lock().unwrap().clone()
    }

    /// Requests seen so far for `path` (the decoded URL path, e.g.
    /// `/example.com/!mixed/!case/@v/v1.2.3.zip`).
    pub fn count(&self, path: &str) -> u64 {
        self.shared
            .counts
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// A copy of all counters.
    pub fn counts(&self) -> HashMap<String, u64> {
        self.shared.counts.lock().unwrap().clone()
    }

    /// Stops serving: the listener is closed and open connections are dropped.
    /// Later connections are refused.
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve(
    listener: TcpListener,
    root: PathBuf,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    let root = Arc::new(root);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let (root, shared) = (root.clone(), shared.clone());
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        handle(req, root.clone(), shared.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                // Reap finished connections so the set does not grow forever.
                while conns.try_join_next().is_some() {}
            }
        }
    }
    drop(listener);
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

pub use modmesh_test_support::percent_decode;

fn status(code: StatusCode) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(code.canonical_reason().unwrap_or("error")))
            .map_err(|e: Infallible| match e {})
            .boxed(),
    );
    *r.status_mut() = code;
    r
}

async fn handle(
    req: Request<Incoming>,
    root: Arc<PathBuf>,
    shared: Arc<Shared>,
) -> Result<Response<Body>, Infallible> {
    let raw = req.uri().path();
    let path = percent_decode(raw).unwrap_or_else(|| raw.to_string());
    *shared
        .counts
        .lock()
        .unwrap()
        .entry(path.clone())
        .or_insert(0) += 1;
    shared.order.lock().unwrap().push(path.clone());
    match shared.answer.load(Ordering::SeqCst) {
        0 => {}
        HANG => std::future::pending::<()>().await,
        code => {
            let code = StatusCode::from_u16(code as u16).unwrap_or(StatusCode::BAD_GATEWAY);
            let mut r = Response::new(
                Full::new(Bytes::from_static(b"upstream says no\n"))
                    .map_err(|e: Infallible| match e {})
                    .boxed(),
            );
            *r.status_mut() = code;
            return Ok(r);
        }
    }
    let delay = shared.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(status(StatusCode::METHOD_NOT_ALLOWED));
    }
    let rel = path.trim_start_matches('/');
    if rel.split(['/', '\\']).any(|seg| seg == "..") || rel.contains('\0') {
        return Ok(status(StatusCode::NOT_FOUND));
    }
    let file_path = root.join(rel);
    let file = match tokio::fs::File::open(&file_path).await {
        Ok(f) => f,
        Err(_) => return Ok(status(StatusCode::NOT_FOUND)),
    };
    let meta = match file.metadata().await {
        Ok(m) if m.is_file() => m,
        _ => return Ok(status(StatusCode::NOT_FOUND)),
    };
    let ctype = if rel.ends_with(".zip") {
        "application/zip"
    } else if rel.ends_with(".info") {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    let body: Body = if req.method() == Method::HEAD {
        Empty::new().map_err(|e: Infallible| match e {}).boxed()
    } else {
        let rate = shared.throttle.load(Ordering::SeqCst);
        let gate = rel.ends_with(".zip").then(|| shared.clone());
        let half = meta.len() / 2;
        let sent = Arc::new(AtomicU64::new(0));
        let stream = ReaderStream::with_capacity(file, 64 * 1024).then(move |chunk| {
            let (gate, sent) = (gate.clone(), sent.clone());
            async move {
                if let Some(g) = gate {
                    while g.zip_gate.load(Ordering::SeqCst) && sent.load(Ordering::SeqCst) >= half {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                if let Ok(b) = &chunk {
                    sent.fetch_add(b.len() as u64, Ordering::SeqCst);
                }
                if let (Ok(b), true) = (&chunk, rate > 0) {
                    tokio::time::sleep(Duration::from_secs_f64(b.len() as f64 / rate as f64)).await;
                }
                chunk
            }
        });
        BodyExt::boxed(StreamBody::new(stream.map_ok(Frame::data)))
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(hyper::header::CONTENT_LENGTH, meta.len().into());
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ctype),
    );
    Ok(resp)
}
