//! The go fetcher against a local upstream: downloads stored into a real
//! `MemoryStorage`, list, query, error kinds, module-cache reuse, the
//! environment and arguments the go command gets, and the gRPC hop.

mod support;

use modmesh_common::server::LoopbackServer;
use modmesh_fetcher::client::FetcherClient;
use modmesh_fetcher::gocmd::{GoFetcher, GoSettings};
use modmesh_fetcher::{server, Fetcher};
use modmesh_proto::{Coordinates, ErrorKind, ModulePath};
use modmesh_storage::Storage;
use std::sync::Arc;
use std::time::Duration;
use support::*;

const T: Duration = Duration::from_secs(60);

fn coords(m: &str, v: &str) -> Coordinates {
    Coordinates::new(m, v).unwrap()
}

fn json(b: &[u8]) -> serde_json::Value {
    serde_json::from_slice(b).unwrap()
}

async fn zip_bytes(storage: &Arc<dyn Storage>, c: &Coordinates) -> Vec<u8> {
    use futures::StreamExt;
    let mut r = storage.zip(c).await.unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = r.stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(out.len() as u64, r.size);
    out
}

#[tokio::test]
async fn download_stores_info_mod_and_zip_of_a_mixed_case_module() {
    let up = Upstream::new();
    let m = "example.com/Mixed/Case";
    let p = up.publish(m, "v1.0.0", true, &[("mc.go", "package mc\n")]);
    let base = Scratch::new("modmesh-base-");
    let (f, storage) = fetcher(settings(&up.file_url(), base.path(), T));

    let c = coords(m, "v1.0.0");
    let got = f.download(&c).await.unwrap();
    assert_eq!(got.version.as_str(), "v1.0.0");
    // The go command re-encodes .info in its cache; the content is the same.
    assert_eq!(json(&got.info), json(&p.info));

    assert!(storage.exists(&c).await.unwrap());
    assert_eq!(storage.info(&c).await.unwrap(), got.info);
    assert_eq!(&storage.go_mod(&c).await.unwrap()[..], &p.go_mod[..]);
    assert_eq!(zip_bytes(&storage, &c).await, p.zip);
    let stat = storage.stat(&c).await.unwrap();
    assert_eq!(stat.zip_hash.as_deref(), Some(zip_h1(&p.zip).as_str()));
    assert_eq!(storage.list(&c.module).await.unwrap(), ["v1.0.0"]);

    // A second download of a stored version is a success, not AlreadyExists.
    let again = f.download(&c).await.unwrap();
    assert_eq!(again, got);
    // Work directories are gone; the shared caches stay.
    assert!(
        job_dirs(base.path()).is_empty(),
        "{:?}",
        job_dirs(base.path())
    );
    assert!(f.mod_cache().is_dir());
}

#[tokio::test]
async fn a_branch_query_is_saved_under_its_pseudo_version() {
    let up = Upstream::new();
    let m = "example.com/branchy";
    let pseudo = "v0.0.0-20240102030405-abcdefabcdef";
    up.publish(m, "v0.1.0", true, &[("a.go", "package a\n")]);
    let p = up.publish(m, pseudo, false, &[("a.go", "package a // newer\n")]);
    up.alias(m, "master", pseudo);
    let base = Scratch::new("modmesh-base-");
    let (f, storage) = fetcher(settings(&up.file_url(), base.path(), T));

    let got = f.download(&coords(m, "master")).await.unwrap();
    assert_eq!(got.version.as_str(), pseudo);
    let stored = coords(m, pseudo);
    assert!(storage.exists(&stored).await.unwrap());
    assert!(!storage.exists(&coords(m, "v0.1.0")).await.unwrap());
    assert_eq!(zip_bytes(&storage, &stored).await, p.zip);

    let q = f.query(&coords(m, "master")).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&q).unwrap();
    assert_eq!(v["Version"], pseudo);
}

