//! The native GOPROXY fetcher: speaks the module proxy protocol itself,
//! over pooled HTTP connections, with no go process.
//!
//! The upstream is the go command's own (`go env GOPROXY`, read once, with
//! `GoBinaryEnvVars` applied). Each entry of the list is tried in turn by
//! the go command's rules (see [`crate::gocmd::chain`]): an `http(s)://`
//! entry is asked natively; `off` answers "not there"; `direct`, a
//! `file://` entry and modules matching `GONOPROXY` are handed to the
//! go-command fetcher (with `FetcherMode = "native"` they are refused
//! instead). `FetcherMode = "gocmd"` keeps the go-command fetcher for
//! everything.
//!
//! A download GETs `.info` and `.mod`, then spools `.zip` to an unnamed
//! temporary file below `GoGetDir` (refusing it as soon as it passes
//! [`zipcheck::MAX_ZIP`], from `Content-Length` or while streaming), checks
//! it against the module zip rules and computes its `h1:` hash while
//! reading it back ([`zipcheck`]), and verifies both hashes against the
//! checksum database `GOSUMDB` names ([`sumcheck`]; the record proved in
//! the signed tree and the head consistent with those seen before,
//! [`sumtree`]) unless `GOSUMDB=off` or
//! the module matches `GONOSUMDB`, `GOPRIVATE`, `GONOSUMCHECK` or
//! `NoSumPatterns`. Only then is it saved (through [`Ingest`]); a module
//! that fails a check is refused with `Permission` (403) and nothing is
//! stored.

use crate::gocmd::chain::{self, Entry, Failure};
use crate::gocmd::{Class, GoFetcher, ProxyEnv};
use crate::ingest::Downloaded;
use crate::sumdb::{SumDb, SumDbClient};
use crate::{Event, Fetched, Fetcher, Progress, Storage};
use async_trait::async_trait;
use bytes::Bytes;
use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, StreamExt};
use modmesh_common::config::{err, ConfigError, Env, Section};
use modmesh_common::Config;
use modmesh_proto::{
    is_canonical_version, is_pseudo_version, Coordinates, Error, ModulePath, Result, Version,
    MAX_CHUNK,
};
use modmesh_storage::ByteStream;
use serde::{Deserialize, Serialize};
use std::io::{Seek, Write};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

mod netrc;
pub mod sumcheck;
pub mod sumtree;
pub mod tlog;
pub mod zipcheck;

/// The fetcher keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[allow(non_snake_case)]
pub struct FetcherConfig {
    /// `ATHENS_FETCHER_MODE`: `auto` (the default: the native fetcher for
    /// proxy entries of `GOPROXY`, the go command for `direct`, `file://`
    /// and `GONOPROXY` modules), `native` (never run the go command to
    /// fetch) or `gocmd` (always run the go command).
    pub FetcherMode: String,
}

impl Default for FetcherConfig {
    fn default() -> Self {
        FetcherConfig {
            FetcherMode: "auto".into(),
        }
    }
}

impl Section for FetcherConfig {
    const PATH: &'static str = "";
    const ENV: &'static [Env] = &[Env::new("ATHENS_FETCHER_MODE", "FetcherMode")];

    fn validate(&self) -> std::result::Result<(), ConfigError> {
        match self.FetcherMode.as_str() {
            "auto" | "native" | "gocmd" => Ok(()),
            other => Err(err(
                "FetcherMode",
                format!("{other:?} is not one of auto, native, gocmd"),
            )),
        }
    }
}

/// The fetcher `cfg` asks for, saving into `storage`: the go-command
/// fetcher for `FetcherMode = "gocmd"`, else the native one (which hands
/// what it does not speak to the go command).
pub fn from_config(
    cfg: &Config,
    storage: Arc<dyn Storage>,
) -> std::result::Result<Arc<dyn Fetcher>, ConfigError> {
    with_mode(cfg, GoFetcher::from_config(cfg, storage)?)
}

