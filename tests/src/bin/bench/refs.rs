//! The reference servers the harness compares against: nginx serving the
//! GOPROXY tree as static files, and Athens v0.18.0 on a disk store.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use modmesh_test_support::{find_program, free_port, spawn_tied};

/// A server process the harness started; killed on drop.
pub struct RefServer {
    pub name: &'static str,
    pub addr: SocketAddr,
    child: Child,
    log: PathBuf,
}

impl RefServer {
    /// The server's process and its children (nginx's workers).
    pub fn pids(&self) -> Vec<(String, u32)> {
        let pid = self.child.id();
        let mut out = vec![(self.name.to_string(), pid)];
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        for c in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            out.push((format!("{} worker", self.name), c));
        }
        out
    }

    /// Waits until `GET path` answers (any status below 500).
    async fn wait(&mut self, path: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let url = format!("http://{}{path}", self.addr);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) while starting; log:\n{}",
                    self.name,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if let Ok((s, _, _)) = modmesh_tests::http::get_sha256(&url).await {
                if s.as_u16() < 500 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not answering {url} after {timeout:?}; log:\n{}",
                    self.name,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for RefServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nginx (Debian's package) serving `root` on a loopback port with one worker
/// per core, sendfile and keep-alive, the content types of the GOPROXY
/// protocol, and no access log. `None` (with the reason) when nginx is missing.
pub async fn nginx(dir: &Path, root: &Path) -> Result<std::result::Result<RefServer, String>> {
    let Some(bin) = find_program("nginx") else {
        return Ok(Err("nginx not installed (scripts/deps/85-bench.sh)".into()));
    };
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(prefix.join("tmp"))?;
    let port = free_port();
    let conf = format!(
        r#"daemon off;
master_process on;
worker_processes auto;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 65;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    types {{
        application/json info;
        text/plain mod;
        application/zip zip;
    }}
    default_type text/plain;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ try_files $uri =404; }}
    }}
}}
"#,
        prefix = prefix.display(),
        root = root.display(),
    );
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let log = prefix.join("stderr.log");
    let mut cmd = Command::new(bin);
    cmd.arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    let child = spawn_tied(cmd).context("starting nginx")?;
    let mut s = RefServer {
        name: "nginx",
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        child,
        log,
    };
    s.wait("/", Duration::from_secs(20)).await?;
    Ok(Ok(s))
}

/// Athens v0.18.0 on a disk store at `dir/athens/store`, fetching misses
/// through `go` from `upstream`. `None` (with the reason) when it is missing.
pub async fn athens(dir: &Path, upstream: &str) -> Result<std::result::Result<Athens, String>> {
    let Some(bin) = find_program("athens-proxy") else {
        return Ok(Err(
            "athens-proxy not installed (scripts/deps/36-mongo.sh)".into()
        ));
    };
    let home = dir.join("athens");
    let store = home.join("store");
    std::fs::create_dir_all(&store)?;
    let port = free_port();
    let log = home.join("athens.log");
    let mut cmd = Command::new(bin);
    cmd.current_dir(&home)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("ATHENS_PORT", format!("127.0.0.1:{port}"))
        .env("ATHENS_STORAGE_TYPE", "disk")
        .env("ATHENS_DISK_STORAGE_ROOT", &store)
        .env(
            "ATHENS_GO_BINARY_ENV_VARS",
            format!("GOPROXY={upstream},GOSUMDB=off,GOFLAGS=-mod=mod"),
        )
        .env("ATHENS_LOG_LEVEL", "error")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(home.join("athens.stderr"))?);
    let child = spawn_tied(cmd).context("starting athens-proxy")?;
    let mut server = RefServer {
        name: "Athens",
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        child,
        log,
    };
    server.wait("/healthz", Duration::from_secs(30)).await?;
    Ok(Ok(Athens { server, store }))
}

/// A running Athens and its disk store.
pub struct Athens {
    pub server: RefServer,
    pub store: PathBuf,
}

impl Athens {
    /// Puts `module@version` from the GOPROXY tree `proxy` into Athens' disk
    /// layout (`<module>/<version>/{go.mod,source.zip,<version>.info}`,
    /// module path decoded), hard-linking the big files where it can.
    pub fn prefill(
        &self,
        proxy: &modmesh_tests::fixtures::ProxyDir,
        module: &str,
        version: &str,
    ) -> Result<()> {
        let d = self.store.join(module).join(version);
        std::fs::create_dir_all(&d)?;
        for (ext, name) in [
            ("mod", "go.mod".to_string()),
            ("zip", "source.zip".to_string()),
            ("info", format!("{version}.info")),
        ] {
            let from = proxy.file(module, version, ext);
            let to = d.join(name);
            let _ = std::fs::remove_file(&to);
            if std::fs::hard_link(&from, &to).is_err() {
                std::fs::copy(&from, &to)
                    .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
            }
        }
        Ok(())
    }
}
