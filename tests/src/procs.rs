//! Process harness: finds the mesh binaries, picks loopback ports, spawns a
//! binary with a clean environment and its output in log files, waits for it
//! to be ready, stops it with SIGTERM (asserting exit 0), kills it on drop, and
//! reads its peak RSS.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The directory holding the mesh binaries: the test or bench executable's
/// profile directory (`target/<profile>`; tests run from `target/<profile>/deps`),
/// or `MODMESH_BIN_DIR` when set (several checkouts sharing one target).
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("MODMESH_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| anyhow!("no parent of {}", exe.display()))?
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    Ok(dir)
}

/// The path of the mesh binary `name` (`gateway`, `storage-svc`, …); fails with
/// the command that builds it if it is missing.
pub fn bin(name: &str) -> Result<PathBuf> {
    let dir = bin_dir()?;
    let path = dir.join(name);
    if path.is_file() {
        return Ok(path);
    }
    let release = if dir.file_name().is_some_and(|n| n == "release") {
        " --release"
    } else {
        ""
    };
    bail!(
        "{} is missing: run `cargo build{release} --workspace --bins` first",
        path.display()
    )
}

pub use modmesh_test_support::free_port;

/// `127.0.0.1:<free port>`.
pub fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// Everything needed to (re)start one process.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Binary name under [`bin_dir`] (`gateway`, `storage-svc`, `lock-svc`, `fetcher-svc`).
    pub bin: String,
    /// Label for logs and messages (`gateway-a`).
    pub label: String,
    /// Environment on top of `PATH` and `HOME` (nothing else is inherited).
    pub env: Vec<(String, String)>,
    /// Working directory (also keeps a stray `athens.toml` from being read).
    pub cwd: PathBuf,
    /// Where stdout and stderr files go.
    pub log_dir: PathBuf,
    /// The address the process listens on (HTTP for the gateway, gRPC otherwise).
    pub addr: String,
}

impl Spec {
    /// Sets (or replaces) one environment variable.
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.into()));
        self
    }
}

/// A running process of the mesh.
#[derive(Debug)]
pub struct Proc {
    /// How it was started.
    pub spec: Spec,
    child: Option<Child>,
    pid: u32,
    stdout: PathBuf,
    stderr: PathBuf,
}

static SPAWNS: Mutex<u32> = Mutex::new(0);

impl Proc {
    /// Spawns `spec` (does not wait for readiness).
    pub fn spawn(spec: Spec) -> Result<Proc> {
        let path = bin(&spec.bin)?;
        std::fs::create_dir_all(&spec.log_dir)?;
        std::fs::create_dir_all(&spec.cwd)?;
        let n = {
            let mut n = SPAWNS.lock().unwrap();
            *n += 1;
            *n
        };
        let stdout = spec.log_dir.join(format!("{}.{n}.stdout", spec.label));
        let stderr = spec.log_dir.join(format!("{}.{n}.stderr", spec.label));
        let mut cmd = Command::new(&path);
        cmd.env_clear();
        for key in ["PATH", "HOME"] {
            if let Some(v) = std::env::var_os(key) {
                cmd.env(key, v);
            }
        }
        cmd.envs(spec.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&spec.cwd)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout)?)
            .stderr(File::create(&stderr)?);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", path.display()))?;
        Ok(Proc {
            pid: child.id(),
            spec,
            child: Some(child),
            stdout,
            stderr,
        })
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.spec.addr)
    }

    /// The last `bytes` of stdout and stderr, for failure messages.
    pub fn log_tail(&self, bytes: u64) -> String {
        let tail = |p: &Path| -> String {
            let Ok(mut f) = File::open(p) else {
                return String::new();
            };
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = f.seek(SeekFrom::Start(len.saturating_sub(bytes)));
            let mut s = Vec::new();
            let _ = f.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        };
        format!(
            "--- {} (pid {}) stdout [{}] ---\n{}\n--- stderr [{}] ---\n{}",
            self.spec.label,
            self.pid,
            self.stdout.display(),
            tail(&self.stdout),
            self.stderr.display(),
            tail(&self.stderr)
        )
    }

    /// Everything the process has logged so far (stdout, then stderr).
    pub fn log_text(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!("{}{}", read(&self.stdout), read(&self.stderr))
    }

    /// `Some(status)` once the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn fail_if_exited(&mut self, what: &str) -> Result<()> {
        if let Some(st) = self.try_exit() {
            bail!(
                "{} exited ({st}) while {what}\n{}",
                self.spec.label,
                self.log_tail(8000)
            );
        }
        Ok(())
    }

    /// Waits until the process accepts TCP connections on its address.
    pub async fn wait_listening(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.fail_if_exited("starting")?;
            if tokio::net::TcpStream::connect(&self.spec.addr)
                .await
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not listening on {} after {timeout:?}\n{}",
                    self.spec.label,
                    self.spec.addr,
                    self.log_tail(8000)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `GET <url>/readyz` answers 200 (gateways only).
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let url = format!("{}/readyz", self.url());
        let mut last: String;
        loop {
            self.fail_if_exited("waiting for /readyz")?;
            match crate::http::get(&url).await {
                Ok(r) if r.status == hyper::StatusCode::OK => return Ok(()),
                Ok(r) => last = format!("{} {}", r.status, r.text()),
                Err(e) => last = format!("{e:#}"),
            }
            if Instant::now() > deadline {
                bail!(
                    "{url} not 200 after {timeout:?} (last: {last})\n{}",
                    self.log_tail(8000)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends SIGTERM and waits (up to 30 s) for the exit; fails unless it
    /// exits with status 0.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if child.try_wait()?.is_none() {
            kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM)?;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                bail!(
                    "{} did not exit within 30 s of SIGTERM\n{}",
                    self.spec.label,
                    self.log_tail(8000)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if !status.success() {
            bail!(
                "{} exited with {status} after SIGTERM (expected 0)\n{}",
                self.spec.label,
                self.log_tail(8000)
            );
        }
        Ok(())
    }

    /// Peak resident set size (VmHWM) in KiB, from `/proc/<pid>/status`.
    pub fn vm_hwm_kib(&self) -> Result<u64> {
        vm_hwm_kib(self.pid)
    }

    /// Resets the peak RSS counter (`echo 5 > /proc/<pid>/clear_refs`), so a
    /// later [`Proc::vm_hwm_kib`] covers only what follows.
    pub fn reset_hwm(&self) -> Result<()> {
        reset_hwm(self.pid)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Peak resident set size (VmHWM) in KiB of process `pid`.
pub fn vm_hwm_kib(pid: u32) -> Result<u64> {
    modmesh_test_support::vm_hwm_kib(pid).ok_or_else(|| anyhow!("no VmHWM in /proc/{pid}/status"))
}

/// Resets the peak RSS counter of process `pid`.
pub fn reset_hwm(pid: u32) -> Result<()> {
    modmesh_test_support::reset_peak_rss(&pid.to_string())
        .with_context(|| format!("reset VmHWM of {pid}"))
}

/// Whether process `pid` runs (a zombie, exited but not yet reaped, counts
/// as gone).
pub fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}
