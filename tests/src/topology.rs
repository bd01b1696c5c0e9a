//! The two shapes the suite runs: one embedded `gateway`, and the mesh
//! (`storage-svc` + `lock-svc` + N `fetcher-svc` + N `gateway`, gateway i using
//! fetcher i, all sharing the one storage-svc and lock-svc).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::procs::{free_addr, Proc, Spec};

/// How long a process gets to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a storage keeps module versions.
#[derive(Debug, Clone)]
pub enum Store {
    /// `ATHENS_STORAGE_TYPE=memory`.
    Memory,
    /// `ATHENS_STORAGE_TYPE=disk` with this (existing) root.
    Disk(PathBuf),
    /// Any backend, configured by these environment variables (including
    /// `ATHENS_STORAGE_TYPE`), e.g. an object store's endpoint and bucket.
    Env(Vec<(String, String)>),
}

impl Store {
    /// The environment that configures this store.
    pub fn env(&self) -> Vec<(String, String)> {
        match self {
            Store::Memory => vec![("ATHENS_STORAGE_TYPE".into(), "memory".into())],
            Store::Disk(root) => vec![
                ("ATHENS_STORAGE_TYPE".into(), "disk".into()),
                (
                    "ATHENS_DISK_STORAGE_ROOT".into(),
                    root.display().to_string(),
                ),
            ],
            Store::Env(env) => env.clone(),
        }
    }
}

fn kv(k: &str, v: impl Into<String>) -> (String, String) {
    (k.to_string(), v.into())
}

/// A spec for binary `bin` labelled `label`: working directory
/// `<dir>/<label>/cwd`, logs in `<dir>/logs`, a fresh loopback address, JSON
/// logs at info level.
pub fn base_spec(bin: &str, label: &str, dir: &Path) -> Spec {
    Spec {
        bin: bin.into(),
        label: label.into(),
        env: vec![
            kv("ATHENS_LOG_FORMAT", "json"),
            kv("ATHENS_LOG_LEVEL", "info"),
        ],
        cwd: dir.join(label).join("cwd"),
        log_dir: dir.join("logs"),
        addr: free_addr(),
    }
}

/// Adds what a fetcher needs: the upstream in `ATHENS_GO_BINARY_ENV_VARS` and
/// its own `ATHENS_GOGET_DIR` (`<dir>/<label>/goget`).
fn with_fetcher_env(spec: &mut Spec, dir: &Path, upstream: &str) -> Result<()> {
    let goget = dir.join(&spec.label).join("goget");
    std::fs::create_dir_all(&goget)?;
    spec.set(
        "ATHENS_GO_BINARY_ENV_VARS",
        format!("GOPROXY={upstream};GOSUMDB=off"),
    );
    spec.set("ATHENS_GOGET_DIR", goget.display().to_string());
    Ok(())
}

/// The spec of a gateway running every service in-process.
pub fn embedded_spec(label: &str, dir: &Path, store: &Store, upstream: &str) -> Result<Spec> {
    let mut spec = base_spec("gateway", label, dir);
    spec.env.extend(store.env());
    with_fetcher_env(&mut spec, dir, upstream)?;
    let addr = spec.addr.clone();
    spec.set("ATHENS_PORT", addr);
    Ok(spec)
}

/// Spawns a gateway and waits for `/readyz`.
pub async fn start_gateway(spec: Spec) -> Result<Proc> {
    let mut p = Proc::spawn(spec)?;
    p.wait_ready(READY_TIMEOUT).await?;
    Ok(p)
}

/// Stops a gateway (SIGTERM, exit 0) and starts it again with the same
/// environment on a new port, ready.
pub async fn restart_gateway(p: &mut Proc) -> Result<()> {
    p.stop()?;
    let mut spec = p.spec.clone();
    spec.addr = free_addr();
    let addr = spec.addr.clone();
    spec.set("ATHENS_PORT", addr);
    *p = start_gateway(spec).await?;
    Ok(())
}

/// A running mesh.
#[derive(Debug)]
pub struct Mesh {
    /// `storage-svc`.
    pub storage: Proc,
    /// `lock-svc`.
    pub lock: Proc,
    /// `fetcher-svc` processes; fetcher i serves gateway i.
    pub fetchers: Vec<Proc>,
    /// `gateway` processes.
    pub gateways: Vec<Proc>,
}

impl Mesh {
    /// Starts storage-svc (`store`), lock-svc, `n` fetchers (each its own
    /// goget dir, all saving into the storage-svc) and `n` gateways, under
    /// `dir`, and waits until every gateway's `/readyz` is 200.
    pub async fn start(dir: &Path, store: &Store, upstream: &str, n: usize) -> Result<Mesh> {
        Mesh::start_with_fetcher_env(dir, store, upstream, n, &[]).await
    }

