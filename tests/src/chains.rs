//! Package resolution through `GOPROXY` lists: made-up modules whose
//! packages live in sub-directories (so the go command asks for every prefix
//! of a package path, most of which are not modules), including a nested
//! module whose prefix is also a module; a fetcher environment whose
//! `direct` cannot reach anything; and helpers for the real upstream the go
//! command names on this machine.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::fixtures::{ModuleVersion, ProxyDir};
use crate::goclient::GoEnv;

/// A module with packages at its root and in `util/`, at two versions.
pub const OUTER: &str = "example.com/outer";
/// A module nested inside [`OUTER`]'s tree (its prefix is a module too),
/// with its only package in `deep/pkg/`.
pub const INNER: &str = "example.com/outer/inner";
/// The version of [`INNER`].
pub const INNER_V: &str = "v1.2.0";

fn go_file(body: &str) -> Vec<u8> {
    body.as_bytes().to_vec()
}

fn outer(version: &str) -> ModuleVersion {
    ModuleVersion {
        path: OUTER.into(),
        version: version.into(),
        time: "2024-02-03T04:05:06Z".into(),
        go_mod: Some(format!("module {OUTER}\n\ngo 1.21\n")),
        files: vec![
            (
                "outer.go".into(),
                go_file(&format!(
                    "// Package outer is the root package.\npackage outer\n\n// Name names the version.\nfunc Name() string {{ return \"outer {version}\" }}\n"
                )),
            ),
            (
                "util/util.go".into(),
                go_file(
                    "// Package util lives in a sub-directory.\npackage util\n\nimport \"example.com/outer\"\n\n// Util calls outer.\nfunc Util() string { return \"util(\" + outer.Name() + \")\" }\n",
                ),
            ),
        ],
    }
}

/// The modules: [`OUTER`] v1.0.0 and v1.1.0, and [`INNER`] [`INNER_V`]
/// (requiring [`OUTER`] v1.0.0).
pub fn nested_modules() -> Vec<ModuleVersion> {
    vec![
        outer("v1.0.0"),
        outer("v1.1.0"),
        ModuleVersion {
            path: INNER.into(),
            version: INNER_V.into(),
            time: "2024-02-03T04:05:06Z".into(),
            go_mod: Some(format!(
                "module {INNER}\n\ngo 1.21\n\nrequire {OUTER} v1.0.0\n"
            )),
            files: vec![(
                "deep/pkg/pkg.go".into(),
                go_file(
                    "// Package pkg lives two directories down a nested module.\npackage pkg\n\nimport \"example.com/outer\"\n\n// Pkg calls outer.\nfunc Pkg() string { return \"pkg(inner v1.2.0 over \" + outer.Name() + \")\" }\n",
                ),
            )],
        },
    ]
}

/// Writes [`nested_modules`] into `dir` (which may hold other modules).
pub fn add_nested_modules(dir: &ProxyDir) -> Result<()> {
    dir.add_all(&nested_modules())
}

/// Writes a main module (`example.com/chainapp`, no requirements yet) that
/// imports `example.com/outer/util` and `example.com/outer/inner/deep/pkg`.
pub fn write_nested_program(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("go.mod"),
        "module example.com/chainapp\n\ngo 1.21\n",
    )?;
    std::fs::write(
        dir.join("main.go"),
        "package main\n\nimport (\n\t\"example.com/outer/inner/deep/pkg\"\n\t\"example.com/outer/util\"\n)\n\nfunc main() { println(util.Util() + \"+\" + pkg.Pkg()) }\n",
    )?;
    Ok(())
}

/// What the program of [`write_nested_program`] prints with [`OUTER`] at
/// `outer_version`.
pub fn nested_output(outer_version: &str) -> String {
    format!("util(outer {outer_version})+pkg(inner v1.2.0 over outer {outer_version})")
}

/// The real go command for runs against several proxies: each
/// [`SharedBuildGo::env`] has its own empty module cache (so every module
/// comes through its proxy) while all share one build cache (so the
/// standard library is compiled once). Otherwise isolated like
/// [`GoEnv`]: `GOSUMDB=off`, `GOFLAGS=-mod=mod`, `GOTOOLCHAIN=local`, only
/// `PATH` inherited.
#[derive(Debug)]
pub struct SharedBuildGo {
    tmp: tempfile::TempDir,
}

/// One proxy and module cache of a [`SharedBuildGo`].
#[derive(Debug)]
pub struct ProxyGo<'a> {
    shared: &'a SharedBuildGo,
    proxy: String,
    modcache: std::path::PathBuf,
}

impl SharedBuildGo {
    /// A fresh build cache.
    pub fn new() -> Result<SharedBuildGo> {
        let tmp = tempfile::Builder::new().prefix("goshared-").tempdir()?;
        for d in ["gocache", "home", "gopath"] {
            std::fs::create_dir(tmp.path().join(d))?;
        }
        Ok(SharedBuildGo { tmp })
    }

    /// Runs against `proxy` with a new, empty module cache.
    pub fn env(&self, proxy: &str) -> Result<ProxyGo<'_>> {
        let modcache = tempfile::Builder::new()
            .prefix("modcache-")
            .tempdir_in(self.tmp.path())?
            .keep();
        Ok(ProxyGo {
            shared: self,
            proxy: proxy.into(),
            modcache,
        })
    }
}

impl Drop for SharedBuildGo {
    fn drop(&mut self) {
        // Module caches are read-only; make them removable.
        crate::goclient::make_writable(self.tmp.path());
    }
}

