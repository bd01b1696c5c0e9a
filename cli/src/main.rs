//! `modmesh`: module metadata from the command line, over the storage
//! service's gRPC API (`--storage URL` or `MODMESH_STORAGE_URL`), a
//! health probe for containers, and `edge`, an HTTP front that spreads one
//! published port over every gateway replica.
//!
//! Human output by default; `--json` prints one JSON object per line
//! (streaming commands print one per entry as it arrives, then a summary).
//! Exit status: 0 on success, 1 if the command failed or found a problem
//! (`verify` mismatches, `prefill` errors, an unhealthy server), 2 for bad
//! arguments.

#![warn(missing_docs)]

mod edge;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use modmesh_proto::{Coordinates, ErrorKind, ModulePath};
use modmesh_storage::client::StorageClient;
use modmesh_storage::{SaveRequest, Storage};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "modmesh",
    version,
    about = "Module metadata of a modmesh storage service"
)]
struct Cli {
    /// The storage service's gRPC URL.
    #[arg(
        long,
        global = true,
        env = "MODMESH_STORAGE_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    storage: String,
    /// One JSON object per line instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every stored module version (paged, printed as pages arrive).
    Catalog {
        /// Only module paths starting with this prefix.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Entries asked per page.
        #[arg(long, default_value_t = 1000)]
        page_size: usize,
    },
    /// The stored versions of a module.
    Versions {
        /// Module path (decoded, e.g. github.com/Azure/x).
        module: String,
    },
    /// Sizes, time stored and hashes of module@version.
    Stat {
        /// module@version
        target: String,
    },
    /// Recomputes the h1 hashes of stored zips and go.mod files and compares
    /// them with the recorded ones.
    Verify {
        /// Only module paths starting with this prefix.
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Removes module@version from the store.
    Delete {
        /// module@version
        target: String,
    },
    /// Loads a GOMODCACHE download tree (`$GOMODCACHE/cache/download`) or
    /// an Athens disk store into the storage service.
    Prefill {
        /// The folder to load.
        dir: PathBuf,
    },
    /// Exits 0 if the server is healthy: grpc.health.v1 of the storage
    /// service (or of `--grpc URL`), or `GET --http URL` answering 200.
    Health {
        /// A gRPC server to check instead of the storage service.
        #[arg(long)]
        grpc: Option<String>,
        /// The service name to ask about ("" for the whole server).
        #[arg(long, default_value = "")]
        service: String,
        /// An HTTP URL (http://host:port/path) that must answer 200.
        #[arg(long, conflicts_with = "grpc")]
        http: Option<String>,
    },
    /// An HTTP front on one port: forwards every request, round-robin, to
    /// the addresses the upstream names resolve to (every replica of a
    /// compose service), re-resolved every few seconds.
    Edge {
        /// Where to listen.
        #[arg(long, default_value = "0.0.0.0:3000")]
        listen: std::net::SocketAddr,
        /// An upstream `http://host:port` (repeatable); every address the
        /// host resolves to is a replica.
        #[arg(long = "upstream", required = true)]
        upstreams: Vec<String>,
        /// Seconds between re-resolutions of the upstream names.
        #[arg(long, default_value_t = 5)]
        refresh_secs: u64,
        /// Milliseconds a connection to a replica may take.
        #[arg(long, default_value_t = 2000)]
        connect_timeout_ms: u64,
        /// Log level (Athens' names).
        #[arg(long, env = "ATHENS_LOG_LEVEL", default_value = "info")]
        log_level: String,
        /// Log format: plain or json.
        #[arg(long, env = "ATHENS_LOG_FORMAT", default_value = "plain")]
        log_format: String,
    },
}

/// Output of one command: text or JSON lines on stdout.
struct Out {
    json: bool,
    stdout: std::io::Stdout,
}

impl Out {
    fn emit(&mut self, value: serde_json::Value, text: impl FnOnce() -> String) {
        let mut lock = self.stdout.lock();
        let line = if self.json { value.to_string() } else { text() };
        let _ = writeln!(lock, "{line}");
        let _ = lock.flush();
    }
}

type Fallible<T> = Result<T, String>;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut out = Out {
        json: cli.json,
        stdout: std::io::stdout(),
    };
    match run(cli, &mut out).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("modmesh: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli, out: &mut Out) -> Fallible<bool> {
    if let Cmd::Health {
        grpc,
        service,
        http,
    } = &cli.cmd
    {
        return health(&cli.storage, grpc.as_deref(), service, http.as_deref(), out).await;
    }
    if let Cmd::Edge {
        listen,
        upstreams,
        refresh_secs,
        connect_timeout_ms,
        log_level,
        log_format,
    } = cli.cmd
    {
        modmesh_common::logging::init(&log_level, &log_format);
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| format!("listen on {listen}: {e}"))?;
        tracing::info!(%listen, upstreams = ?upstreams, "edge listening");
        let options = edge::Options {
            upstreams,
            refresh: Duration::from_secs(refresh_secs.max(1)),
            connect_timeout: Duration::from_millis(connect_timeout_ms.max(1)),
        };
        edge::serve(
            listener,
            options,
            modmesh_common::shutdown::signal(Duration::from_secs(10)),
        )
        .await?;
        return Ok(true);
    }
    let client = StorageClient::new(&cli.storage).map_err(|e| e.to_string())?;
    match cli.cmd {
        Cmd::Catalog { prefix, page_size } => catalog(&client, &prefix, page_size, out).await,
        Cmd::Versions { module } => versions(&client, &module, out).await,
        Cmd::Stat { target } => stat(&client, &target, out).await,
        Cmd::Verify { prefix } => verify(&client, &prefix, out).await,
        Cmd::Delete { target } => {
            let c = parse_target(&target)?;
            client.delete(&c).await.map_err(|e| e.to_string())?;
            out.emit(
                json!({"module": c.module.as_str(), "version": c.version.as_str(), "deleted": true}),
                || format!("deleted {c}"),
            );
            Ok(true)
        }
        Cmd::Prefill { dir } => prefill(&client, &dir, out).await,
        Cmd::Health { .. } | Cmd::Edge { .. } => unreachable!("handled above"),
    }
}

