//! The real `go` command as client, with an isolated environment.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

/// One isolated `go` environment: `GOPROXY=<proxy>`, `GOSUMDB=off`,
/// `GOFLAGS=-mod=mod`, `GOTOOLCHAIN=local`, and fresh `GOMODCACHE`, `GOCACHE`,
/// `GOPATH` and `HOME` in a temporary directory; only `PATH` is inherited.
/// Make a new one for each run that must start from an empty module cache.
#[derive(Debug)]
pub struct GoEnv {
    proxy: String,
    tmp: TempDir,
}

/// What a `go` run printed.
#[derive(Debug, Clone)]
pub struct GoOutput {
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl GoEnv {
    /// A fresh environment using `proxy` (e.g. `http://127.0.0.1:1234`) as GOPROXY.
    pub fn new(proxy: &str) -> Result<GoEnv> {
        let tmp = tempfile::Builder::new().prefix("goenv-").tempdir()?;
        for d in ["gopath", "gomodcache", "gocache", "home"] {
            std::fs::create_dir(tmp.path().join(d))?;
        }
        Ok(GoEnv {
            proxy: proxy.into(),
            tmp,
        })
    }

    /// The module cache of this environment.
    pub fn modcache(&self) -> PathBuf {
        self.tmp.path().join("gomodcache")
    }

    /// Runs `go <args>` in `dir`; fails (showing the command, environment and
    /// output) unless it exits 0.
    pub async fn run(&self, dir: &Path, args: &[&str]) -> Result<GoOutput> {
        self.run_with(dir, args, &[]).await
    }

    /// [`GoEnv::run`] with `extra` variables set too (e.g. `SSL_CERT_FILE`).
    pub async fn run_with(
        &self,
        dir: &Path,
        args: &[&str],
        extra: &[(&str, &str)],
    ) -> Result<GoOutput> {
        let t = self.tmp.path();
        let mut cmd = tokio::process::Command::new("go");
        cmd.env_clear();
        if let Some(p) = std::env::var_os("PATH") {
            cmd.env("PATH", p);
        }
        let env = [
            ("GOPROXY", self.proxy.clone()),
            ("GOSUMDB", "off".into()),
            ("GOFLAGS", "-mod=mod".into()),
            ("GOTOOLCHAIN", "local".into()),
            ("GOMODCACHE", t.join("gomodcache").display().to_string()),
            ("GOCACHE", t.join("gocache").display().to_string()),
            ("GOPATH", t.join("gopath").display().to_string()),
            ("HOME", t.join("home").display().to_string()),
            ("CGO_ENABLED", "0".into()),
        ];
        cmd.envs(env.iter().map(|(k, v)| (k, v)))
            .envs(extra.iter().copied())
            .args(args)
            .current_dir(dir)
            .kill_on_drop(true);
        let started = Instant::now();
        let out = cmd.output().await.context("run `go` (is it on PATH?)")?;
        let res = GoOutput {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        if !out.status.success() {
            bail!(
                "`go {}` in {} failed ({}) after {:?} with GOPROXY={}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                args.join(" "),
                dir.display(),
                out.status,
                started.elapsed(),
                self.proxy,
                res.stdout,
                res.stderr
            );
        }
        Ok(res)
    }
}

impl Drop for GoEnv {
    fn drop(&mut self) {
        // The module cache is read-only; make it removable.
        make_writable(&self.modcache());
    }
}

/// Adds owner write permission to every directory under `dir`.
pub fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let mut perm = meta.permissions();
    perm.set_mode(perm.mode() | 0o700);
    let _ = std::fs::set_permissions(dir, perm);
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            make_writable(&e.path());
        }
    }
}

/// Builds the program in `dir` (see [`crate::fixtures::write_program`]) with
/// `go build -o app .`, runs it, and checks it prints
/// [`crate::fixtures::PROGRAM_OUTPUT`].
pub async fn build_and_run_program(env: &GoEnv, dir: &Path) -> Result<()> {
    env.run(dir, &["build", "-o", "app", "."]).await?;
    let out = tokio::process::Command::new(dir.join("app"))
        .env_clear()
        .output()
        .await
        .context("run the built program")?;
    let printed = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || printed.trim() != crate::fixtures::PROGRAM_OUTPUT {
        bail!(
            "program printed {printed:?} (status {}), expected {:?}",
            out.status,
            crate::fixtures::PROGRAM_OUTPUT
        );
    }
    Ok(())
}
