//! The go-command fetcher: runs `go mod download` / `go list -m` against the
//! upstream the go command's own environment names, and saves what it
//! downloads into a [`Storage`].
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
//! # Errors
//!
//! [`classify`] maps go's messages to error kinds: a missing module or
//! version is `NotFound`, an unreachable upstream `Unavailable`, a 401/403
//! from the upstream `Permission`; a run over the timeout is `Timeout`; a
//! missing go binary and everything else is `Internal`. The error text is
//! go's own message without the `go: ` prefixes.

use crate::{Fetched, Fetcher};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use modmesh_common::Config;
use modmesh_proto::{Coordinates, Error, ErrorKind, ModulePath, Result, Version, MAX_CHUNK};
use modmesh_storage::{ByteStream, SaveRequest, Storage};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::Semaphore;

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
/// Prefix of the per-run directories under the base directory.
pub const JOB_DIR_PREFIX: &str = "modmesh-job-";

/// The most stdout kept from one go run (a long `-versions` list fits).
const MAX_STDOUT: usize = 16 << 20;
/// The most stderr kept from one go run.
const MAX_STDERR: usize = 1 << 20;
/// The longest go message put into an error.
const MAX_MESSAGE: usize = 4000;
/// How long reaping a killed go run may take before it is left to a
/// background task.
const REAP_GRACE: Duration = Duration::from_secs(5);

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