fn parse_target(target: &str) -> Fallible<Coordinates> {
    let (m, v) = target
        .rsplit_once('@')
        .ok_or_else(|| format!("{target:?}: expected module@version"))?;
    Coordinates::new(m, v).map_err(|e| e.to_string())
}

async fn catalog(
    client: &StorageClient,
    prefix: &str,
    size: usize,
    out: &mut Out,
) -> Fallible<bool> {
    let mut token: Option<String> = None;
    let mut n = 0u64;
    loop {
        let page = client
            .catalog(token.as_deref(), size, prefix)
            .await
            .map_err(|e| e.to_string())?;
        for c in &page.entries {
            n += 1;
            out.emit(
                json!({"module": c.module.as_str(), "version": c.version.as_str()}),
                || format!("{} {}", c.module, c.version),
            );
        }
        match page.next_page_token {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => break,
        }
    }
    if !out.json {
        eprintln!("{n} versions");
    }
    Ok(true)
}

async fn versions(client: &StorageClient, module: &str, out: &mut Out) -> Fallible<bool> {
    let m = ModulePath::new(module).map_err(|e| e.to_string())?;
    let list = client.list(&m).await.map_err(|e| e.to_string())?;
    out.emit(json!({"module": module, "versions": list}), || {
        list.join("\n")
    });
    Ok(true)
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

async fn stat(client: &StorageClient, target: &str, out: &mut Out) -> Fallible<bool> {
    let c = parse_target(target)?;
    let s = client.stat(&c).await.map_err(|e| e.to_string())?;
    let value = json!({
        "module": c.module.as_str(),
        "version": c.version.as_str(),
        "info_size": s.info_size,
        "mod_size": s.mod_size,
        "zip_size": s.zip_size,
        "stored_at_unix_ms": s.stored_at_unix_ms,
        "stored_at": rfc3339(s.stored_at_unix_ms),
        "zip_hash": s.zip_hash,
        "mod_hash": s.mod_hash,
    });
    out.emit(value, || {
        format!(
            "{c}\n  info   {} bytes\n  go.mod {} bytes  {}\n  zip    {} bytes  {}\n  stored {}",
            s.info_size,
            s.mod_size,
            s.mod_hash,
            s.zip_size,
            s.zip_hash.as_deref().unwrap_or("(no recorded hash)"),
            rfc3339(s.stored_at_unix_ms)
        )
    });
    Ok(true)
}

fn progress(len: Option<u64>, what: &str) -> ProgressBar {
    // Drawn on stderr only when it is a terminal.
    let bar = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    let style = ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} {elapsed}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_string());
    bar
}

