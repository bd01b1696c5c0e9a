//! Serves the external-storage HTTP protocol (see
//! [`backends::external`](crate::backends::external) for the routes) over
//! any [`Storage`], so an Athens deployment (`StorageType = "external"`)
//! can keep its modules in this product's storage, and our own `external`
//! backend can reach any backend through it.
//!
//! Unlike Athens' reference server, the module path of `list` is decoded
//! like every other route's, versions may come escaped (`!r!c`) or plain
//! (Athens' client does not escape them), saves have no size cap and stream
//! the zip straight into the backend, and failures keep their kind as a
//! status (409 for a save of a stored version, 400 for bad input, 503 when
//! the backend is down).
//!
//! storage-svc serves it when `ExternalStorageListen`
//! (`ATHENS_EXTERNAL_STORAGE_LISTEN`) is set.

use crate::backends::external::{
    rechunk, status_of_kind, CatalogBody, CatalogEntry, StatBody, ZIP_HASH_HEADER, ZIP_SIZE_HEADER,
};
use crate::{SaveRequest, Storage};
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use modmesh_common::config::{ConfigError, Env, Section};
use modmesh_proto::{CanonicalVersion, Coordinates, Error, ModulePath, Result, Version};
use std::collections::HashMap;
use std::sync::Arc;

/// The top-level key that turns the server on.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
#[allow(non_snake_case)]
#[non_exhaustive]
pub struct ExternalServerConfig {
    /// `ATHENS_EXTERNAL_STORAGE_LISTEN`: where storage-svc serves the
    /// external-storage protocol over its backend (`host:port` or `:port`);
    /// empty: not served.
    pub ExternalStorageListen: String,
}

impl Section for ExternalServerConfig {
    const PATH: &'static str = "";
    const ENV: &'static [Env] = &[Env::new(
        "ATHENS_EXTERNAL_STORAGE_LISTEN",
        "ExternalStorageListen",
    )];
    fn validate(&self) -> std::result::Result<(), ConfigError> {
        let v = self.ExternalStorageListen.trim();
        if !v.is_empty() {
            modmesh_common::config::listen_addr("ExternalStorageListen", v)?;
        }
        Ok(())
    }
}

/// Largest `.info` or go.mod part accepted in a save (go.mod's own limit
/// in the go command is 16 MiB).
const SMALL_PART_MAX: usize = 16 << 20;

/// The protocol's routes over `storage`.
pub fn router(storage: Arc<dyn Storage>) -> axum::Router {
    axum::Router::new()
        .route("/catalog", axum::routing::get(catalog))
        .route("/healthz", axum::routing::get(healthz))
        .fallback(module_route)
        .with_state(storage)
}

/// Serves [`router`] on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    storage: Arc<dyn Storage>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(storage))
        .with_graceful_shutdown(shutdown)
        .await
}

fn error_response(e: &Error) -> Response {
    (
        status_of_kind(e.kind),
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        e.message.clone(),
    )
        .into_response()
}

fn ok_bytes(content_type: &'static str, b: Bytes) -> Response {
    ([(header::CONTENT_TYPE, content_type)], b).into_response()
}

async fn healthz(State(s): State<Arc<dyn Storage>>) -> Response {
    match s.health().await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => error_response(&e),
    }
}

async fn catalog(
    State(s): State<Arc<dyn Storage>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let size = match q.get("pagesize").map(|v| v.parse::<usize>()) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return error_response(&Error::invalid("pagesize is not a number")),
    };
    let token = q.get("token").map(String::as_str).filter(|t| !t.is_empty());
    let prefix = q.get("prefix").map(String::as_str).unwrap_or("");
    match s.catalog(token, size, prefix).await {
        Ok(page) => {
            let body = CatalogBody {
                modules: page
                    .entries
                    .iter()
                    .map(|c| CatalogEntry {
                        module: c.module.as_str().to_string(),
                        version: c.version.as_str().to_string(),
                    })
                    .collect(),
                next: page.next_page_token,
            };
            axum::Json(body).into_response()
        }
        Err(e) => error_response(&e),
    }
}

/// A version from the path: escaped (`!r!c`) or as Athens' client sends
/// it (not escaped).
fn version_from_path(v: &str) -> Result<Version> {
    if v.contains('!') {
        Version::from_escaped(v)
    } else {
        Version::new(v)
    }
}

