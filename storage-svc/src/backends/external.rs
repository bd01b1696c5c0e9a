//! The `external` backend: a client of the external-storage HTTP protocol
//! (Athens' `pkg/storage/external`), so a store written in any language can
//! sit behind the proxy. [`crate::external_server`] serves the same
//! protocol over any backend.
//!
//! Core routes (Athens' own), under the base URL, with the module path and
//! the version case-escaped (`!` + lower case):
//!
//! | operation | request | success |
//! |---|---|---|
//! | list | `GET /{module}/@v/list` | 200, one version per line |
//! | info / mod / zip | `GET /{module}/@v/{version}.info` / `.mod` / `.zip` | 200, the bytes (zip with `Content-Length`) |
//! | save | `POST /{module}/@v/{version}.save`, `multipart/form-data`, files `mod.info`, `mod.mod`, `mod.zip` in that order (field name = file name) | 200 |
//! | delete | `DELETE /{module}/@v/{version}.delete` | 200 |
//!
//! Failures are answered with the status of their kind (404 not found,
//! 410 gone, 400 invalid, 409 already exists, 403 permission, 503
//! unavailable, 504 timeout, 500 otherwise) and a text body.
//!
//! Optional extensions this client uses when the server has them:
//! `GET /{module}/@v/{version}.stat` (JSON [`StatBody`]),
//! `GET /catalog?token=&pagesize=&prefix=` (JSON [`CatalogBody`]), and the
//! save request headers `Modmesh-Zip-Hash` / `Modmesh-Zip-Size`, which the
//! server checks before anything becomes visible (400 on a mismatch). A
//! server without `.stat` gets it computed from the bytes; one without
//! `/catalog` has no catalog.
//!
//! Unlike Athens' client, versions are escaped in paths, a list answer may
//! end with a newline (or not), saves have no size cap, and zips stream in
//! both directions.

use crate::{
    ByteStream, Capabilities, CatalogPage, CreateOnly, SaveRequest, Storage, VersionStat, ZipReader,
};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use modmesh_common::config::{err as config_err, ConfigError, Env, Section};
use modmesh_proto::coords::compare_versions;
use modmesh_proto::{
    is_canonical_version, Coordinates, Error, ErrorKind, ModulePath, Result, MAX_CHUNK,
};
use reqwest::StatusCode;
use std::sync::Arc;
use std::time::Duration;

/// Save request header carrying the zip's go.sum hash (extension).
pub const ZIP_HASH_HEADER: &str = "modmesh-zip-hash";
/// Save request header carrying the zip's size in bytes (extension).
pub const ZIP_SIZE_HEADER: &str = "modmesh-zip-size";

/// The `[Storage.External]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
#[allow(non_snake_case)]
#[non_exhaustive]
pub struct ExternalConfig {
    /// `ATHENS_EXTERNAL_STORAGE_URL`: the external storage server's base URL
    /// (required).
    pub URL: String,
}

impl Section for ExternalConfig {
    const PATH: &'static str = "Storage.External";
    const ENV: &'static [Env] = &[Env::new("ATHENS_EXTERNAL_STORAGE_URL", "URL")];
    fn validate(&self) -> std::result::Result<(), ConfigError> {
        let url = self.URL.trim();
        if url.is_empty() {
            return Err(config_err(
                &Self::key("URL"),
                "required when StorageType is external",
            ));
        }
        match reqwest::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(()),
            Ok(u) => Err(config_err(
                &Self::key("URL"),
                format!("scheme {:?} is not http or https", u.scheme()),
            )),
            Err(e) => Err(config_err(&Self::key("URL"), format!("not a URL: {e}"))),
        }
    }
}

/// Builds the external backend from `[Storage.External]`.
pub fn build(cfg: &modmesh_common::Config) -> Result<Arc<dyn Storage>> {
    let c: ExternalConfig = cfg.section().map_err(super::config_error)?;
    Ok(Arc::new(ExternalStorage::new(c.URL.trim())?))
}

/// The `.stat` extension's answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StatBody {
    /// `.info` size in bytes.
    pub info_size: u64,
    /// go.mod size in bytes.
    pub mod_size: u64,
    /// Zip size in bytes.
    pub zip_size: u64,
    /// When the version became visible (ms since the Unix epoch).
    pub stored_at_unix_ms: i64,
    /// The zip's go.sum hash, if it is a zip.
    #[serde(default)]
    pub zip_hash: Option<String>,
    /// go.mod's go.sum hash.
    pub mod_hash: String,
}