/// The result of checking one version.
enum Check {
    Ok,
    Unrecorded,
    Mismatch(String),
    Failed(String),
}

async fn verify_one(client: &StorageClient, c: &Coordinates) -> (Check, Option<String>) {
    let s = match client.stat(c).await {
        Ok(s) => s,
        Err(e) => return (Check::Failed(e.to_string()), None),
    };
    match client.go_mod(c).await {
        Ok(m) if modmesh_storage::mod_hash(&m) != s.mod_hash => {
            return (
                Check::Mismatch(format!(
                    "go.mod hashes to {}, recorded {}",
                    modmesh_storage::mod_hash(&m),
                    s.mod_hash
                )),
                None,
            )
        }
        Ok(_) => {}
        Err(e) => return (Check::Failed(e.to_string()), None),
    }
    let actual = match zip_h1(client, c).await {
        Ok(h) => h,
        Err(e) => return (Check::Failed(e), None),
    };
    let check = match &s.zip_hash {
        None => Check::Unrecorded,
        Some(recorded) if *recorded == actual => Check::Ok,
        Some(recorded) => Check::Mismatch(format!("zip hashes to {actual}, recorded {recorded}")),
    };
    (check, Some(actual))
}

/// The h1 of the stored zip, streamed into a temporary file and hashed.
async fn zip_h1(client: &StorageClient, c: &Coordinates) -> Fallible<String> {
    use tokio::io::AsyncWriteExt;
    let mut zip = client.zip(c).await.map_err(|e| e.to_string())?;
    let tmp = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    let mut file = tokio::fs::File::from_std(tmp.reopen().map_err(|e| e.to_string())?);
    while let Some(chunk) = zip.stream.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        file.write_all(&chunk).await.map_err(|e| e.to_string())?;
    }
    file.flush().await.map_err(|e| e.to_string())?;
    drop(file);
    tokio::task::spawn_blocking(move || modmesh_storage::zip_hash(tmp.path()))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

async fn all_versions(client: &StorageClient, prefix: &str) -> Fallible<Vec<Coordinates>> {
    let mut token: Option<String> = None;
    let mut all = Vec::new();
    loop {
        let page = client
            .catalog(token.as_deref(), 0, prefix)
            .await
            .map_err(|e| e.to_string())?;
        all.extend(page.entries);
        match page.next_page_token {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => return Ok(all),
        }
    }
}

