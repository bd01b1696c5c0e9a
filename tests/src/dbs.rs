//! Real database servers for tests: PostgreSQL and MariaDB from Debian,
//! each started on a free loopback port with a temporary data directory
//! (as the `postgres` user when running as root, since PostgreSQL refuses
//! root), and stopped by PID when dropped.
//!
//! When a server's binaries are missing, [`Postgres::start`] and
//! [`MariaDb::start`] fail if `CI=true` is set and otherwise return
//! `Ok(None)` after printing `SKIPPED: <why>`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::procs::free_port;

/// How long a server gets to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

use modmesh_test_support::on_ci;

fn missing(what: &str) -> Result<Option<()>> {
    if on_ci() {
        bail!(
            "{what} is not installed (scripts/deps/50-edges.sh installs it); CI=true requires it"
        );
    }
    println!("SKIPPED: {what} is not installed (run scripts/deps/50-edges.sh)");
    Ok(None)
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Sends `sig` to `pid` (the server itself, which may be a grandchild),
/// waits up to 20 s for `child` (the process we started) to exit, then
/// kills it.
fn stop(child: &mut Child, pid: i32, sig: nix::sys::signal::Signal) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let _ = kill(Pid::from_raw(pid), sig);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    let _ = child.kill();
    let _ = child.wait();
}

/// A running PostgreSQL server with a database `athens`, reachable on
/// 127.0.0.1 as user `postgres` with [`Postgres::PASSWORD`].
#[derive(Debug)]
pub struct Postgres {
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

impl Postgres {
    /// The password of user `postgres`.
    pub const PASSWORD: &'static str = "pg-s3cret";

    fn bin_dir() -> Option<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("postgres").exists() && p.join("initdb").exists())
            .collect();
        dirs.sort();
        dirs.pop()
    }

    fn as_server_user(bin: &Path) -> Command {
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin);
            c
        } else {
            Command::new(bin)
        }
    }

    /// Starts a server (see the module docs for when it is skipped).
    pub fn start() -> Result<Option<Postgres>> {
        let Some(bin) = Self::bin_dir() else {
            return missing("PostgreSQL (Debian package postgresql)").map(|_| None);
        };
        // Under /tmp: the server user must reach it, and socket paths stay short.
        let dir = tempfile::Builder::new().prefix("pg-").tempdir_in("/tmp")?;
        let data = dir.path().join("data");
        std::fs::write(dir.path().join("pw"), format!("{}\n", Self::PASSWORD))?;
        if is_root() {
            run(
                Command::new("chown")
                    .args(["-R", "postgres:"])
                    .arg(dir.path()),
                "chown the PostgreSQL directory",
            )?;
        }
        run(
            Self::as_server_user(&bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ])
                .arg(format!("--pwfile={}", dir.path().join("pw").display())),
            "initdb",
        )?;
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        let child = Self::as_server_user(&bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-h", "127.0.0.1", "-k"])
            .arg(dir.path())
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start postgres")?;
        let pg = Postgres { port, dir, child };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let pidfile = std::fs::read_to_string(data.join("postmaster.pid")).unwrap_or_default();
            if pidfile.lines().nth(7).is_some_and(|l| l.trim() == "ready") {
                break;
            }
            if Instant::now() > deadline {
                bail!("PostgreSQL not ready in {START_TIMEOUT:?}:\n{}", pg.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        run(
            Self::as_server_user(&bin.join("psql"))
                .args(["-h"])
                .arg(pg.dir.path())
                .args([
                    "-p",
                    &port.to_string(),
                    "-U",
                    "postgres",
                    "-v",
                    "ON_ERROR_STOP=1",
                ])
                .args(["-c", "CREATE DATABASE athens"]),
            "psql CREATE DATABASE",
        )?;
        Ok(Some(pg))
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // The postmaster's own PID (runuser may sit in between).
        let pid = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
        // SIGINT: PostgreSQL's fast shutdown (clients are disconnected).
        let pid = pid.unwrap_or(self.child.id() as i32);
        stop(&mut self.child, pid, nix::sys::signal::Signal::SIGINT);
    }
}

/// A running MariaDB server with a database `athens` and a user
/// [`MariaDb::USER`] / [`MariaDb::PASSWORD`] allowed on it from anywhere.
#[derive(Debug)]
pub struct MariaDb {
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

impl MariaDb {
    /// The user the tests connect as.
    pub const USER: &'static str = "athens";
    /// Its password.
    pub const PASSWORD: &'static str = "maria-s3cret";

    fn find(names: &[&str]) -> Option<PathBuf> {
        for n in names {
            for d in ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"] {
                let p = Path::new(d).join(n);
                if p.exists() {
                    return Some(p);
                }
            }
        }
        None
    }

    /// Starts a server (see the module docs for when it is skipped).
    pub fn start() -> Result<Option<MariaDb>> {
        let (Some(server), Some(install), Some(client)) = (
            Self::find(&["mariadbd", "mysqld"]),
            Self::find(&["mariadb-install-db", "mysql_install_db"]),
            Self::find(&["mariadb", "mysql"]),
        ) else {
            return missing("MariaDB (Debian package mariadb-server)").map(|_| None);
        };
        let dir = tempfile::Builder::new()
            .prefix("mariadb-")
            .tempdir_in("/tmp")?;
        let data = dir.path().join("data");
        let user = if is_root() {
            "root".to_string()
        } else {
            whoami()
        };
        run(
            Command::new(&install)
                .arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--user={user}"))
                .args(["--auth-root-authentication-method=normal", "--skip-test-db"]),
            "mariadb-install-db",
        )?;
        let port = free_port();
        let sock = dir.path().join("sock");
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        let child = Command::new(&server)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={}", sock.display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .arg(format!("--user={user}"))
            .args([
                "--skip-log-bin",
                "--innodb-buffer-pool-size=16M",
                "--innodb-flush-log-at-trx-commit=0",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start mariadbd")?;
        let db = MariaDb { port, dir, child };
        let deadline = Instant::now() + START_TIMEOUT;
        let sql = format!(
            "CREATE DATABASE athens; CREATE USER '{u}'@'%' IDENTIFIED BY '{p}'; \
             GRANT ALL ON athens.* TO '{u}'@'%';",
            u = Self::USER,
            p = Self::PASSWORD
        );
        loop {
            let r = run(
                Command::new(&client)
                    .arg("--no-defaults")
                    .arg(format!("--socket={}", sock.display()))
                    .args(["-u", "root", "-e", &sql]),
                "create the athens database",
            );
            match r {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => {
                    bail!("MariaDB not ready in {START_TIMEOUT:?}: {e}\n{}", db.log())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        Ok(Some(db))
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

fn whoami() -> String {
    std::env::var("USER").unwrap_or_else(|_| "nobody".into())
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        stop(&mut self.child, pid, nix::sys::signal::Signal::SIGTERM);
    }
}
