//! Real cloud storage servers on loopback ports for tests (feature
//! `testing`): the process plumbing shared by the gcp and azureblob
//! harnesses (`gcp::testing`, `azureblob::testing`).
//!
//! A server is spawned from one long-lived thread with `PR_SET_PDEATHSIG`,
//! so one held in a `static` does not outlive its test binary; it is killed
//! by its PID on [`ServerProc::stop`] and on drop.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use modmesh_test_support::find_program as find;

/// Prints why a test does nothing, or panics under CI.
pub fn skip(why: &str) {
    modmesh_test_support::skip(why, "scripts/deps/35-cloud.sh")
}

pub use modmesh_test_support::free_port;

use modmesh_test_support::spawn_tied as spawn;

/// One server process listening on `port`: its command line (to start it
/// again on the same port), its log, and the child.
#[derive(Debug)]
pub struct ServerProc {
    label: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    /// The loopback port it listens on.
    pub port: u16,
    child: Option<Child>,
}

impl ServerProc {
    /// Starts `program args` (output to a log file in the temp dir) and
    /// waits until `port` accepts connections.
    pub fn start(label: &str, program: &Path, args: Vec<String>, port: u16) -> ServerProc {
        let log = std::env::temp_dir().join(format!("modmesh-{label}-{port}.log"));
        let mut p = ServerProc {
            label: label.to_string(),
            program: program.to_path_buf(),
            args,
            log,
            port,
            child: None,
        };
        p.restart();
        p
    }

    /// Starts it again (after [`ServerProc::stop`]) and waits for the port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} is still running", self.label);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("server log");
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        let child = spawn(cmd).unwrap_or_else(|e| panic!("start {}: {e}", self.program.display()));
        self.child = Some(child);
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("{} exited ({st}):\n{}", self.label, self.log_tail());
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{} did not listen on {} within 60 s:\n{}",
                self.label,
                self.port,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Freezes the process (SIGSTOP): it keeps its port, accepts
    /// connections and answers nothing, as a hung server does.
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
        // The stop takes effect asynchronously: wait until the kernel shows
        // the process stopped, so no call made after this returns can still
        // be answered.
        if let Some(c) = &self.child {
            let stat = format!("/proc/{}/stat", c.id());
            let t = std::time::Instant::now();
            while t.elapsed() < std::time::Duration::from_secs(5) {
                let state = std::fs::read_to_string(&stat).ok().and_then(|s| {
                    s.rsplit_once(") ")
                        .and_then(|(_, rest)| rest.chars().next())
                });
                if matches!(state, Some('T') | Some('t')) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            // Let connections the server already read from drain.
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Lets a [`ServerProc::pause`]d process go on (SIGCONT).
    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(c) = &self.child {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            nix::sys::signal::kill(pid, sig).expect("signal the server");
        }
    }

    /// Kills the process (SIGKILL, by PID) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The last 4 KiB of the process's output.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(&s[s.len().saturating_sub(4096)..]).into_owned()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.stop();
    }
}

// ------------------------------------------------------ shared cloud checks

use crate::compliance::{self, coords};
use crate::Storage;
use modmesh_proto::ErrorKind;
use std::sync::Arc;

/// A running object store the checks below can fill plainly (not through
/// a backend) and open a backend on.
#[async_trait::async_trait]
pub trait CloudServer: Send + Sync {
    /// Creates a fresh bucket (container) and names it.
    async fn new_bucket(&self) -> String;
    /// Uploads `data` as `object` plainly, as Athens would.
    async fn put(&self, bucket: &str, object: &str, data: &[u8]);
    /// Every object name in `bucket`.
    async fn names(&self, bucket: &str) -> Vec<String>;
    /// The backend on `bucket`, leftovers of crashed saves deleted once
    /// older than `orphan_age`.
    fn backend(&self, bucket: &str, orphan_age: Duration) -> Arc<dyn Storage>;
    /// `StorageType` and environment for `from_config` on `bucket`.
    fn env(&self, bucket: &str) -> Vec<(String, String)>;
}

const QUOTE_INFO: &[u8] = br#"{"Version":"v1.5.2","Time":"2018-02-14T15:44:20Z"}"#;
const QUOTE_MOD: &[u8] = b"module \"rsc.io/quote\"\n\nrequire \"rsc.io/sampler\" v1.3.0\n";