#[tokio::test]
async fn list_and_query() {
    let up = Upstream::new();
    let m = "example.com/Listed";
    for v in ["v1.0.0", "v1.1.0", "v1.2.0-rc.1"] {
        up.publish(m, v, true, &[]);
    }
    up.empty_module("example.com/empty");
    let base = Scratch::new("modmesh-base-");
    let (f, _) = fetcher(settings(&up.file_url(), base.path(), T));

    let module = ModulePath::new(m).unwrap();
    assert_eq!(
        f.list(&module).await.unwrap(),
        ["v1.0.0", "v1.1.0", "v1.2.0-rc.1"]
    );
    let empty = ModulePath::new("example.com/empty").unwrap();
    assert_eq!(f.list(&empty).await.unwrap(), Vec::<String>::new());
    let e = f
        .list(&ModulePath::new("example.com/missing").unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");

    let latest = f.query(&coords(m, "latest")).await.unwrap();
    assert_eq!(
        std::str::from_utf8(&latest).unwrap(),
        r#"{"Version":"v1.1.0","Time":"2024-01-02T03:04:05Z"}"#
    );
    let exact = f.query(&coords(m, "v1.0.0")).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&exact).unwrap();
    assert_eq!(v["Version"], "v1.0.0");
    let e = f.query(&coords(m, "v9.9.9")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    assert!(!e.message.contains("go: "), "{e}");
    assert!(job_dirs(base.path()).is_empty());
}

#[tokio::test]
async fn missing_versions_and_modules_are_not_found() {
    let up = Upstream::new();
    let m = "example.com/Mixed/Case";
    up.publish(m, "v1.0.0", true, &[]);
    let base = Scratch::new("modmesh-base-");
    let (f, storage) = fetcher(settings(&up.file_url(), base.path(), T));

    let e = f.download(&coords(m, "v1.0.1")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    assert!(e.message.contains("example.com/Mixed/Case@v1.0.1"), "{e}");
    let e = f
        .download(&coords("example.com/nope", "v1.0.0"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    let e = f.download(&coords(m, "no-such-branch")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    assert!(storage
        .list(&ModulePath::new(m).unwrap())
        .await
        .unwrap()
        .is_empty());
    assert!(job_dirs(base.path()).is_empty());
}

#[tokio::test]
async fn http_upstream_cache_reuse_and_unavailable() {
    let up = Upstream::new();
    let m = "example.com/Over/HTTP";
    let p = up.publish(m, "v1.0.0", true, &[("h.go", "package h\n")]);
    up.publish(m, "v1.1.0", true, &[]);
    let http = HttpUpstream::start(up.dir.path().to_path_buf(), Mode::Files).await;
    let base = Scratch::new("modmesh-base-");
    let (f, storage) = fetcher(settings(&http.url(), base.path(), T));

    let c = coords(m, "v1.0.0");
    f.download(&c).await.unwrap();
    assert_eq!(zip_bytes(&storage, &c).await, p.zip);
    assert_eq!(http.count("/v1.0.0.zip"), 1, "{:?}", http.requests());
    assert!(http
        .requests()
        .iter()
        .all(|r| r.starts_with("/example.com/!over/!h!t!t!p/@v/")));

    // Storage loses it; the next download comes from the shared module
    // cache, without asking the upstream for the zip again.
    storage.delete(&c).await.unwrap();
    let again = f.download(&c).await.unwrap();
    assert_eq!(again.version.as_str(), "v1.0.0");
    assert_eq!(zip_bytes(&storage, &c).await, p.zip);
    assert_eq!(http.count("/v1.0.0.zip"), 1, "{:?}", http.requests());

    // A fetcher over a different storage shares nothing but the cache.
    let (f2, storage2) = fetcher(settings(&http.url(), base.path(), T));
    f2.download(&c).await.unwrap();
    assert!(storage2.exists(&c).await.unwrap());
    assert_eq!(http.count("/v1.0.0.zip"), 1, "{:?}", http.requests());

    http.stop().await;
    let e = f.download(&coords(m, "v1.1.0")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    assert!(e.message.contains("connection refused"), "{e}");
    let e = f.list(&ModulePath::new(m).unwrap()).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    let e = f.query(&coords(m, "latest")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
}

#[tokio::test]
async fn a_missing_go_binary_is_internal_with_a_clear_message() {
    let base = Scratch::new("modmesh-base-");
    let mut s = settings("file:///nonexistent", base.path(), T);
    s.go_binary = base.path().join("no-such-go").display().to_string();
    let (f, _) = fetcher(s);
    let e = f
        .download(&coords("example.com/a", "v1.0.0"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Internal);
    assert!(
        e.message.contains("GoBinary") && e.message.contains("not found"),
        "{e}"
    );
    // No server path in what is sent back.
    assert!(!e.message.contains(&*base.path().to_string_lossy()), "{e}");
    assert!(f.check().await.is_err());
    assert!(job_dirs(base.path()).is_empty());
}

#[tokio::test]
async fn the_real_go_command_accepts_double_dash() {
    let base = Scratch::new("modmesh-base-");
    let (f, _) = fetcher(settings("off", base.path(), T));
    assert!(f.check().await.unwrap().starts_with("go version go1."));
    for args in [
        vec!["mod", "download", "-json", "--", "example.com/x@v1.0.0"],
        vec!["list", "-m", "-json", "--", "example.com/x@v1.0.0"],
        vec![
            "list",
            "-m",
            "-versions",
            "-json",
            "--",
            "example.com/x@latest",
        ],
    ] {
        let out = std::process::Command::new("go")
            .args(&args)
            .current_dir(base.path())
            .env("GOPROXY", "off")
            .env("GOFLAGS", "")
            .env("GOMODCACHE", base.path().join("mc"))
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Fails only because lookups are off, not because of `--`.
        assert!(
            all.contains("module lookup disabled by GOPROXY=off"),
            "{args:?}: {all}"
        );
    }
}

/// A stand-in go binary that records its arguments, working directory and
/// environment, then prints what `go mod download -json` would.
fn recording_go(dir: &std::path::Path) -> std::path::PathBuf {
    let script = dir.join("fake-go");
    let log = dir.join("log");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ \"$1\" = env ]; then printf '{{\"GOPROXY\":\"%s\",\"GONOPROXY\":\"\"}}\\n' \"$GOPROXY\"; exit 0; fi\nprintf '%s\\n' \"$@\" > {log}.args\npwd > {log}.pwd\nls -A > {log}.ls\nenv > {log}.env\necho '{{\"Path\":\"example.com/x\",\"Version\":\"v1.0.0\",\"Error\":\"example.com/x@v1.0.0: reading file:///up/example.com/x/@v/v1.0.0.info: no such file or directory\"}}'\nexit 1\n",
            log = log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

#[tokio::test]
async fn arguments_environment_and_work_directory() {
    let tools = Scratch::new("modmesh-tools-");
    let base = Scratch::new("modmesh-base-");
    let script = recording_go(tools.path());
    let settings = GoSettings {
        go_binary: script.display().to_string(),
        env_vars: vec![
            "GOPROXY=file:///up".into(),
            "GOFLAGS=-mod=mod".into(),
            "EXTRA=a=b".into(),
        ],
        workers: 1,
        go_get_dir: Some(base.path().to_path_buf()),
        timeout: T,
    };
    let storage: Arc<dyn Storage> =
        Arc::new(modmesh_storage::backends::memory::MemoryStorage::new());
    let f = GoFetcher::new(settings, storage);
    let log = |ext: &str| std::fs::read_to_string(tools.path().join(format!("log.{ext}"))).unwrap();

    let e = f
        .download(&coords("example.com/x", "v1.0.0"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    assert_eq!(
        log("args"),
        "mod\ndownload\n-json\n--\nexample.com/x@v1.0.0\n"
    );
    // A fresh, empty working directory under GoGetDir, removed afterwards.
    let pwd = log("pwd");
    assert!(pwd.starts_with(&base.path().display().to_string()), "{pwd}");
    assert_eq!(log("ls"), "");
    assert!(!std::path::Path::new(pwd.trim()).exists());

    let env: std::collections::HashMap<String, String> = log("env")
        .lines()
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    assert_eq!(env["GOPROXY"], "file:///up");
    assert_eq!(env["GOFLAGS"], "-mod=mod", "GoBinaryEnvVars win");
    assert_eq!(env["EXTRA"], "a=b");
    assert_eq!(env["GO111MODULE"], "on");
    assert_eq!(env["GOWORK"], "off");
    assert_eq!(env["CGO_ENABLED"], "0");
    assert_eq!(env["GOTOOLCHAIN"], "local");
    assert_eq!(
        env["GOMODCACHE"],
        base.path().join("modmesh-modcache").display().to_string()
    );
    assert_eq!(
        env["GOCACHE"],
        base.path().join("modmesh-gocache").display().to_string()
    );
    assert!(env["GOPATH"].starts_with(&base.path().display().to_string()));
    assert!(!pwd.trim().starts_with(env["GOPATH"].as_str()));
    assert_eq!(env.get("PATH"), std::env::var("PATH").ok().as_ref());
    // Nothing else from this process leaks in (cargo sets CARGO_* for tests).
    assert!(std::env::var("CARGO_MANIFEST_DIR").is_ok());
    assert!(env.keys().all(|k| !k.starts_with("CARGO")), "{env:?}");
    // What the fetcher passes through, plus what it sets itself.
    let allowed: Vec<&str> = modmesh_fetcher::gocmd::PASSTHROUGH_ENV
        .iter()
        .copied()
        .chain([
            "GO111MODULE",
            "GOWORK",
            "GOFLAGS",
            "CGO_ENABLED",
            "GOTOOLCHAIN",
            "GOMODCACHE",
            "GOCACHE",
            "GOPATH",
            "EXTRA",
            // Set by the shell running the script.
            "PWD",
            "SHLVL",
            "_",
            "OLDPWD",
        ])
        .collect();
    for k in env.keys() {
        assert!(allowed.contains(&k.as_str()), "unexpected variable {k}");
    }

    let _ = f.list(&ModulePath::new("example.com/x").unwrap()).await;
    assert_eq!(
        log("args"),
        "list\n-m\n-versions\n-json\n--\nexample.com/x@latest\n"
    );
    let _ = f.query(&coords("example.com/x", "latest")).await;
    assert_eq!(log("args"), "list\n-m\n-json\n--\nexample.com/x@latest\n");
    assert!(job_dirs(base.path()).is_empty());
}

#[tokio::test]
async fn over_grpc_error_kinds_survive() {
    let up = Upstream::new();
    let m = "example.com/Mixed/Case";
    let p = up.publish(m, "v1.0.0", true, &[("mc.go", "package mc\n")]);
    let base = Scratch::new("modmesh-base-");
    let (f, storage) = fetcher(settings(&up.file_url(), base.path(), T));

    let srv = LoopbackServer::start(server::routes(f), &[server::SERVICE_NAME])
        .await
        .unwrap();
    let addr = srv.url.trim_start_matches("http://").to_string();
    let client = FetcherClient::new(&format!("http://{addr}")).unwrap();

    let c = coords(m, "v1.0.0");
    let got = client.download(&c).await.unwrap();
    assert_eq!(got.version.as_str(), "v1.0.0");
    assert_eq!(json(&got.info), json(&p.info));
    assert_eq!(zip_bytes(&storage, &c).await, p.zip);
    assert_eq!(client.list(&c.module).await.unwrap(), ["v1.0.0"]);
    let q = client.query(&coords(m, "latest")).await.unwrap();
    assert!(std::str::from_utf8(&q).unwrap().contains("\"v1.0.0\""));

    let e = client.download(&coords(m, "v2.0.0")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    assert!(e.message.contains("v2.0.0"), "{e}");
    let e = client
        .list(&ModulePath::new("example.com/missing").unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");

    // The server validates what comes off the wire.
    let mut raw =
        modmesh_proto::pb::fetcher_client::FetcherClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
    for (module, version) in [
        ("example.com/a", "-json"),
        ("-x.com/a", "v1.0.0"),
        ("example.com/a", ""),
    ] {
        let s = raw
            .download(modmesh_proto::pb::Coordinates {
                module: module.into(),
                version: version.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{module}@{version}");
    }
    let s = raw
        .list(modmesh_proto::pb::ModuleRef {
            module: "--help".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument);

    srv.stop().await.unwrap();
    // With the server gone, the client reports Unavailable.
    let e = client.list(&c.module).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
}