/// The fetcher `cfg`'s `FetcherMode` asks for, around `go` (built from the
/// same `cfg`).
pub fn with_mode(
    cfg: &Config,
    go: GoFetcher,
) -> std::result::Result<Arc<dyn Fetcher>, ConfigError> {
    let mode = cfg.section::<FetcherConfig>()?;
    if mode.FetcherMode == "gocmd" {
        return Ok(Arc::new(go));
    }
    let s = cfg.section::<crate::sumdb::SumDbConfig>()?;
    let env_var = |key: &str| {
        go.settings()
            .env_vars
            .iter()
            .rev()
            .find_map(|kv| {
                kv.split_once('=')
                    .filter(|(k, _)| k.trim() == key)
                    .map(|(_, v)| v.trim().to_string())
            })
            .or_else(|| std::env::var(key).ok())
    };
    let mut no_sum = s.NoSumPatterns.join(",");
    if let Some(p) = env_var("GONOSUMCHECK") {
        no_sum = format!("{no_sum},{p}");
    }
    let netrc_path = env_var("NETRC")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".netrc")));
    let netrc = netrc_path
        .map(|p| netrc::Netrc::read(&p))
        .unwrap_or_default();
    Ok(Arc::new(NativeFetcher::new(
        go,
        mode.FetcherMode == "native",
        no_sum,
        netrc,
    )))
}

/// Where a download came from.
enum Got {
    /// Spooled from a proxy, not yet checked.
    Native {
        version: Version,
        info: Bytes,
        go_mod: Bytes,
        zip: std::fs::File,
    },
    /// Fetched (and verified) by the go command.
    Go(Downloaded),
}

/// The checksum database's records of the version being fetched, looked up
/// once while it downloads.
type SharedRecords<'a> = Shared<BoxFuture<'a, Result<Option<Records>>>>;

/// What a download reports early, and what it reported.
struct Early<'a> {
    progress: &'a Progress,
    /// The records the go.mod must match before it is reported; `None`: no
    /// early `.info`/`.mod` (a query).
    records: Option<SharedRecords<'a>>,
    /// The `.info` and `.mod` reported, which the saved ones must equal.
    sent: std::sync::Mutex<Option<(Bytes, Bytes)>>,
}

impl Early<'_> {
    /// Reports `.info` and `.mod` once, when the go.mod's hash is the
    /// database's (or the module is not checked).
    async fn metadata(&self, version: &Version, info: &Bytes, go_mod: &Bytes) {
        let Some(records) = &self.records else { return };
        let verified = match records.clone().await {
            Ok(None) => true,
            Ok(Some(r)) => r.go_mod.as_deref() == Some(zipcheck::go_mod_hash(go_mod).as_str()),
            Err(_) => false,
        };
        if !verified {
            return;
        }
        {
            let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
            if sent.is_some() {
                return;
            }
            *sent = Some((info.clone(), go_mod.clone()));
        }
        self.progress
            .send(Event::Metadata {
                version: version.clone(),
                info: info.clone(),
                go_mod: go_mod.clone(),
            })
            .await;
    }

    /// Refuses a download whose `.info` or `.mod` differ from the reported
    /// ones (another upstream of the list answered differently).
    fn same(&self, c: &Coordinates, info: &Bytes, go_mod: &Bytes) -> Result<()> {
        let sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        match &*sent {
            Some((i, m)) if i != info || m != go_mod => Err(Error::unavailable(format!(
                "{c}: the upstreams answered different .info or .mod files"
            ))),
            _ => Ok(()),
        }
    }
}

/// The native fetcher; see the module docs.
pub struct NativeFetcher {
    go: GoFetcher,
    strict: bool,
    no_sum: String,
    netrc: netrc::Netrc,
    http: reqwest::Client,
    workers: Semaphore,
    timeout: Duration,
    /// The client of the checksum database `GOSUMDB` names, made once.
    sumdb: tokio::sync::OnceCell<SumDbClient>,
    /// The latest verified tree heads and the tiles of the databases.
    trees: sumtree::TreeState,
}