    /// Like [`Mesh::start`], with `env` set on every fetcher over the
    /// defaults (e.g. its own `ATHENS_GO_BINARY_ENV_VARS`).
    pub async fn start_with_fetcher_env(
        dir: &Path,
        store: &Store,
        upstream: &str,
        n: usize,
        env: &[(&str, &str)],
    ) -> Result<Mesh> {
        Mesh::start_with_envs(dir, store, upstream, n, env, &[]).await
    }

    /// Like [`Mesh::start`], with `env` set on every gateway over the defaults.
    pub async fn start_with_gateway_env(
        dir: &Path,
        store: &Store,
        upstream: &str,
        n: usize,
        env: &[(&str, &str)],
    ) -> Result<Mesh> {
        Mesh::start_with_envs(dir, store, upstream, n, &[], env).await
    }

    async fn start_with_envs(
        dir: &Path,
        store: &Store,
        upstream: &str,
        n: usize,
        env: &[(&str, &str)],
        gateway_env: &[(&str, &str)],
    ) -> Result<Mesh> {
        let mut storage = base_spec("storage-svc", "storage-svc", dir);
        storage.env.extend(store.env());
        let a = storage.addr.clone();
        storage.set("ATHENS_STORAGE_SVC_LISTEN", a);
        let storage_url = format!("http://{}", storage.addr);
        let mut storage = Proc::spawn(storage)?;

        let mut lock = base_spec("lock-svc", "lock-svc", dir);
        let a = lock.addr.clone();
        lock.set("ATHENS_LOCK_SVC_LISTEN", a);
        let lock_url = format!("http://{}", lock.addr);
        let mut lock = Proc::spawn(lock)?;

        let mut fetchers = Vec::new();
        for i in 0..n {
            let mut f = base_spec("fetcher-svc", &format!("fetcher-{}", i + 1), dir);
            with_fetcher_env(&mut f, dir, upstream)?;
            for (k, v) in env {
                f.set(k, *v);
            }
            let a = f.addr.clone();
            f.set("ATHENS_FETCHER_SVC_LISTEN", a);
            f.set("ATHENS_STORAGE_SVC_URL", storage_url.clone());
            fetchers.push(Proc::spawn(f)?);
        }
        storage.wait_listening(READY_TIMEOUT).await?;
        lock.wait_listening(READY_TIMEOUT).await?;
        for f in &mut fetchers {
            f.wait_listening(READY_TIMEOUT).await?;
        }

        let mut gateways = Vec::new();
        for (i, f) in fetchers.iter().enumerate() {
            let label = format!("gateway-{}", (b'a' + i as u8) as char);
            let mut g = base_spec("gateway", &label, dir);
            // Storage type is irrelevant for a gateway with a remote storage,
            // but set it like an operator would.
            g.env.extend(store.env());
            let a = g.addr.clone();
            g.set("ATHENS_PORT", a);
            g.set("ATHENS_STORAGE_SVC_URL", storage_url.clone());
            g.set("ATHENS_LOCK_SVC_URL", lock_url.clone());
            g.set("ATHENS_FETCHER_SVC_URL", f.url());
            for (k, v) in gateway_env {
                g.set(k, *v);
            }
            gateways.push(Proc::spawn(g)?);
        }
        for g in &mut gateways {
            g.wait_ready(READY_TIMEOUT)
                .await
                .with_context(|| format!("mesh under {}", dir.display()))?;
        }
        Ok(Mesh {
            storage,
            lock,
            fetchers,
            gateways,
        })
    }

    /// Every process, gateways first.
    pub fn procs(&self) -> Vec<&Proc> {
        let mut v: Vec<&Proc> = self.gateways.iter().collect();
        v.extend(self.fetchers.iter());
        v.push(&self.lock);
        v.push(&self.storage);
        v
    }

    /// Stops every process with SIGTERM, gateways first, asserting exit 0 of each.
    pub fn stop(&mut self) -> Result<()> {
        for g in &mut self.gateways {
            g.stop()?;
        }
        for f in &mut self.fetchers {
            f.stop()?;
        }
        self.lock.stop()?;
        self.storage.stop()
    }

