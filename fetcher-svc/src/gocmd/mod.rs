//! The go-command fetcher: runs `go mod download` / `go list -m` against the
//! upstream the go command's own environment names, and saves what it
//! downloads into a [`Storage`] through [`Ingest`].
//!
//! The parts: `process` supervises one go run (process group, timeout,
//! kill, reap), `jobdir` makes and removes its directory, `output`
//! parses what go prints, [`mod@classify`] decides what a failure means, and
//! [`chain`] walks the `GOPROXY` list entry by entry. This module builds
//! the command (environment isolation) and implements [`Fetcher`].
//!
//! # How each go run is isolated
//!
//! - **Environment.** Every run starts from an empty environment. Only
//!   [`PASSTHROUGH_ENV`] is copied from this process (`PATH`, `HOME`, and the
//!   variables that name the upstream or its credentials), then the fetcher
//!   sets `GO111MODULE=on`, `GOWORK=off`, `GOFLAGS=` (empty), `CGO_ENABLED=0`,
//!   `GOTOOLCHAIN=local`, `GOMODCACHE`, `GOCACHE` and a per-run `GOPATH`, and
//!   finally applies `GoBinaryEnvVars` (which win). The upstream is therefore
//!   whatever the go command would use: its default, the caller's `GOPROXY`,
//!   or `GOPROXY` in `GoBinaryEnvVars`. No proxy host is built in. (As
//!   `HOME` passes, the go command still reads its own `go env -w` file,
//!   and it treats the empty `GOFLAGS` as unset, so a `GOFLAGS` written there
//!   applies; `GoBinaryEnvVars` can override it.)
//! - **Working directory.** Each run gets a fresh directory under
//!   `GoGetDir` (or the OS temp dir) that holds no `go.mod`, so the go command
//!   runs outside any module; the directory (and the run's `GOPATH` inside it)
//!   is removed afterwards, making directories writable first because the go
//!   command writes read-only trees.
//! - **Shared module cache.** `GOMODCACHE=<base>/modmesh-modcache` and
//!   `GOCACHE=<base>/modmesh-gocache` are shared by all runs, so a version
//!   fetched once is not downloaded again. This is safe under concurrency
//!   because the go command itself is built for a shared cache: it holds a
//!   per-version file lock (`lockedfile`) while it fills the cache, writes a
//!   zip under a temporary name and renames it into place only when complete,
//!   recomputes a missing `.ziphash`, and re-extracts a directory still
//!   marked `.partial`; so a run killed half-way leaves nothing a later run
//!   would trust. The fetcher only reads files the go command reported as
//!   complete, and never writes into the cache itself.
//! - **Arguments.** They are built only from a validated [`ModulePath`] and
//!   [`Version`] (neither can start with `-`), and the `module@version`
//!   argument also follows `--`, which `go mod download` and `go list` accept.
//! - **Time and cancellation.** A semaphore of `GoGetWorkers` permits bounds
//!   concurrent runs. Each run is started as the leader of its own process
//!   group and gets `Timeout`; on timeout, or when the future running it is
//!   dropped (the caller cancelled, the gRPC client went away), the whole
//!   group is killed with `SIGKILL` and the child is reaped, so neither go
//!   nor a git it started survives and no zombie remains. The group is also
//!   killed right after go exits normally, so no straggler outlives a run.
//!
//! # The GOPROXY list
//!
//! The `GOPROXY` in effect is the go command's own: `go env -json GOPROXY
//! GONOPROXY`, run once in the fetcher's environment (so the process
//! environment, the go env file and `GoBinaryEnvVars` all count), cached
//! after the first success. With more than one entry, each query runs the
//! go command once per entry with `GOPROXY` set to that entry, and
//! [`chain::walk`] applies the `,` and `|` rules; see [`chain`].
//!
//! # Errors
//!
//! [`mod@classify`] maps go's messages to error kinds: a missing module or
//! version is `NotFound`, an unreachable or failing upstream `Unavailable`,
//! a 401/403 from the upstream `Permission`; a run over the timeout is
//! `Timeout`; anything else go reports is `Unavailable`. `Internal` is kept
//! for local faults: the go binary missing, no work directory, output go
//! should never print. Messages sent back are go's own text without the
//! `go: ` prefixes, with server paths (GoGetDir, job directories, module
//! cache) replaced by [`classify::NEUTRAL_PATH`]; the full text is logged.

