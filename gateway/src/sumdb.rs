//! The checksum-database proxy: `/sumdb/<db>/supported`, `/sumdb/<db>/lookup/...`,
//! `/sumdb/<db>/tile/...` and `/sumdb/<db>/latest`.
//!
//! The gateway never reaches a database itself: every path goes to the
//! fetcher ([`Fetcher::sumdb`]), which knows the databases `SumDBs` (or
//! `go env GOSUMDB`) names. A lookup of a module matching `NoSumPatterns`
//! is refused with 403, as Athens does.
//!
//! [`SumDbCache`] wraps the gateway's fetcher: lookups and full tiles never
//! change, so once fetched they are answered from a bytes-bounded memory
//! cache; `latest` and partial tiles (`.p/<w>`) are asked for every time
//! and the cached copy answers only when the database or the fetcher cannot
//! be reached. A machine that once verified a module through the gateway so
//! verifies it again while the database is down.

use crate::app::AppState;
use crate::error::HttpError;
use async_trait::async_trait;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use modmesh_fetcher::{Fetched, Fetcher};
use modmesh_proto::{Coordinates, Error, ErrorKind, ModulePath, Result};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// The `/sumdb/` routes over the state's fetcher and `NoSumPatterns`.
pub fn routes() -> Router<AppState> {
    Router::new().route("/sumdb/{db}/{*rest}", get(handle))
}

async fn handle(
    State(state): State<AppState>,
    Path((db, rest)): Path<(String, String)>,
) -> Response {
    let fetcher = state.service().services().fetcher.clone();
    let patterns = &state.edges().no_sum_patterns;
    match answer(fetcher.as_ref(), patterns, &db, &rest).await {
        Ok(body) => {
            let mut r = Response::new(axum::body::Body::from(body));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            let cache = if rest.starts_with("tile/") && !rest.contains(".p/") {
                "public, max-age=86400, immutable"
            } else {
                "no-cache"
            };
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
            r
        }
        Err(e) if e.kind == ErrorKind::Permission => {
            (StatusCode::FORBIDDEN, format!("{}\n", e.message)).into_response()
        }
        Err(e) => HttpError(e).into_response(),
    }
}

/// What `/sumdb/<db>/<rest>` answers.
pub async fn answer(
    fetcher: &dyn Fetcher,
    no_sum_patterns: &[String],
    db: &str,
    rest: &str,
) -> Result<Bytes> {
    if rest == "supported" {
        // The fetcher answers for the databases it serves, without going out.
        fetcher.sumdb(db, "supported").await?;
        return Ok(Bytes::new());
    }
    if !modmesh_fetcher::sumdb::valid_path(rest) {
        return Err(Error::not_found(format!(
            "{rest:?} is not a checksum database path"
        )));
    }
    if let Some(lookup) = rest.strip_prefix("lookup/") {
        let module = lookup
            .rsplit_once('@')
            .and_then(|(m, _)| ModulePath::from_escaped(m).ok())
            .ok_or_else(|| Error::not_found(format!("{lookup:?} is not module@version")))?;
        if matches_patterns(no_sum_patterns, module.as_str()) {
            return Err(Error::permission(format!(
                "{module} matches NoSumPatterns: not looked up in the checksum database"
            )));
        }
    }
    // The database is the upstream here: unreachable is 502, not 503.
    fetcher.sumdb(db, rest).await.map_err(Error::from_upstream)
}

/// Whether `module` matches one of the glob `patterns` as the go command
/// matches `GONOSUMDB`/`GOPRIVATE`: a pattern matches a module whose
/// leading path elements match the pattern's elements (`path.Match`).
pub fn matches_patterns(patterns: &[String], module: &str) -> bool {
    patterns
        .iter()
        .flat_map(|p| p.split(','))
        .map(|p| p.trim().trim_end_matches('/'))
        .filter(|p| !p.is_empty())
        .any(|p| {
            let n = p.split('/').count();
            let m: Vec<&str> = module.split('/').collect();
            m.len() >= n && p.split('/').zip(&m).all(|(pe, me)| glob(pe, me))
        })
}