/// A [`Fetcher`] that runs the go command and saves into a [`Storage`].
pub struct GoFetcher {
    settings: GoSettings,
    storage: Arc<dyn Storage>,
    workers: Semaphore,
    base: PathBuf,
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
        GoFetcher {
            workers: Semaphore::new(settings.workers.max(1)),
            settings,
            storage,
            base,
        }
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
    pub async fn check(&self) -> Result<String> {
        let out = self.run(&["version"], "go version").await?;
        if !out.status.success() {
            return Err(go_error("go version", &out.stderr, out.status));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Builds the command for one run in `job`.
    fn command(&self, job: &JobDir, args: &[&str]) -> Command {
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
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        cmd
    }

    /// Runs the go command with `args` under a worker permit, in a fresh
    /// directory, as its own process group, within the timeout. Dropping the
    /// returned future kills the group.
    async fn run(&self, args: &[&str], what: &str) -> Result<GoOutput> {
        let _permit = self
            .workers
            .acquire()
            .await
            .map_err(|_| Error::internal("the go worker pool is closed"))?;
        let job = JobDir::create(&self.base)?;
        let started = Instant::now();
        let mut child = self.command(&job, args).spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::internal(format!(
                    "go binary {:?} (GoBinary) not found: {e}",
                    self.settings.go_binary
                ))
            } else {
                Error::internal(format!(
                    "cannot run go binary {:?} (GoBinary): {e}",
                    self.settings.go_binary
                ))
            }
        })?;
        let pid = child
            .id()
            .ok_or_else(|| Error::internal("the go process has no pid"))?;
        tracing::debug!(pid, ?args, dir = %job.root.display(), "go started");
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        // Declared after `job`, so on drop the group is killed before the
        // directory is removed.
        let mut group = ProcessGroup::new(Pid::from_raw(pid as i32), child);
        let timeout = self.settings.timeout;
        let outcome = tokio::time::timeout(timeout, async {
            let wait = async {
                let status = group.child_mut().wait().await;
                // Nothing the run started may outlive it (and keep its
                // pipes open).
                group.signal();
                status
            };
            tokio::join!(
                read_capped(stdout, MAX_STDOUT),
                read_capped(stderr, MAX_STDERR),
                wait
            )
        })
        .await;
        match outcome {
            Ok((stdout, stderr, Ok(status))) => {
                group.reaped();
                tracing::debug!(pid, %status, elapsed = ?started.elapsed(), "go finished");
                Ok(GoOutput {
                    status,
                    stdout: stdout
                        .map_err(|e| Error::internal(format!("reading go output: {e}")))?,
                    stderr: stderr.unwrap_or_default(),
                })
            }
            Ok((_, _, Err(e))) => Err(Error::internal(format!("waiting for go: {e}"))),
            Err(_) => {
                tracing::warn!(
                    pid,
                    ?args,
                    ?timeout,
                    "go timed out; killing its process group"
                );
                group.kill_and_reap().await;
                Err(Error::timeout(format!(
                    "{what} timed out after {}s",
                    timeout.as_secs_f64()
                )))
            }
        }
    }

    /// Saves one downloaded version into storage unless it is there already.
    async fn store(
        &self,
        coordinates: &Coordinates,
        info: Bytes,
        go_mod: Bytes,
        zip: &Path,
        zip_hash: String,
    ) -> Result<()> {
        match self.storage.exists(coordinates).await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(%coordinates, error = %e, "storage exists check failed; saving anyway")
            }
        }
        let file = tokio::fs::File::open(zip)
            .await
            .map_err(|e| Error::internal(format!("opening the downloaded zip: {e}")))?;
        let zip_size = file
            .metadata()
            .await
            .map_err(|e| Error::internal(format!("reading the downloaded zip: {e}")))?
            .len();
        let stream: ByteStream = tokio_util::io::ReaderStream::with_capacity(file, MAX_CHUNK)
            .map(|r| r.map_err(|e| Error::internal(format!("reading the downloaded zip: {e}"))))
            .boxed();
        let mut req = SaveRequest::new(coordinates, info, go_mod)?;
        req.zip_hash = (!zip_hash.is_empty()).then_some(zip_hash);
        req.zip_size = Some(zip_size);
        match self.storage.save(req, stream).await {
            Ok(()) => {
                tracing::info!(%coordinates, "module stored");
                Ok(())
            }
            Err(e) if e.is(ErrorKind::AlreadyExists) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl Fetcher for GoFetcher {
    async fn download(&self, c: &Coordinates) -> Result<Fetched> {
        // A stored .info means the whole version is stored (saves become
        // visible at once), so one read answers "already stored?".
        if c.version.is_canonical() {
            if let Ok(info) = self.storage.info(c).await {
                return Ok(Fetched {
                    version: c.version.clone(),
                    info,
                });
            }
        }
        let arg = c.key();
        let what = "go mod download";
        let out = self
            .run(&["mod", "download", "-json", "--", &arg], what)
            .await?;
        let parsed: Option<ModDownload> = first_json(&out.stdout);
        if let Some(err) = parsed
            .as_ref()
            .map(|d| d.error.trim())
            .filter(|e| !e.is_empty())
        {
            return Err(go_error(what, err.as_bytes(), out.status));
        }
        if !out.status.success() {
            return Err(go_error(what, &out.stderr, out.status));
        }
        let d = parsed.ok_or_else(|| {
            Error::internal(format!("{what} {arg}: no JSON in the go command's output"))
        })?;
        if d.path != c.module.as_str() {
            return Err(Error::internal(format!(
                "{what} {arg}: the go command reported module {:?}",
                d.path
            )));
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
            )));
        }
        let info = read_small(&d.info, ".info").await?;
        let go_mod = read_small(&d.go_mod, ".mod").await?;
        let resolved = Coordinates {
            module: c.module.clone(),
            version,
        };
        self.store(&resolved, info.clone(), go_mod, Path::new(&d.zip), d.sum)
            .await?;
        Ok(Fetched {
            version: resolved.version,
            info,
        })
    }

    async fn list(&self, module: &ModulePath) -> Result<Vec<String>> {
        let arg = format!("{module}@latest");
        let what = "go list -m -versions";
        let out = self
            .run(&["list", "-m", "-versions", "-json", "--", &arg], what)
            .await?;
        if !out.status.success() {
            let text = String::from_utf8_lossy(&out.stderr);
            // The upstream answered the list, and it holds nothing usable.
            if text.contains("no matching versions for query \"latest\"") {
                return Ok(Vec::new());
            }
            return Err(go_error(what, &out.stderr, out.status));
        }
        let m: ListModule = first_json(&out.stdout).ok_or_else(|| {
            Error::internal(format!("{what} {arg}: no JSON in the go command's output"))
        })?;
        Ok(m.versions.unwrap_or_default())
    }

    async fn query(&self, c: &Coordinates) -> Result<Bytes> {
        let arg = c.key();
        let what = "go list -m";
        let out = self.run(&["list", "-m", "-json", "--", &arg], what).await?;
        if !out.status.success() {
            return Err(go_error(what, &out.stderr, out.status));
        }
        let m: ListModule = first_json(&out.stdout).ok_or_else(|| {
            Error::internal(format!("{what} {arg}: no JSON in the go command's output"))
        })?;
        if m.version.is_empty() {
            return Err(Error::internal(format!(
                "{what} {arg}: the go command reported no version"
            )));
        }
        let info = InfoJson {
            version: m.version,
            time: m.time.filter(|t| !t.is_empty()),
        };
        serde_json::to_vec(&info)
            .map(Bytes::from)
            .map_err(|e| Error::internal(format!("encoding .info: {e}")))
    }
}