use crate::ingest::{Downloaded, Ingest};
use crate::{Fetched, Fetcher};
use async_trait::async_trait;
use bytes::Bytes;
use chain::{Entry, Failure};
use futures::StreamExt;
use modmesh_common::Config;
use modmesh_proto::{Coordinates, Error, ModulePath, Result, Version, MAX_CHUNK};
use modmesh_storage::{ByteStream, Storage};
use output::{first_json, GoEnvJson, ListModule, ModDownload};
use process::GoOutput;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::process::Command;
use tokio::sync::{OnceCell, Semaphore};

pub mod chain;
pub mod classify;
mod jobdir;
pub(crate) mod output;
mod process;

pub use classify::{class_of, classify, Class};
pub use jobdir::{remove_dir_all_forced, sweep as sweep_job_dirs, JOB_DIR_PREFIX};
pub use output::clean_message;
pub use process::kill_live_groups;

use jobdir::JobDir;

/// Environment variables copied from this process into the go command's
/// otherwise empty environment: the search path and home directory, and the
/// variables that name the upstream or its credentials.
pub const PASSTHROUGH_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "GOROOT",
    "GOPROXY",
    "GOSUMDB",
    "GONOSUMDB",
    "GOPRIVATE",
    "GONOPROXY",
    "GOINSECURE",
    "GOAUTH",
    "NETRC",
    "GIT_SSH",
    "GIT_SSH_COMMAND",
    "SSH_AUTH_SOCK",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

/// Name of the shared module cache directory under the base directory.
pub const MODCACHE_DIR: &str = "modmesh-modcache";
/// Name of the shared build cache directory under the base directory.
pub const GOCACHE_DIR: &str = "modmesh-gocache";

/// How the go command is run: the Athens keys `GoBinary`,
/// `GoBinaryEnvVars`, `GoGetWorkers`, `GoGetDir` and `Timeout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoSettings {
    /// The go command (a name looked up in `PATH`, or a path).
    pub go_binary: String,
    /// `KEY=VALUE` entries applied last to the go command's environment.
    pub env_vars: Vec<String>,
    /// The most go runs at once.
    pub workers: usize,
    /// Parent of the per-run directories and of the shared caches; `None`
    /// for the OS temp dir.
    pub go_get_dir: Option<PathBuf>,
    /// The longest one go run may take.
    pub timeout: Duration,
}

impl GoSettings {
    /// The settings named by `cfg`.
    pub fn from_config(cfg: &Config) -> Self {
        let dir = cfg.GoGetDir.trim();
        GoSettings {
            go_binary: cfg.GoBinary.clone(),
            env_vars: cfg.GoBinaryEnvVars.clone(),
            workers: cfg.GoGetWorkers.max(1),
            go_get_dir: (!dir.is_empty()).then(|| PathBuf::from(dir)),
            timeout: cfg.timeout(),
        }
    }
}

impl Default for GoSettings {
    /// Athens' defaults, with the go command's own upstream.
    fn default() -> Self {
        GoSettings {
            go_binary: "go".into(),
            env_vars: Vec::new(),
            workers: 10,
            go_get_dir: None,
            timeout: Duration::from_secs(300),
        }
    }
}

/// The go command's own `GOPROXY`, `GONOPROXY` and checksum settings
/// (`go env`, run once in the fetcher's environment).
#[derive(Debug, Clone, Default)]
pub struct ProxyEnv {
    /// The `GOPROXY` list.
    pub entries: Vec<Entry>,
    /// `GONOPROXY` (which defaults to `GOPRIVATE`).
    pub no_proxy: String,
    /// `GOSUMDB`.
    pub sumdb: String,
    /// `GONOSUMDB` and `GOPRIVATE`, comma-separated.
    pub no_sumdb: String,
}

