//! The gateway's HTTP semantics, in process: real storage, lock and
//! fetcher (the real go command against a local `file://` upstream), driven
//! through the router with `oneshot`.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use modmesh_common::Config;
use modmesh_gateway::{router, wire, AppState};
use modmesh_tests::fixtures;
use std::collections::HashMap;
use tower::ServiceExt;

struct Harness {
    app: Router,
    upstream: tempfile::TempDir,
    _work: tempfile::TempDir,
}

fn harness() -> Harness {
    let upstream = tempfile::tempdir().unwrap();
    fixtures::standard_proxy(upstream.path()).unwrap();
    let work = tempfile::tempdir().unwrap();
    let env: HashMap<&str, String> = HashMap::from([
        (
            "ATHENS_GO_BINARY_ENV_VARS",
            format!("GOPROXY=file://{};GOSUMDB=off", upstream.path().display()),
        ),
        ("ATHENS_GOGET_DIR", work.path().display().to_string()),
        ("ATHENS_TIMEOUT", "60".into()),
    ]);
    let cfg = Config::load(None, move |k| env.get(k).cloned()).unwrap();
    let (services, _) = wire::services(&cfg).unwrap();
    Harness {
        app: router(AppState::new(services, cfg.ProtocolWorkers, cfg.timeout())),
        upstream,
        _work: work,
    }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: bytes::Bytes,
}