/// One entry of the `/catalog` extension's answer (Athens' `/catalog` shape).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CatalogEntry {
    /// The module path.
    pub module: String,
    /// The version.
    pub version: String,
}

/// The `/catalog` extension's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CatalogBody {
    /// The page's entries.
    pub modules: Vec<CatalogEntry>,
    /// The next page's token; absent or empty on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// A [`Storage`] reached over the external-storage HTTP protocol.
#[derive(Debug, Clone)]
pub struct ExternalStorage {
    base: String,
    http: reqwest::Client,
}

impl ExternalStorage {
    /// A client of the server at `base` (an `http` or `https` URL; a
    /// trailing `/` is ignored). Nothing is contacted yet.
    pub fn new(base: &str) -> Result<Self> {
        let parsed = reqwest::Url::parse(base)
            .map_err(|e| Error::invalid(format!("external storage URL {base:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Error::invalid(format!(
                "external storage URL {base:?} is not http or https"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| Error::internal(format!("HTTP client: {e}")))?;
        Ok(ExternalStorage {
            base: base.trim_end_matches('/').to_string(),
            http,
        })
    }

    fn module_url(&self, module: &ModulePath) -> String {
        format!("{}/{}/@v", self.base, module.escaped())
    }

    fn url(&self, c: &Coordinates, ext: &str) -> String {
        format!(
            "{}/{}.{ext}",
            self.module_url(&c.module),
            c.version.escaped()
        )
    }

    async fn send(&self, what: &str, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| transport_err(what, &e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        Err(status_err(what, status, body.trim()))
    }

    async fn get_bytes(&self, c: &Coordinates, ext: &str) -> Result<Bytes> {
        let what = format!("{ext} of {c}");
        let resp = self.send(&what, self.http.get(self.url(c, ext))).await?;
        resp.bytes().await.map_err(|e| transport_err(&what, &e))
    }

    /// `.stat` computed from the bytes, for servers without the extension.
    async fn stat_from_bytes(&self, c: &Coordinates) -> Result<VersionStat> {
        let info = self.get_bytes(c, "info").await?;
        let go_mod = self.get_bytes(c, "mod").await?;
        let zip = self.zip(c).await?;
        let zip_size = zip.size;
        let zip_hash = crate::hashing::hash_zip_stream(zip.stream).await?;
        Ok(VersionStat {
            coordinates: c.clone(),
            info_size: info.len() as u64,
            mod_size: go_mod.len() as u64,
            zip_size,
            stored_at_unix_ms: 0,
            zip_hash,
            mod_hash: crate::mod_hash(&go_mod),
        })
    }
}

/// A transport failure: the server is down or the connection broke.
fn transport_err(what: &str, e: &reqwest::Error) -> Error {
    if e.is_timeout() {
        Error::timeout(format!("external storage: {what}: {e}"))
    } else if e.is_builder() {
        Error::invalid(format!("external storage: {what}: {e}"))
    } else {
        Error::unavailable(format!("external storage: {what}: {e}"))
    }
}

/// The error kind a status stands for.
pub fn kind_of_status(status: StatusCode) -> ErrorKind {
    match status.as_u16() {
        404 => ErrorKind::NotFound,
        410 => ErrorKind::Gone,
        400 | 413 | 422 => ErrorKind::Invalid,
        409 => ErrorKind::AlreadyExists,
        401 | 403 => ErrorKind::Permission,
        502 | 503 => ErrorKind::Unavailable,
        408 | 504 => ErrorKind::Timeout,
        _ => ErrorKind::Internal,
    }
}

/// The status that stands for an error kind (the server's side).
pub fn status_of_kind(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Gone => StatusCode::GONE,
        ErrorKind::Invalid => StatusCode::BAD_REQUEST,
        ErrorKind::AlreadyExists => StatusCode::CONFLICT,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::Permission => StatusCode::FORBIDDEN,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn status_err(what: &str, status: StatusCode, body: &str) -> Error {
    let mut body: String = body.chars().take(512).collect();
    if body.is_empty() {
        body = "(no body)".into();
    }
    Error::new(
        kind_of_status(status),
        format!("external storage: {what}: {status}: {body}"),
    )
}

fn garbage(what: &str, problem: impl std::fmt::Display) -> Error {
    Error::internal(format!(
        "external storage: {what}: the server answered garbage: {problem}"
    ))
}

/// Splits chunks larger than [`MAX_CHUNK`].
pub(crate) fn rechunk(s: ByteStream) -> ByteStream {
    s.flat_map(|r| {
        let parts: Vec<Result<Bytes>> = match r {
            Ok(b) if b.len() > MAX_CHUNK => {
                let mut out = Vec::new();
                let mut b = b;
                while b.len() > MAX_CHUNK {
                    out.push(Ok(b.split_to(MAX_CHUNK)));
                }
                out.push(Ok(b));
                out
            }
            other => vec![other],
        };
        futures::stream::iter(parts)
    })
    .boxed()
}

#[async_trait]
impl Storage for ExternalStorage {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            create_only: CreateOnly::Native,
            streamed_saves: true,
            unsized_saves: true,
            shared: true,
            ..Capabilities::minimal()
        }
    }

    /// The server answers a list (Athens' readiness check).
    async fn health(&self) -> Result<()> {
        let m = ModulePath::new("github.com/gomods/athens").expect("a valid module path");
        self.list(&m).await.map(|_| ())
    }

    async fn list(&self, module: &ModulePath) -> Result<Vec<String>> {
        let what = format!("list of {module}");
        let url = format!("{}/list", self.module_url(module));
        let resp = match self.send(&what, self.http.get(url)).await {
            Ok(r) => r,
            Err(e) if e.is(ErrorKind::NotFound) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let body = resp.bytes().await.map_err(|e| transport_err(&what, &e))?;
        let text = std::str::from_utf8(&body).map_err(|e| garbage(&what, e))?;
        let mut versions = Vec::new();
        for line in text.lines() {
            let v = line.trim();
            if v.is_empty() {
                continue;
            }
            if !is_canonical_version(v) {
                return Err(garbage(&what, format!("{v:?} is not a version")));
            }
            versions.push(v.to_string());
        }
        versions.sort_by(|a, b| compare_versions(a, b));
        versions.dedup();
        Ok(versions)
    }

    async fn info(&self, c: &Coordinates) -> Result<Bytes> {
        self.get_bytes(c, "info").await
    }

    async fn go_mod(&self, c: &Coordinates) -> Result<Bytes> {
        self.get_bytes(c, "mod").await
    }

    async fn zip(&self, c: &Coordinates) -> Result<ZipReader> {
        let what = format!("zip of {c}");
        let resp = self.send(&what, self.http.get(self.url(c, "zip"))).await?;
        let size = resp
            .headers()
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| garbage(&what, "no Content-Length on the zip"))?;
        let what2 = what.clone();
        let body = resp
            .bytes_stream()
            .map(move |r| r.map_err(|e| transport_err(&what2, &e)));
        // Count what arrives: a short or long body is an error, never a
        // silently different zip.
        let counted = futures::stream::unfold(
            (body.boxed(), 0u64, false),
            move |(mut body, got, done)| {
                let what = what.clone();
                async move {
                    if done {
                        return None;
                    }
                    match body.next().await {
                        Some(Ok(b)) => {
                            let got = got + b.len() as u64;
                            if got > size {
                                let e =
                                    garbage(&what, format!("more than the {size} bytes announced"));
                                return Some((Err(e), (body, got, true)));
                            }
                            Some((Ok(b), (body, got, false)))
                        }
                        Some(Err(e)) => Some((Err(e), (body, got, true))),
                        None if got == size => None,
                        None => {
                            let e = Error::unavailable(format!(
                                "external storage: {what}: the body ended after {got} of {size} bytes"
                            ));
                            Some((Err(e), (body, got, true)))
                        }
                    }
                }
            },
        );
        Ok(ZipReader {
            size,
            stream: rechunk(counted.boxed()),
        })
    }

    async fn exists(&self, c: &Coordinates) -> Result<bool> {
        match self.get_bytes(c, "info").await {
            Ok(_) => Ok(true),
            Err(e) if e.is(ErrorKind::NotFound) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn stat(&self, c: &Coordinates) -> Result<VersionStat> {
        let what = format!("stat of {c}");
        let resp = self.http.get(self.url(c, "stat")).send().await;
        let resp = resp.map_err(|e| transport_err(&what, &e))?;
        match resp.status() {
            s if s.is_success() => {
                let body = resp.bytes().await.map_err(|e| transport_err(&what, &e))?;
                let st: StatBody = serde_json::from_slice(&body).map_err(|e| garbage(&what, e))?;
                Ok(VersionStat {
                    coordinates: c.clone(),
                    info_size: st.info_size,
                    mod_size: st.mod_size,
                    zip_size: st.zip_size,
                    stored_at_unix_ms: st.stored_at_unix_ms,
                    zip_hash: st.zip_hash.filter(|h| !h.is_empty()),
                    mod_hash: st.mod_hash,
                })
            }
            // A server without the extension: computed from the bytes
            // (which also answers NotFound for a missing version).
            StatusCode::NOT_FOUND
            | StatusCode::METHOD_NOT_ALLOWED
            | StatusCode::NOT_IMPLEMENTED => self.stat_from_bytes(c).await,
            s => {
                let body = resp.text().await.unwrap_or_default();
                Err(status_err(&what, s, body.trim()))
            }
        }
    }

    async fn save(&self, req: SaveRequest, zip: ByteStream) -> Result<()> {
        use reqwest::multipart::{Form, Part};
        let c = req.coordinates();
        let what = format!("save of {c}");
        let part = |name: &'static str, b: Bytes| {
            Part::stream_with_length(reqwest::Body::from(b.clone()), b.len() as u64)
                .file_name(name)
                .mime_str("application/octet-stream")
                .expect("a valid mime type")
        };
        // Sent chunked even when the size is known: the server checks the
        // announced size (a header) and answers 400 to a mismatch.
        let body = reqwest::Body::wrap_stream(zip);
        let zip_part = Part::stream(body)
            .file_name("mod.zip")
            .mime_str("application/octet-stream")
            .expect("a valid mime type");
        let form = Form::new()
            .part("mod.info", part("mod.info", req.info.clone()))
            .part("mod.mod", part("mod.mod", req.go_mod.clone()))
            .part("mod.zip", zip_part);
        let mut r = self.http.post(self.url(&c, "save")).multipart(form);
        if let Some(h) = req.zip_hash.as_deref().filter(|h| !h.is_empty()) {
            r = r.header(ZIP_HASH_HEADER, h);
        }
        if let Some(n) = req.zip_size {
            r = r.header(ZIP_SIZE_HEADER, n.to_string());
        }
        match r.send().await {
            Ok(resp) if resp.status().is_success() => Ok(()),
            Ok(resp) => {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                Err(status_err(&what, status, body.trim()))
            }
            Err(e) => {
                // The zip stream's own error (an interrupted upstream) is
                // what the caller should see, with its kind.
                let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
                while let Some(s) = src {
                    if let Some(inner) = s.downcast_ref::<Error>() {
                        return Err(inner.clone());
                    }
                    src = s.source();
                }
                Err(transport_err(&what, &e))
            }
        }
    }

    async fn delete(&self, c: &Coordinates) -> Result<()> {
        let what = format!("delete of {c}");
        self.send(&what, self.http.delete(self.url(c, "delete")))
            .await
            .map(|_| ())
    }

    async fn catalog(
        &self,
        page_token: Option<&str>,
        page_size: usize,
        module_prefix: &str,
    ) -> Result<CatalogPage> {
        let what = "catalog";
        let size = crate::page_size(page_size);
        let mut query: Vec<(&str, String)> = vec![("pagesize", size.to_string())];
        if let Some(t) = page_token.filter(|t| !t.is_empty()) {
            query.push(("token", t.to_string()));
        }
        if !module_prefix.is_empty() {
            query.push(("prefix", module_prefix.to_string()));
        }
        let url = format!("{}/catalog", self.base);
        let resp = self
            .send(what, self.http.get(url).query(&query))
            .await
            .map_err(|e| match e.kind {
                ErrorKind::NotFound => {
                    Error::unavailable(format!("external storage: the server has no catalog: {e}"))
                }
                _ => e,
            })?;
        let body = resp.bytes().await.map_err(|e| transport_err(what, &e))?;
        let page: CatalogBody = serde_json::from_slice(&body).map_err(|e| garbage(what, e))?;
        let mut entries = Vec::with_capacity(page.modules.len());
        for m in page.modules {
            let c = Coordinates::new(&m.module, &m.version).map_err(|e| garbage(what, e))?;
            entries.push(c);
        }
        if entries.len() > size {
            return Err(garbage(
                what,
                format!("{} entries for a page of {size}", entries.len()),
            ));
        }
        Ok(CatalogPage {
            entries,
            next_page_token: page.next.filter(|t| !t.is_empty()),
        })
    }
}
