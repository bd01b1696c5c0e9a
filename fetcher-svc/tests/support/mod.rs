//! Shared test helpers: a local GOPROXY upstream laid out on disk (served as
//! `file://` or by a tiny HTTP server on 127.0.0.1), fetcher construction,
//! and /proc scanning for leftover processes.

#![allow(dead_code)]

use modmesh_fetcher::gocmd::{remove_dir_all_forced, GoFetcher, GoSettings, JOB_DIR_PREFIX};
use modmesh_proto::coords::escape;
use modmesh_storage::backends::memory::MemoryStorage;
use modmesh_storage::Storage;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A directory removed on drop even when the go command made parts of it
/// read-only.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(prefix: &str) -> Scratch {
        Scratch(
            tempfile::Builder::new()
                .prefix(prefix)
                .tempdir()
                .unwrap()
                .keep(),
        )
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = remove_dir_all_forced(&self.0);
    }
}

/// A GOPROXY laid out in a directory.
pub struct Upstream {
    pub dir: Scratch,
}

/// What was published for one version.
pub struct Published {
    pub info: Vec<u8>,
    pub go_mod: Vec<u8>,
    pub zip: Vec<u8>,
}

impl Upstream {
    pub fn new() -> Upstream {
        Upstream {
            dir: Scratch::new("modmesh-upstream-"),
        }
    }

    /// `<dir>/<escaped module>/@v`.
    pub fn module_dir(&self, module: &str) -> PathBuf {
        let d = self.dir.path().join(escape(module)).join("@v");
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Publishes module@version (listed in `list` when `listed`), with a
    /// go.mod and `files` under `module@version/` in the zip.
    pub fn publish(
        &self,
        module: &str,
        version: &str,
        listed: bool,
        files: &[(&str, &str)],
    ) -> Published {
        let dir = self.module_dir(module);
        let go_mod = format!("module {module}\n\ngo 1.21\n").into_bytes();
        let info = format!("{{\"Version\":\"{version}\",\"Time\":\"2024-01-02T03:04:05Z\"}}\n")
            .into_bytes();
        let mut zw = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        zw.start_file(format!("{module}@{version}/go.mod"), opts)
            .unwrap();
        zw.write_all(&go_mod).unwrap();
        for (name, body) in files {
            zw.start_file(format!("{module}@{version}/{name}"), opts)
                .unwrap();
            zw.write_all(body.as_bytes()).unwrap();
        }
        let zip = zw.finish().unwrap().into_inner();
        let ev = escape(version);
        std::fs::write(dir.join(format!("{ev}.info")), &info).unwrap();
        std::fs::write(dir.join(format!("{ev}.mod")), &go_mod).unwrap();
        std::fs::write(dir.join(format!("{ev}.zip")), &zip).unwrap();
        let list = dir.join("list");
        let mut text = std::fs::read_to_string(&list).unwrap_or_default();
        if listed {
            text.push_str(version);
            text.push('\n');
        }
        std::fs::write(&list, text).unwrap();
        Published { info, go_mod, zip }
    }

    /// Makes `query` (a branch name) resolve to `version` (`<query>.info`).
    pub fn alias(&self, module: &str, query: &str, version: &str) {
        let dir = self.module_dir(module);
        let info = std::fs::read(dir.join(format!("{}.info", escape(version)))).unwrap();
        std::fs::write(dir.join(format!("{}.info", escape(query))), info).unwrap();
    }

    /// A module whose `list` is empty.
    pub fn empty_module(&self, module: &str) {
        std::fs::write(self.module_dir(module).join("list"), "").unwrap();
    }

    pub fn file_url(&self) -> String {
        format!("file://{}", self.dir.path().display())
    }
}

/// go.sum's `h1:` hash of a module zip (dirhash.Hash1 over its entries).
pub fn zip_h1(zip_bytes: &[u8]) -> String {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(zip_bytes)).unwrap();
    let mut lines = Vec::new();
    for i in 0..z.len() {
        let mut f = z.by_index(i).unwrap();
        let mut body = Vec::new();
        f.read_to_end(&mut body).unwrap();
        let hex: String = Sha256::digest(&body)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        lines.push((f.name().to_string(), format!("{hex}  {}\n", f.name())));
    }
    // Sorted by file name, as dirhash.Hash1 does.
    lines.sort();
    let summary: String = lines.into_iter().map(|(_, l)| l).collect();
    let sum = Sha256::digest(summary.as_bytes());
    format!(
        "h1:{}",
        base64::engine::general_purpose::STANDARD.encode(sum)
    )
}

