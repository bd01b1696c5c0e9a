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
use std::sync::Arc;
use std::time::{Duration, Instant};

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

#[allow(unused_imports)]
pub use modmesh_test_support::zip_h1;

pub use modmesh_tests::server::Answer as Mode;

/// A GOPROXY over HTTP on 127.0.0.1 serving a directory, counting requests
/// (the tests crate's static server, answering as `Mode` says).
pub struct HttpUpstream {
    pub addr: SocketAddr,
    server: modmesh_tests::server::StaticServer,
}

impl HttpUpstream {
    pub async fn start(root: PathBuf, mode: Mode) -> HttpUpstream {
        let server = modmesh_tests::server::StaticServer::start(&root).expect("static server");
        server.set_answer(mode);
        HttpUpstream {
            addr: server.addr(),
            server,
        }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn requests(&self) -> Vec<String> {
        self.server.requests()
    }

    /// Requests whose path ends with `suffix`.
    pub fn count(&self, suffix: &str) -> usize {
        self.requests()
            .iter()
            .filter(|p| p.ends_with(suffix))
            .count()
    }

    /// Stops accepting; the port then refuses connections.
    pub async fn stop(mut self) {
        tokio::task::spawn_blocking(move || self.server.stop())
            .await
            .expect("stop the static server");
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