/// A [`Fetcher`] that runs the go command and saves into a [`Storage`].
pub struct GoFetcher {
    settings: GoSettings,
    ingest: Ingest,
    workers: Semaphore,
    base: PathBuf,
    /// Path prefixes replaced in messages sent back.
    private_paths: Vec<String>,
    /// `go version`, once it ran.
    version: OnceCell<String>,
    /// `go env GOPROXY GONOPROXY`, once it ran.
    proxy: OnceCell<ProxyEnv>,
    /// The checksum databases this fetcher reaches for the gateway.
    sumdb: Option<crate::sumdb::SumDbClient>,
    /// Held while the fetcher lives; its job-directory sweeper stops after.
    _alive: Arc<()>,
}

/// How often job directories of dead fetchers sharing the base directory
/// are looked for (also once at start).
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Sweeps `base` for what dead fetchers left (see [`sweep_job_dirs`]) now
/// and every [`SWEEP_EVERY`] while `alive` can be upgraded (only inside a
/// tokio runtime).
fn start_sweeper(base: PathBuf, alive: std::sync::Weak<()>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if alive.upgrade().is_none() {
                return;
            }
            let b = base.clone();
            let _ = tokio::task::spawn_blocking(move || sweep_job_dirs(&b)).await;
        }
    });
}