/// `path.Match` for one path element: `*` (any run), `?` (one character),
/// everything else literally.
fn glob(p: &str, s: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (p.chars().collect(), s.chars().collect());
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Whether a checksum-database path never changes once served.
pub fn immutable(path: &str) -> bool {
    path.starts_with("lookup/") || (path.starts_with("tile/") && !path.contains(".p/"))
}

/// A bytes-bounded cache of checksum-database answers, oldest evicted
/// first.
#[derive(Debug)]
struct Lru {
    max: u64,
    size: u64,
    map: HashMap<String, Bytes>,
    order: VecDeque<String>,
}

impl Lru {
    fn get(&mut self, k: &str) -> Option<Bytes> {
        let v = self.map.get(k)?.clone();
        if let Some(i) = self.order.iter().position(|o| o == k) {
            let key = self.order.remove(i).unwrap_or_default();
            self.order.push_back(key);
        }
        Some(v)
    }

    fn put(&mut self, k: String, v: Bytes) {
        let weight = (k.len() + v.len()) as u64;
        if weight > self.max {
            return;
        }
        if let Some(old) = self.map.remove(&k) {
            self.size -= (k.len() + old.len()) as u64;
            self.order.retain(|o| o != &k);
        }
        while self.size + weight > self.max {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(old) = self.map.remove(&oldest) {
                self.size -= (oldest.len() + old.len()) as u64;
            }
        }
        self.size += weight;
        self.order.push_back(k.clone());
        self.map.insert(k, v);
    }
}

/// A [`Fetcher`] that keeps checksum-database answers of `inner` (see the
/// module documentation) and passes every other call through.
pub struct SumDbCache {
    inner: Arc<dyn Fetcher>,
    cache: Mutex<Lru>,
}

impl std::fmt::Debug for SumDbCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SumDbCache").finish_non_exhaustive()
    }
}

impl SumDbCache {
    /// `inner` with a cache of at most `max_bytes`.
    pub fn new(inner: Arc<dyn Fetcher>, max_bytes: u64) -> Self {
        SumDbCache {
            inner,
            cache: Mutex::new(Lru {
                max: max_bytes,
                size: 0,
                map: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }

    /// Bytes held.
    pub fn size(&self) -> u64 {
        self.lock().size
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Fetcher for SumDbCache {
    async fn download(&self, c: &Coordinates) -> Result<Fetched> {
        self.inner.download(c).await
    }
    async fn download_progress(
        &self,
        c: &Coordinates,
        progress: modmesh_fetcher::Progress,
    ) -> Result<Fetched> {
        self.inner.download_progress(c, progress).await
    }
    async fn list(&self, module: &ModulePath) -> Result<Vec<String>> {
        self.inner.list(module).await
    }
    async fn query(&self, c: &Coordinates) -> Result<Bytes> {
        self.inner.query(c).await
    }
    async fn health(&self) -> Result<()> {
        self.inner.health().await
    }
    async fn sumdb(&self, db: &str, path: &str) -> Result<Bytes> {
        if path == "supported" {
            return self.inner.sumdb(db, path).await;
        }
        let key = format!("{db}/{path}");
        if immutable(path) {
            if let Some(b) = self.lock().get(&key) {
                return Ok(b);
            }
        }
        match self.inner.sumdb(db, path).await {
            Ok(b) => {
                self.lock().put(key, b.clone());
                Ok(b)
            }
            Err(e) if matches!(e.kind, ErrorKind::Unavailable | ErrorKind::Timeout) => {
                match self.lock().get(&key) {
                    Some(b) => {
                        tracing::warn!(db, path, error = %e, "checksum database unreachable; answering from the cache");
                        Ok(b)
                    }
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_as_the_go_command_does() {
        let p = vec!["example.com/private,*.corp.example".to_string()];
        assert!(matches_patterns(&p, "example.com/private"));
        assert!(matches_patterns(&p, "example.com/private/sub"));
        assert!(!matches_patterns(&p, "example.com/privateer"));
        assert!(!matches_patterns(&p, "example.com"));
        assert!(matches_patterns(&p, "git.corp.example/x"));
        assert!(!matches_patterns(&p, "corp.example/x"));
        assert!(!matches_patterns(&[], "example.com/private"));
        assert!(glob("a?c", "abc") && !glob("a?c", "ac") && glob("*", "") && glob("a*", "a"));
    }

    #[test]
    fn which_paths_never_change() {
        assert!(immutable("lookup/example.com/a@v1.0.0"));
        assert!(immutable("tile/8/0/001"));
        assert!(!immutable("tile/8/0/001.p/7"));
        assert!(!immutable("latest"));
    }

    #[test]
    fn the_cache_is_bounded_by_bytes() {
        let mut l = Lru {
            max: 10,
            size: 0,
            map: HashMap::new(),
            order: VecDeque::new(),
        };
        l.put("a".into(), Bytes::from_static(b"1234"));
        l.put("b".into(), Bytes::from_static(b"1234"));
        assert_eq!(l.size, 10);
        assert!(l.get("a").is_some());
        l.put("c".into(), Bytes::from_static(b"12"));
        // "b" was the least recently used.
        assert!(l.get("b").is_none());
        assert!(l.get("a").is_some() && l.get("c").is_some());
        assert!(l.size <= 10);
        l.put("big".into(), Bytes::from(vec![0u8; 20]));
        assert!(l.get("big").is_none());
    }
}
