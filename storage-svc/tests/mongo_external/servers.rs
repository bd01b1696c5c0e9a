//! Real servers for the mongo and external tests, each started once per
//! test binary on 127.0.0.1 and a free port, and killed by PID when the
//! binary exits (an `atexit` hook, and `PR_SET_PDEATHSIG` should it die).

#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

static PIDS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

extern "C" fn kill_all() {
    let pids = PIDS.lock().map(|p| p.clone()).unwrap_or_default();
    for pid in pids {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// A server process; killed by PID on drop and at exit.
pub struct Proc {
    pub pid: i32,
    pub addr: String,
    child: Mutex<Child>,
    _dir: tempfile::TempDir,
}

impl Proc {
    /// Kills it now (SIGKILL) and waits for it.
    pub fn kill(&self) {
        let mut c = self.child.lock().unwrap_or_else(|p| p.into_inner());
        let _ = c.kill();
        let _ = c.wait();
        PIDS.lock().unwrap().retain(|p| *p != self.pid);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub use modmesh_test_support::free_port;

/// Spawns `cmd` from a thread that lives as long as the process, so the
/// child's parent-death signal fires when the test binary dies, not when
/// the test that started it ends.
pub fn spawn(mut cmd: Command, dir: tempfile::TempDir, addr: String) -> Proc {
    static ATEXIT: OnceLock<()> = OnceLock::new();
    ATEXIT.get_or_init(|| {
        // SAFETY: registers a plain extern "C" function.
        unsafe {
            libc::atexit(kill_all);
        }
    });
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = cmd.spawn();
        tx.send(r).unwrap();
        loop {
            std::thread::park();
        }
    });
    let child = rx.recv().unwrap().expect("spawn server");
    let pid = child.id() as i32;
    PIDS.lock().unwrap().push(pid);
    Proc {
        pid,
        addr,
        child: Mutex::new(child),
        _dir: dir,
    }
}

/// Waits until `addr` accepts TCP connections; panics after `limit`.
pub fn wait_port(what: &str, addr: &str, limit: Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on {addr} within {limit:?}");
}

/// Finds `name` on PATH or in the places the deps script installs to.
pub fn find_binary(name: &str, env: &str) -> Option<PathBuf> {
    if let Ok(p) = std::env::var(env) {
        return Some(PathBuf::from(p));
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push("/usr/local/bin".into());
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".local/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// The binary or a clear failure: run `scripts/deps/36-mongo.sh` first.
pub fn need_binary(name: &str, env: &str) -> PathBuf {
    find_binary(name, env).unwrap_or_else(|| {
        panic!(
            "{name} is not installed (run scripts/deps/36-mongo.sh, or set {env}); \
             the mongo tests need a real Mongo-wire server"
        )
    })
}

/// Which Mongo-wire server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MongoServer {
    /// FerretDB 1.x on SQLite.
    Ferret,
    /// secantusdb, in memory.
    Secantus,
}

fn start_ferret(extra: &[String]) -> Proc {
    start_ferret_at(&format!("127.0.0.1:{}", free_port()), extra)
}

/// A FerretDB (SQLite, in a fresh directory) listening on `addr`.
pub fn start_ferret_at(addr: &str, extra: &[String]) -> Proc {
    let addr = addr.to_string();
    let bin = need_binary("ferretdb", "FERRETDB_BIN");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let mut cmd = Command::new(bin);
    cmd.arg("--handler=sqlite")
        .arg(format!("--sqlite-url=file:{}/", data.display()))
        .arg(format!("--listen-addr={addr}"))
        .arg(format!("--state-dir={}", dir.path().display()))
        .arg("--telemetry=disable")
        .arg("--debug-addr=-")
        .arg("--log-level=error")
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let p = spawn(cmd, dir, addr.clone());
    wait_port("ferretdb", &addr, Duration::from_secs(30));
    p
}

fn start_secantus() -> Proc {
    let bin = need_binary("secantusd-py", "SECANTUSD_BIN");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(bin);
    cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--storage-path", ":memory:", "--standalone"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let p = spawn(cmd, dir, addr.clone());
    wait_port("secantusd-py", &addr, Duration::from_secs(60));
    p
}

/// The server's `mongodb://` URL, started once per test binary.
pub fn mongo_url(which: MongoServer) -> String {
    static FERRET: OnceLock<Proc> = OnceLock::new();
    static SECANTUS: OnceLock<Proc> = OnceLock::new();
    let p = match which {
        MongoServer::Ferret => FERRET.get_or_init(|| start_ferret(&[])),
        MongoServer::Secantus => SECANTUS.get_or_init(start_secantus),
    };
    format!("mongodb://{}/", p.addr)
}

/// A FerretDB that also listens with TLS (a certificate for 127.0.0.1
/// signed by a CA made here): the process, the TLS address, the CA file.
pub struct TlsFerret {
    pub proc: Proc,
    pub tls_addr: String,
    pub ca: PathBuf,
    _certs: tempfile::TempDir,
}

/// Starts a TLS FerretDB (certificates made with `openssl`).
pub fn tls_ferret() -> TlsFerret {
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(d)
            .output()
            .expect("openssl (run scripts/deps/36-mongo.sh)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=modmesh test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.pem",
    ]);
    let tls_addr = format!("127.0.0.1:{}", free_port());
    let proc = start_ferret(&[
        format!("--listen-tls={tls_addr}"),
        format!("--listen-tls-cert-file={}", d.join("server.pem").display()),
        format!("--listen-tls-key-file={}", d.join("server.key").display()),
    ]);
    wait_port("ferretdb (TLS)", &tls_addr, Duration::from_secs(30));
    TlsFerret {
        proc,
        tls_addr,
        ca: d.join("ca.pem"),
        _certs: certs,
    }
}

/// storage-svc (the binary) with the memory backend, serving the
/// external-storage protocol; its base URL. Started once per test binary.
pub fn storage_svc_memory_external() -> String {
    static SVC: OnceLock<Proc> = OnceLock::new();
    let p = SVC.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let http = format!("127.0.0.1:{}", free_port());
        let grpc = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_storage-svc"));
        cmd.current_dir(dir.path());
        for (k, _) in std::env::vars() {
            if k.starts_with("ATHENS_") || k == "PORT" {
                cmd.env_remove(k);
            }
        }
        cmd.env("ATHENS_STORAGE_TYPE", "memory")
            .env("ATHENS_STORAGE_SVC_LISTEN", &grpc)
            .env("ATHENS_EXTERNAL_STORAGE_LISTEN", &http)
            .env("ATHENS_LOG_LEVEL", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let p = spawn(cmd, dir, http.clone());
        wait_port("storage-svc", &http, Duration::from_secs(30));
        p
    });
    format!("http://{}", p.addr)
}

/// The independent Go server (tests/extserver), built and started once per
/// test binary; its base URL.
pub fn go_extserver() -> String {
    static GO: OnceLock<(Proc, tempfile::TempDir)> = OnceLock::new();
    let (p, _) = GO.get_or_init(|| {
        let build = tempfile::tempdir().unwrap();
        let bin = build.path().join("extserver");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/extserver");
        let out = Command::new("go")
            .args(["build", "-o"])
            .arg(&bin)
            .arg(".")
            .current_dir(&src)
            .env("GOFLAGS", "-mod=mod")
            .env("GOTOOLCHAIN", "local")
            .output()
            .expect("go (needed to build the independent external server)");
        assert!(
            out.status.success(),
            "go build extserver: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(&bin);
        cmd.arg("-root")
            .arg(dir.path())
            .arg("-listen")
            .arg(&addr)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let p = spawn(cmd, dir, addr.clone());
        wait_port("extserver", &addr, Duration::from_secs(30));
        (p, build)
    });
    format!("http://{}", p.addr)
}

/// Athens' proxy (v0.18.0, built by scripts/deps/36-mongo.sh) with `env`
/// (its ATHENS_* settings) in an empty directory; its base URL.
pub fn start_athens(env: &[(&str, &str)]) -> (Proc, String) {
    let bin = need_binary("athens-proxy", "ATHENS_PROXY_BIN");
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(bin);
    cmd.current_dir(dir.path());
    for (k, _) in std::env::vars() {
        if k.starts_with("ATHENS_") || k == "PORT" || k.starts_with("GO") {
            cmd.env_remove(k);
        }
    }
    cmd.env("ATHENS_PORT", &addr)
        .env("ATHENS_LOG_LEVEL", "error")
        .env("GOPATH", dir.path().join("gopath"))
        .env("GOCACHE", dir.path().join("gocache"))
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let p = spawn(cmd, dir, addr.clone());
    wait_port("athens", &addr, Duration::from_secs(60));
    (p, format!("http://{addr}"))
}