async fn verify(client: &StorageClient, prefix: &str, out: &mut Out) -> Fallible<bool> {
    let all = all_versions(client, prefix).await?;
    let bar = progress(Some(all.len() as u64), "verifying");
    let (mut ok, mut unrecorded, mut bad, mut failed) = (0u64, 0u64, 0u64, 0u64);
    for c in &all {
        let (check, actual) = verify_one(client, c).await;
        let (status, detail) = match &check {
            Check::Ok => (Some("ok"), String::new()),
            Check::Unrecorded => (Some("unrecorded"), String::new()),
            Check::Mismatch(d) => (Some("mismatch"), d.clone()),
            Check::Failed(d) => (None, d.clone()),
        };
        let status = status.unwrap_or("error");
        match check {
            Check::Ok => ok += 1,
            Check::Unrecorded => unrecorded += 1,
            Check::Mismatch(_) => bad += 1,
            Check::Failed(_) => failed += 1,
        }
        if status != "ok" || out.json {
            bar.suspend(|| {
                out.emit(
                    json!({"module": c.module.as_str(), "version": c.version.as_str(),
                           "status": status, "zip_hash": actual, "detail": detail}),
                    || format!("{status}: {c} {detail}").trim_end().to_string(),
                )
            });
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    out.emit(
        json!({"checked": all.len(), "ok": ok, "unrecorded": unrecorded,
               "mismatched": bad, "errors": failed}),
        || {
            format!(
                "{} checked: {ok} ok, {unrecorded} without a recorded hash, {bad} mismatched, {failed} errors",
                all.len()
            )
        },
    );
    Ok(bad == 0 && failed == 0)
}

/// One version found in a folder to prefill from.
struct Found {
    coordinates: Coordinates,
    info: PathBuf,
    go_mod: PathBuf,
    zip: PathBuf,
}

/// Walks `root` for versions in either layout: GOMODCACHE's download
/// tree (`<escaped module>/@v/<escaped version>.{info,mod,zip}`) or Athens'
/// disk store (`<module>/<version>/{<version>.info,go.mod,source.zip}`).
fn find_versions(root: &Path) -> Fallible<(Vec<Found>, Vec<String>)> {
    let base = if root.join("cache/download").is_dir() {
        root.join("cache/download")
    } else {
        root.to_path_buf()
    };
    let mut found = Vec::new();
    let mut problems = Vec::new();
    let mut stack = vec![base.clone()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                if !name.starts_with('.') {
                    stack.push(path);
                }
                continue;
            }
            let rel_dir = dir.strip_prefix(&base).unwrap_or(&dir);
            let rel = rel_dir.to_string_lossy().to_string();
            let hit = if let (Some(stem), true) = (name.strip_suffix(".zip"), dir.ends_with("@v")) {
                // GOMODCACHE: escaped module and version.
                let module = rel.trim_end_matches("@v").trim_end_matches('/');
                let m = modmesh_proto::coords::unescape(module);
                let v = modmesh_proto::coords::unescape(stem);
                match (m, v) {
                    (Some(m), Some(v)) => Some((
                        Coordinates::new(&m, &v),
                        dir.join(format!("{stem}.info")),
                        dir.join(format!("{stem}.mod")),
                    )),
                    _ => {
                        problems.push(format!("{}: bad escaping", path.display()));
                        None
                    }
                }
            } else if name == "source.zip" {
                // Athens disk: decoded module path, version folder.
                let (module, version) = rel.rsplit_once('/').unwrap_or(("", &rel));
                Some((
                    Coordinates::new(module, version),
                    dir.join(format!("{version}.info")),
                    dir.join("go.mod"),
                ))
            } else {
                None
            };
            let Some((c, info, go_mod)) = hit else {
                continue;
            };
            match c {
                Ok(coordinates) if info.is_file() && go_mod.is_file() => found.push(Found {
                    coordinates,
                    info,
                    go_mod,
                    zip: path,
                }),
                Ok(c) => problems.push(format!(
                    "{c}: .info or go.mod missing beside {}",
                    path.display()
                )),
                Err(e) => problems.push(format!("{}: {e}", path.display())),
            }
        }
    }
    found.sort_by(|a, b| a.coordinates.cmp(&b.coordinates));
    Ok((found, problems))
}

async fn save_found(client: &StorageClient, f: &Found) -> modmesh_proto::Result<()> {
    let info = tokio::fs::read(&f.info).await?;
    let go_mod = tokio::fs::read(&f.go_mod).await?;
    let file = tokio::fs::File::open(&f.zip).await?;
    let size = file.metadata().await?.len();
    let mut req = SaveRequest::new(&f.coordinates, Bytes::from(info), Bytes::from(go_mod))?;
    req.zip_size = Some(size);
    let stream = tokio_util::io::ReaderStream::with_capacity(file, modmesh_proto::MAX_CHUNK)
        .map(|r| r.map_err(modmesh_proto::Error::from))
        .boxed();
    client.save(req, stream).await
}