/// The JSON `go mod download -json` prints.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct ModDownload {
    path: String,
    version: String,
    info: String,
    go_mod: String,
    zip: String,
    sum: String,
    error: String,
}

/// The part of `go list -m -json` output used here.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct ListModule {
    version: String,
    versions: Option<Vec<String>>,
    time: Option<String>,
}

/// A `.info` document.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct InfoJson {
    version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<String>,
}

/// What one go run left.
#[derive(Debug)]
struct GoOutput {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// The first JSON value in `out`, if it parses as `T`.
fn first_json<T: serde::de::DeserializeOwned>(out: &[u8]) -> Option<T> {
    serde_json::Deserializer::from_slice(out)
        .into_iter::<T>()
        .next()
        .and_then(|r| r.ok())
}

async fn read_small(path: &str, what: &str) -> Result<Bytes> {
    tokio::fs::read(path)
        .await
        .map(Bytes::from)
        .map_err(|e| Error::internal(format!("reading the downloaded {what} file: {e}")))
}

/// Reads `r` to its end, keeping at most `cap` bytes (the rest is drained so
/// the writer never blocks on a full pipe).
async fn read_capped<R: AsyncRead + Unpin>(r: Option<R>, cap: usize) -> std::io::Result<Vec<u8>> {
    let Some(mut r) = r else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(out);
        }
        let room = cap.saturating_sub(out.len());
        out.extend_from_slice(&buf[..n.min(room)]);
    }
}

/// The error for a failed go run: `message` is go's JSON `Error` or stderr.
fn go_error(what: &str, message: &[u8], status: ExitStatus) -> Error {
    let raw = String::from_utf8_lossy(message);
    let kind = classify(&raw);
    let mut text = clean_message(&raw);
    if text.is_empty() {
        text = format!("the go command failed ({status})");
    }
    Error::new(kind, format!("{what}: {text}"))
}

/// go's message as one line: trimmed lines without the `go: ` prefixes,
/// joined by spaces, at most a few thousand bytes.
pub fn clean_message(raw: &str) -> String {
    let mut out = String::new();
    for line in raw.lines() {
        let mut t = line.trim();
        while let Some(rest) = t.strip_prefix("go: ") {
            t = rest.trim_start();
        }
        if t.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(t);
    }
    if out.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("...");
    }
    out
}

/// Messages that mean the upstream could not be reached or failed.
const UNAVAILABLE: &[&str] = &[
    "connection refused",
    "connection reset",
    "no such host",
    "i/o timeout",
    "network is unreachable",
    "no route to host",
    "host is down",
    "tls handshake timeout",
    "timeout awaiting response headers",
    "client.timeout exceeded",
    "context deadline exceeded",
    "server misbehaving",
    "temporary failure in name resolution",
    "could not resolve host",
    "unexpected eof",
    "\": eof",
    "broken pipe",
    "connection timed out",
    "operation timed out",
    "proxyconnect",
    "http2: server sent goaway",
];

