//! Operating the mesh: the `modmesh` metadata CLI against a real storage-svc
//! (disk, and s3 on a real s3s-fs server), run as a subprocess and read
//! through `--json`; and the compose file brought up for real under podman
//! (`compose` module).
//!
//! Needs the binaries: `cargo build --workspace --bins`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use modmesh_tests::fixtures::{standard_modules, standard_proxy};
use modmesh_tests::procs::{bin, Proc};
use modmesh_tests::topology::base_spec;
use serde_json::Value;

mod compose;

/// Runs `modmesh --json --storage <storage> <args>`: its exit success and
/// its stdout's JSON lines.
fn modmesh(storage: &str, args: &[&str]) -> Result<(bool, Vec<Value>)> {
    let out = Command::new(bin("modmesh")?)
        .args(["--json", "--storage", storage])
        .args(args)
        .env_remove("MODMESH_STORAGE_URL")
        .output()
        .context("run modmesh")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let lines = text
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l:?}")))
        .collect::<Result<Vec<Value>>>()?;
    if !out.status.success() {
        eprintln!(
            "modmesh {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((out.status.success(), lines))
}

/// The last line (the summary) of a command's output.
fn summary(lines: &[Value]) -> &Value {
    lines.last().expect("a summary line")
}

/// A storage-svc process over `env`, listening.
async fn storage_svc(dir: &Path, label: &str, env: &[(&str, &str)]) -> Result<Proc> {
    let mut spec = base_spec("storage-svc", label, dir);
    for (k, v) in env {
        spec.set(k, *v);
    }
    let a = spec.addr.clone();
    spec.set("ATHENS_STORAGE_SVC_LISTEN", a);
    let mut p = Proc::spawn(spec)?;
    p.wait_listening(Duration::from_secs(30)).await?;
    Ok(p)
}

/// Every command of the CLI against storage-svc on disk: prefill from a
/// GOMODCACHE-style tree, catalog, versions, stat, verify, delete, health;
/// then against storage-svc on s3 (s3s-fs): prefill from the first store's
/// folder (Athens' disk layout), verify, and a zip changed behind the
/// store's back found by verify.
#[tokio::test(flavor = "multi_thread")]
async fn cli_commands_against_real_storage() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let proxy = standard_proxy(dir.join("download"))?;
    let modules = standard_modules();
    let n = modules.len();
    let disk_root = dir.join("disk");
    std::fs::create_dir_all(&disk_root)?;
    let root = disk_root.display().to_string();
    let mut disk = storage_svc(
        dir,
        "storage-disk",
        &[
            ("ATHENS_STORAGE_TYPE", "disk"),
            ("ATHENS_DISK_STORAGE_ROOT", &root),
        ],
    )
    .await?;
    let url = disk.url();

    // health
    let (ok, lines) = modmesh(&url, &["health"])?;
    ensure!(ok && lines[0]["healthy"] == true, "health: {lines:?}");
    let dead = format!("http://{}", modmesh_tests::procs::free_addr());
    let (ok, lines) = modmesh(&url, &["health", "--grpc", &dead])?;
    ensure!(
        !ok && lines[0]["healthy"] == false,
        "health of nothing: {lines:?}"
    );

    // prefill from a GOMODCACHE-style download tree, twice
    let tree = proxy.root().display().to_string();
    let (ok, lines) = modmesh(&url, &["prefill", &tree])?;
    ensure!(ok, "prefill: {lines:?}");
    ensure!(summary(&lines)["saved"] == n, "prefill: {lines:?}");
    let (ok, lines) = modmesh(&url, &["prefill", &tree])?;
    ensure!(
        ok && summary(&lines)["exists"] == n,
        "second prefill: {lines:?}"
    );

    // catalog, paged
    let (ok, lines) = modmesh(&url, &["catalog", "--page-size", "2"])?;
    ensure!(ok, "catalog");
    let got: BTreeSet<(String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["module"].as_str().unwrap().into(),
                l["version"].as_str().unwrap().into(),
            )
        })
        .collect();
    let want: BTreeSet<(String, String)> = modules
        .iter()
        .map(|m| (m.path.clone(), m.version.clone()))
        .collect();
    ensure!(got == want, "catalog {got:?} != {want:?}");
    let first = &modules[0];
    let (_, lines) = modmesh(&url, &["catalog", "--prefix", &first.path])?;
    let expected = modules
        .iter()
        .filter(|m| m.path.starts_with(&first.path))
        .count();
    ensure!(lines.len() == expected, "catalog --prefix: {lines:?}");

    // versions
    let (ok, lines) = modmesh(&url, &["versions", &first.path])?;
    let want: Vec<&str> = {
        let mut v: Vec<&str> = modules
            .iter()
            .filter(|m| m.path == first.path)
            .map(|m| m.version.as_str())
            .collect();
        v.sort();
        v
    };
    let mut got: Vec<&str> = lines[0]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    got.sort();
    ensure!(ok && got == want, "versions {got:?} != {want:?}");

    // stat: sizes, hashes, time stored
    let target = format!("{}@{}", first.path, first.version);
    let (ok, lines) = modmesh(&url, &["stat", &target])?;
    ensure!(ok, "stat");
    let zip = std::fs::read(proxy.file(&first.path, &first.version, "zip"))?;
    let s = &lines[0];
    ensure!(s["zip_size"] == zip.len(), "zip size: {s}");
    ensure!(
        s["zip_hash"] == modmesh_test_support::zip_h1(&zip),
        "zip h1: {s}"
    );
    ensure!(s["mod_size"] == first.mod_file().len(), "mod size: {s}");
    let stored = s["stored_at_unix_ms"].as_i64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    ensure!(
        (now - stored).abs() < 600_000,
        "stored_at {stored} vs now {now}"
    );

    // verify: all good
    let (ok, lines) = modmesh(&url, &["verify"])?;
    let sum = summary(&lines);
    ensure!(
        ok && sum["checked"] == n && sum["ok"] == n,
        "verify: {lines:?}"
    );

    // delete, then it is gone
    let (ok, _) = modmesh(&url, &["delete", &target])?;
    ensure!(ok, "delete");
    let (ok, _) = modmesh(&url, &["stat", &target])?;
    ensure!(!ok, "stat after delete succeeded");
    let (ok, _) = modmesh(&url, &["delete", "not a module@v1"])?;
    ensure!(!ok, "bad coordinates accepted");
    disk.stop()?;

    // The same against s3 on s3s-fs, prefilled from the disk store's folder.
    let Some(s3s) = modmesh_test_support::find_program("s3s-fs").or_else(|| {
        Some("/opt/modmesh-s3s/bin/s3s-fs".into()).filter(|p: &std::path::PathBuf| p.is_file())
    }) else {
        modmesh_test_support::skip("s3s-fs is not installed", "scripts/deps/30-storage.sh");
        return Ok(());
    };
    let data = dir.join("s3s");
    std::fs::create_dir_all(data.join("modules"))?;
    let port = modmesh_test_support::free_port();
    let mut cmd = Command::new(s3s);
    cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", "modmesh", "--secret-key", "modmesh-secret"])
        .arg(&data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut server = KillOnDrop(modmesh_test_support::spawn_tied(cmd)?);
    let endpoint = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut s3 = storage_svc(
        dir,
        "storage-s3",
        &[
            ("ATHENS_STORAGE_TYPE", "s3"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "modmesh"),
            ("AWS_SECRET_ACCESS_KEY", "modmesh-secret"),
            ("ATHENS_S3_BUCKET_NAME", "modules"),
            ("AWS_ENDPOINT", &endpoint),
            ("AWS_FORCE_PATH_STYLE", "true"),
        ],
    )
    .await?;
    let url = s3.url();
    let (ok, lines) = modmesh(&url, &["prefill", &root])?;
    ensure!(
        ok && summary(&lines)["saved"] == n - 1,
        "prefill from Athens disk: {lines:?}"
    );
    let (ok, lines) = modmesh(&url, &["verify"])?;
    ensure!(
        ok && summary(&lines)["ok"] == n - 1,
        "verify on s3: {lines:?}"
    );

    // A zip changed behind the store's back (another valid zip).
    let victim = &modules[1];
    let key = data
        .join("modules")
        .join(&victim.path)
        .join("@v")
        .join(format!("{}.zip", victim.version));
    ensure!(key.is_file(), "no object file {}", key.display());
    let other = std::fs::read(proxy.file(&modules[2].path, &modules[2].version, "zip"))?;
    std::fs::write(&key, other)?;
    let (ok, lines) = modmesh(&url, &["verify"])?;
    let sum = summary(&lines);
    ensure!(
        !ok && sum["mismatched"] == 1,
        "verify after tampering: {lines:?}"
    );
    let bad = lines.iter().find(|l| l["status"] == "mismatch").unwrap();
    ensure!(bad["version"] == victim.version.as_str(), "{bad}");
    s3.stop()?;
    let _ = server.0.kill();
    Ok(())
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