async fn prefill(client: &StorageClient, dir: &Path, out: &mut Out) -> Fallible<bool> {
    let (found, problems) = find_versions(dir)?;
    for p in &problems {
        out.emit(json!({"status": "error", "detail": p}), || {
            format!("error: {p}")
        });
    }
    let bar = progress(Some(found.len() as u64), "prefilling");
    let (mut saved, mut present, mut failed) = (0u64, 0u64, problems.len() as u64);
    for f in &found {
        let c = &f.coordinates;
        let (status, detail) = match save_found(client, f).await {
            Ok(()) => {
                saved += 1;
                ("saved", String::new())
            }
            Err(e) if e.kind == ErrorKind::AlreadyExists => {
                present += 1;
                ("exists", String::new())
            }
            Err(e) => {
                failed += 1;
                ("error", e.to_string())
            }
        };
        bar.suspend(|| {
            out.emit(
                json!({"module": c.module.as_str(), "version": c.version.as_str(),
                       "status": status, "detail": detail}),
                || format!("{status}: {c} {detail}").trim_end().to_string(),
            )
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    out.emit(
        json!({"found": found.len(), "saved": saved, "exists": present, "errors": failed}),
        || {
            format!(
                "{} found: {saved} saved, {present} already stored, {failed} errors",
                found.len()
            )
        },
    );
    Ok(failed == 0)
}

async fn health(
    storage: &str,
    grpc: Option<&str>,
    service: &str,
    http: Option<&str>,
    out: &mut Out,
) -> Fallible<bool> {
    let (target, result) = match http {
        Some(url) => (url.to_string(), http_ok(url).await),
        None => {
            let url = grpc.unwrap_or(storage);
            (url.to_string(), grpc_serving(url, service).await)
        }
    };
    let healthy = result.is_ok();
    let detail = result.err().unwrap_or_default();
    out.emit(
        json!({"target": target, "healthy": healthy, "detail": detail}),
        || {
            if healthy {
                format!("{target}: healthy")
            } else {
                format!("{target}: unhealthy: {detail}")
            }
        },
    );
    Ok(healthy)
}

const PROBE_DEADLINE: Duration = Duration::from_secs(5);

async fn grpc_serving(url: &str, service: &str) -> Fallible<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let channel = modmesh_common::server::channel_with_timeout(url, PROBE_DEADLINE)
        .map_err(|e| format!("{url}: {e}"))?;
    let mut client = HealthClient::new(channel);
    let call = client.check(HealthCheckRequest {
        service: service.to_string(),
    });
    let reply = tokio::time::timeout(PROBE_DEADLINE, call)
        .await
        .map_err(|_| format!("no answer within {PROBE_DEADLINE:?}"))?
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    if reply.status == ServingStatus::Serving as i32 {
        Ok(())
    } else {
        Err(format!(
            "status {:?}",
            ServingStatus::try_from(reply.status).unwrap_or(ServingStatus::Unknown)
        ))
    }
}

/// `GET url` over plain HTTP/1.0; `Ok` if the status is 200.
async fn http_ok(url: &str) -> Fallible<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let uri: tonic::codegen::http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("{url}: only http:// URLs are probed"));
    }
    let host = uri.host().ok_or_else(|| format!("{url}: no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect((host, port)).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
            .await?;
        let mut head = Vec::new();
        s.take(1024).read_to_end(&mut head).await?;
        Ok::<_, std::io::Error>(head)
    };
    let head = tokio::time::timeout(PROBE_DEADLINE, exchange)
        .await
        .map_err(|_| format!("no answer within {PROBE_DEADLINE:?}"))?
        .map_err(|e| e.to_string())?;
    let status_line = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    match status_line.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        _ => Err(format!("answered {status_line:?}")),
    }
}
