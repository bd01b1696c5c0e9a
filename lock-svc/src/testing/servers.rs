//! Real lock servers on loopback ports, for tests and benchmarks: a redis
//! server (with a password), a redis master + replica watched by three
//! sentinels, and an etcd cluster of one or three members.
//!
//! Everything here is synchronous (std only), so a server started once per
//! test binary (in a `static` [`OnceLock`]) serves tests that each run their
//! own tokio runtime. Each server process is killed by its PID when its
//! handle is dropped, and also when the test process ends: servers are
//! spawned from one long-lived thread with `PR_SET_PDEATHSIG`, so a server
//! held in a `static` (never dropped) does not outlive its test binary.
//!
//! [`find`] locates a server binary on `PATH`; when it is missing the
//! caller should [`skip`](super::skip) (which fails under `CI=true`).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The password the test redis servers require.
pub const REDIS_PASSWORD: &str = "modmesh-test-pass";
/// The password the test sentinels require (Athens' default).
pub const SENTINEL_PASSWORD: &str = "sekret";
/// The master name the test sentinels monitor (Athens' default).
pub const MASTER_NAME: &str = "redis-1";

/// How long a server gets to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub use modmesh_test_support::find_program as find;

/// Like [`find`] for every name, or a message naming the missing ones.
pub fn find_all(names: &[&str]) -> Result<Vec<PathBuf>, String> {
    let found: Vec<_> = names.iter().map(|n| (n, find(n))).collect();
    let missing: Vec<_> = found
        .iter()
        .filter(|(_, p)| p.is_none())
        .map(|(n, _)| **n)
        .collect();
    if missing.is_empty() {
        Ok(found.into_iter().filter_map(|(_, p)| p).collect())
    } else {
        Err(format!(
            "{} not installed (Debian: redis-server redis-sentinel etcd-server)",
            missing.join(", ")
        ))
    }
}

pub use modmesh_test_support::free_port;

/// The prefix of the harness's scratch directories.
const SCRATCH_PREFIX: &str = "modmesh-lockserver-";

