//! Checksum databases: the `SumDBs` key and the client that GETs their
//! paths for the gateway's `/sumdb/` proxy.
//!
//! Only fetchers reach the internet, so the gateway asks its fetcher
//! ([`crate::Fetcher::sumdb`]) for every lookup and tile it has not cached.
//! A database is named as the go command names it in
//! `<proxy>/sumdb/<name>/...`: the host (and port) of a `SumDBs` URL, or
//! the name in `go env GOSUMDB` when `SumDBs` is empty.

use bytes::Bytes;
use modmesh_common::config::{err, ConfigError, Env, Section};
use modmesh_proto::{Error, Result};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The checksum-database keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[allow(non_snake_case)]
pub struct SumDbConfig {
    /// `ATHENS_SUM_DBS`: URLs of the checksum databases proxied under
    /// `/sumdb/<host>/`. Empty: the database `go env GOSUMDB` names.
    pub SumDBs: Vec<String>,
    /// `ATHENS_SUM_DB_CACHE_SIZE`: bytes of lookups and tiles the gateway
    /// keeps in memory to answer when the database cannot be reached.
    pub SumDBCacheSize: u64,
    /// `ATHENS_GONOSUM_PATTERNS`: module path patterns never looked up in a
    /// checksum database. The gateway refuses their lookups (403); the
    /// fetcher's go command gets them as `GONOSUMDB` unless
    /// `GoBinaryEnvVars` sets it. The same key the home page shows.
    pub NoSumPatterns: Vec<String>,
}

/// The default of `SumDBCacheSize`: 64 MiB.
pub const DEFAULT_CACHE_SIZE: u64 = 64 << 20;

impl Section for SumDbConfig {
    const PATH: &'static str = "";
    const ENV: &'static [Env] = &[
        Env::list("ATHENS_SUM_DBS", "SumDBs", ','),
        Env::new("ATHENS_SUM_DB_CACHE_SIZE", "SumDBCacheSize"),
        Env::new("ATHENS_GONOSUM_PATTERNS", "NoSumPatterns"),
    ];

    fn validate(&self) -> std::result::Result<(), ConfigError> {
        for u in &self.SumDBs {
            SumDb::from_url(u).map_err(|e| err("SumDBs", e))?;
        }
        Ok(())
    }
}

impl SumDbConfig {
    /// The cache size in bytes (the default when the key is 0).
    pub fn cache_size(&self) -> u64 {
        if self.SumDBCacheSize == 0 {
            DEFAULT_CACHE_SIZE
        } else {
            self.SumDBCacheSize
        }
    }

    /// The databases served: `SumDBs`, or the one `go env GOSUMDB` of
    /// `go_binary` names (none if it says `off` or cannot be run).
    pub fn databases(&self, go_binary: &str, env_vars: &[String]) -> Vec<SumDb> {
        if !self.SumDBs.is_empty() {
            return self
                .SumDBs
                .iter()
                .filter_map(|u| SumDb::from_url(u).ok())
                .collect();
        }
        let mut cmd = std::process::Command::new(go_binary);
        cmd.args(["env", "GOSUMDB"]);
        for kv in env_vars {
            if let Some((k, v)) = kv.split_once('=') {
                if k.trim() == "GOSUMDB" {
                    cmd.env("GOSUMDB", v.trim());
                }
            }
        }
        match cmd.output() {
            Ok(out) if out.status.success() => {
                SumDb::from_gosumdb(String::from_utf8_lossy(&out.stdout).trim())
                    .into_iter()
                    .collect()
            }
            _ => {
                tracing::warn!("`go env GOSUMDB` failed; no checksum database is proxied");
                Vec::new()
            }
        }
    }
}

/// One checksum database: the name the go command uses and its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SumDb {
    /// `<name>` in `/sumdb/<name>/`.
    pub name: String,
    /// The base URL its paths are below, without a trailing slash.
    pub url: String,
}