impl std::fmt::Debug for NativeFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeFetcher")
            .field("strict", &self.strict)
            .field("go", &self.go)
            .finish_non_exhaustive()
    }
}

/// The size of the pieces a zip is spooled and reported in.
const SPOOL_PIECE: usize = 256 << 10;

/// How long a partial piece waits for more of the body before it is
/// spooled and reported anyway.
const SPOOL_STALL: Duration = Duration::from_millis(5);

/// Writes `piece` to the spool, then reports it.
async fn spool_piece(
    file: &mut tokio::fs::File,
    piece: Bytes,
    progress: &Progress,
) -> std::result::Result<(), Failure> {
    tokio::io::AsyncWriteExt::write_all(file, &piece)
        .await
        .map_err(|e| {
            Failure::local(Error::internal(format!(
                "writing the spool file: {}",
                e.kind()
            )))
        })?;
    progress.send(Event::ZipData(piece)).await;
    Ok(())
}

/// The largest `.info` or `@v/list` answer read.
const MAX_SMALL: usize = 16 << 20;

impl NativeFetcher {
    fn new(go: GoFetcher, strict: bool, no_sum: String, netrc: netrc::Netrc) -> Self {
        let timeout = go.settings().timeout;
        let http = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(32)
            .build()
            .unwrap_or_default();
        NativeFetcher {
            workers: Semaphore::new(go.settings().workers.max(1)),
            go,
            strict,
            no_sum,
            netrc,
            http,
            timeout,
            sumdb: tokio::sync::OnceCell::new(),
            trees: sumtree::TreeState::default(),
        }
    }

    async fn env(&self) -> Result<&ProxyEnv> {
        self.go.proxy_env().await
    }

    /// Whether `module` goes wholly to the go command (in `auto` mode):
    /// the list has no proxy entry, or the module matches `GONOPROXY`.
    fn to_go(&self, env: &ProxyEnv, module: &ModulePath) -> bool {
        !env.entries.iter().any(|e| is_http(&e.url))
            || chain::matches_prefix_patterns(&env.no_proxy, module.as_str())
    }

    /// The refusal of a `native`-mode fetcher asked to go direct.
    fn strict_refusal(&self, what: &str) -> Failure {
        Failure {
            class: Some(Class::NotExist),
            error: Error::not_found(format!(
                "{what}: FetcherMode=native does not run the go command"
            )),
        }
    }

    /// GET `url`, with credentials from the netrc for its host.
    async fn get(&self, url: &str) -> std::result::Result<reqwest::Response, Failure> {
        let mut req = self.http.get(url);
        if let Some((login, password)) = self.netrc.for_url(url) {
            if !url_has_userinfo(url) {
                req = req.basic_auth(login, Some(password));
            }
        }
        let shown = chain::redacted(url);
        let resp = req.send().await.map_err(|e| {
            if e.is_timeout() {
                Failure {
                    class: Some(Class::Failed),
                    error: Error::timeout(format!("reading {shown}: no answer in time")),
                }
            } else {
                Failure {
                    class: Some(Class::Unreachable),
                    error: Error::unavailable(format!("reading {shown}: {}", error_chain(&e))),
                }
            }
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        let body: String = body.chars().take(1000).collect();
        let body = body.trim();
        let mut msg = format!("reading {shown}: {status}");
        if !body.is_empty() {
            msg.push_str(&format!("\n\tserver response: {body}"));
        }
        let class = match status.as_u16() {
            404 | 410 => Class::NotExist,
            401 | 403 => Class::Refused,
            _ => Class::Failed,
        };
        Err(Failure {
            class: Some(class),
            error: Error::new(class.kind(), msg),
        })
    }

    /// The body of `url`, at most `max` bytes.
    async fn get_small(&self, url: &str, max: usize) -> std::result::Result<Bytes, Failure> {
        let resp = self.get(url).await?;
        let mut body = resp.bytes_stream();
        let mut out = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| broken(url, &e))?;
            out.extend_from_slice(&chunk);
            if out.len() > max {
                return Err(Failure {
                    class: Some(Class::Failed),
                    error: Error::unavailable(format!(
                        "reading {}: answer over {max} bytes",
                        chain::redacted(url)
                    )),
                });
            }
        }
        Ok(Bytes::from(out))
    }