/// How the HTTP upstream answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Serves the directory.
    Files,
    /// Reads the request and never answers.
    Hang,
    /// Answers every request with this status and a short body.
    Status(u16),
}

/// A GOPROXY over HTTP on 127.0.0.1 serving a directory, counting requests.
pub struct HttpUpstream {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpUpstream {
    pub async fn start(root: PathBuf, mode: Mode) -> HttpUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let root = root.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).to_string();
                    let raw = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let path =
                        modmesh_test_support::percent_decode(&raw).unwrap_or_else(|| raw.clone());
                    seen.lock().unwrap().push(path.clone());
                    if mode == Mode::Hang {
                        std::future::pending::<()>().await;
                    }
                    let file = root.join(path.trim_start_matches('/'));
                    let (status, body) = match (mode, std::fs::read(&file)) {
                        (Mode::Status(code), _) => (
                            format!("{code} Status {code}"),
                            b"upstream says no\n".to_vec(),
                        ),
                        (_, Ok(b)) if !path.contains("..") => ("200 OK".to_string(), b),
                        _ => ("404 Not Found".to_string(), b"not found\n".to_vec()),
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = sock.write_all(head.as_bytes()).await;
                    let _ = sock.write_all(&body).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        HttpUpstream {
            addr,
            requests,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// Requests whose path ends with `suffix`.
    pub fn count(&self, suffix: &str) -> usize {
        self.requests()
            .iter()
            .filter(|p| p.ends_with(suffix))
            .count()
    }

    /// Stops accepting; the port then refuses connections.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Settings pointing the go command at `proxy_url`, with checksum-database
/// checks off, work dirs and caches under `base`.
pub fn settings(proxy_url: &str, base: &Path, timeout: Duration) -> GoSettings {
    GoSettings {
        go_binary: "go".into(),
        env_vars: vec![format!("GOPROXY={proxy_url}"), "GOSUMDB=off".into()],
        workers: 4,
        go_get_dir: Some(base.to_path_buf()),
        timeout,
    }
}

/// A go fetcher over a fresh `MemoryStorage`.
pub fn fetcher(settings: GoSettings) -> (Arc<GoFetcher>, Arc<dyn Storage>) {
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    (Arc::new(GoFetcher::new(settings, storage.clone())), storage)
}

/// The per-run directories left under `base`.
pub fn job_dirs(base: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(base)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(JOB_DIR_PREFIX))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// One process as /proc shows it.
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub state: char,
    pub cmdline: String,
}

/// Every process visible in /proc.
pub fn processes() -> Vec<Proc> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid pgrp ..."; comm may hold spaces and parens.
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if rest.len() < 3 {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        out.push(Proc {
            pid,
            ppid: rest[1].parse().unwrap_or(0),
            pgid: rest[2].parse().unwrap_or(0),
            state: rest[0].chars().next().unwrap_or('?'),
            cmdline,
        });
    }
    out
}

/// Waits (up to `within`) until a process whose command line contains
/// `marker` appears, and returns it.
pub async fn wait_for_process(marker: &str, within: Duration) -> Option<Proc> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let me = std::process::id() as i32;
        if let Some(p) = processes()
            .into_iter()
            .find(|p| p.pid != me && p.cmdline.contains(marker))
        {
            return Some(p);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Processes still alive in process group `pgid`, or left as our zombies.
/// A zombie reparented elsewhere can no longer run and is not counted.
pub fn leftovers(pgid: i32, leader: i32) -> Vec<Proc> {
    let me = std::process::id() as i32;
    processes()
        .into_iter()
        .filter(|p| (p.pgid == pgid && (p.state != 'Z' || p.ppid == me)) || (p.pid == leader))
        .collect()
}

/// Waits (up to `within`) until no leftovers of `pgid` remain.
pub async fn wait_group_gone(pgid: i32, leader: i32, within: Duration) -> Vec<Proc> {
    let deadline = Instant::now() + within;
    loop {
        let left = leftovers(pgid, leader);
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