/// A fresh directory under the system temp dir, named after this process.
/// The first call also removes the directories of harness processes that
/// are gone: servers held in a `static` are killed with their test process
/// but their data (etcd preallocates 64 MiB of WAL per member) would stay.
fn scratch(what: &str) -> PathBuf {
    static SWEPT: OnceLock<()> = OnceLock::new();
    let tmp = std::env::temp_dir();
    SWEPT.get_or_init(|| {
        let Ok(entries) = std::fs::read_dir(&tmp) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(SCRATCH_PREFIX) else {
                continue;
            };
            let pid = rest.split('-').next().unwrap_or("");
            if pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    });
    let dir = tmp.join(format!(
        "{SCRATCH_PREFIX}{}-{what}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    std::fs::create_dir_all(&dir).expect("create a scratch dir");
    dir
}

use modmesh_test_support::spawn_tied as spawn;

/// One server process: its command line (to start it again), its log, and
/// the child, killed by PID on [`ServerProc::stop`] and on drop.
#[derive(Debug)]
pub struct ServerProc {
    label: String,
    program: PathBuf,
    args: Vec<String>,
    cwd: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl ServerProc {
    /// Starts `program args` in `cwd`, output appended to `cwd/<label>.log`.
    pub fn start(label: &str, program: &Path, args: &[String], cwd: &Path) -> ServerProc {
        let mut p = ServerProc {
            label: label.to_string(),
            program: program.to_path_buf(),
            args: args.to_vec(),
            cwd: cwd.to_path_buf(),
            log: cwd.join(format!("{label}.log")),
            child: None,
        };
        p.restart();
        p
    }

    /// Starts the process again with the same command line (after
    /// [`ServerProc::stop`]).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} is still running", self.label);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("server log");
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .current_dir(&self.cwd)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        let child = spawn(cmd).unwrap_or_else(|e| panic!("start {}: {e}", self.program.display()));
        self.child = Some(child);
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the process (SIGKILL, by PID) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Panics (with the log's tail) if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                panic!("{} exited ({st}):\n{}", self.label, self.log_tail());
            }
        }
    }

    /// The last 4 KiB of the process's output.
    pub fn log_tail(&self) -> String {
        let Ok(mut f) = std::fs::File::open(&self.log) else {
            return String::new();
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(4096)));
        let mut s = String::new();
        let _ = f.read_to_string(&mut s);
        s
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `ready` every 50 ms until it holds, or panics after
/// [`START_TIMEOUT`] with the process's log.
fn wait_until(p: &mut ServerProc, what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    loop {
        p.assert_running();
        if ready() {
            return;
        }
        if start.elapsed() > START_TIMEOUT {
            panic!(
                "{} not {what} after {START_TIMEOUT:?}:\n{}",
                p.label,
                p.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs one redis command (synchronously) against `port`, authenticating
/// with `password` if given.
pub fn redis_cmd<T: redis::FromRedisValue>(
    port: u16,
    password: Option<&str>,
    args: &[&str],
) -> redis::RedisResult<T> {
    use redis::IntoConnectionInfo;
    let mut settings = redis::RedisConnectionInfo::default();
    if let Some(p) = password {
        settings = settings.set_password(p);
    }
    let info = redis::ConnectionAddr::Tcp("127.0.0.1".into(), port)
        .into_connection_info()?
        .set_redis_settings(settings);
    let client = redis::Client::open(info)?;
    let mut con = client.get_connection_with_timeout(Duration::from_secs(2))?;
    con.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query(&mut con)
}

/// A redis server requiring [`REDIS_PASSWORD`], without persistence.
#[derive(Debug)]
pub struct Redis {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The process.
    pub proc: ServerProc,
    dir: PathBuf,
}

impl Redis {
    /// Starts a standalone server and waits until it answers PING; `None`
    /// if redis-server is not installed.
    pub fn start() -> Option<Redis> {
        Self::start_with("redis", &[])
    }

    fn start_with(label: &str, extra: &[String]) -> Option<Redis> {
        let bin = find("redis-server")?;
        let port = free_port();
        let dir = scratch(label);
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--requirepass",
            REDIS_PASSWORD,
            "--masterauth",
            REDIS_PASSWORD,
            "--dir",
            &dir.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend_from_slice(extra);
        let proc = ServerProc::start(label, &bin, &args, &dir);
        let mut r = Redis { port, proc, dir };
        r.wait_ready();
        Some(r)
    }

    fn wait_ready(&mut self) {
        let port = self.port;
        wait_until(&mut self.proc, "answering PING", || {
            redis_cmd::<String>(port, Some(REDIS_PASSWORD), &["PING"]).is_ok()
        });
    }

    /// `host:port` (the `Endpoint` config value).
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the server.
    pub fn stop(&mut self) {
        self.proc.stop();
    }

    /// Starts it again on the same port and waits until it answers.
    pub fn restart(&mut self) {
        self.proc.restart();
        self.wait_ready();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.proc.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A redis master and one replica (both requiring [`REDIS_PASSWORD`]),
/// watched by three sentinels (requiring [`SENTINEL_PASSWORD`]) under
/// [`MASTER_NAME`], all on loopback.
#[derive(Debug)]
pub struct SentinelSet {
    /// The initial master.
    pub master: Redis,
    /// The initial replica.
    pub replica: Redis,
    /// The sentinels' ports.
    pub sentinel_ports: Vec<u16>,
    sentinels: Vec<ServerProc>,
    dir: PathBuf,
}

impl SentinelSet {
    /// Starts the set and waits until every sentinel knows the master, the
    /// replica and the other sentinels; `None` if redis-server or
    /// redis-sentinel is not installed.
    pub fn start() -> Option<SentinelSet> {
        let sentinel_bin = find("redis-sentinel")?;
        let master = Redis::start_with("redis-master", &[])?;
        let replica = Redis::start_with(
            "redis-replica",
            &[
                "--replicaof".into(),
                "127.0.0.1".into(),
                master.port.to_string(),
            ],
        )?;
        let dir = scratch("sentinels");
        let mut sentinels = Vec::new();
        let mut sentinel_ports = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let conf = dir.join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndaemonize no\nprotected-mode no\n\
                     dir {dir}\nrequirepass {SENTINEL_PASSWORD}\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {mport} 2\n\
                     sentinel auth-pass {MASTER_NAME} {REDIS_PASSWORD}\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 2000\n\
                     sentinel failover-timeout {MASTER_NAME} 10000\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n",
                    dir = dir.display(),
                    mport = master.port,
                ),
            )
            .expect("write sentinel.conf");
            let p = ServerProc::start(
                &format!("sentinel-{i}"),
                &sentinel_bin,
                &[conf.display().to_string()],
                &dir,
            );
            sentinels.push(p);
            sentinel_ports.push(port);
        }
        let mut set = SentinelSet {
            master,
            replica,
            sentinel_ports,
            sentinels,
            dir,
        };
        let replica_port = set.replica.port;
        for (i, port) in set.sentinel_ports.clone().into_iter().enumerate() {
            wait_until(
                &mut set.sentinels[i],
                "seeing the replica and peers",
                || {
                    let replicas: redis::RedisResult<
                        Vec<std::collections::HashMap<String, String>>,
                    > = redis_cmd(
                        port,
                        Some(SENTINEL_PASSWORD),
                        &["SENTINEL", "REPLICAS", MASTER_NAME],
                    );
                    let peers: redis::RedisResult<Vec<redis::Value>> = redis_cmd(
                        port,
                        Some(SENTINEL_PASSWORD),
                        &["SENTINEL", "SENTINELS", MASTER_NAME],
                    );
                    let replica_ok = replicas.is_ok_and(|rs| {
                        rs.iter().any(|r| {
                            r.get("port") == Some(&replica_port.to_string())
                                && r.get("flags").is_some_and(|f| f == "slave")
                                && r.get("master-link-status").is_some_and(|s| s == "ok")
                        })
                    });
                    replica_ok && peers.is_ok_and(|p| p.len() == 2)
                },
            );
        }
        Some(set)
    }

    /// The sentinels as `host:port` (the `Endpoints` config value).
    pub fn endpoints(&self) -> Vec<String> {
        self.sentinel_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect()
    }

    /// The port of the master as the first sentinel reports it.
    pub fn master_port(&self) -> Option<u16> {
        let addr: Option<(String, u16)> = redis_cmd(
            self.sentinel_ports[0],
            Some(SENTINEL_PASSWORD),
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME],
        )
        .ok()?;
        addr.map(|(_, port)| port)
    }

    /// Forces a failover (`SENTINEL FAILOVER`) and waits until every
    /// sentinel reports the new master and it accepts writes; returns its
    /// port.
    pub fn failover(&mut self) -> u16 {
        let old = self.master_port().expect("a master before the failover");
        let _: String = redis_cmd(
            self.sentinel_ports[0],
            Some(SENTINEL_PASSWORD),
            &["SENTINEL", "FAILOVER", MASTER_NAME],
        )
        .expect("SENTINEL FAILOVER");
        let start = Instant::now();
        loop {
            let ports: Vec<Option<u16>> = self
                .sentinel_ports
                .iter()
                .map(|p| {
                    redis_cmd::<Option<(String, u16)>>(
                        *p,
                        Some(SENTINEL_PASSWORD),
                        &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME],
                    )
                    .ok()
                    .flatten()
                    .map(|(_, port)| port)
                })
                .collect();
            if let Some(Some(new)) = ports.first() {
                let role: redis::RedisResult<Vec<redis::Value>> =
                    redis_cmd(*new, Some(REDIS_PASSWORD), &["ROLE"]);
                let is_master = role.is_ok_and(
                    |r| matches!(r.first(), Some(redis::Value::BulkString(b)) if b == b"master"),
                );
                if *new != old && is_master && ports.iter().all(|p| *p == Some(*new)) {
                    return *new;
                }
            }
            if start.elapsed() > START_TIMEOUT {
                panic!("no failover after {START_TIMEOUT:?}: sentinels report {ports:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        for s in &mut self.sentinels {
            s.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An etcd cluster of one or three members on loopback, with a 50 ms
/// heartbeat and 500 ms election timeout (so its shortest lease TTL is 1 s).
#[derive(Debug)]
pub struct Etcd {
    /// The members' client ports.
    pub client_ports: Vec<u16>,
    members: Vec<ServerProc>,
    dir: PathBuf,
}

impl Etcd {
    /// Starts `members` (1 or 3) members and waits until every one reports
    /// itself healthy; `None` if etcd is not installed.
    pub fn start(members: usize) -> Option<Etcd> {
        let bin = find("etcd")?;
        let dir = scratch("etcd");
        let client_ports: Vec<u16> = (0..members).map(|_| free_port()).collect();
        let peer_ports: Vec<u16> = (0..members).map(|_| free_port()).collect();
        let cluster = peer_ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("m{i}=http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("modmesh-{}", uuid::Uuid::new_v4());
        let mut procs = Vec::new();
        for i in 0..members {
            let (c, p) = (client_ports[i], peer_ports[i]);
            let args: Vec<String> = vec![
                format!("--name=m{i}"),
                format!("--data-dir={}", dir.join(format!("m{i}")).display()),
                format!("--listen-client-urls=http://127.0.0.1:{c}"),
                format!("--advertise-client-urls=http://127.0.0.1:{c}"),
                format!("--listen-peer-urls=http://127.0.0.1:{p}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{p}"),
                format!("--initial-cluster={cluster}"),
                "--initial-cluster-state=new".into(),
                format!("--initial-cluster-token={token}"),
                "--heartbeat-interval=50".into(),
                "--election-timeout=500".into(),
                "--log-level=warn".into(),
                "--logger=zap".into(),
            ];
            procs.push(ServerProc::start(&format!("etcd-m{i}"), &bin, &args, &dir));
        }
        let mut etcd = Etcd {
            client_ports,
            members: procs,
            dir,
        };
        etcd.wait_healthy();
        Some(etcd)
    }

    fn wait_healthy(&mut self) {
        for (i, port) in self.client_ports.clone().into_iter().enumerate() {
            wait_until(&mut self.members[i], "healthy", || http_health(port));
        }
    }

    /// The members as `host:port` (the `Endpoints` config value).
    pub fn endpoints(&self) -> Vec<String> {
        self.client_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect()
    }

    /// Kills every member (their data stays).
    pub fn stop(&mut self) {
        for m in &mut self.members {
            m.stop();
        }
    }

    /// Starts every member again on the same ports and data, and waits
    /// until the cluster is healthy.
    pub fn restart(&mut self) {
        for m in &mut self.members {
            m.restart();
        }
        self.wait_healthy();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `GET /health` on an etcd client port answers `"health":"true"`.
fn http_health(port: u16) -> bool {
    use std::io::Write;
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}
