//! HTTP client helpers: plain GETs (buffered or streamed into a SHA-256
//! hasher) and raw HTTP/1.1 requests written byte for byte over a TCP socket,
//! so nothing normalises hostile paths on the way.

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::fixtures::hex;

/// A buffered HTTP response.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Reply {
    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

/// A keep-alive HTTP/1.1 client.
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send(method: Method, url: &str) -> Result<hyper::Response<hyper::body::Incoming>> {
    let req = Request::builder()
        .method(method)
        .uri(url)
        .body(Empty::<Bytes>::new())?;
    client()
        .request(req)
        .await
        .with_context(|| format!("request {url}"))
}

/// GETs `url` and buffers the body (use only for small bodies).
pub async fn get(url: &str) -> Result<Reply> {
    request(Method::GET, url).await
}

/// Sends `method` to `url` and buffers the body.
pub async fn request(method: Method, url: &str) -> Result<Reply> {
    let resp = send(method, url).await?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .with_context(|| format!("body of {url}"))?
        .to_bytes();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// GETs `url`, streaming the body into SHA-256 (nothing buffered beyond one
/// frame). Returns the status, the hex digest and the body length.
pub async fn get_sha256(url: &str) -> Result<(StatusCode, String, u64)> {
    let resp = send(Method::GET, url).await?;
    let status = resp.status();
    let mut body = resp.into_body();
    let mut h = Sha256::new();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.with_context(|| format!("body of {url}"))?;
        if let Some(data) = frame.data_ref() {
            h.update(data);
            len += data.len() as u64;
        }
    }
    Ok((status, hex(&h.finalize()), len))
}

/// The answer to a raw request.
#[derive(Debug)]
pub struct RawReply {
    /// Status code of the status line.
    pub status: u16,
    /// Everything received (status line, headers, body), lossily decoded.
    pub text: String,
}

/// Writes `target` verbatim as the request target of a `GET <target> HTTP/1.1`
/// request (with `Host` and `Connection: close`) to `addr`, and reads the
/// answer until the server closes or 15 s pass.
pub async fn raw_get(addr: &str, target: &[u8]) -> Result<RawReply> {
    let mut req = b"GET ".to_vec();
    req.extend_from_slice(target);
    req.extend_from_slice(
        format!(" HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    raw_request(addr, &req).await
}

/// Sends `bytes` as they are to `addr` and reads the answer until the server
/// closes the connection (or 15 s pass); parses the status code.
pub async fn raw_request(addr: &str, bytes: &[u8]) -> Result<RawReply> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(bytes).await?;
        let mut buf = Vec::new();
        // A server may answer and close before reading all we sent; keep what came.
        let _ = s.read_to_end(&mut buf).await;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(15), fut)
        .await
        .map_err(|_| anyhow!("no complete answer within 15 s"))??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let line = text.lines().next().unwrap_or("");
    let status = line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| line.strip_prefix("HTTP/1.0 "))
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("no status line in answer {:?}", truncate(&text, 300)))?;
    Ok(RawReply { status, text })
}

/// The first `n` characters of `s`.
pub fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}
