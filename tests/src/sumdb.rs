//! A checksum database the tests create: `tests/sumdbhelper`, a Go program
//! built with the real go command over `golang.org/x/mod/sumdb` (a signed
//! in-memory tree whose records are the go.sum lines of the modules in a
//! GOPROXY-layout directory).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::OnceCell;

static HELPER: OnceCell<PathBuf> = OnceCell::const_new();

/// Builds the helper once per test process (`go build`, modules from the
/// go command's own GOPROXY) and returns the binary.
pub async fn helper() -> Result<PathBuf> {
    HELPER
        .get_or_try_init(|| async {
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("sumdbhelper");
            let out =
                std::env::temp_dir().join(format!("modmesh-sumdbhelper-{}", std::process::id()));
            let status = tokio::process::Command::new("go")
                .args(["build", "-o"])
                .arg(&out)
                .arg(".")
                .current_dir(&src)
                .env("GOFLAGS", "-mod=mod")
                .env("GOTOOLCHAIN", "local")
                .env("CGO_ENABLED", "0")
                .status()
                .await
                .context("run `go build` for the checksum-database helper")?;
            if !status.success() {
                bail!("building {} failed: {status}", src.display());
            }
            Ok(out)
        })
        .await
        .cloned()
}

/// A running test checksum database. Killed when dropped.
#[derive(Debug)]
pub struct TestSumDb {
    child: Option<tokio::process::Child>,
    /// The verifier key (`<name>+<hash>+<key>`); its name is the address.
    pub vkey: String,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
}

impl TestSumDb {
    /// Serves the go.sum lines of the modules under `root` (a GOPROXY
    /// layout). With `corrupt`, that module's zip records carry a wrong hash.
    pub async fn start(root: &Path, corrupt: Option<&str>) -> Result<TestSumDb> {
        match corrupt {
            Some(m) => Self::start_with(root, &["-corrupt", m]).await,
            None => Self::start_with(root, &[]).await,
        }
    }

    /// Like [`TestSumDb::start`] with the helper's own flags (`-corrupt
    /// <module>`, `-corrupt-tiles`: every tile served has a byte flipped;
    /// `-pad <n>`: n made-up records first; `-forge <module>`: its lookups
    /// answer a record the signed tree does not hold).
    pub async fn start_with(root: &Path, flags: &[&str]) -> Result<TestSumDb> {
        let bin = helper().await?;
        let mut cmd = tokio::process::Command::new(bin);
        cmd.arg("-root").arg(root).args(flags);
        let mut child = cmd
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("start the checksum-database helper")?;
        let stdout = child.stdout.take().context("helper stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let vkey = lines.next_line().await?.context("helper printed no key")?;
        let url = lines.next_line().await?.context("helper printed no URL")?;
        Ok(TestSumDb {
            child: Some(child),
            vkey,
            url,
        })
    }

    /// The name the go command uses in `/sumdb/<name>/`.
    pub fn name(&self) -> &str {
        self.vkey.split('+').next().unwrap_or_default()
    }

    /// The `GOSUMDB` value naming this database and its URL: `<vkey> <url>`
    /// (the go command then goes to the URL, bypassing any proxy: the form
    /// for the fetcher; a client of the gateway uses [`TestSumDb::vkey`]).
    pub fn gosumdb(&self) -> String {
        format!("{} {}", self.vkey, self.url)
    }

    /// The tile paths served so far, each with how many times it was.
    pub async fn tiles_served(&self) -> Result<Vec<(u64, String)>> {
        let r = crate::http::get(&format!("{}/control/tiles", self.url)).await?;
        let mut out = Vec::new();
        for line in r.text().lines() {
            let (n, path) = line.split_once(' ').context("tile count line")?;
            out.push((n.parse()?, path.to_string()));
        }
        Ok(out)
    }

    /// Switches the database to a forked tree, signed with the same key,
    /// whose first `pad` records are made-up ones of its own.
    pub async fn fork(&self, pad: u64) -> Result<()> {
        let r = crate::http::get(&format!("{}/control/fork?pad={pad}", self.url)).await?;
        if !r.status.is_success() {
            bail!("forking the checksum database: {}", r.status);
        }
        Ok(())
    }

    /// Stops the database (its port then refuses connections).
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill().await?;
        }
        Ok(())
    }
}