    /// `.info` of `module@version` from proxy `base`, normalized; its
    /// version must be `want` when given.
    async fn info_from(
        &self,
        base: &str,
        module: &ModulePath,
        file: &str,
    ) -> std::result::Result<(Version, Bytes), Failure> {
        let url = format!("{base}/{}/{file}", module.escaped());
        let body = self.get_small(&url, MAX_SMALL).await?;
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Info {
            version: String,
            #[serde(default)]
            time: Option<String>,
        }
        let info: Info = serde_json::from_slice(&body).map_err(|e| Failure {
            class: Some(Class::Failed),
            error: Error::unavailable(format!(
                "reading {}: invalid .info: {e}",
                chain::redacted(&url)
            )),
        })?;
        let version = Version::new(info.version.as_str())
            .ok()
            .filter(Version::is_canonical)
            .ok_or_else(|| Failure {
                class: Some(Class::Failed),
                error: Error::unavailable(format!(
                    "reading {}: {:?} is not a canonical version",
                    chain::redacted(&url),
                    info.version
                )),
            })?;
        let json = crate::gocmd::output::info_json(crate::gocmd::output::ListModule {
            version: info.version,
            versions: None,
            time: info.time,
        })?;
        Ok((version, json))
    }

    /// The versions `@v/list` of proxy `base` names (canonical releases and
    /// pre-releases, sorted, no pseudo-versions).
    async fn list_from(
        &self,
        base: &str,
        module: &ModulePath,
    ) -> std::result::Result<Vec<String>, Failure> {
        let url = format!("{base}/{}/@v/list", module.escaped());
        let body = self.get_small(&url, MAX_SMALL).await?;
        let mut v: Vec<String> = String::from_utf8_lossy(&body)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|v| is_canonical_version(v) && !is_pseudo_version(v))
            .map(str::to_string)
            .collect();
        v.sort_by(|a, b| modmesh_proto::coords::compare_versions(a, b));
        v.dedup();
        Ok(v)
    }

    /// `.info` of the query `c` from proxy `base`: `latest` (the highest
    /// release, else pre-release, of `@v/list`, else `@latest`) or a
    /// canonical version.
    async fn query_from(
        &self,
        base: &str,
        c: &Coordinates,
    ) -> std::result::Result<(Version, Bytes), Failure> {
        if c.version.is_canonical() {
            let file = format!("@v/{}.info", c.version.escaped());
            let (v, info) = self.info_from(base, &c.module, &file).await?;
            if v != c.version {
                return Err(Failure {
                    class: Some(Class::Failed),
                    error: Error::unavailable(format!("{c}: the proxy answered version {v}")),
                });
            }
            return Ok((v, info));
        }
        let list = self.list_from(base, &c.module).await?;
        let pick = list
            .iter()
            .rev()
            .find(|v| !v.contains('-'))
            .or_else(|| list.last());
        match pick {
            Some(v) => {
                let file = format!("@v/{}.info", modmesh_proto::coords::escape(v));
                self.info_from(base, &c.module, &file).await
            }
            None => self.info_from(base, &c.module, "@latest").await,
        }
    }

    /// Downloads the canonical `c` from proxy `base`: `.info`, `.mod`, and
    /// the zip spooled to a temporary file (refused past the size limit).
    async fn download_from(
        &self,
        base: &str,
        c: &Coordinates,
        early: &Early<'_>,
    ) -> std::result::Result<Got, Failure> {
        // A canonical version's three files are asked at once; a query is
        // resolved first.
        let version = if c.version.is_canonical() {
            c.version.clone()
        } else {
            self.query_from(base, c).await?.0
        };
        let at = Coordinates {
            module: c.module.clone(),
            version: version.clone(),
        };
        let stem = format!("{base}/{}/@v/{}", c.module.escaped(), version.escaped());
        let (mod_url, zip_url) = (format!("{stem}.mod"), format!("{stem}.zip"));
        // `.info` and `.mod` are reported as soon as they are here and the
        // go.mod is verified, while the zip goes on arriving.
        let meta = async {
            let ((_, info), go_mod) = tokio::try_join!(
                self.query_from(base, &at),
                self.get_small(&mod_url, zipcheck::MAX_GO_MOD as usize),
            )?;
            early.metadata(&version, &info, &go_mod).await;
            Ok((info, go_mod))
        };
        let ((info, go_mod), zip) =
            tokio::try_join!(meta, self.spool_zip(&zip_url, &at, early.progress))?;
        Ok(Got::Native {
            version,
            info,
            go_mod,
            zip,
        })
    }

    /// GETs the zip at `url` into an unnamed temporary file, refused past
    /// [`zipcheck::MAX_ZIP`] as soon as the size is known; reports the
    /// bytes to `progress` as they are spooled.
    async fn spool_zip(
        &self,
        url: &str,
        c: &Coordinates,
        progress: &Progress,
    ) -> std::result::Result<std::fs::File, Failure> {
        let version = &c.version;
        let resp = self.get(url).await?;
        let too_large = |n: u64| {
            Failure {
            class: Some(Class::Refused),
            error: Error::permission(format!(
                "{}@{version}: module source tree too large (zip of {n} bytes or more, limit {} bytes)",
                c.module,
                zipcheck::MAX_ZIP
            )),
        }
        };
        if let Some(n) = resp.content_length().filter(|&n| n > zipcheck::MAX_ZIP) {
            return Err(too_large(n));
        }
        let spool = tempfile::tempfile_in(self.go.base_dir()).map_err(|e| {
            Failure::local(Error::internal(format!(
                "creating a spool file: {}",
                e.kind()
            )))
        })?;
        let mut file = tokio::fs::File::from_std(spool);
        progress
            .send(Event::ZipStart {
                size: resp.content_length(),
            })
            .await;
        let mut n: u64 = 0;
        let mut body = resp.bytes_stream();
        // The body's chunks (often a TLS record each) are gathered into
        // pieces of up to SPOOL_PIECE: one spool write and one event per
        // piece, not per chunk. A piece goes out early when the upstream
        // pauses, so waiting clients still see bytes as they come.
        let mut pending = bytes::BytesMut::new();
        loop {
            let next = if pending.is_empty() {
                body.next().await
            } else {
                match tokio::time::timeout(SPOOL_STALL, body.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        let piece = pending.split().freeze();
                        spool_piece(&mut file, piece, progress).await?;
                        continue;
                    }
                }
            };
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(|e| broken(url, &e))?;
            n += chunk.len() as u64;
            if n > zipcheck::MAX_ZIP {
                return Err(too_large(n));
            }
            pending.extend_from_slice(&chunk);
            if pending.len() >= SPOOL_PIECE {
                let piece = pending.split().freeze();
                spool_piece(&mut file, piece, progress).await?;
            }
        }
        if !pending.is_empty() {
            spool_piece(&mut file, pending.freeze(), progress).await?;
        }
        let mut zip = file.into_std().await;
        zip.flush()
            .and_then(|_| zip.rewind())
            .map_err(|e| Failure::local(Error::internal(format!("spool file: {}", e.kind()))))?;
        Ok(zip)
    }

    /// Walks the list for `c`, one attempt per entry, each within the
    /// timeout.
    async fn walk<T, N, NF, G, GF>(
        &self,
        module: &ModulePath,
        what: &str,
        native: N,
        go: G,
    ) -> Result<T>
    where
        N: Fn(String) -> NF,
        NF: std::future::Future<Output = std::result::Result<T, Failure>>,
        G: Fn(Option<String>) -> GF,
        GF: std::future::Future<Output = std::result::Result<T, Failure>>,
    {
        let env = self.env().await?;
        if self.to_go(env, module) {
            if self.strict {
                return Err(self.strict_refusal(what).error);
            }
            return go(None).await.map_err(|f| f.error);
        }
        let timeout = self.timeout;
        let (native, go) = (&native, &go);
        chain::walk(&env.entries, |e: &Entry| {
            let url = e.url.clone();
            async move {
                if url == "off" {
                    return Err(Failure {
                        class: Some(Class::NotExist),
                        error: Error::not_found(format!(
                            "{what}: module lookup disabled by GOPROXY=off"
                        )),
                    });
                }
                if is_http(&url) {
                    let base = url.trim_end_matches('/').to_string();
                    return match tokio::time::timeout(timeout, native(base)).await {
                        Ok(r) => r,
                        Err(_) => Err(Failure {
                            class: Some(Class::Failed),
                            error: Error::timeout(format!(
                                "{what}: {} took over {}s",
                                chain::redacted(&url),
                                timeout.as_secs()
                            )),
                        }),
                    };
                }
                if self.strict {
                    return Err(self.strict_refusal(what));
                }
                go(Some(url)).await
            }
        })
        .await
    }

    /// Downloads `c` (resolving a query first) and checks it, reporting to
    /// `progress`.
    async fn fetch(&self, c: &Coordinates, progress: &Progress) -> Result<Downloaded> {
        let _permit = self
            .workers
            .acquire()
            .await
            .map_err(|_| Error::internal("the fetch worker pool is closed"))?;
        // Branches, revisions, version prefixes: resolved by the go
        // command's query rules first.
        let resolved;
        let c = if c.version.is_canonical() || c.version.as_str() == "latest" || self.strict {
            c
        } else {
            let info = self.go.query(c).await?;
            #[derive(Deserialize)]
            struct V {
                #[serde(rename = "Version")]
                version: String,
            }
            let v: V = serde_json::from_slice(&info)
                .map_err(|e| Error::internal(format!("the resolved .info: {e}")))?;
            resolved = Coordinates::new(c.module.as_str(), &v.version)?;
            &resolved
        };
        let key = c.key();
        // A canonical version's records are looked up while it downloads.
        let records: Option<SharedRecords<'_>> = c
            .version
            .is_canonical()
            .then(|| self.records(&c.module, &c.version).boxed().shared());
        let reporter = Early {
            progress,
            records: records.clone(),
            sent: std::sync::Mutex::new(None),
        };
        let early_ref = &reporter;
        let walk = self.walk(
            &c.module,
            &key,
            |base| async move { self.download_from(&base, c, early_ref).await },
            |gp| async move { self.go.fetch_via(c, gp.as_deref()).await.map(Got::Go) },
        );
        let (got, early) = match records {
            Some(records) => {
                let (got, records) = tokio::join!(walk, records);
                (got?, Some(records))
            }
            None => (walk.await?, None),
        };
        let (version, info, go_mod, zip) = match got {
            Got::Go(d) => {
                reporter.same(c, &d.info, &d.go_mod)?;
                return Ok(d);
            }
            Got::Native {
                version,
                info,
                go_mod,
                zip,
            } => (version, info, go_mod, zip),
        };
        reporter.same(c, &info, &go_mod)?;
        let module = c.module.as_str().to_string();
        let (v, gm) = (version.as_str().to_string(), go_mod.clone());
        let checked = tokio::task::spawn_blocking(move || {
            let r = zip
                .try_clone()
                .and_then(zipcheck::FileAt::new)
                .map(|at| zipcheck::check_zip(at, &module, &v, &gm));
            (r, zip)
        })
        .await
        .map_err(|e| Error::internal(format!("checking the zip: {e}")))?;
        let checked = match checked {
            (Ok(r), zip) => (r, zip),
            (Err(e), _) => {
                return Err(Error::internal(format!(
                    "reading the spool file: {}",
                    e.kind()
                )))
            }
        };
        let (h1, mut zip) = match checked {
            (Ok(h1), zip) => (h1, zip),
            (Err(why), _) => {
                tracing::warn!(coordinates = %c, reason = %why, "zip refused");
                return Err(Error::permission(format!(
                    "{}@{version}: invalid module zip: {why}",
                    c.module
                )));
            }
        };
        let mod_h1 = zipcheck::go_mod_hash(&go_mod);
        let records = match early {
            Some(r) => r?,
            None => self.records(&c.module, &version).await?,
        };
        if let Some(r) = records {
            r.check(&format!("{}@{version}", c.module), &h1, &mod_h1)?;
        }
        progress.send(Event::Verified).await;
        let zip_size = zip.metadata().ok().map(|m| m.len());
        zip.rewind()
            .map_err(|e| Error::internal(format!("spool file: {}", e.kind())))?;
        let stream: ByteStream =
            tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(zip), MAX_CHUNK)
                .map(|r| {
                    r.map_err(|e| Error::internal(format!("reading the spool file: {}", e.kind())))
                })
                .boxed();
        Ok(Downloaded {
            version,
            info,
            go_mod,
            zip: stream,
            zip_hash: Some(h1),
            zip_size,
        })
    }

    /// The go.sum records of `module@version` in the checksum database, as
    /// the go command would ask (see the module docs): `None` when the
    /// module is not checked; else the database's name and its zip and
    /// go.mod hashes.
    async fn records(&self, module: &ModulePath, version: &Version) -> Result<Option<Records>> {
        let env = self.env().await?;
        let gosumdb = env.sumdb.trim();
        let mv = format!("{module}@{version}");
        if gosumdb == "off" || gosumdb.is_empty() {
            if module.as_str() == "golang.org/toolchain" {
                return Err(Error::permission(format!(
                    "verifying {mv}: checksum database disabled by GOSUMDB=off"
                )));
            }
            return Ok(None);
        }
        if chain::matches_prefix_patterns(&env.no_sumdb, module.as_str())
            || chain::matches_prefix_patterns(&self.no_sum, module.as_str())
        {
            return Ok(None);
        }
        let verifier = sumcheck::Verifier::for_gosumdb(gosumdb).ok_or_else(|| {
            Error::permission(format!(
                "verifying {mv}: GOSUMDB {gosumdb:?} names no verifier key this fetcher knows"
            ))
        })?;
        let db = SumDb::from_gosumdb(gosumdb)
            .ok_or_else(|| Error::permission(format!("verifying {mv}: invalid GOSUMDB")))?;
        // With an explicit URL the go command goes straight there; else it
        // asks the proxies of its list first, in order.
        let proxies: Vec<String> = if gosumdb.split_whitespace().nth(1).is_some() {
            Vec::new()
        } else {
            env.entries
                .iter()
                .map(|e| e.url.trim_end_matches('/').to_string())
                .filter(|u| is_http(u))
                .collect()
        };
        let client = self
            .sumdb
            .get_or_init(|| async { SumDbClient::new(vec![db.clone()], self.timeout) })
            .await;
        let path = format!("lookup/{}@{}", module.escaped(), version.escaped());
        let body = client
            .get_via(&db.name, &path, &proxies)
            .await
            .map_err(|e| Error::new(e.kind, format!("verifying {mv}: {}", e.message)))?;
        let body = std::str::from_utf8(&body).map_err(|_| {
            Error::permission(format!("verifying {mv}: the lookup answer is not UTF-8"))
        })?;
        let lookup = sumcheck::parse_lookup(body, &verifier)
            .map_err(|why| Error::permission(format!("verifying {mv}: {why}")))?;
        // The record must be in the tree its head signs, and the head on
        // the timeline of those verified before.
        let (name, proxies) = (db.name.as_str(), proxies.as_slice());
        self.trees
            .verify(name, &lookup, |path: String| async move {
                client.get_via(name, &path, proxies).await
            })
            .await
            .map_err(|e| Error::new(e.kind, format!("verifying {mv}: {}", e.message)))?;
        let (zip, go_mod) = sumcheck::record_hashes(lookup.text, module.as_str(), version.as_str());
        Ok(Some(Records {
            db: db.name,
            zip,
            go_mod,
        }))
    }
}