/// Messages that mean the module or version does not exist.
const NOT_FOUND: &[&str] = &[
    "not found",
    "unknown revision",
    "no matching versions",
    "invalid version",
    "no such file or directory",
    "does not exist",
    "no such",
    "unrecognized import path",
    "module lookup disabled",
    "declares its path as",
    "terminal prompts disabled",
    "disabled by goproxy=off",
];

/// The error kind of a go command failure message (its JSON `Error` or its
/// stderr).
///
/// Network failures and 5xx/429 answers are `Unavailable`; 401/403 answers
/// are `Permission`; 404/410 answers and go's "does not exist" messages
/// (`not found`, `unknown revision`, `no matching versions`, `invalid
/// version`, `no such file or directory`, ...) are `NotFound`; anything else
/// is `Internal`. A `server response:` body quoted by go is not read, since
/// the upstream's prose must not decide the kind.
pub fn classify(message: &str) -> ErrorKind {
    let text = without_server_responses(message).to_ascii_lowercase();
    if UNAVAILABLE.iter().any(|p| text.contains(p)) {
        return ErrorKind::Unavailable;
    }
    let codes = status_codes(&text);
    if codes.iter().any(|c| *c >= 500 || *c == 429) {
        return ErrorKind::Unavailable;
    }
    if codes.iter().any(|c| *c == 404 || *c == 410) {
        return ErrorKind::NotFound;
    }
    if codes.iter().any(|c| *c == 401 || *c == 403) {
        return ErrorKind::Permission;
    }
    if text.contains("security error") || text.contains("checksum mismatch") {
        return ErrorKind::Internal;
    }
    if NOT_FOUND.iter().any(|p| text.contains(p)) {
        return ErrorKind::NotFound;
    }
    ErrorKind::Internal
}

/// `message` without the `server response:` sections go quotes from an
/// upstream (that line and the indented lines after it).
fn without_server_responses(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut skipping = false;
    for line in message.lines() {
        let indented = line.starts_with([' ', '\t']);
        if !indented {
            skipping = false;
        }
        if let Some(i) = line.find("server response:") {
            out.push_str(&line[..i]);
            out.push('\n');
            skipping = true;
            continue;
        }
        if skipping {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// HTTP status codes quoted by go as `...: NNN Status Text`.
fn status_codes(text: &str) -> Vec<u16> {
    let b = text.as_bytes();
    let mut codes = Vec::new();
    let mut i = 0;
    while let Some(off) = text[i..].find(": ") {
        let start = i + off + 2;
        let digits = &b[start..b.len().min(start + 3)];
        if digits.len() == 3
            && digits.iter().all(u8::is_ascii_digit)
            && matches!(b.get(start + 3), None | Some(b' ') | Some(b'\n'))
        {
            if let Ok(code) = std::str::from_utf8(digits).unwrap_or("").parse::<u16>() {
                if (100..600).contains(&code) {
                    codes.push(code);
                }
            }
        }
        i = start;
    }
    codes
}

/// A per-run directory: `<base>/modmesh-job-XXXX/{work,gopath}`, removed on
/// drop.
#[derive(Debug)]
struct JobDir {
    root: PathBuf,
    work: PathBuf,
    gopath: PathBuf,
}

impl JobDir {
    fn create(base: &Path) -> Result<JobDir> {
        let fail = |e: std::io::Error| {
            Error::internal(format!(
                "creating a work directory under {} (GoGetDir): {e}",
                base.display()
            ))
        };
        std::fs::create_dir_all(base).map_err(fail)?;
        let root = tempfile::Builder::new()
            .prefix(JOB_DIR_PREFIX)
            .tempdir_in(base)
            .map_err(fail)?
            .keep();
        let job = JobDir {
            work: root.join("work"),
            gopath: root.join("gopath"),
            root,
        };
        std::fs::create_dir(&job.work).map_err(fail)?;
        std::fs::create_dir(&job.gopath).map_err(fail)?;
        Ok(job)
    }
}

impl Drop for JobDir {
    fn drop(&mut self) {
        if let Err(e) = remove_dir_all_forced(&self.root) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.root.display(), error = %e, "cannot remove go work directory");
            }
        }
    }
}