impl SumDb {
    /// A `SumDBs` entry: an `http(s)://host[:port][/path]` URL, named by
    /// its host and port.
    pub fn from_url(u: &str) -> std::result::Result<SumDb, String> {
        let u = u.trim().trim_end_matches('/');
        let rest = u
            .strip_prefix("https://")
            .or_else(|| u.strip_prefix("http://"))
            .ok_or_else(|| format!("{u:?} is not an http(s) URL"))?;
        let host = rest.split('/').next().unwrap_or_default();
        if host.is_empty() || host.contains(['@', '?', '#']) {
            return Err(format!("{u:?} names no host"));
        }
        Ok(SumDb {
            name: host.to_string(),
            url: u.to_string(),
        })
    }

    /// The database a `GOSUMDB` value names: `off` → none, `name`,
    /// `name+key` → `https://name`, `name+key url` → `url`.
    pub fn from_gosumdb(v: &str) -> Option<SumDb> {
        let mut f = v.split_whitespace();
        let first = f.next()?;
        if first == "off" {
            return None;
        }
        let name = first.split('+').next()?.to_string();
        if name.is_empty() {
            return None;
        }
        let url = match f.next() {
            Some(u) if u.contains("://") => u.trim_end_matches('/').to_string(),
            Some(u) => format!("https://{}", u.trim_end_matches('/')),
            None => format!("https://{name}"),
        };
        Some(SumDb { name, url })
    }
}

/// Whether `path` is one a checksum database serves: `latest`,
/// `lookup/<mod>@<ver>` or `tile/...`, with nothing that could leave it.
pub fn valid_path(path: &str) -> bool {
    (path == "latest" || path.starts_with("lookup/") || path.starts_with("tile/"))
        && !path
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        && !path.contains(['?', '#', '\\', '%'])
        && path.bytes().all(|b| b.is_ascii_graphic())
}

/// The largest body accepted from a database (tiles are at most 8 KiB of
/// hashes or 256 records).
pub const MAX_BODY: usize = 4 << 20;

/// GETs paths of the configured databases: through the first proxy of the
/// fetcher's `GOPROXY` list that serves the database (`<proxy>/sumdb/<name>/
/// supported` answers 200), as the go command does, else from the database
/// itself. So a network where only the module proxy is reachable still
/// reaches the checksum database.
#[derive(Debug, Clone)]
pub struct SumDbClient {
    dbs: Vec<SumDb>,
    http: reqwest::Client,
    /// Whether `<proxy>/sumdb/<name>` is served, by `"<proxy> <name>"`.
    supported: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, bool>>>,
}

impl SumDbClient {
    /// A client for `dbs`, each GET bounded by `timeout`.
    pub fn new(dbs: Vec<SumDb>, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()
            .unwrap_or_default();
        SumDbClient {
            dbs,
            http,
            supported: Default::default(),
        }
    }

    /// Whether `<proxy>/sumdb/<name>` answers `supported` with 200
    /// (remembered once known; an unreachable proxy is asked again later).
    async fn serves(&self, via: &str) -> bool {
        if let Some(known) = self
            .supported
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(via)
        {
            return *known;
        }
        match self.http.get(format!("{via}/supported")).send().await {
            Ok(r) => {
                let ok = r.status().as_u16() == 200;
                self.supported
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(via.to_string(), ok);
                ok
            }
            Err(_) => false,
        }
    }

    /// The databases served.
    pub fn databases(&self) -> &[SumDb] {
        &self.dbs
    }

    /// The body of `path` of database `db`; `supported` answers empty for
    /// a database served, without going out. Errors keep their kind: an
    /// unknown database, a bad path or a 404 is `NotFound`, 410 `Gone`,
    /// 401/403 `Permission`, a timeout `Timeout`, anything else
    /// `Unavailable`.
    pub async fn get(&self, db: &str, path: &str) -> Result<Bytes> {
        self.get_via(db, path, &[]).await
    }