/// A bucket filled in Athens' layout by plain uploads is served as it is:
/// listed, read, stat'ed (hashes computed from the bytes), catalogued; a
/// half-written version (no `.info`) is not there, and saving it works.
pub async fn athens_layout_served_as_is(server: &dyn CloudServer) {
    let bucket = server.new_bucket().await;
    let files: Vec<(String, Vec<u8>)> = vec![
        ("rsc.io/quote@v1.5.2/go.mod".into(), QUOTE_MOD.to_vec()),
        (
            "rsc.io/quote@v1.5.2/quote.go".into(),
            b"package quote\n".to_vec(),
        ),
    ];
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    let zip = compliance::make_zip(&refs);
    let h1 = compliance::expected_h1(&refs);
    for (name, data) in [
        ("rsc.io/quote/@v/v1.5.2.info", QUOTE_INFO),
        ("rsc.io/quote/@v/v1.5.2.mod", QUOTE_MOD),
        ("rsc.io/quote/@v/v1.5.2.zip", zip.as_slice()),
        ("example.com/Foo/@v/v1.0.0.info", br#"{"Version":"v1.0.0"}"#),
        ("example.com/Foo/@v/v1.0.0.mod", b"module example.com/Foo\n"),
        ("example.com/Foo/@v/v1.0.0.zip", b"zipbytes"),
        ("example.com/Foo/v2/@v/v2.1.0.info", b"{}"),
        (
            "example.com/Foo/v2/@v/v2.1.0.mod",
            b"module example.com/Foo/v2\n",
        ),
        ("example.com/Foo/v2/@v/v2.1.0.zip", b"z2"),
        // A half-written Athens save: go.mod and zip, no .info.
        ("example.com/Foo/@v/v1.1.0.mod", b"module example.com/Foo\n"),
        ("example.com/Foo/@v/v1.1.0.zip", b"partial"),
    ] {
        server.put(&bucket, name, data).await;
    }
    let s = server.backend(&bucket, Duration::from_secs(3600));
    let q = coords("rsc.io/quote", "v1.5.2");
    compliance::assert_stored(&*s, &q, QUOTE_INFO, QUOTE_MOD, &zip).await;
    let st = s.stat(&q).await.expect("stat");
    assert_eq!(
        st.zip_hash.as_deref(),
        Some(h1.as_str()),
        "h1 of Athens' zip"
    );
    assert_eq!(st.mod_hash, crate::mod_hash(QUOTE_MOD));
    assert_eq!(st.zip_size, zip.len() as u64);
    let foo_v1 = coords("example.com/Foo", "v1.0.0");
    compliance::assert_stored(
        &*s,
        &foo_v1,
        br#"{"Version":"v1.0.0"}"#,
        b"module example.com/Foo\n",
        b"zipbytes",
    )
    .await;
    assert_eq!(s.list(&foo_v1.module).await.expect("list"), ["v1.0.0"]);
    let half = coords("example.com/Foo", "v1.1.0");
    compliance::assert_absent(&*s, &half).await;
    let page = s.catalog(None, 10, "").await.expect("catalog");
    let got: std::collections::BTreeSet<_> = page.entries.into_iter().collect();
    let want: std::collections::BTreeSet<_> = [
        foo_v1.clone(),
        coords("example.com/Foo/v2", "v2.1.0"),
        q.clone(),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, want);
    // Athens' half-written save is too old to be in progress: replaced.
    let s = server.backend(&bucket, Duration::ZERO);
    compliance::save(&*s, &half, b"i", b"m", b"whole")
        .await
        .expect("save over Athens' leftovers");
    compliance::assert_stored(&*s, &half, b"i", b"m", b"whole").await;
    assert_eq!(
        s.list(&foo_v1.module).await.expect("list"),
        ["v1.0.0", "v1.1.0"]
    );
}

/// A crashed save's leftovers (a zip and go.mod without `.info`) are never
/// served; a save meanwhile is `AlreadyExists` (it could be a save in
/// progress) until they are older than the orphan bound, then the save
/// deletes them and stores the version, and nothing else is left.
pub async fn orphans_never_served_then_replaced(server: &dyn CloudServer) {
    let bucket = server.new_bucket().await;
    let c = coords("example.com/orphan", "v1.0.0");
    server
        .put(&bucket, "example.com/orphan/@v/v1.0.0.zip", b"crashed")
        .await;
    server
        .put(&bucket, "example.com/orphan/@v/v1.0.0.mod", b"crashed mod")
        .await;
    let bound = Duration::from_secs(2);
    let s = server.backend(&bucket, bound);
    compliance::assert_absent(&*s, &c).await;
    let e = compliance::save(&*s, &c, b"i", b"m", b"z")
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::AlreadyExists, "{e}");
    compliance::assert_absent(&*s, &c).await;
    tokio::time::sleep(bound + Duration::from_millis(500)).await;
    compliance::save(&*s, &c, b"i", b"m", b"z")
        .await
        .expect("save over an orphan");
    compliance::assert_stored(&*s, &c, b"i", b"m", b"z").await;
    let mut names = server.names(&bucket).await;
    names.sort();
    assert_eq!(
        names,
        [
            "example.com/orphan/@v/v1.0.0.info",
            "example.com/orphan/@v/v1.0.0.mod",
            "example.com/orphan/@v/v1.0.0.zip"
        ]
    );
    // A failed save leaves nothing behind either.
    let f = coords("example.com/orphan", "v1.1.0");
    let r = s
        .save(
            compliance::request(&f, b"i", b"m"),
            compliance::failing_stream(
                3 * modmesh_proto::MAX_CHUNK,
                modmesh_proto::Error::unavailable("cut"),
            ),
        )
        .await;
    assert!(r.is_err());
    let mut wrong = compliance::request(&f, b"i", b"m");
    wrong.zip_size = Some(1);
    assert!(s.save(wrong, compliance::stream_of(b"four")).await.is_err());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let left: Vec<String> = server
        .names(&bucket)
        .await
        .into_iter()
        .filter(|n| n.contains("v1.1.0"))
        .collect();
    assert!(left.is_empty(), "a failed save left {left:?}");
}