/// `/{module}/@v/{file}` for every module route.
async fn module_route(State(s): State<Arc<dyn Storage>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let decoded = match percent_encoding::percent_decode_str(&path).decode_utf8() {
        Ok(p) => p.into_owned(),
        Err(_) => return error_response(&Error::invalid("path is not UTF-8")),
    };
    let Some((module, file)) = decoded
        .strip_prefix('/')
        .and_then(|p| p.rsplit_once("/@v/"))
    else {
        return error_response(&Error::not_found(format!("no route {path}")));
    };
    let module = match ModulePath::from_escaped(module) {
        Ok(m) => m,
        Err(e) => return error_response(&e),
    };
    let method = req.method().clone();
    if file == "list" {
        if method != Method::GET {
            return StatusCode::METHOD_NOT_ALLOWED.into_response();
        }
        return match s.list(&module).await {
            Ok(vs) => {
                let mut body = String::new();
                for v in vs {
                    body.push_str(&v);
                    body.push('\n');
                }
                ok_bytes("text/plain; charset=utf-8", Bytes::from(body))
            }
            Err(e) => error_response(&e),
        };
    }
    let Some((version, ext)) = file.rsplit_once('.') else {
        return error_response(&Error::not_found(format!("no route {path}")));
    };
    let version = match version_from_path(version) {
        Ok(v) => v,
        Err(e) => return error_response(&e),
    };
    let c = Coordinates { module, version };
    let r = match (ext, method) {
        ("info", Method::GET) => s.info(&c).await.map(|b| ok_bytes("application/json", b)),
        ("mod", Method::GET) => s
            .go_mod(&c)
            .await
            .map(|b| ok_bytes("text/plain; charset=utf-8", b)),
        ("zip", Method::GET) => s.zip(&c).await.map(|z| {
            let body = Body::from_stream(z.stream.map(|r| r.map_err(std::io::Error::other)));
            (
                [
                    (header::CONTENT_TYPE, "application/zip".to_string()),
                    (header::CONTENT_LENGTH, z.size.to_string()),
                ],
                body,
            )
                .into_response()
        }),
        ("stat", Method::GET) => s.stat(&c).await.map(|st| {
            axum::Json(StatBody {
                info_size: st.info_size,
                mod_size: st.mod_size,
                zip_size: st.zip_size,
                stored_at_unix_ms: st.stored_at_unix_ms,
                zip_hash: st.zip_hash,
                mod_hash: st.mod_hash,
            })
            .into_response()
        }),
        ("save", Method::POST) => save(&*s, c, req)
            .await
            .map(|()| StatusCode::OK.into_response()),
        ("delete", Method::DELETE) => s.delete(&c).await.map(|()| StatusCode::OK.into_response()),
        ("info" | "mod" | "zip" | "stat" | "save" | "delete", _) => {
            return StatusCode::METHOD_NOT_ALLOWED.into_response()
        }
        _ => Err(Error::not_found(format!("no route {path}"))),
    };
    match r {
        Ok(resp) => resp,
        Err(e) => error_response(&e),
    }
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// A multipart save: `mod.info` and `mod.mod` (read whole, small), then
/// `mod.zip`, streamed into the backend.
async fn save(s: &dyn Storage, c: Coordinates, req: Request) -> Result<()> {
    let headers = req.headers().clone();
    let boundary = header_str(&headers, header::CONTENT_TYPE.as_str())
        .ok_or_else(|| Error::invalid("a save needs a multipart/form-data body"))
        .and_then(|ct| {
            multer::parse_boundary(ct).map_err(|e| {
                Error::invalid(format!("a save needs a multipart/form-data body: {e}"))
            })
        })?;
    let zip_hash = header_str(&headers, ZIP_HASH_HEADER).map(str::to_string);
    let zip_size = match header_str(&headers, ZIP_SIZE_HEADER) {
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| Error::invalid(format!("{ZIP_SIZE_HEADER}: {v:?} is not a size")))?,
        ),
        None => None,
    };
    let body = req.into_body().into_data_stream();
    let mut form = multer::Multipart::new(body, boundary);
    let result = save_form(s, c, &mut form, zip_hash, zip_size).await;
    if result.is_err() {
        // Read what the client is still sending, so it gets this answer
        // rather than a reset connection.
        while let Ok(Some(mut field)) = form.next_field().await {
            while let Ok(Some(_)) = field.chunk().await {}
        }
    }
    result
}

async fn save_form(
    s: &dyn Storage,
    c: Coordinates,
    form: &mut multer::Multipart<'static>,
    zip_hash: Option<String>,
    zip_size: Option<u64>,
) -> Result<()> {
    let version = CanonicalVersion::try_from(c.version.clone())?;
    let mut info: Option<Bytes> = None;
    let mut go_mod: Option<Bytes> = None;
    let bad = |e: multer::Error| Error::invalid(format!("malformed multipart save: {e}"));
    loop {
        let Some(mut field) = form.next_field().await.map_err(bad)? else {
            return Err(Error::invalid(
                "a save needs the parts mod.info, mod.mod and mod.zip",
            ));
        };
        let name = field
            .name()
            .or(field.file_name())
            .unwrap_or_default()
            .to_string();
        match name.as_str() {
            "mod.info" | "mod.mod" => {
                let mut buf = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(bad)? {
                    if buf.len() + chunk.len() > SMALL_PART_MAX {
                        return Err(Error::invalid(format!("{name} is larger than 16 MiB")));
                    }
                    buf.extend_from_slice(&chunk);
                }
                let slot = if name == "mod.info" {
                    &mut info
                } else {
                    &mut go_mod
                };
                *slot = Some(Bytes::from(buf));
            }
            "mod.zip" => {
                let (Some(info), Some(go_mod)) = (info.take(), go_mod.take()) else {
                    return Err(Error::invalid(
                        "mod.zip must come after mod.info and mod.mod",
                    ));
                };
                let request = SaveRequest {
                    module: c.module.clone(),
                    version,
                    info,
                    go_mod,
                    zip_hash,
                    zip_size,
                };
                let stream = field
                    .map(|r| {
                        r.map_err(|e| {
                            Error::unavailable(format!("the save's zip did not arrive whole: {e}"))
                        })
                    })
                    .boxed();
                return s.save(request, rechunk(stream)).await;
            }
            _ => {
                // Unknown parts are skipped.
                while field.chunk().await.map_err(bad)?.is_some() {}
            }
        }
    }
}
