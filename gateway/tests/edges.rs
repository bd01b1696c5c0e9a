//! The gateway's edges as Athens users run them: every key from file and
//! environment; basic auth, the filter file and the validator hook in
//! Athens' order under a `PathPrefix`; hostile input at each edge;
//! `/catalog` paging; `/index` in memory, PostgreSQL and MariaDB (real
//! servers, restarted gateways); and the `gateway` binary with the real go
//! command through basic auth and TLS (with certificate reload), plus a
//! unix socket.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use modmesh_common::Config;
use modmesh_gateway::edge::index::mysql::MySqlConfig;
use modmesh_gateway::edge::index::postgres::PostgresConfig;
use modmesh_gateway::edge::{EdgeConfig, Edges};
use modmesh_gateway::{router, wire, AppState};
use modmesh_proto::Coordinates;
use modmesh_tests::fixtures;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tower::ServiceExt;

// ---------------------------------------------------------------- helpers

struct Gw {
    app: Router,
    state: AppState,
    _work: tempfile::TempDir,
}

/// A gateway in process over a `file://` upstream of the standard modules.
async fn gateway(upstream: &Path, text: &str, env: &[(&str, &str)]) -> Result<Gw, String> {
    let work = tempfile::tempdir().unwrap();
    let proxy = format!("GOPROXY=file://{};GOSUMDB=off", upstream.display());
    let goget = work.path().display().to_string();
    let mut all: Vec<(&str, &str)> = vec![
        ("ATHENS_GO_BINARY_ENV_VARS", &proxy),
        ("ATHENS_GOGET_DIR", &goget),
        ("ATHENS_TIMEOUT", "60"),
    ];
    all.extend_from_slice(env);
    let cfg = Config::from_text(text, &all).map_err(|e| e.to_string())?;
    let (services, _) = wire::services(&cfg).map_err(|e| e.to_string())?;
    let edges = Edges::from_config(&cfg).await?;
    let state = AppState::from_config(services, &cfg)
        .map_err(|e| e.to_string())?
        .with_edges(edges);
    Ok(Gw {
        app: router(state.clone()),
        state,
        _work: work,
    })
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: bytes::Bytes,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn header(&self, h: header::HeaderName) -> String {
        self.headers
            .get(h)
            .map(|v| v.to_str().unwrap_or("").to_string())
            .unwrap_or_default()
    }
}

async fn send(app: &Router, path: &str, headers: &[(&str, &[u8])]) -> Answer {
    let mut req = Request::builder().method(Method::GET).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body,
    }
}

async fn get(app: &Router, path: &str) -> Answer {
    send(app, path, &[]).await
}

fn basic(user: &str, pass: &str) -> Vec<u8> {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
    .into_bytes()
}

fn url(module: &str, rest: &str) -> String {
    format!("/{}/{rest}", fixtures::escape(module))
}

fn upstream() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    fixtures::standard_proxy(d.path()).unwrap();
    d
}

async fn stored(state: &AppState, module: &str, version: &str) -> bool {
    state
        .service()
        .services()
        .storage
        .exists(&Coordinates::new(module, version).unwrap())
        .await
        .unwrap()
}

/// A validator hook served by the test: refuses `refuse`, counts calls
/// per module; `/hang` never answers, `/fail` answers 500.
struct Hook {
    url: String,
    calls: Arc<Mutex<HashMap<String, usize>>>,
}

impl Hook {
    fn calls(&self, module: &str) -> usize {
        *self.calls.lock().unwrap().get(module).unwrap_or(&0)
    }
}

async fn hook(refuse: &'static str) -> Hook {
    use axum::routing::post;
    let calls: Arc<Mutex<HashMap<String, usize>>> = Default::default();
    let c = calls.clone();
    let check = move |body: axum::Json<serde_json::Value>| {
        let c = c.clone();
        async move {
            let m = body["Module"].as_str().unwrap_or("").to_string();
            assert!(body["Version"].as_str().is_some_and(|v| !v.is_empty()));
            *c.lock().unwrap().entry(m.clone()).or_default() += 1;
            if m == refuse {
                (StatusCode::FORBIDDEN, "not on the list")
            } else {
                (StatusCode::OK, "")
            }
        }
    };
    let app = Router::new()
        .route("/check", post(check))
        .route(
            "/hang",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                StatusCode::OK
            }),
        )
        .route(
            "/fail",
            post(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
        )
        .route(
            "/redirect",
            post(|| async { axum::response::Redirect::to("/check") }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    Hook {
        url: format!("http://{addr}"),
        calls,
    }
}

/// A TCP server that answers every connection with bytes that are not HTTP.
async fn garbage_server() -> String {
    use tokio::io::AsyncWriteExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.write_all(b"\x00\x01garbage, not HTTP\r\n\r\n").await;
        }
    });
    format!("http://{addr}")
}

// ------------------------------------------------------------------ config