impl std::fmt::Debug for GoFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoFetcher")
            .field("settings", &self.settings)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl GoFetcher {
    /// A fetcher running the go command as `settings` say and saving into
    /// `storage`. Nothing is run or created until the first call.
    pub fn new(settings: GoSettings, storage: Arc<dyn Storage>) -> Self {
        modmesh_common::shutdown::at_forced_exit(kill_live_groups);
        let base = settings
            .go_get_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        // The go command rejects relative GOMODCACHE/GOPATH values.
        let base = std::path::absolute(&base).unwrap_or(base);
        if let Some(found) = base
            .ancestors()
            .map(|d| d.join("go.mod"))
            .find(|p| p.is_file())
        {
            tracing::warn!(
                go_mod = %found.display(),
                "GoGetDir lies inside a Go module; go commands will run in that module's context"
            );
        }
        let mut private_paths = vec![format!("{}/modmesh-", base.display())];
        if settings.go_get_dir.is_some() {
            private_paths.push(base.display().to_string());
        }
        for kv in &settings.env_vars {
            if let Some((k, v)) = kv.split_once('=') {
                let v = v.trim();
                if matches!(k.trim(), "GOMODCACHE" | "GOCACHE" | "GOPATH" | "GOTMPDIR")
                    && v.starts_with('/')
                    && v.len() > 1
                {
                    private_paths.push(v.to_string());
                }
            }
        }
        let alive = Arc::new(());
        start_sweeper(base.clone(), Arc::downgrade(&alive));
        GoFetcher {
            workers: Semaphore::new(settings.workers.max(1)),
            settings,
            ingest: Ingest::new(storage),
            base,
            private_paths,
            version: OnceCell::new(),
            proxy: OnceCell::new(),
            sumdb: None,
            _alive: alive,
        }
    }

    /// The same fetcher, also reaching the checksum databases of `client`.
    pub fn with_sumdb(mut self, client: crate::sumdb::SumDbClient) -> Self {
        self.sumdb = Some(client);
        self
    }

    /// A fetcher from `cfg`: the go settings, plus the checksum databases
    /// `SumDBs` names (or `go env GOSUMDB`).
    pub fn from_config(
        cfg: &Config,
        storage: Arc<dyn Storage>,
    ) -> std::result::Result<Self, modmesh_common::config::ConfigError> {
        let mut settings = GoSettings::from_config(cfg);
        let s = cfg.section::<crate::sumdb::SumDbConfig>()?;
        let sets = |env: &[String], key: &str| {
            env.iter()
                .any(|kv| kv.split_once('=').is_some_and(|(k, _)| k.trim() == key))
        };
        // As Athens: NoSumPatterns reach the go command as GONOSUMDB.
        if !s.NoSumPatterns.is_empty() && !sets(&settings.env_vars, "GONOSUMDB") {
            settings
                .env_vars
                .push(format!("GONOSUMDB={}", s.NoSumPatterns.join(",")));
        }
        let dbs = s.databases(&settings.go_binary, &settings.env_vars);
        let timeout = settings.timeout;
        let private = cfg.section::<crate::private::PrivateConfig>()?;
        let mut f = GoFetcher::new(settings, storage)
            .with_sumdb(crate::sumdb::SumDbClient::new(dbs, timeout));
        for kv in private.prepare(&f.base)? {
            let key = kv.split_once('=').map(|(k, _)| k).unwrap_or_default();
            if !sets(&f.settings.env_vars, key) {
                f.settings.env_vars.push(kv);
            }
        }
        Ok(f)
    }

    /// The settings in use.
    pub fn settings(&self) -> &GoSettings {
        &self.settings
    }

    /// The directory holding the per-run directories and the shared caches.
    pub fn base_dir(&self) -> &Path {
        &self.base
    }

    /// The shared module cache (`GOMODCACHE`).
    pub fn mod_cache(&self) -> PathBuf {
        self.base.join(MODCACHE_DIR)
    }

    /// Runs `go version` in the fetcher's environment and returns its
    /// output; a way to check at startup that the go binary can be run.
    /// The first success is kept for [`Fetcher::health`].
    pub async fn check(&self) -> Result<String> {
        let out = self.run(&["version"], "go version", None).await?;
        if !out.status.success() {
            // The go binary itself is broken: a local fault.
            let text = String::from_utf8_lossy(&out.stderr);
            tracing::error!(status = %out.status, stderr = %text, "go version failed");
            return Err(Error::internal(format!(
                "go version failed ({}): {}",
                out.status,
                classify::scrub_paths(&clean_message(&text), &self.private_paths)
            )));
        }
        let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let _ = self.version.set(v.clone());
        Ok(v)
    }

    /// The `GOPROXY` entries in effect (`go env GOPROXY`), read once.
    pub async fn goproxy(&self) -> Result<Vec<Entry>> {
        Ok(self.proxy_env().await?.entries.clone())
    }

    /// The go command's upstream settings (`go env`), read once.
    pub async fn proxy_env(&self) -> Result<&ProxyEnv> {
        self.proxy
            .get_or_try_init(|| async {
                let what = "go env";
                let out = self
                    .run(
                        &[
                            "env",
                            "-json",
                            "GOPROXY",
                            "GONOPROXY",
                            "GOSUMDB",
                            "GONOSUMDB",
                            "GOPRIVATE",
                        ],
                        what,
                        None,
                    )
                    .await?;
                let env: Option<GoEnvJson> = first_json(&out.stdout);
                match env {
                    Some(env) if out.status.success() => {
                        let entries = chain::parse(&env.GOPROXY);
                        tracing::info!(goproxy = %chain::redacted(&env.GOPROXY), gonoproxy = %env.GONOPROXY, "the go command's upstream");
                        Ok(ProxyEnv {
                            entries,
                            no_proxy: env.GONOPROXY,
                            sumdb: env.GOSUMDB,
                            no_sumdb: format!("{},{}", env.GONOSUMDB, env.GOPRIVATE),
                        })
                    }
                    _ => {
                        tracing::error!(
                            status = %out.status,
                            stderr = %String::from_utf8_lossy(&out.stderr),
                            "go env failed"
                        );
                        Err(Error::internal(format!(
                            "the go command cannot report its GOPROXY ({})",
                            out.status
                        )))
                    }
                }
            })
            .await
    }

    /// The `GOPROXY` value of each run for `module`: one run per entry, or
    /// one run with the environment as it is (`None`) when the list has one
    /// entry or the module is fetched directly (`GONOPROXY`).
    async fn runs_for(&self, module: &ModulePath) -> Result<Vec<Entry>> {
        let env = self.proxy_env().await?;
        if env.entries.len() <= 1 || chain::matches_prefix_patterns(&env.no_proxy, module.as_str())
        {
            return Ok(Vec::new());
        }
        Ok(env.entries.clone())
    }

    /// Runs `attempt` for `module` over the `GOPROXY` list (see [`chain`]).
    async fn over_chain<T, F, Fut>(&self, module: &ModulePath, attempt: F) -> Result<T>
    where
        F: Fn(Option<String>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, Failure>>,
    {
        let entries = self.runs_for(module).await?;
        if entries.is_empty() {
            return attempt(None).await.map_err(|f| f.error);
        }
        chain::walk(&entries, |e| attempt(Some(e.url.clone()))).await
    }

    /// Builds the command for one run in `job`; `goproxy` replaces
    /// `GOPROXY` when set.
    fn command(&self, job: &JobDir, args: &[&str], goproxy: Option<&str>) -> Command {
        let mut cmd = Command::new(&self.settings.go_binary);
        cmd.args(args).current_dir(&job.work).env_clear();
        for key in PASSTHROUGH_ENV {
            if let Some(v) = std::env::var_os(key) {
                cmd.env(key, v);
            }
        }
        cmd.env("GO111MODULE", "on")
            .env("GOWORK", "off")
            .env("GOFLAGS", "")
            .env("CGO_ENABLED", "0")
            .env("GOTOOLCHAIN", "local")
            .env("GOMODCACHE", self.base.join(MODCACHE_DIR))
            .env("GOCACHE", self.base.join(GOCACHE_DIR))
            .env("GOPATH", &job.gopath);
        for kv in &self.settings.env_vars {
            if let Some((k, v)) = kv.split_once('=') {
                let k = k.trim();
                if !k.is_empty() {
                    cmd.env(k, v);
                }
            }
        }
        if let Some(gp) = goproxy {
            cmd.env("GOPROXY", gp);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        process::die_with_parent(&mut cmd);
        cmd
    }

    /// Runs the go command with `args` under a worker permit, in a fresh
    /// directory, as its own process group, within the timeout. Dropping the
    /// returned future kills the group.
    async fn run(&self, args: &[&str], what: &str, goproxy: Option<&str>) -> Result<GoOutput> {
        let _permit = self
            .workers
            .acquire()
            .await
            .map_err(|_| Error::internal("the go worker pool is closed"))?;
        // Declared before the run, so the group is killed before the
        // directory is removed.
        let job = JobDir::create(&self.base)?;
        let cmd = self.command(&job, args, goproxy);
        let label = format!(
            "{} (GOPROXY={})",
            args.join(" "),
            goproxy.map_or_else(|| "as set".to_string(), chain::redacted)
        );
        process::run(cmd, self.settings.timeout, &label, |pgid| {
            job.record_group(pgid)
        })
        .await
        .map_err(|e| e.into_error(what, self.settings.timeout))
    }

    /// One attempt of a chain: a run whose timeout is a failure of the
    /// entry (so `|` may fall through) and whose other errors are local.
    async fn attempt(
        &self,
        args: &[&str],
        what: &str,
        goproxy: Option<&str>,
    ) -> std::result::Result<GoOutput, Failure> {
        self.run(args, what, goproxy).await.map_err(|error| {
            if error.is(modmesh_proto::ErrorKind::Timeout) {
                Failure {
                    class: Some(Class::Failed),
                    error,
                }
            } else {
                Failure::local(error)
            }
        })
    }

    /// The failure for a go run that reported `message` (its JSON `Error`
    /// or its stderr): classified, logged in full, sent back without server
    /// paths.
    fn go_failure(&self, what: &str, message: &[u8], status: ExitStatus) -> Failure {
        let raw = String::from_utf8_lossy(message);
        let class = class_of(&raw);
        let mut text = chain::redacted(&classify::scrub_paths(
            &clean_message(&raw),
            &self.private_paths,
        ));
        if text.is_empty() {
            text = format!("the go command failed ({status})");
        }
        match class {
            Class::NotExist | Class::NoMatch => {
                tracing::debug!(what, ?class, go_message = %raw, "go found nothing")
            }
            _ => tracing::warn!(what, ?class, go_message = %raw, "go failed"),
        }
        Failure {
            class: Some(class),
            error: Error::new(class.kind(), format!("{what}: {text}")),
        }
    }

    /// The ingest step this fetcher saves through.
    pub(crate) fn ingest(&self) -> &Ingest {
        &self.ingest
    }

    /// `go mod download` of `c` through the chain.
    async fn fetch(&self, c: &Coordinates) -> Result<Downloaded> {
        self.over_chain(&c.module, |gp| async move {
            self.fetch_via(c, gp.as_deref()).await
        })
        .await
    }

    /// `go mod download` of `c` with `GOPROXY` set to `goproxy` (or as set).
    pub(crate) async fn fetch_via(
        &self,
        c: &Coordinates,
        goproxy: Option<&str>,
    ) -> std::result::Result<Downloaded, Failure> {
        let arg = c.key();
        let what = "go mod download";
        let args = ["mod", "download", "-json", "--", arg.as_str()];
        let (arg, args) = (&arg, &args);
        let out = self.attempt(args, what, goproxy).await?;
        let parsed: Option<ModDownload> = first_json(&out.stdout);
        if let Some(err) = parsed
            .as_ref()
            .map(|d| d.error.trim())
            .filter(|e| !e.is_empty())
        {
            return Err(self.go_failure(what, err.as_bytes(), out.status));
        }
        if !out.status.success() {
            return Err(self.go_failure(what, &out.stderr, out.status));
        }
        let d = parsed.ok_or_else(|| {
            Failure::local(Error::internal(format!(
                "{what} {arg}: no JSON in the go command's output"
            )))
        })?;
        if d.path != c.module.as_str() {
            return Err(Error::internal(format!(
                "{what} {arg}: the go command reported module {:?}",
                d.path
            ))
            .into());
        }
        let version = Version::new(d.version.as_str())
            .ok()
            .filter(Version::is_canonical)
            .ok_or_else(|| {
                Error::internal(format!(
                    "{what} {arg}: the go command resolved to {:?}, not a canonical version",
                    d.version
                ))
            })?;
        if d.info.is_empty() || d.go_mod.is_empty() || d.zip.is_empty() {
            return Err(Error::internal(format!(
                "{what} {arg}: the go command reported no .info, .mod or .zip file"
            ))
            .into());
        }
        let info = output::read_small(&d.info, ".info").await?;
        let go_mod = output::read_small(&d.go_mod, ".mod").await?;
        let file = tokio::fs::File::open(&d.zip).await.map_err(|e| {
            tracing::error!(path = %d.zip, error = %e, "opening the downloaded zip failed");
            Error::internal(format!("opening the downloaded zip: {}", e.kind()))
        })?;
        let zip_size = file.metadata().await.ok().map(|m| m.len());
        let zip: ByteStream = tokio_util::io::ReaderStream::with_capacity(file, MAX_CHUNK)
            .map(|r| {
                r.map_err(|e| Error::internal(format!("reading the downloaded zip: {}", e.kind())))
            })
            .boxed();
        Ok(Downloaded {
            version,
            info,
            go_mod,
            zip,
            zip_hash: Some(d.sum),
            zip_size,
        })
    }

    /// `go list -m -versions` of `module` with `GOPROXY` set to `goproxy`
    /// (or as set).
    pub(crate) async fn list_via(
        &self,
        module: &ModulePath,
        goproxy: Option<&str>,
    ) -> std::result::Result<Vec<String>, Failure> {
        let arg = format!("{module}@latest");
        let what = "go list -m -versions";
        let args = ["list", "-m", "-versions", "-json", "--", arg.as_str()];
        let out = self.attempt(&args, what, goproxy).await?;
        if !out.status.success() {
            let text = String::from_utf8_lossy(&out.stderr);
            // The upstream answered the list, and it holds nothing usable.
            if text.contains("no matching versions for query \"latest\"") {
                return Ok(Vec::new());
            }
            return Err(self.go_failure(what, &out.stderr, out.status));
        }
        let m: ListModule = first_json(&out.stdout).ok_or_else(|| {
            Failure::local(Error::internal(format!(
                "{what} {arg}: no JSON in the go command's output"
            )))
        })?;
        Ok(m.versions.unwrap_or_default())
    }

    /// `go list -m` of the query `c` with `GOPROXY` set to `goproxy` (or as
    /// set): its `.info` JSON.
    pub(crate) async fn query_via(
        &self,
        c: &Coordinates,
        goproxy: Option<&str>,
    ) -> std::result::Result<Bytes, Failure> {
        let arg = c.key();
        let what = "go list -m";
        let args = ["list", "-m", "-json", "--", arg.as_str()];
        let out = self.attempt(&args, what, goproxy).await?;
        if !out.status.success() {
            return Err(self.go_failure(what, &out.stderr, out.status));
        }
        let m = first_json::<ListModule>(&out.stdout).ok_or_else(|| {
            Failure::local(Error::internal(format!(
                "{what} {arg}: no JSON in the go command's output"
            )))
        })?;
        if m.version.is_empty() {
            return Err(Error::internal(format!(
                "{what} {arg}: the go command reported no version"
            ))
            .into());
        }
        Ok(output::info_json(m)?)
    }
}

#[async_trait]
impl Fetcher for GoFetcher {
    async fn download(&self, c: &Coordinates) -> Result<Fetched> {
        self.ingest.download(c, || self.fetch(c)).await
    }

    async fn list(&self, module: &ModulePath) -> Result<Vec<String>> {
        self.over_chain(module, |gp| async move {
            self.list_via(module, gp.as_deref()).await
        })
        .await
    }

    async fn query(&self, c: &Coordinates) -> Result<Bytes> {
        self.over_chain(&c.module, |gp| async move {
            self.query_via(c, gp.as_deref()).await
        })
        .await
    }

    async fn sumdb(&self, db: &str, path: &str) -> Result<Bytes> {
        match &self.sumdb {
            Some(c) => {
                // Through the proxies of the go command's own list first.
                let proxies: Vec<String> = self
                    .goproxy()
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .map(|e| e.url)
                    .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
                    .collect();
                c.get_via(db, path, &proxies).await
            }
            None => Err(Error::not_found(format!(
                "checksum database {db:?} is not proxied"
            ))),
        }
    }

    async fn health(&self) -> Result<()> {
        if self.version.initialized() {
            return Ok(());
        }
        self.check().await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_from_config() {
        let mut cfg = Config::from_text(
            "GoBinary = \"/usr/local/go/bin/go\"\nGoBinaryEnvVars = [\"GOPROXY=file:///x\"]\nGoGetWorkers = 3\nTimeout = 7\n",
            &[("ATHENS_GOGET_DIR", "/var/tmp/gg")],
        )
        .unwrap();
        let s = GoSettings::from_config(&cfg);
        assert_eq!(s.go_binary, "/usr/local/go/bin/go");
        assert_eq!(s.env_vars, ["GOPROXY=file:///x"]);
        assert_eq!(s.workers, 3);
        assert_eq!(s.go_get_dir, Some(PathBuf::from("/var/tmp/gg")));
        assert_eq!(s.timeout, Duration::from_secs(7));
        cfg.GoGetDir = String::new();
        assert_eq!(GoSettings::from_config(&cfg).go_get_dir, None);
    }

    #[test]
    fn no_sum_patterns_and_netrc_reach_the_go_command() {
        let d = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> =
            Arc::new(modmesh_storage::backends::memory::MemoryStorage::new());
        let cfg = Config::from_text(
            "SumDBs = [\"https://db.example\"]\n",
            &[
                ("ATHENS_GONOSUM_PATTERNS", "corp.example,*.internal"),
                ("ATHENS_GITHUB_TOKEN", "t0k"),
                ("ATHENS_GOGET_DIR", d.path().to_str().unwrap()),
            ],
        )
        .unwrap();
        let f = GoFetcher::from_config(&cfg, storage.clone()).unwrap();
        let netrc = d.path().join(crate::private::NETRC_FILE);
        assert_eq!(
            f.settings().env_vars,
            [
                "GONOSUMDB=corp.example,*.internal".to_string(),
                format!("NETRC={}", netrc.display())
            ]
        );
        assert!(!format!("{f:?}").contains("t0k"));
        // GoBinaryEnvVars wins.
        let cfg = Config::from_text(
            "GoBinaryEnvVars = [\"GONOSUMDB=x.example\", \"NETRC=/n\"]\nNoSumPatterns = [\"corp.example\"]\n",
            &[("ATHENS_GITHUB_TOKEN", "t0k"), ("ATHENS_GOGET_DIR", d.path().to_str().unwrap())],
        )
        .unwrap();
        let f = GoFetcher::from_config(&cfg, storage).unwrap();
        assert_eq!(f.settings().env_vars, ["GONOSUMDB=x.example", "NETRC=/n"]);
    }

    #[test]
    fn typed_arguments_are_never_flags() {
        let c = Coordinates::new("example.com/a", "v1.0.0").unwrap();
        assert!(!c.key().starts_with('-'));
        assert!(Version::new("-x").is_err());
        assert!(ModulePath::new("-x.com/a").is_err());
    }
}