    /// As [`SumDbClient::get`], trying the proxies of `proxies` (base URLs
    /// of a `GOPROXY` list, in order) first.
    pub async fn get_via(&self, db: &str, path: &str, proxies: &[String]) -> Result<Bytes> {
        let d =
            self.dbs.iter().find(|d| d.name == db).ok_or_else(|| {
                Error::not_found(format!("checksum database {db:?} is not proxied"))
            })?;
        if path == "supported" {
            return Ok(Bytes::new());
        }
        if !valid_path(path) {
            return Err(Error::not_found(format!(
                "{path:?} is not a checksum database path"
            )));
        }
        let mut base = d.url.clone();
        for p in proxies {
            let via = format!("{}/sumdb/{}", p.trim_end_matches('/'), d.name);
            if self.serves(&via).await {
                base = via;
                break;
            }
        }
        let url = format!("{base}/{path}");
        let resp = self.http.get(&url).send().await.map_err(|e| {
            if e.is_timeout() {
                Error::timeout(format!("checksum database {db}: no answer in time"))
            } else {
                Error::unavailable(format!("checksum database {db} cannot be reached"))
            }
        })?;
        let status = resp.status().as_u16();
        let body_err = |e: reqwest::Error| {
            if e.is_timeout() {
                Error::timeout(format!("checksum database {db}: no answer in time"))
            } else {
                Error::unavailable(format!("checksum database {db}: the answer broke off"))
            }
        };
        match status {
            200 => {
                let body = resp.bytes().await.map_err(body_err)?;
                if body.len() > MAX_BODY {
                    return Err(Error::unavailable(format!(
                        "checksum database {db}: answer of {} bytes is too large",
                        body.len()
                    )));
                }
                Ok(body)
            }
            404 => Err(Error::not_found(format!(
                "checksum database {db}: {path} not found"
            ))),
            410 => Err(Error::gone(format!("checksum database {db}: {path} gone"))),
            401 | 403 => Err(Error::permission(format!(
                "checksum database {db} refused {path} ({status})"
            ))),
            s => Err(Error::unavailable(format!(
                "checksum database {db} answered {s}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_urls() {
        assert_eq!(
            SumDb::from_url("https://sum.example.org/").unwrap(),
            SumDb {
                name: "sum.example.org".into(),
                url: "https://sum.example.org".into()
            }
        );
        assert_eq!(
            SumDb::from_url("http://127.0.0.1:8080").unwrap().name,
            "127.0.0.1:8080"
        );
        assert!(SumDb::from_url("ftp://x").is_err());
        assert!(SumDb::from_url("https://").is_err());
        assert_eq!(SumDb::from_gosumdb("off"), None);
        assert_eq!(
            SumDb::from_gosumdb("sum.example.org").unwrap().url,
            "https://sum.example.org"
        );
        let d = SumDb::from_gosumdb("db.test+abcd+AQ http://127.0.0.1:9/x/").unwrap();
        assert_eq!(d.name, "db.test");
        assert_eq!(d.url, "http://127.0.0.1:9/x");
    }

    #[test]
    fn paths() {
        assert!(valid_path("latest"));
        assert!(valid_path("lookup/example.com/a@v1.0.0"));
        assert!(valid_path("tile/8/0/000.p/3"));
        assert!(!valid_path("tile/../x"));
        assert!(!valid_path("lookup/a//b"));
        assert!(!valid_path("other"));
        assert!(!valid_path("lookup/a?b"));
    }

    #[test]
    fn config_keys() {
        let cfg = modmesh_common::Config::from_text(
            "SumDBs = [\"https://a.example\"]\n",
            &[("ATHENS_SUM_DB_CACHE_SIZE", "1000")],
        )
        .unwrap();
        let s = cfg.section::<SumDbConfig>().unwrap();
        assert_eq!(s.SumDBs, ["https://a.example"]);
        assert_eq!(s.cache_size(), 1000);
        assert_eq!(s.databases("go", &[])[0].name, "a.example");
        let bad = modmesh_common::Config::from_text("SumDBs = [\"a.example\"]\n", &[]).unwrap();
        assert!(bad.section::<SumDbConfig>().is_err());
    }
}