    /// Logs of every process, for failure messages.
    pub fn log_tails(&self, bytes: u64) -> String {
        self.procs()
            .iter()
            .map(|p| p.log_tail(bytes))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A mesh whose lock-svc is replicated: one storage-svc, `locks` lock-svc
/// replicas sharing one lock backend (given by their environment, e.g.
/// `ATHENS_SINGLE_FLIGHT_TYPE=redis` and its endpoint), `fetchers`
/// fetcher-svc and `gateways` gateways, gateway i using fetcher
/// `i % fetchers` and lock-svc `i % locks`.
#[derive(Debug)]
pub struct SharedLockMesh {
    /// `storage-svc`.
    pub storage: Proc,
    /// The `lock-svc` replicas.
    pub locks: Vec<Proc>,
    /// `fetcher-svc` processes.
    pub fetchers: Vec<Proc>,
    /// `gateway` processes.
    pub gateways: Vec<Proc>,
}

impl SharedLockMesh {
    /// Starts the mesh under `dir` and waits until every gateway's
    /// `/readyz` is 200.
    pub async fn start(
        dir: &Path,
        store: &Store,
        upstream: &str,
        counts: (usize, usize, usize),
        lock_env: &[(&str, &str)],
    ) -> Result<SharedLockMesh> {
        Self::start_with_gateway_env(dir, store, upstream, counts, lock_env, &[]).await
    }

    /// Like [`SharedLockMesh::start`], with `gateway_env` set on every
    /// gateway over the defaults (e.g. a short `ATHENS_LOCK_TTL`).
    pub async fn start_with_gateway_env(
        dir: &Path,
        store: &Store,
        upstream: &str,
        counts: (usize, usize, usize),
        lock_env: &[(&str, &str)],
        gateway_env: &[(&str, &str)],
    ) -> Result<SharedLockMesh> {
        let (gateways, fetchers, locks) = counts;
        anyhow::ensure!(
            gateways > 0 && fetchers > 0 && locks > 0,
            "a mesh needs at least one of each"
        );
        let mut storage = base_spec("storage-svc", "storage-svc", dir);
        storage.env.extend(store.env());
        let a = storage.addr.clone();
        storage.set("ATHENS_STORAGE_SVC_LISTEN", a);
        let storage_url = format!("http://{}", storage.addr);
        let mut storage = Proc::spawn(storage)?;

        let mut lock_procs = Vec::new();
        for i in 0..locks {
            let mut l = base_spec("lock-svc", &format!("lock-{}", i + 1), dir);
            for (k, v) in lock_env {
                l.set(k, *v);
            }
            let a = l.addr.clone();
            l.set("ATHENS_LOCK_SVC_LISTEN", a);
            lock_procs.push(Proc::spawn(l)?);
        }
        let mut fetcher_procs = Vec::new();
        for i in 0..fetchers {
            let mut f = base_spec("fetcher-svc", &format!("fetcher-{}", i + 1), dir);
            with_fetcher_env(&mut f, dir, upstream)?;
            let a = f.addr.clone();
            f.set("ATHENS_FETCHER_SVC_LISTEN", a);
            f.set("ATHENS_STORAGE_SVC_URL", storage_url.clone());
            fetcher_procs.push(Proc::spawn(f)?);
        }
        storage.wait_listening(READY_TIMEOUT).await?;
        for p in lock_procs.iter_mut().chain(fetcher_procs.iter_mut()) {
            p.wait_listening(READY_TIMEOUT).await?;
        }

        let mut gateway_procs = Vec::new();
        for i in 0..gateways {
            let label = format!("gateway-{}", (b'a' + i as u8) as char);
            let mut g = base_spec("gateway", &label, dir);
            g.env.extend(store.env());
            let a = g.addr.clone();
            g.set("ATHENS_PORT", a);
            g.set("ATHENS_STORAGE_SVC_URL", storage_url.clone());
            g.set("ATHENS_LOCK_SVC_URL", lock_procs[i % locks].url());
            g.set("ATHENS_FETCHER_SVC_URL", fetcher_procs[i % fetchers].url());
            for (k, v) in gateway_env {
                g.set(k, *v);
            }
            gateway_procs.push(Proc::spawn(g)?);
        }
        for g in &mut gateway_procs {
            g.wait_ready(READY_TIMEOUT)
                .await
                .with_context(|| format!("mesh under {}", dir.display()))?;
        }
        Ok(SharedLockMesh {
            storage,
            locks: lock_procs,
            fetchers: fetcher_procs,
            gateways: gateway_procs,
        })
    }

    /// Every process, gateways first.
    pub fn procs(&self) -> Vec<&Proc> {
        let mut v: Vec<&Proc> = self.gateways.iter().collect();
        v.extend(self.fetchers.iter());
        v.extend(self.locks.iter());
        v.push(&self.storage);
        v
    }

    /// Stops every process with SIGTERM, gateways first, asserting exit 0 of each.
    pub fn stop(&mut self) -> Result<()> {
        for p in self
            .gateways
            .iter_mut()
            .chain(self.fetchers.iter_mut())
            .chain(self.locks.iter_mut())
        {
            p.stop()?;
        }
        self.storage.stop()
    }

    /// Logs of every process, for failure messages.
    pub fn log_tails(&self, bytes: u64) -> String {
        self.procs()
            .iter()
            .map(|p| p.log_tail(bytes))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