#[test]
fn every_edge_key_from_file_and_from_env() {
    let file = r#"
BasicAuthUser = "alice"
BasicAuthPass = "pw"
TLSCertFile = "/tls/cert.pem"
TLSKeyFile = "/tls/key.pem"
UnixSocket = "/run/athens.sock"
PathPrefix = "/gomods/"
FilterFile = "/etc/athens/filter"
GlobalEndpoint = "https://global.example/"
ValidatorHook = "http://hook.example/validate"
ValidatorHookTimeout = 3
ValidatorHookCacheTTL = 7
RobotsFile = "/etc/athens/robots.txt"
HomeTemplatePath = "/etc/athens/home.html"
NoSumPatterns = ["corp.example/*", "other.example"]
IndexType = "postgres"
ForceSSL = true
Port = ":3001"

[Index.Postgres]
Host = "pg.example"
Port = 6543
User = "u1"
Password = "pw1"
Database = "db1"
[Index.Postgres.Params]
connect_timeout = "5"
sslmode = "disable"

[Index.MySQL]
Protocol = "tcp"
Host = "my.example"
Port = 3307
User = "u2"
Password = "pw2"
Database = "db2"
[Index.MySQL.Params]
parseTime = "true"
timeout = "9s"
"#;
    let cfg = Config::from_text(file, &[]).unwrap();
    let e: EdgeConfig = cfg.section().unwrap();
    assert_eq!(
        e,
        EdgeConfig {
            BasicAuthUser: "alice".into(),
            BasicAuthPass: "pw".into(),
            TLSCertFile: "/tls/cert.pem".into(),
            TLSKeyFile: "/tls/key.pem".into(),
            UnixSocket: "/run/athens.sock".into(),
            PathPrefix: "/gomods/".into(),
            FilterFile: "/etc/athens/filter".into(),
            GlobalEndpoint: "https://global.example/".into(),
            ValidatorHook: "http://hook.example/validate".into(),
            ValidatorHookTimeout: 3,
            ValidatorHookCacheTTL: 7,
            RobotsFile: "/etc/athens/robots.txt".into(),
            HomeTemplatePath: "/etc/athens/home.html".into(),
            IndexType: "postgres".into(),
            ForceSSL: true,
        }
    );
    assert_eq!(e.path_prefix(), "/gomods");
    let pg: PostgresConfig = cfg.section().unwrap();
    assert_eq!(
        (
            pg.Host.as_str(),
            pg.Port,
            pg.User.as_str(),
            pg.Password.as_str(),
            pg.Database.as_str()
        ),
        ("pg.example", 6543, "u1", "pw1", "db1")
    );
    assert_eq!(pg.Params.get("connect_timeout").unwrap(), "5");
    let my: MySqlConfig = cfg.section().unwrap();
    assert_eq!(
        (
            my.Protocol.as_str(),
            my.Host.as_str(),
            my.Port,
            my.User.as_str(),
            my.Password.as_str(),
            my.Database.as_str()
        ),
        ("tcp", "my.example", 3307, "u2", "pw2", "db2")
    );
    assert_eq!(my.Params.get("timeout").unwrap(), "9s");

    // The environment alone, with Athens' variable names (and beating the file).
    let env = [
        ("BASIC_AUTH_USER", "bob"),
        ("BASIC_AUTH_PASS", "pw2"),
        ("ATHENS_TLSCERT_FILE", "/c.pem"),
        ("ATHENS_TLSKEY_FILE", "/k.pem"),
        ("ATHENS_UNIX_SOCKET", "/s.sock"),
        ("ATHENS_PATH_PREFIX", "/p"),
        ("ATHENS_FILTER_FILE", "/f"),
        ("ATHENS_GLOBAL_ENDPOINT", "http://g.example"),
        ("ATHENS_PROXY_VALIDATOR", "https://v.example/x"),
        ("ATHENS_PROXY_VALIDATOR_TIMEOUT", "4"),
        ("ATHENS_PROXY_VALIDATOR_CACHE_TTL", "0"),
        ("ATHENS_ROBOTS_FILE", "/r.txt"),
        ("ATHENS_HOME_TEMPLATE_PATH", "/h.html"),
        ("ATHENS_GONOSUM_PATTERNS", "a.example/*,b.example"),
        ("ATHENS_INDEX_TYPE", "mysql"),
        ("PROXY_FORCE_SSL", "true"),
        ("ATHENS_INDEX_POSTGRES_HOST", "pg2"),
        ("ATHENS_INDEX_POSTGRES_PORT", "5433"),
        ("ATHENS_INDEX_POSTGRES_USER", "pu"),
        ("ATHENS_INDEX_POSTGRES_PASSWORD", "ppw"),
        ("ATHENS_INDEX_POSTGRES_DATABASE", "pdb"),
        (
            "ATHENS_INDEX_POSTGRES_PARAMS",
            "connect_timeout:7,sslmode:prefer",
        ),
        ("ATHENS_INDEX_MYSQL_PROTOCOL", "unix"),
        ("ATHENS_INDEX_MYSQL_HOST", "/run/mysqld.sock"),
        ("ATHENS_INDEX_MYSQL_PORT", "3308"),
        ("ATHENS_INDEX_MYSQL_USER", "mu"),
        ("ATHENS_INDEX_MYSQL_PASSWORD", "mpw"),
        ("ATHENS_INDEX_MYSQL_DATABASE", "mdb"),
        ("ATHENS_INDEX_MYSQL_PARAMS", "parseTime:true,timeout:2s"),
    ];
    for text in ["", file] {
        let cfg = Config::from_text(text, &env).unwrap();
        let e: EdgeConfig = cfg.section().unwrap();
        assert_eq!(
            e,
            EdgeConfig {
                BasicAuthUser: "bob".into(),
                BasicAuthPass: "pw2".into(),
                TLSCertFile: "/c.pem".into(),
                TLSKeyFile: "/k.pem".into(),
                UnixSocket: "/s.sock".into(),
                PathPrefix: "/p".into(),
                FilterFile: "/f".into(),
                GlobalEndpoint: "http://g.example".into(),
                ValidatorHook: "https://v.example/x".into(),
                ValidatorHookTimeout: 4,
                ValidatorHookCacheTTL: 0,
                RobotsFile: "/r.txt".into(),
                HomeTemplatePath: "/h.html".into(),
                IndexType: "mysql".into(),
                ForceSSL: true,
            }
        );
        let pg: PostgresConfig = cfg.section().unwrap();
        assert_eq!(
            (
                pg.Host.as_str(),
                pg.Port,
                pg.User.as_str(),
                pg.Password.as_str(),
                pg.Database.as_str()
            ),
            ("pg2", 5433, "pu", "ppw", "pdb")
        );
        assert_eq!(
            pg.Params
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>(),
            ["connect_timeout=7", "sslmode=prefer"]
        );
        let my: MySqlConfig = cfg.section().unwrap();
        assert_eq!(
            (
                my.Protocol.as_str(),
                my.Host.as_str(),
                my.Port,
                my.User.as_str(),
                my.Password.as_str(),
                my.Database.as_str()
            ),
            ("unix", "/run/mysqld.sock", 3308, "mu", "mpw", "mdb")
        );
        assert_eq!(my.Params.get("timeout").unwrap(), "2s");
        assert_eq!(my.Params.len(), 2);
    }

    // Athens' defaults.
    let d: EdgeConfig = Config::from_text("", &[]).unwrap().section().unwrap();
    assert_eq!(d.GlobalEndpoint, "http://localhost:3001");
    assert_eq!(d.RobotsFile, "robots.txt");
    assert_eq!(d.HomeTemplatePath, "/var/lib/athens/home.html");
    assert_eq!(d.IndexType, "none");
    assert!(!d.ForceSSL);
    let pg: PostgresConfig = Config::from_text("", &[]).unwrap().section().unwrap();
    assert_eq!(
        (
            pg.Host.as_str(),
            pg.Port,
            pg.User.as_str(),
            pg.Database.as_str()
        ),
        ("localhost", 5432, "postgres", "athens")
    );
    let my: MySqlConfig = Config::from_text("", &[]).unwrap().section().unwrap();
    assert_eq!(
        (my.Protocol.as_str(), my.Port, my.User.as_str()),
        ("tcp", 3306, "root")
    );

    // Half-configured access control is an error, not an open proxy.
    for (env, key) in [
        (vec![("BASIC_AUTH_USER", "alice")], "BasicAuthPass"),
        (vec![("BASIC_AUTH_PASS", "pw")], "BasicAuthUser"),
        (vec![("ATHENS_TLSCERT_FILE", "/c")], "TLSKeyFile"),
        (vec![("ATHENS_PATH_PREFIX", "gomods")], "PathPrefix"),
        (vec![("ATHENS_INDEX_TYPE", "sqlite")], "IndexType"),
        (vec![("ATHENS_PROXY_VALIDATOR", "ftp://x")], "ValidatorHook"),
    ] {
        let e = Config::from_text("", &env)
            .unwrap()
            .section::<EdgeConfig>()
            .unwrap_err();
        assert_eq!(e.key, key, "{e}");
    }
    let e = Config::from_text("", &[("ATHENS_INDEX_MYSQL_PARAMS", "parseTime")])
        .unwrap()
        .section::<MySqlConfig>()
        .unwrap_err();
    assert!(e.key.starts_with("Index.MySQL"), "{e}");
}