impl ProxyGo<'_> {
    /// Runs `go <args>` in `dir`; fails (with its output) unless it exits 0.
    pub async fn run(&self, dir: &Path, args: &[&str]) -> Result<String> {
        let t = self.shared.tmp.path();
        let mut cmd = tokio::process::Command::new("go");
        cmd.env_clear();
        if let Some(p) = std::env::var_os("PATH") {
            cmd.env("PATH", p);
        }
        cmd.env("GOPROXY", &self.proxy)
            .env("GOSUMDB", "off")
            .env("GOFLAGS", "-mod=mod")
            .env("GOTOOLCHAIN", "local")
            .env("GOMODCACHE", &self.modcache)
            .env("GOCACHE", t.join("gocache"))
            .env("GOPATH", t.join("gopath"))
            .env("HOME", t.join("home"))
            .env("CGO_ENABLED", "0")
            .args(args)
            .current_dir(dir)
            .kill_on_drop(true);
        let out = cmd.output().await.context("run `go`")?;
        if !out.status.success() {
            bail!(
                "`go {}` in {} failed ({}) with GOPROXY={}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                args.join(" "),
                dir.display(),
                out.status,
                self.proxy,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Builds the program in `dir` and checks that it prints `want`.
pub async fn build_and_expect(env: &ProxyGo<'_>, dir: &Path, want: &str) -> Result<()> {
    env.run(dir, &["build", "-o", "app", "."]).await?;
    let out = tokio::process::Command::new(dir.join("app"))
        .env_clear()
        .output()
        .await
        .context("run the built program")?;
    let printed = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || printed.trim() != want {
        bail!(
            "program printed {printed:?} (status {}), expected {want:?}",
            out.status
        );
    }
    Ok(())
}

/// A loopback URL nothing listens on.
pub fn closed_url() -> String {
    let port = crate::procs::free_port();
    format!("http://127.0.0.1:{port}")
}

/// `ATHENS_GO_BINARY_ENV_VARS` for a fetcher whose `GOPROXY` is `goproxy`
/// and whose `direct` cannot reach anything: every non-loopback connection
/// goes through an HTTP proxy that refuses it (the go command never
/// proxies loopback upstreams). Checksum-database checks are off.
pub fn unreachable_direct_env(goproxy: &str) -> String {
    let nowhere = closed_url();
    format!(
        "GOPROXY={goproxy};GOSUMDB=off;HTTPS_PROXY={nowhere};HTTP_PROXY={nowhere};NO_PROXY=127.0.0.1;no_proxy=127.0.0.1"
    )
}

/// `go env <name>` of this process.
pub fn go_env(name: &str) -> Result<String> {
    let out = std::process::Command::new("go")
        .args(["env", name])
        .output()
        .context("run `go env`")?;
    if !out.status.success() {
        bail!("go env {name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The first proxy URL (`http`/`https`) of a `GOPROXY` list.
pub fn first_proxy_url(goproxy: &str) -> Option<String> {
    goproxy
        .split([',', '|'])
        .map(str::trim)
        .take_while(|e| *e != "direct" && *e != "off")
        .find(|e| e.starts_with("https://") || e.starts_with("http://"))
        .map(|e| e.trim_end_matches('/').to_string())
}

/// Checks that the go command reaches the proxy at `url` and resolves
/// `module@latest` through it alone, within `timeout`.
pub async fn go_reaches(url: &str, module: &str, timeout: Duration) -> Result<()> {
    let env = GoEnv::new(url)?;
    let dir = tempfile::tempdir()?;
    let arg = format!("{module}@latest");
    tokio::time::timeout(timeout, env.run(dir.path(), &["list", "-m", "-json", &arg]))
        .await
        .with_context(|| format!("{url}: no answer within {timeout:?}"))??;
    Ok(())
}

/// Writes a main module (`example.com/realapp`) importing
/// `golang.org/x/text/language` and `github.com/google/uuid`.
pub fn write_real_program(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("go.mod"),
        "module example.com/realapp\n\ngo 1.21\n",
    )?;
    std::fs::write(
        dir.join("main.go"),
        "package main\n\nimport (\n\t\"github.com/google/uuid\"\n\t\"golang.org/x/text/language\"\n)\n\nfunc main() {\n\tprintln(language.Make(\"en-GB\").String(), len(uuid.NewString()))\n}\n",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_proxy_url_skips_keywords_and_stops_at_direct() {
        assert_eq!(
            first_proxy_url("https://a.test/,direct").as_deref(),
            Some("https://a.test")
        );
        assert_eq!(first_proxy_url("direct,https://a.test"), None);
        assert_eq!(
            first_proxy_url(" file:///x | http://b.test").as_deref(),
            Some("http://b.test")
        );
        assert_eq!(first_proxy_url("off"), None);
    }

    #[test]
    fn the_nested_modules_keep_the_inner_tree_out_of_outer() -> Result<()> {
        let tmp = tempfile::tempdir()?;
        let dir = ProxyDir::new(tmp.path())?;
        add_nested_modules(&dir)?;
        let zip = std::fs::File::open(dir.file(OUTER, "v1.1.0", "zip"))?;
        let names: Vec<String> = zip::ZipArchive::new(zip)?
            .file_names()
            .map(String::from)
            .collect();
        assert!(names.iter().all(|n| !n.contains("/inner/")), "{names:?}");
        assert!(names.contains(&"example.com/outer@v1.1.0/util/util.go".to_string()));
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("example.com/outer/@v/list"))?,
            "v1.0.0\nv1.1.0\n"
        );
        Ok(())
    }
}