impl Answer {
    fn content_type(&self) -> &str {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn send(app: &Router, method: Method, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = Request::builder().method(method).uri(path);
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
    send(app, Method::GET, path, &[]).await
}

fn path(module: &str, rest: &str) -> String {
    format!("/{}/{rest}", fixtures::escape(module))
}

#[tokio::test(flavor = "multi_thread")]
async fn endpoints_answer_with_go_semantics() {
    let h = harness();
    let app = &h.app;
    let base = fixtures::BASE;

    let list = get(app, &path(base, "@v/list")).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text());
    assert_eq!(list.content_type(), "text/plain; charset=utf-8");
    let versions: Vec<String> = list.text().lines().map(String::from).collect();
    assert!(versions.contains(&"v1.0.0".to_string()), "{versions:?}");
    assert!(
        versions.contains(&fixtures::BASE_RC.to_string()),
        "{versions:?}"
    );

    let info = get(app, &path(base, "@v/v1.0.0.info")).await;
    assert_eq!(info.status, StatusCode::OK, "{}", info.text());
    assert_eq!(info.content_type(), "application/json");
    let v: serde_json::Value = serde_json::from_slice(&info.body).unwrap();
    assert_eq!(v["Version"], "v1.0.0");

    let m = get(app, &path(base, "@v/v1.0.0.mod")).await;
    assert_eq!(m.status, StatusCode::OK);
    assert_eq!(m.content_type(), "text/plain; charset=utf-8");
    assert!(
        m.text().starts_with(&format!("module {base}")),
        "{}",
        m.text()
    );

    let upstream_zip = std::fs::read(
        fixtures::ProxyDir::new(h.upstream.path())
            .unwrap()
            .file(base, "v1.0.0", "zip"),
    )
    .unwrap();
    let zip = get(app, &path(base, "@v/v1.0.0.zip")).await;
    assert_eq!(zip.status, StatusCode::OK);
    assert_eq!(zip.content_type(), "application/zip");
    assert_eq!(zip.body.as_ref(), upstream_zip.as_slice());
    assert_eq!(
        zip.headers[header::CONTENT_LENGTH].to_str().unwrap(),
        upstream_zip.len().to_string()
    );

    let head = send(app, Method::HEAD, &path(base, "@v/v1.0.0.zip"), &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(
        head.headers[header::CONTENT_LENGTH].to_str().unwrap(),
        upstream_zip.len().to_string()
    );
    assert!(head.body.is_empty());

    let latest = get(app, &path(base, "@latest")).await;
    assert_eq!(latest.status, StatusCode::OK, "{}", latest.text());
    assert_eq!(latest.content_type(), "application/json");
    let v: serde_json::Value = serde_json::from_slice(&latest.body).unwrap();
    assert_eq!(v["Version"], "v1.0.0");

    // A query in .info is resolved (here `v1`, the highest v1 release).
    let q = get(app, &path(base, "@v/v1.info")).await;
    assert_eq!(q.status, StatusCode::OK, "{}", q.text());
    let v: serde_json::Value = serde_json::from_slice(&q.body).unwrap();
    assert_eq!(v["Version"], "v1.0.0");

    // Mixed case and /v2 paths round-trip through case escaping.
    let mixed = get(
        app,
        &path(fixtures::MIXED, &format!("@v/{}.info", fixtures::MIXED_V)),
    )
    .await;
    assert_eq!(mixed.status, StatusCode::OK, "{}", mixed.text());
    let lib = get(
        app,
        &path(fixtures::LIB_V2, &format!("@v/{}.mod", fixtures::LIB_V2_V)),
    )
    .await;
    assert_eq!(lib.status, StatusCode::OK, "{}", lib.text());
    assert!(lib.text().contains(fixtures::LIB_V2));
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_things_are_404_in_plain_text() {
    let h = harness();
    for p in [
        "/example.com/nope/@v/list".to_string(),
        "/example.com/nope/@latest".to_string(),
        path(fixtures::BASE, "@v/v9.9.9.info"),
        path(fixtures::BASE, "@v/v9.9.9.mod"),
        path(fixtures::BASE, "@v/v9.9.9.zip"),
        "/favicon.ico".to_string(),
        "/example.com/base".to_string(),
    ] {
        let a = get(&h.app, &p).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{p}: {}", a.text());
        assert_eq!(a.content_type(), "text/plain; charset=utf-8", "{p}");
        assert!(!a.body.is_empty(), "{p}: an error says what went wrong");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_escapes_are_400_on_every_route() {
    let h = harness();
    for bad in [
        "example.com/!",
        "example.com/Upper",
        "example.com/a!!b",
        "-x.com/a",
    ] {
        for rest in [
            "@v/list",
            "@latest",
            "@v/v1.0.0.info",
            "@v/v1.0.0.mod",
            "@v/v1.0.0.zip",
        ] {
            let p = format!("/{bad}/{rest}");
            let a = get(&h.app, &p).await;
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{p}: {}", a.text());
            assert_eq!(a.content_type(), "text/plain; charset=utf-8", "{p}");
        }
    }
    for v in ["v1.0.0-!", "V1.0.0", "-v1", "a%3Bb"] {
        let p = format!("/example.com/base/@v/{v}.info");
        assert_eq!(get(&h.app, &p).await.status, StatusCode::BAD_REQUEST, "{p}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn other_methods_are_405() {
    let h = harness();
    let a = send(&h.app, Method::POST, &path(fixtures::BASE, "@v/list"), &[]).await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.headers[header::ALLOW], "GET, HEAD");
}

#[tokio::test(flavor = "multi_thread")]
async fn request_ids_are_echoed_or_made() {
    let h = harness();
    let a = send(
        &h.app,
        Method::GET,
        "/healthz",
        &[("x-request-id", "abc-123")],
    )
    .await;
    assert_eq!(a.headers["x-request-id"], "abc-123");
    let a = send(
        &h.app,
        Method::GET,
        "/healthz",
        &[("athens-request-id", "from-athens")],
    )
    .await;
    assert_eq!(a.headers["x-request-id"], "from-athens");
    let a = get(&h.app, "/example.com/nope/@v/list").await;
    let made = a.headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(made.len(), 36, "a fresh uuid: {made}");
    let b = get(&h.app, "/healthz").await;
    assert_ne!(b.headers["x-request-id"].to_str().unwrap(), made);
}

#[tokio::test(flavor = "multi_thread")]
async fn health_readiness_and_version() {
    let h = harness();
    assert_eq!(get(&h.app, "/healthz").await.status, StatusCode::OK);
    assert_eq!(get(&h.app, "/readyz").await.status, StatusCode::OK);
    let v = get(&h.app, "/version").await;
    assert_eq!(v.status, StatusCode::OK);
    let j: serde_json::Value = serde_json::from_slice(&v.body).unwrap();
    assert_eq!(j["version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_fails_when_a_remote_service_is_down() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let env: HashMap<&str, String> = HashMap::from([("ATHENS_LOCK_SVC_URL", url)]);
    let cfg = Config::load(None, move |k| env.get(k).cloned()).unwrap();
    let (services, _) = wire::services(&cfg).unwrap();
    let app = router(AppState::new(services, 4, cfg.timeout()));
    let a = get(&app, "/readyz").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.text());
    assert!(a.text().contains("lock"), "{}", a.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn list_and_latest_survive_an_upstream_outage() {
    let h = harness();
    let base = fixtures::BASE;
    assert_eq!(
        get(&h.app, &path(base, "@v/v1.0.0.zip")).await.status,
        StatusCode::OK
    );
    // The upstream disappears.
    std::fs::remove_dir_all(h.upstream.path()).unwrap();
    let list = get(&h.app, &path(base, "@v/list")).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text());
    assert_eq!(list.text(), "v1.0.0\n");
    let latest = get(&h.app, &path(base, "@latest")).await;
    assert_eq!(latest.status, StatusCode::OK, "{}", latest.text());
    let v: serde_json::Value = serde_json::from_slice(&latest.body).unwrap();
    assert_eq!(v["Version"], "v1.0.0");
    // Stored versions are still served; others are 404.
    assert_eq!(
        get(&h.app, &path(base, "@v/v1.0.0.mod")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(
            &h.app,
            &path(base, &format!("@v/{}.mod", fixtures::BASE_RC))
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
}