// ------------------------------------------------- access, in Athens' order

#[tokio::test(flavor = "multi_thread")]
async fn auth_then_filter_then_validator_under_a_prefix() {
    let up = upstream();
    let hook = hook(fixtures::LIB_V2).await;
    let dir = tempfile::tempdir().unwrap();
    let filter = dir.path().join("filter");
    std::fs::write(
        &filter,
        format!(
            "# allow by default\n+\n- {}\nD {}\n",
            fixtures::LEGACY,
            fixtures::PSEUDO
        ),
    )
    .unwrap();
    let text = format!(
        "BasicAuthUser = \"alice\"\nBasicAuthPass = \"open sesame\"\nPathPrefix = \"/gomods\"\n\
         FilterFile = {:?}\nGlobalEndpoint = \"http://direct.example/base/\"\n\
         ValidatorHook = \"{}/check\"\n",
        filter.display().to_string(),
        hook.url
    );
    let gw = gateway(up.path(), &text, &[]).await.unwrap();
    let app = &gw.app;
    let creds = basic("alice", "open sesame");
    let auth: &[(&str, &[u8])] = &[("authorization", &creds)];

    // Health and readiness stay open, at the root and under the prefix.
    for p in [
        "/healthz",
        "/readyz",
        "/gomods/healthz",
        "/gomods/readyz",
        "/",
    ] {
        assert_eq!(get(app, p).await.status, StatusCode::OK, "{p}");
    }
    // Everything else needs the credentials.
    let base_info = format!("/gomods{}", url(fixtures::BASE, "@v/v1.0.0.info"));
    let r = get(app, &base_info).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.header(header::WWW_AUTHENTICATE),
        "Basic realm=\"basic auth required\""
    );
    for p in [
        "/gomods/",
        "/gomods/catalog",
        "/gomods/index",
        "/gomods/version",
        "/gomods/robots.txt",
    ] {
        assert_eq!(get(app, p).await.status, StatusCode::UNAUTHORIZED, "{p}");
    }
    // Malformed Authorization headers are refused the same way, never 500.
    let long = vec![b'A'; 100_000];
    let mut long_basic = b"Basic ".to_vec();
    long_basic.extend_from_slice(&long);
    for bad in [
        &b"Basic"[..],
        b"Basic ",
        b"Basic %%%%",
        b"Basic YWxpY2U=",
        b"Bearer YWxpY2U6b3BlbiBzZXNhbWU=",
        b"basic\tYWxpY2U6b3BlbiBzZXNhbWU=",
        &long_basic,
        &basic("alice", "open sesame ")[..],
        &basic("Alice", "open sesame")[..],
    ] {
        let r = send(app, &base_info, &[("authorization", bad)]).await;
        assert_eq!(
            r.status,
            StatusCode::UNAUTHORIZED,
            "{:?}",
            String::from_utf8_lossy(&bad[..bad.len().min(40)])
        );
    }
    assert_eq!(hook.calls(fixtures::BASE), 0, "auth runs before the hook");

    // Allowed by the filter and the hook: served (and the verdict is cached).
    let r = send(app, &base_info, auth).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = send(
        app,
        &format!("/gomods{}", url(fixtures::BASE, "@v/v1.0.0.mod")),
        auth,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(hook.calls(fixtures::BASE), 1, "the verdict is reused");
    // Lists carry no version: no hook call.
    let r = send(
        app,
        &format!("/gomods{}", url(fixtures::BASE, "@v/list")),
        auth,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(hook.calls(fixtures::BASE), 1);

    // Unauthenticated requests for a filtered module get 401 (auth first).
    let legacy = format!(
        "/gomods{}",
        url(fixtures::LEGACY, &format!("@v/{}.info", fixtures::LEGACY_V))
    );
    assert_eq!(get(app, &legacy).await.status, StatusCode::UNAUTHORIZED);
    // `-`: 403 before any fetch and before the hook.
    let r = send(app, &legacy, auth).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        hook.calls(fixtures::LEGACY),
        0,
        "the filter runs before the hook"
    );
    assert!(!stored(&gw.state, fixtures::LEGACY, fixtures::LEGACY_V).await);
    // `D`: 303 to GlobalEndpoint plus the GOPROXY path.
    let pseudo_list = url(fixtures::PSEUDO, "@v/list");
    let r = send(app, &format!("/gomods{pseudo_list}"), auth).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(
        r.header(header::LOCATION),
        format!("http://direct.example/base{pseudo_list}")
    );
    // The hook refuses lib/v2: 403, nothing fetched.
    let lib = format!(
        "/gomods{}",
        url(fixtures::LIB_V2, &format!("@v/{}.zip", fixtures::LIB_V2_V))
    );
    let r = send(app, &lib, auth).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert_eq!(hook.calls(fixtures::LIB_V2), 1);
    assert!(!stored(&gw.state, fixtures::LIB_V2, fixtures::LIB_V2_V).await);

    // Proxy routes live under the prefix only.
    assert_eq!(
        send(app, &url(fixtures::BASE, "@v/list"), auth)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    // The home page tells how to set GOPROXY to this gateway, prefix included.
    let r = send(
        app,
        "/gomods/",
        &[("authorization", &creds), ("host", b"proxy.test:8080")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header(header::CONTENT_TYPE).starts_with("text/html"));
    assert!(
        r.text().contains("GOPROXY=http://proxy.test:8080/gomods"),
        "{}",
        r.text()
    );
    let r = send(
        app,
        "/gomods/",
        &[
            ("authorization", &creds),
            ("host", b"proxy.test"),
            ("x-forwarded-proto", b"https"),
        ],
    )
    .await;
    assert!(r.text().contains("GOPROXY=https://proxy.test/gomods"));
    let r = send(app, "/gomods/robots.txt", auth).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text().contains("Disallow: /"));
    let r = send(app, "/gomods/catalog", auth).await;
    assert_eq!(r.status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        v["modules"],
        serde_json::json!([{"module": fixtures::BASE, "version": "v1.0.0"}])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_hooks_fail_closed_with_honest_statuses() {
    let up = upstream();
    let h = hook("nothing").await;
    let garbage = garbage_server().await;
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let info = url(fixtures::BASE, "@v/v1.0.0.info");
    for (hook_url, want) in [
        (format!("{}/hang", h.url), StatusCode::GATEWAY_TIMEOUT),
        (format!("{}/fail", h.url), StatusCode::BAD_GATEWAY),
        (format!("{}/redirect", h.url), StatusCode::BAD_GATEWAY),
        (garbage.clone(), StatusCode::BAD_GATEWAY),
        (down.clone(), StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let text = format!("ValidatorHook = {hook_url:?}\nValidatorHookTimeout = 1\n");
        let gw = gateway(up.path(), &text, &[]).await.unwrap();
        let started = Instant::now();
        let r = get(&gw.app, &info).await;
        assert_eq!(r.status, want, "{hook_url}: {}", r.text());
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{hook_url} took {:?}",
            started.elapsed()
        );
        assert!(
            !stored(&gw.state, fixtures::BASE, "v1.0.0").await,
            "fails closed"
        );
        // A failure is not cached as a verdict: still refused, still honest.
        assert_eq!(get(&gw.app, &info).await.status, want);
        // Requests without a version do not need the hook.
        assert_eq!(
            get(&gw.app, &url(fixtures::BASE, "@v/list")).await.status,
            StatusCode::OK
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn filter_files_hostile_and_huge() {
    let up = upstream();
    let dir = tempfile::tempdir().unwrap();
    // Over the size limit: a configuration error naming the key, at once.
    let huge = dir.path().join("huge");
    let f = std::fs::File::create(&huge).unwrap();
    f.set_len(modmesh_gateway::edge::filter::MAX_FILE_BYTES + 1)
        .unwrap();
    let e = gateway(
        up.path(),
        &format!("FilterFile = {:?}\n", huge.display().to_string()),
        &[],
    )
    .await
    .err()
    .unwrap();
    assert!(e.contains("FilterFile") && e.contains("at most"), "{e}");
    // A bad line is named.
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "+ a.example\n? b.example\n").unwrap();
    let e = gateway(
        up.path(),
        &format!("FilterFile = {:?}\n", bad.display().to_string()),
        &[],
    )
    .await
    .err()
    .unwrap();
    assert!(e.contains("FilterFile") && e.contains("line 2"), "{e}");
    // With GoEnv production, a filter file others may write is refused (as in Athens).
    let open = dir.path().join("open");
    std::fs::write(&open, "+\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o666)).unwrap();
    let text = format!(
        "GoEnv = \"production\"\nFilterFile = {:?}\n",
        open.display().to_string()
    );
    let e = gateway(up.path(), &text, &[]).await.err().unwrap();
    assert!(e.contains("FilterFile") && e.contains("production"), "{e}");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    gateway(up.path(), &text, &[]).await.unwrap();
    // A missing file too.
    let e = gateway(up.path(), "FilterFile = \"/nonexistent/filter\"\n", &[])
        .await
        .err()
        .unwrap();
    assert!(e.contains("FilterFile"), "{e}");
    // A big file (over 100 000 rules, ~5 MiB) loads and answers quickly,
    // with version qualifiers.
    let big = dir.path().join("big");
    let mut text = String::from("-\n");
    for i in 0..100_000 {
        text.push_str(&format!(
            "+ example.com/generated/org{}/module{i} v1.{}\n",
            i % 97,
            i % 5
        ));
    }
    text.push_str(&format!("+ {} v1.0\n", fixtures::BASE));
    std::fs::write(&big, text).unwrap();
    let gw = gateway(
        up.path(),
        &format!("FilterFile = {:?}\n", big.display().to_string()),
        &[],
    )
    .await
    .unwrap();
    let started = Instant::now();
    assert_eq!(
        get(&gw.app, &url(fixtures::BASE, "@v/v1.0.0.info"))
            .await
            .status,
        StatusCode::OK
    );
    let rc = format!("@v/{}.info", fixtures::BASE_RC);
    assert_eq!(
        get(&gw.app, &url(fixtures::BASE, &rc)).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get(&gw.app, &url(fixtures::MIXED, "@v/list")).await.status,
        StatusCode::FORBIDDEN
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    // Hostile paths at a filtered gateway are still 400, never 500.
    for p in [
        "/example.com/%2e%2e/@v/list",
        "/example.com/a/@v/%ff.info",
        "/-x/@v/list",
    ] {
        assert_eq!(get(&gw.app, p).await.status, StatusCode::BAD_REQUEST, "{p}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn force_ssl_sends_plain_http_to_https() {
    let up = upstream();
    let gw = gateway(up.path(), "ForceSSL = true\nPathPrefix = \"/p\"\n", &[])
        .await
        .unwrap();
    let list = format!("/p{}", url(fixtures::BASE, "@v/list"));
    let r = send(&gw.app, &format!("{list}?x=1"), &[("host", b"proxy.test")]).await;
    assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        r.header(header::LOCATION),
        format!("https://proxy.test{list}?x=1")
    );
    let r = send(
        &gw.app,
        &list,
        &[("host", b"proxy.test"), ("x-forwarded-proto", b"https")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    for p in ["/healthz", "/p/readyz"] {
        assert_eq!(get(&gw.app, p).await.status, StatusCode::OK, "{p}");
    }
}

// ---------------------------------------------------------- catalog, index

async fn fetch_all(app: &Router) -> Vec<(String, String)> {
    let mut want = Vec::new();
    for m in fixtures::standard_modules() {
        let r = get(
            app,
            &url(
                &m.path,
                &format!("@v/{}.info", fixtures::escape(&m.version)),
            ),
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{}@{}: {}",
            m.path,
            m.version,
            r.text()
        );
        want.push((m.path.clone(), m.version.clone()));
    }
    want.sort();
    want
}

async fn index_lines(app: &Router, query: &str) -> Vec<serde_json::Value> {
    let r = get(app, &format!("/index{query}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.header(header::CONTENT_TYPE),
        "application/json; charset=utf-8"
    );
    r.text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits until `/index` holds `n` lines (index writes follow the fetch).
async fn wait_index(app: &Router, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let lines = index_lines(app, "").await;
        if lines.len() >= n || Instant::now() > deadline {
            assert_eq!(lines.len(), n, "{lines:?}");
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pairs(lines: &[serde_json::Value]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = lines
        .iter()
        .map(|l| {
            assert!(
                l["Timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
                "{l}"
            );
            (
                l["Path"].as_str().unwrap().to_string(),
                l["Version"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn catalog_pages_and_the_memory_index() {
    let up = upstream();
    let gw = gateway(up.path(), "IndexType = \"memory\"\n", &[])
        .await
        .unwrap();
    let app = &gw.app;
    // Nothing fetched yet.
    let r = get(app, "/catalog").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header(header::CONTENT_TYPE),
        "application/json; charset=utf-8"
    );
    assert_eq!(r.text(), "{\"modules\":[]}");
    assert_eq!(index_lines(app, "").await.len(), 0);

    let want = fetch_all(app).await;
    assert_eq!(want.len(), 6);
    // Three pages of two, chained by `next`; the last has no `next`.
    let mut got = Vec::new();
    let mut token = String::new();
    for page in 0..3 {
        let r = get(app, &format!("/catalog?pagesize=2&token={token}")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let mods = v["modules"].as_array().unwrap();
        assert_eq!(mods.len(), 2, "page {page}: {v}");
        for m in mods {
            got.push((
                m["module"].as_str().unwrap().to_string(),
                m["version"].as_str().unwrap().to_string(),
            ));
        }
        match v.get("next") {
            Some(n) => {
                assert!(page < 2, "a last page with next: {v}");
                token = n.as_str().unwrap().to_string();
            }
            None => assert_eq!(page, 2, "no next before the last page: {v}"),
        }
    }
    got.sort();
    assert_eq!(got, want);
    for q in [
        "pagesize=x",
        "pagesize=0",
        "pagesize=-1",
        "token=%00%ff-not-a-token",
    ] {
        let r = get(app, &format!("/catalog?{q}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}: {}", r.text());
    }

    // The index: every version once, oldest first, Athens' NDJSON.
    let lines = wait_index(app, 6).await;
    assert_eq!(pairs(&lines), want);
    let times: Vec<&str> = lines
        .iter()
        .map(|l| l["Timestamp"].as_str().unwrap())
        .collect();
    let parsed: Vec<time::OffsetDateTime> = times
        .iter()
        .map(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).unwrap()
        })
        .collect();
    assert!(parsed.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert_eq!(index_lines(app, "?limit=2").await.len(), 2);
    let since = index_lines(app, &format!("?since={}", times[3])).await;
    assert_eq!(
        since.len(),
        parsed.iter().filter(|t| **t >= parsed[3]).count()
    );
    assert_eq!(
        index_lines(app, "?since=2000-01-01T00:00:00Z&limit=100")
            .await
            .len(),
        6
    );
    for q in [
        "limit=0",
        "limit=-3",
        "limit=many",
        "since=yesterday",
        "since=2024-13-01T00:00:00Z",
    ] {
        let r = get(app, &format!("/index?{q}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}");
    }
    // Fetching a stored version again adds nothing.
    let r = get(app, &url(fixtures::BASE, "@v/v1.0.0.zip")).await;
    assert_eq!(r.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(index_lines(app, "").await.len(), 6);

    // IndexType none: 200 with an empty body.
    let none = gateway(up.path(), "", &[]).await.unwrap();
    let r = get(&none.app, "/index").await;
    assert_eq!((r.status, r.body.len()), (StatusCode::OK, 0));
    // Robots and home from files.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("robots.txt"), "User-agent: *\nAllow: /\n").unwrap();
    std::fs::write(
        dir.path().join("home.html"),
        "<p>{{ .Host }} {{ if .NoSumPatterns }}[{{ .NoSumPatterns }}]{{ end }}</p>",
    )
    .unwrap();
    let text = format!(
        "RobotsFile = {:?}\nHomeTemplatePath = {:?}\nNoSumPatterns = [\"corp.example/*\"]\n",
        dir.path().join("robots.txt").display().to_string(),
        dir.path().join("home.html").display().to_string()
    );
    let pages = gateway(up.path(), &text, &[]).await.unwrap();
    assert_eq!(
        get(&pages.app, "/robots.txt").await.text(),
        "User-agent: *\nAllow: /\n"
    );
    let r = send(&pages.app, "/", &[("host", b"h.test")]).await;
    assert_eq!(r.text(), "<p>http://h.test [corp.example/*]</p>");
    let missing = gateway(up.path(), "RobotsFile = \"/nonexistent/robots.txt\"\n", &[])
        .await
        .unwrap();
    assert_eq!(
        get(&missing.app, "/robots.txt").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_indexes_survive_a_restart() {
    let up = upstream();
    // One server of each kind for this whole test binary.
    let pg = modmesh_tests::dbs::Postgres::start().unwrap();
    let maria = modmesh_tests::dbs::MariaDb::start().unwrap();
    let mut checked = 0;

    if let Some(pg) = &pg {
        // PostgreSQL from the file's keys.
        let text = format!(
            "IndexType = \"postgres\"\n[Index.Postgres]\nHost = \"127.0.0.1\"\nPort = {}\nUser = \"postgres\"\n\
             Password = {:?}\nDatabase = \"athens\"\n[Index.Postgres.Params]\nconnect_timeout = \"5\"\nsslmode = \"disable\"\n",
            pg.port,
            modmesh_tests::dbs::Postgres::PASSWORD
        );
        check_sql_index(up.path(), &text, &[]).await;
        // A wrong password is a startup error, not a silent no-index.
        let bad = text.replace(modmesh_tests::dbs::Postgres::PASSWORD, "wrong");
        let e = gateway(up.path(), &bad, &[]).await.err().unwrap();
        assert!(e.contains("postgres"), "{e}");
        checked += 1;
    }
    if let Some(m) = &maria {
        // MariaDB from Athens' environment variables.
        let port = m.port.to_string();
        let env = [
            ("ATHENS_INDEX_TYPE", "mysql"),
            ("ATHENS_INDEX_MYSQL_PROTOCOL", "tcp"),
            ("ATHENS_INDEX_MYSQL_HOST", "127.0.0.1"),
            ("ATHENS_INDEX_MYSQL_PORT", port.as_str()),
            ("ATHENS_INDEX_MYSQL_USER", modmesh_tests::dbs::MariaDb::USER),
            (
                "ATHENS_INDEX_MYSQL_PASSWORD",
                modmesh_tests::dbs::MariaDb::PASSWORD,
            ),
            ("ATHENS_INDEX_MYSQL_DATABASE", "athens"),
            ("ATHENS_INDEX_MYSQL_PARAMS", "parseTime:true,timeout:5s"),
        ];
        check_sql_index(up.path(), "", &env).await;
        checked += 1;
    }
    println!("SQL indexes checked: {checked}");
    drop(pg);
    drop(maria);
}

async fn check_sql_index(upstream: &Path, text: &str, env: &[(&str, &str)]) {
    let first = gateway(upstream, text, env).await.unwrap();
    let app = &first.app;
    assert_eq!(index_lines(app, "").await.len(), 0, "a fresh database");
    for (m, v) in [
        (fixtures::BASE, "v1.0.0"),
        (fixtures::MIXED, fixtures::MIXED_V),
    ] {
        let r = get(app, &url(m, &format!("@v/{v}.mod"))).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    let lines = wait_index(app, 2).await;
    assert_eq!(
        pairs(&lines),
        // Sorted: upper case before lower case.
        vec![
            (fixtures::MIXED.to_string(), fixtures::MIXED_V.to_string()),
            (fixtures::BASE.to_string(), "v1.0.0".to_string())
        ]
    );
    assert_eq!(index_lines(app, "?limit=1").await.len(), 1);
    let before = get(app, "/index").await.text();
    drop(first);

    // A restarted gateway (fresh memory storage) sees the same entries,
    // and indexing a version again adds nothing.
    let second = gateway(upstream, text, env).await.unwrap();
    assert_eq!(get(&second.app, "/index").await.text(), before);
    let r = get(&second.app, &url(fixtures::BASE, "@v/v1.0.0.info")).await;
    assert_eq!(r.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(&second.app, "/index").await.text(), before);
    let last = &lines[1]["Timestamp"].as_str().unwrap().to_string();
    let since = index_lines(&second.app, &format!("?since={last}")).await;
    assert!(!since.is_empty() && since.len() <= 2, "{since:?}");
}

// ------------------------------------------------ the binary, the go command

struct Child(std::process::Child, tempfile::TempDir);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

impl Child {
    fn log(&self) -> String {
        std::fs::read_to_string(self.1.path().join("log")).unwrap_or_default()
    }
}

/// Starts the `gateway` binary over `upstream` with `env`.
fn spawn_gateway(upstream: &Path, env: &[(&str, String)]) -> Child {
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .env("ATHENS_LOG_LEVEL", "info")
        .env("ATHENS_GOGET_DIR", dir.path())
        .env(
            "ATHENS_GO_BINARY_ENV_VARS",
            format!("GOPROXY=file://{};GOSUMDB=off", upstream.display()),
        )
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Child(cmd.spawn().unwrap(), dir)
}

async fn wait_tcp(child: &mut Child, addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("gateway exited ({status}):\n{}", child.log());
        }
        assert!(
            Instant::now() < deadline,
            "gateway not listening:\n{}",
            child.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn go_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

async fn go_download(
    proxy: &str,
    module: &str,
    version: &str,
    extra: &[(&str, &str)],
) -> anyhow::Result<String> {
    let env = modmesh_tests::goclient::GoEnv::new(proxy)?;
    let dir = go_dir();
    let out = env
        .run_with(
            dir.path(),
            &["mod", "download", "-json", &format!("{module}@{version}")],
            extra,
        )
        .await?;
    Ok(out.stdout)
}

#[tokio::test(flavor = "multi_thread")]
async fn go_command_through_filter_and_hook_under_a_prefix() {
    let up = upstream();
    // The upstream over HTTP too: where `D` rules send the go command.
    let direct = modmesh_tests::server::StaticServer::start(up.path()).unwrap();
    let hook = hook(fixtures::LIB_V2).await;
    let dir = tempfile::tempdir().unwrap();
    let filter = dir.path().join("filter");
    std::fs::write(
        &filter,
        format!(
            "-\n+ {}\n+ {}\n- {}\nD {}\n",
            fixtures::BASE,
            fixtures::LIB_V2,
            fixtures::LEGACY,
            fixtures::PSEUDO
        ),
    )
    .unwrap();
    // Plain HTTP and no credentials here (the go command sends
    // credentials, and follows redirects, only from https to https; auth
    // with the go command is checked over TLS below).
    let ssl: &[(&str, &str)] = &[];
    let port = modmesh_tests::procs::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut gw = spawn_gateway(
        up.path(),
        &[
            ("ATHENS_PORT", addr.clone()),
            ("ATHENS_PATH_PREFIX", "/gomods".into()),
            ("ATHENS_FILTER_FILE", filter.display().to_string()),
            ("ATHENS_GLOBAL_ENDPOINT", direct.url()),
            ("ATHENS_PROXY_VALIDATOR", format!("{}/check", hook.url)),
        ],
    );
    wait_tcp(&mut gw, &addr).await;
    let proxy = format!("http://{addr}/gomods");
    // `+`: served.
    let out = go_download(&proxy, fixtures::BASE, "v1.0.0", ssl)
        .await
        .unwrap();
    assert!(out.contains("\"Version\": \"v1.0.0\""), "{out}");
    // `-`: refused with 403.
    let e = go_download(&proxy, fixtures::LEGACY, fixtures::LEGACY_V, ssl)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("403"), "{e}");
    // The default `-` refuses modules not listed.
    let e = go_download(&proxy, fixtures::MIXED, fixtures::MIXED_V, ssl)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("403"), "{e}");
    // `D`: the go command follows the 303 to GlobalEndpoint.
    let out = go_download(&proxy, fixtures::PSEUDO, fixtures::PSEUDO_V, ssl)
        .await
        .unwrap();
    assert!(out.contains(fixtures::PSEUDO_V), "{out}");
    assert!(
        direct.count(&fixtures::url_path(
            fixtures::PSEUDO,
            fixtures::PSEUDO_V,
            "zip"
        )) >= 1
    );
    // The hook refuses lib/v2: 403.
    let e = go_download(&proxy, fixtures::LIB_V2, fixtures::LIB_V2_V, ssl)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("403"), "{e}");
    assert!(hook.calls(fixtures::LIB_V2) >= 1);
    // Only the allowed module was fetched and stored (the log names each fetch).
    let log = gw.log();
    drop(gw);
    assert!(log.contains("fetched and stored"), "{log}");
    for m in [
        fixtures::LEGACY,
        fixtures::MIXED,
        fixtures::PSEUDO,
        fixtures::LIB_V2,
    ] {
        assert!(
            !log.lines()
                .any(|l| l.contains("fetched and stored") && l.contains(&format!("{m}@"))),
            "{m} was fetched:\n{log}"
        );
    }
}

/// GET over plain TCP (status, body), with optional basic credentials.
async fn raw_get(addr: &str, path: &str, creds: Option<&str>) -> (u16, String) {
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    raw_exchange(s, addr, path, creds).await
}

async fn raw_exchange<S>(mut s: S, host: &str, path: &str, creds: Option<&str>) -> (u16, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use base64::Engine;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let auth = creds
        .map(|c| {
            format!(
                "Authorization: Basic {}\r\n",
                base64::engine::general_purpose::STANDARD.encode(c)
            )
        })
        .unwrap_or_default();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

/// A fresh CA and a certificate for localhost / 127.0.0.1 signed by it.
fn pki(name: &str) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, format!("{name} test CA"));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// A TLS handshake with `addr` trusting only `ca_pem`; the ALPN protocol.
async fn handshake(addr: &str, ca_pem: &str) -> Result<Option<Vec<u8>>, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    Ok(s.get_ref().1.alpn_protocol().map(|p| p.to_vec()))
}

#[tokio::test(flavor = "multi_thread")]
async fn go_command_over_tls_with_auth_prefix_and_reload() {
    let up = upstream();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let first = pki("first");
    std::fs::write(&cert, &first.cert_pem).unwrap();
    std::fs::write(&key, &first.key_pem).unwrap();
    let ca1 = dir.path().join("ca1.pem");
    std::fs::write(&ca1, &first.ca_pem).unwrap();
    let port = modmesh_tests::procs::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut gw = spawn_gateway(
        up.path(),
        &[
            ("ATHENS_PORT", format!(":{port}")),
            ("ATHENS_TLSCERT_FILE", cert.display().to_string()),
            ("ATHENS_TLSKEY_FILE", key.display().to_string()),
            ("BASIC_AUTH_USER", "gopher".into()),
            ("BASIC_AUTH_PASS", "tls-pass".into()),
            ("ATHENS_PATH_PREFIX", "/gomods".into()),
        ],
    );
    wait_tcp(&mut gw, &addr).await;
    // HTTP/2 by ALPN.
    assert_eq!(
        handshake(&addr, &first.ca_pem).await.unwrap().as_deref(),
        Some(&b"h2"[..])
    );
    let proxy = format!("https://gopher:tls-pass@localhost:{port}/gomods");
    let ca1s = ca1.display().to_string();
    let out = go_download(
        &proxy,
        fixtures::BASE,
        "v1.0.0",
        &[("SSL_CERT_FILE", &ca1s)],
    )
    .await
    .unwrap();
    assert!(out.contains("\"Version\": \"v1.0.0\""), "{out}");
    // Without or with wrong credentials: refused.
    for p in [
        format!("https://localhost:{port}/gomods"),
        format!("https://gopher:nope@localhost:{port}/gomods"),
    ] {
        let e = go_download(
            &p,
            fixtures::BASE,
            fixtures::BASE_RC,
            &[("SSL_CERT_FILE", &ca1s)],
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("401"), "{e}");
    }
    // Plain HTTP on the TLS port is not served.
    let (status, _) = raw_get(&addr, "/gomods/healthz", None).await;
    assert_ne!(status, 200);

    // New files: the new certificate is served without a restart.
    let second = pki("second");
    let ca2 = dir.path().join("ca2.pem");
    std::fs::write(&ca2, &second.ca_pem).unwrap();
    std::fs::write(&key, &second.key_pem).unwrap();
    std::fs::write(&cert, &second.cert_pem).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while handshake(&addr, &second.ca_pem).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "certificate not reloaded:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        handshake(&addr, &first.ca_pem).await.is_err(),
        "the old certificate is gone"
    );
    let ca2s = ca2.display().to_string();
    let out = go_download(
        &proxy,
        fixtures::BASE,
        fixtures::BASE_RC,
        &[("SSL_CERT_FILE", &ca2s)],
    )
    .await
    .unwrap();
    assert!(out.contains(fixtures::BASE_RC), "{out}");
    // A broken pair keeps the working certificate.
    std::fs::write(&cert, "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        handshake(&addr, &second.ca_pem).await.is_ok(),
        "{}",
        gw.log()
    );
    assert!(gw.log().contains("does not load"), "{}", gw.log());
    drop(gw);
}

#[tokio::test(flavor = "multi_thread")]
async fn unix_socket_takes_precedence_with_auth_and_prefix() {
    let up = upstream();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("gateway.sock");
    let port = modmesh_tests::procs::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut gw = spawn_gateway(
        up.path(),
        &[
            ("ATHENS_PORT", addr.clone()),
            ("ATHENS_UNIX_SOCKET", sock.display().to_string()),
            ("BASIC_AUTH_USER", "gopher".into()),
            ("BASIC_AUTH_PASS", "sock-pass".into()),
            ("ATHENS_PATH_PREFIX", "/gomods".into()),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::UnixStream::connect(&sock).await.is_err() {
        if let Ok(Some(status)) = gw.0.try_wait() {
            panic!("gateway exited ({status}):\n{}", gw.log());
        }
        assert!(Instant::now() < deadline, "no socket:\n{}", gw.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let req = |path: &'static str, creds: Option<&'static str>| {
        let sock = sock.clone();
        async move {
            let s = tokio::net::UnixStream::connect(&sock).await.unwrap();
            raw_exchange(s, "localhost", path, creds).await
        }
    };
    assert_eq!(req("/gomods/healthz", None).await.0, 200);
    assert_eq!(req("/readyz", None).await.0, 200);
    assert_eq!(req("/gomods/example.com/base/@v/list", None).await.0, 401);
    let (status, body) = req("/gomods/example.com/base/@v/list", Some("gopher:sock-pass")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.lines().any(|l| l == "v1.0.0"), "{body}");
    let (status, body) = req(
        "/gomods/example.com/base/@v/v1.0.0.info",
        Some("gopher:sock-pass"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Nothing listens on the port.
    assert!(tokio::net::TcpStream::connect(&addr).await.is_err());
    drop(gw);
    // The socket file is removed on shutdown.
    assert!(!sock.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_edge_config_stops_the_binary_with_exit_2() {
    let up = upstream();
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    let port = modmesh_tests::procs::free_port();
    for (env, key) in [
        (
            vec![("BASIC_AUTH_USER", "alice".to_string())],
            "BasicAuthPass",
        ),
        (
            vec![
                ("ATHENS_TLSCERT_FILE", "/nonexistent/cert.pem".to_string()),
                ("ATHENS_TLSKEY_FILE", "/nonexistent/key.pem".to_string()),
            ],
            "TLSCertFile",
        ),
        (
            vec![
                ("ATHENS_TLSCERT_FILE", not_pem.display().to_string()),
                ("ATHENS_TLSKEY_FILE", not_pem.display().to_string()),
            ],
            "TLSCertFile",
        ),
        (
            vec![("ATHENS_FILTER_FILE", "/nonexistent/filter".to_string())],
            "FilterFile",
        ),
        (
            vec![("ATHENS_INDEX_TYPE", "sqlite".to_string())],
            "IndexType",
        ),
    ] {
        let mut env = env;
        env.push(("ATHENS_PORT", format!("127.0.0.1:{port}")));
        let mut child = spawn_gateway(up.path(), &env);
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = child.0.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "{key}: still running:\n{}",
                child.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(status.code(), Some(2), "{key}:\n{}", child.log());
        assert!(child.log().contains(key), "{key}:\n{}", child.log());
    }
}