/// Removes a directory tree the go command wrote, first making every
/// directory in it writable (the go command makes module trees read-only).
/// Symbolic links are not followed.
pub fn remove_dir_all_forced(path: &Path) -> std::io::Result<()> {
    fn make_writable(p: &Path) {
        use std::os::unix::fs::PermissionsExt;
        let Ok(md) = std::fs::symlink_metadata(p) else {
            return;
        };
        if !md.is_dir() {
            return;
        }
        let mode = md.permissions().mode();
        if mode & 0o700 != 0o700 {
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode | 0o700));
        }
        if let Ok(entries) = std::fs::read_dir(p) {
            for e in entries.flatten() {
                make_writable(&e.path());
            }
        }
    }
    make_writable(path);
    std::fs::remove_dir_all(path)
}

/// A running go command, leader of its own process group. Dropping it while
/// armed kills the whole group with SIGKILL and reaps the child.
struct ProcessGroup {
    pgid: Pid,
    child: Option<Child>,
}

/// Process groups of go runs still alive, so a forced exit of this process
/// (the shutdown timeout running out) can take them along.
static LIVE_GROUPS: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

/// SIGKILL to every go process group still running. Registered with
/// [`modmesh_common::shutdown::at_forced_exit`] by [`GoFetcher::new`].
pub fn kill_live_groups() {
    let groups = LIVE_GROUPS.lock().unwrap_or_else(|p| p.into_inner());
    for &pgid in groups.iter() {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
}

impl ProcessGroup {
    fn new(pgid: Pid, child: Child) -> Self {
        LIVE_GROUPS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(pgid.as_raw());
        ProcessGroup {
            pgid,
            child: Some(child),
        }
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child
            .as_mut()
            .expect("the child is present while running")
    }

    /// SIGKILL to every process of the group (none left is fine).
    fn signal(&self) {
        match killpg(self.pgid, Signal::SIGKILL) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => {
                tracing::warn!(pgid = %self.pgid, error = %e, "killing the go process group failed")
            }
        }
    }

    /// The child has been waited for; nothing left to do on drop.
    fn reaped(&mut self) {
        self.child = None;
    }

    /// Kills the group and waits (briefly) for the child to be reaped.
    async fn kill_and_reap(&mut self) {
        self.signal();
        if let Some(child) = self.child.as_mut() {
            if tokio::time::timeout(REAP_GRACE, child.wait()).await.is_ok() {
                self.child = None;
            }
        }
        // If the wait timed out, Drop hands the child to a reaper task.
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        LIVE_GROUPS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|&g| g != self.pgid.as_raw());
        let Some(mut child) = self.child.take() else {
            return;
        };
        self.signal();
        tracing::debug!(pgid = %self.pgid, "go run abandoned; process group killed");
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    let _ = child.wait().await;
                });
            }
            // Without a runtime, tokio reaps dropped children in the
            // background itself.
            Err(_) => drop(child),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_go_messages() {
        // Messages printed by go 1.26 against local upstreams.
        let cases: &[(&str, ErrorKind)] = &[
            (
                "example.com/Mixed/Case@v1.0.1: reading file:///tmp/gx/up/example.com/%21mixed/%21case/@v/v1.0.1.info: no such file or directory",
                ErrorKind::NotFound,
            ),
            (
                "go: module example.com/nope: reading file:///tmp/gx/up/example.com/nope/@v/list: no such file or directory\n",
                ErrorKind::NotFound,
            ),
            (
                "example.com/Mixed/Case@master: invalid version: reading file:///tmp/up/example.com/%21mixed/%21case/@v/master.info: no such file or directory",
                ErrorKind::NotFound,
            ),
            (
                "example.com/Mixed/Case@v1.0.1: reading http://127.0.0.1:18765/example.com/%21mixed/%21case/@v/v1.0.1.info: 404 File not found",
                ErrorKind::NotFound,
            ),
            (
                "go: module example.com/empty: no matching versions for query \"latest\"\n",
                ErrorKind::NotFound,
            ),
            (
                "example.com/a@v1.0.0: reading http://127.0.0.1:18766/example.com/a/@v/v1.0.0.info: 410 Gone\n\tserver response: upstream says boom",
                ErrorKind::NotFound,
            ),
            (
                "example.com/a@v1.0.0: reading http://127.0.0.1:18766/example.com/a/@v/v1.0.0.info: 500 Internal Server Error\n\tserver response: not found",
                ErrorKind::Unavailable,
            ),
            (
                "example.com/a@v1.0.0: reading http://127.0.0.1:18766/example.com/a/@v/v1.0.0.info: 502 Bad Gateway\n\tserver response: upstream says boom",
                ErrorKind::Unavailable,
            ),
            (
                "go: module example.com/a: reading http://127.0.0.1:18766/example.com/a/@v/list: 503 Service Unavailable\n\tserver response: upstream says boom\n",
                ErrorKind::Unavailable,
            ),
            (
                "example.com/a@v1.0.0: reading http://127.0.0.1:18766/example.com/a/@v/v1.0.0.info: 403 Forbidden\n\tserver response: upstream says boom",
                ErrorKind::Permission,
            ),
            (
                "example.com/a@v1.0.0: Get \"http://127.0.0.1:18766/example.com/a/@v/v1.0.0.info\": EOF",
                ErrorKind::Unavailable,
            ),
            (
                "example.com/a@v1.0.0: Get \"http://127.0.0.1:18766/example.com/a/@v/v1.0.0.info\": dial tcp 127.0.0.1:18766: connect: connection refused",
                ErrorKind::Unavailable,
            ),
            (
                "go: module example.com/nope: Get \"http://nonexistent.invalid/example.com/nope/@v/list\": dial tcp: lookup nonexistent.invalid on 10.0.0.53:53: no such host\n",
                ErrorKind::Unavailable,
            ),
            (
                "go: example.com/nope@latest: module lookup disabled by GOPROXY=off\n",
                ErrorKind::NotFound,
            ),
            (
                "go: github.com/x/y@v1.0.0: invalid version: git ls-remote -q origin in /tmp/x: exit status 128:\n\tfatal: could not read Username for 'https://github.com': terminal prompts disabled\n",
                ErrorKind::NotFound,
            ),
            (
                "verifying example.com/a@v1.0.0: checksum mismatch\n\tdownloaded: h1:x\n\tsum.golang.org: h1:y\n\nSECURITY ERROR\n",
                ErrorKind::Internal,
            ),
            ("something odd happened", ErrorKind::Internal),
        ];
        for (msg, kind) in cases {
            assert_eq!(classify(msg), *kind, "{msg}");
        }
    }

    #[test]
    fn messages_are_cleaned() {
        assert_eq!(
            clean_message("go: module example.com/a: reading x: 503 Service Unavailable\n\tserver response: boom\n"),
            "module example.com/a: reading x: 503 Service Unavailable server response: boom"
        );
        assert!(clean_message(&"x".repeat(10_000)).len() <= MAX_MESSAGE + 3);
    }

    #[test]
    fn status_codes_are_found() {
        assert_eq!(status_codes("reading u: 404 not found"), vec![404]);
        assert_eq!(
            status_codes("dial tcp 127.0.0.1:18766: connect"),
            Vec::<u16>::new()
        );
        assert_eq!(status_codes("a: 500\nb: 410 gone"), vec![500, 410]);
        assert_eq!(status_codes("a: 5000 things"), Vec::<u16>::new());
    }

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
    fn typed_arguments_are_never_flags() {
        let c = Coordinates::new("example.com/a", "v1.0.0").unwrap();
        assert!(!c.key().starts_with('-'));
        assert!(Version::new("-x").is_err());
        assert!(ModulePath::new("-x.com/a").is_err());
    }

    #[test]
    fn forced_removal_handles_read_only_trees() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ro = dir.path().join("tree/sub");
        std::fs::create_dir_all(&ro).unwrap();
        std::fs::write(ro.join("f"), "x").unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        remove_dir_all_forced(&dir.path().join("tree")).unwrap();
        assert!(!dir.path().join("tree").exists());
    }
}