/// What a checksum database records for one module version.
#[derive(Clone)]
struct Records {
    db: String,
    zip: Option<String>,
    go_mod: Option<String>,
}

impl Records {
    /// Refuses `mv` unless the computed hashes are the recorded ones.
    fn check(&self, mv: &str, h1: &str, mod_h1: &str) -> Result<()> {
        for (what, got, want) in [
            (mv.to_string(), h1, &self.zip),
            (format!("{mv}/go.mod"), mod_h1, &self.go_mod),
        ] {
            match want {
                Some(w) if w == got => {}
                Some(w) => {
                    tracing::warn!(module = %what, downloaded = %got, database = %w, "checksum mismatch");
                    return Err(Error::permission(format!(
                        "verifying {what}: checksum mismatch\n\tdownloaded: {got}\n\t{}: {w}\n\nSECURITY ERROR\nThis download does NOT match the one reported by the checksum server.",
                        self.db
                    )));
                }
                None => {
                    return Err(Error::permission(format!(
                        "verifying {what}: the checksum database has no record of it"
                    )))
                }
            }
        }
        Ok(())
    }
}

fn is_http(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

fn url_has_userinfo(url: &str) -> bool {
    url.split_once("://")
        .map(|(_, rest)| {
            rest.split('/')
                .next()
                .is_some_and(|authority| authority.contains('@'))
        })
        .unwrap_or(false)
}

/// A transfer that broke off.
fn broken(url: &str, e: &reqwest::Error) -> Failure {
    let shown = chain::redacted(url);
    if e.is_timeout() {
        return Failure {
            class: Some(Class::Failed),
            error: Error::timeout(format!("reading {shown}: no answer in time")),
        };
    }
    Failure {
        class: Some(Class::Failed),
        error: Error::unavailable(format!("reading {shown}: {}", error_chain(e))),
    }
}

/// An error and its sources, one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    chain::redacted(&s)
}