/// Built from the configuration: the backend serves; a bucket that does
/// not exist is refused with a message naming `key`.
pub async fn from_config_checks_bucket(server: &dyn CloudServer, storage_type: &str, key: &str) {
    let bucket = server.new_bucket().await;
    let mut env = server.env(&bucket);
    env.push(("ATHENS_STORAGE_TYPE".into(), storage_type.into()));
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let cfg = modmesh_common::Config::from_text("", &pairs).expect("config");
    let s = crate::from_config(&cfg).expect("backend from config");
    let c = coords("example.com/cfg", "v1.0.0");
    compliance::save_mock(&*s, &c).await;
    assert!(s.exists(&c).await.expect("exists"));
    s.health().await.expect("health");
    let env: Vec<(String, String)> = server
        .env("mm-no-such-bucket")
        .into_iter()
        .chain([("ATHENS_STORAGE_TYPE".to_string(), storage_type.to_string())])
        .collect();
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let cfg = modmesh_common::Config::from_text("", &pairs).expect("config");
    let e = crate::from_config(&cfg)
        .err()
        .expect("a missing bucket is refused");
    assert_eq!(e.kind, ErrorKind::Invalid, "{e}");
    assert!(e.message.contains(key), "{e}");
}

/// With the server hung (`pause`), every call is `Timeout` at the
/// backend's deadline (`deadline`, as the backend was built with); once it
/// goes on (`resume`) calls work again. With the server stopped, every
/// call is `Unavailable` or `Timeout` within a few seconds (and health says
/// so); once it is back on the same port (`restart`, which also recreates
/// the bucket), the same backend works again.
pub async fn outage_then_recovery<F, Fut>(
    s: Arc<dyn Storage>,
    deadline: Duration,
    pause: impl FnOnce(),
    resume: impl FnOnce(),
    stop: impl FnOnce(),
    restart: F,
) where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let hung = coords("example.com/outage", "v0.9.0");
    compliance::save_mock(&*s, &hung).await;
    pause();
    let slow = |what: &str, r: Result<(), modmesh_proto::Error>, took: Duration| {
        let e = r.expect_err(what);
        assert_eq!(e.kind, ErrorKind::Timeout, "{what} on a hung server: {e}");
        assert!(
            took >= deadline && took < deadline + Duration::from_secs(3),
            "{what} on a hung server took {took:?} (deadline {deadline:?})"
        );
    };
    let t = Instant::now();
    slow("health", s.health().await, t.elapsed());
    let t = Instant::now();
    slow("info", s.info(&hung).await.map(|_| ()), t.elapsed());
    let t = Instant::now();
    slow("list", s.list(&hung.module).await.map(|_| ()), t.elapsed());
    resume();
    compliance::assert_stored(&*s, &hung, b"123", b"456", b"789").await;

    let c = coords("example.com/outage", "v1.0.0");
    compliance::save_mock(&*s, &c).await;
    stop();
    let down = |what: &str, r: Result<(), modmesh_proto::Error>, took: Duration| {
        let e = r.expect_err(what);
        assert!(
            matches!(e.kind, ErrorKind::Unavailable | ErrorKind::Timeout),
            "{what} while the server is down: {e}"
        );
        assert!(took < Duration::from_secs(10), "{what} took {took:?}");
    };
    let t = Instant::now();
    down("health", s.health().await, t.elapsed());
    let t = Instant::now();
    down("info", s.info(&c).await.map(|_| ()), t.elapsed());
    let t = Instant::now();
    down("exists", s.exists(&c).await.map(|_| ()), t.elapsed());
    let t = Instant::now();
    down("list", s.list(&c.module).await.map(|_| ()), t.elapsed());
    let t = Instant::now();
    let c2 = coords("example.com/outage", "v1.1.0");
    down(
        "save",
        compliance::save(&*s, &c2, b"i", b"m", b"z").await,
        t.elapsed(),
    );
    restart().await;
    let t = Instant::now();
    loop {
        match s.health().await {
            Ok(()) => break,
            Err(e) if t.elapsed() < Duration::from_secs(30) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no recovery after the server came back: {e}"),
        }
    }
    compliance::save_mock(&*s, &c2).await;
    compliance::assert_stored(&*s, &c2, b"123", b"456", b"789").await;
}
