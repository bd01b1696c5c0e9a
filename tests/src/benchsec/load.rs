//! Closed-loop load: `wrk` when it is installed (as the figures were
//! measured), else a built-in hyper client in this process.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;

/// One closed-loop measurement.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Completed requests per second.
    pub rps: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 99th-percentile latency.
    pub p99_ms: f64,
    /// Body bytes per second, in MiB.
    pub mib_s: f64,
    /// Failed requests (not 200, or a broken connection).
    pub errors: u64,
}

/// Which load generator runs.
#[derive(Debug, Clone)]
pub enum Client {
    /// `wrk -t2 -c<conc> --latency` at this path.
    Wrk(std::path::PathBuf),
    /// The built-in client (tokio tasks, one keep-alive connection each).
    Builtin,
}

impl Client {
    /// `wrk` if it is found (unless `builtin` is asked for).
    pub fn pick(builtin: bool) -> Client {
        match modmesh_test_support::find_program("wrk") {
            Some(p) if !builtin => Client::Wrk(p),
            _ => Client::Builtin,
        }
    }

    /// What generates the load, for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Client::Wrk(_) => "wrk -t2",
            Client::Builtin => "built-in hyper client",
        }
    }

    /// `conc` connections sending `GET path` back to back for `dur`.
    pub async fn run(
        &self,
        addr: SocketAddr,
        path: &str,
        conc: usize,
        dur: Duration,
    ) -> Result<Load> {
        match self {
            Client::Wrk(wrk) => run_wrk(wrk, addr, path, conc, dur).await,
            Client::Builtin => builtin(addr, path, conc, dur).await,
        }
    }
}

async fn run_wrk(
    wrk: &std::path::Path,
    addr: SocketAddr,
    path: &str,
    conc: usize,
    dur: Duration,
) -> Result<Load> {
    let mut cmd = Command::new(wrk);
    cmd.args([
        "-t2",
        &format!("-c{conc}"),
        &format!("-d{}s", dur.as_secs().max(1)),
        "--latency",
        "--timeout",
        "10s",
        &format!("http://{addr}{path}"),
    ]);
    let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "wrk failed: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_wrk(&text).with_context(|| format!("reading wrk's output:\n{text}"))
}

/// Milliseconds of a wrk duration (`912.00us`, `4.90ms`, `1.20s`).
fn wrk_ms(s: &str) -> Option<f64> {
    let (num, mult) = if let Some(n) = s.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * mult)
}

/// Bytes of a wrk size (`1.23MB`, `512.00KB`, `12B`).
fn wrk_bytes(s: &str) -> Option<f64> {
    for (suffix, mult) in [
        ("GB", 1u64 << 30),
        ("MB", 1 << 20),
        ("KB", 1 << 10),
        ("B", 1),
    ] {
        if let Some(n) = s.strip_suffix(suffix) {
            return n.parse::<f64>().ok().map(|v| v * mult as f64);
        }
    }
    None
}

fn parse_wrk(text: &str) -> Result<Load> {
    let field = |prefix: &str| -> Option<&str> {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
    };
    let rps: f64 = field("Requests/sec:").context("no Requests/sec")?.parse()?;
    let p50_ms = field("50%").and_then(wrk_ms).context("no 50% latency")?;
    let p99_ms = field("99%").and_then(wrk_ms).context("no 99% latency")?;
    let mib_s = field("Transfer/sec:")
        .and_then(wrk_bytes)
        .context("no Transfer/sec")?
        / (1 << 20) as f64;
    let mut errors = 0u64;
    if let Some(e) = field("Non-2xx or 3xx responses:") {
        errors += e.parse::<u64>()?;
    }
    if let Some(e) = field("Socket errors:") {
        // connect 0, read 0, write 0, timeout 0
        errors += e
            .split(',')
            .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
            .sum::<u64>();
    }
    Ok(Load {
        rps,
        p50_ms,
        p99_ms,
        mib_s,
        errors,
    })
}

/// `conc` connections, each sending `GET path` back to back over keep-alive
/// for `dur`; latencies of every completed request.
pub async fn builtin(addr: SocketAddr, path: &str, conc: usize, dur: Duration) -> Result<Load> {
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conc {
        let path = path.to_string();
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(4096);
            let (mut bytes, mut errors) = (0u64, 0u64);
            // Reconnects after a failed request (counted as an error).
            'connect: while Instant::now() < deadline {
                let stream = tokio::net::TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(conn);
                while Instant::now() < deadline {
                    let req = Request::get(path.as_str())
                        .header(hyper::header::HOST, addr.to_string())
                        .body(Empty::<Bytes>::new())?;
                    let t = Instant::now();
                    let Ok(resp) = sender.send_request(req).await else {
                        errors += 1;
                        continue 'connect;
                    };
                    let ok = resp.status() == StatusCode::OK;
                    let mut body = resp.into_body();
                    while let Some(frame) = body.frame().await {
                        match frame {
                            Ok(f) => bytes += f.data_ref().map_or(0, |d| d.len() as u64),
                            Err(_) => {
                                errors += 1;
                                continue 'connect;
                            }
                        }
                    }
                    if ok {
                        lat.push(t.elapsed().as_micros() as u32);
                    } else {
                        errors += 1;
                    }
                }
            }
            anyhow::Ok((lat, bytes, errors))
        });
    }
    let (mut all, mut bytes, mut errors) = (Vec::new(), 0u64, 0u64);
    while let Some(r) = tasks.join_next().await {
        let (lat, b, e) = r??;
        all.extend(lat);
        bytes += b;
        errors += e;
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_unstable();
    Ok(Load {
        rps: all.len() as f64 / secs,
        p50_ms: percentile_ms(&all, 0.50),
        p99_ms: percentile_ms(&all, 0.99),
        mib_s: bytes as f64 / secs / (1 << 20) as f64,
        errors,
    })
}

/// The `p` percentile of sorted microseconds, in ms (NaN when empty).
pub fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted_us.len() as f64 * p).ceil() as usize).clamp(1, sorted_us.len()) - 1;
    f64::from(sorted_us[i]) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let out = "Running 5s test @ http://127.0.0.1:1/x\n  2 threads and 64 connections\n\
  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency     1.50ms    2.00ms  40.00ms   90.00%\n\
  Latency Distribution\n     50%  912.00us\n     75%    1.20ms\n     90%    2.00ms\n     99%    4.90ms\n\
  217000 requests in 5.00s, 1.50GB read\n  Non-2xx or 3xx responses: 3\n\
Requests/sec:  43400.12\nTransfer/sec:    300.00MB\n";
        let l = parse_wrk(out).unwrap();
        assert!((l.rps - 43400.12).abs() < 0.01);
        assert!((l.p50_ms - 0.912).abs() < 1e-9);
        assert!((l.p99_ms - 4.9).abs() < 1e-9);
        assert!((l.mib_s - 300.0).abs() < 1e-9);
        assert_eq!(l.errors, 3);
    }
}