#[async_trait]
impl Fetcher for NativeFetcher {
    async fn download(&self, c: &Coordinates) -> Result<Fetched> {
        self.download_progress(c, Progress::none()).await
    }

    async fn download_progress(&self, c: &Coordinates, progress: Progress) -> Result<Fetched> {
        self.go
            .ingest()
            .download(c, || self.fetch(c, &progress))
            .await
    }

    async fn list(&self, module: &ModulePath) -> Result<Vec<String>> {
        self.walk(
            module,
            &format!("{module}@v/list"),
            |base| async move { self.list_from(&base, module).await },
            |gp| async move { self.go.list_via(module, gp.as_deref()).await },
        )
        .await
    }

    async fn query(&self, c: &Coordinates) -> Result<Bytes> {
        let canonical_or_latest = c.version.is_canonical() || c.version.as_str() == "latest";
        if !canonical_or_latest && !self.strict {
            // Branches, revisions, version prefixes: the go command's
            // query rules.
            return self.go.query(c).await;
        }
        self.walk(
            &c.module,
            &c.key(),
            |base| async move { self.query_from(&base, c).await.map(|(_, i)| i) },
            |gp| async move { self.go.query_via(c, gp.as_deref()).await },
        )
        .await
    }

    async fn health(&self) -> Result<()> {
        self.go.health().await
    }

    async fn sumdb(&self, db: &str, path: &str) -> Result<Bytes> {
        self.go.sumdb(db, path).await
    }
}
