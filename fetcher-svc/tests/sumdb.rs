//! The fetcher's checksum-database GETs, in-process and over gRPC, against
//! a loopback HTTP server: bodies pass through, errors keep their kind.

use modmesh_common::server::LoopbackServer;
use modmesh_fetcher::client::FetcherClient;
use modmesh_fetcher::gocmd::{GoFetcher, GoSettings};
use modmesh_fetcher::sumdb::{SumDb, SumDbClient};
use modmesh_fetcher::{server, Fetcher};
use modmesh_proto::ErrorKind;
use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;
use std::time::Duration;

/// A one-thread HTTP server answering each path as `answer` says.
fn serve(answer: fn(&str) -> (u16, &'static str)) -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                let path = line.split(' ').nth(1).unwrap_or("").to_string();
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                let (code, body) = answer(&path);
                if code == 0 {
                    std::thread::sleep(Duration::from_secs(5));
                    return;
                }
                let _ = write!(
                    s,
                    "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    format!("http://{addr}")
}

fn answer(path: &str) -> (u16, &'static str) {
    match path {
        "/db/lookup/example.com/a@v1.0.0" => (200, "record a\n"),
        "/db/tile/8/0/000" => (410, "gone"),
        "/db/lookup/example.com/slow@v1.0.0" => (0, ""),
        "/db/latest" => (503, "busy"),
        "/db/lookup/example.com/private@v1.0.0" => (403, "no"),
        _ => (404, "not found"),
    }
}

#[tokio::test]
async fn sumdb_gets_keep_their_kind_in_process_and_over_grpc() {
    let url = serve(answer);
    let db = SumDb::from_url(&format!("{url}/db")).unwrap();
    let name = db.name.clone();
    let dir = tempfile::tempdir().unwrap();
    let settings = GoSettings {
        go_get_dir: Some(dir.path().to_path_buf()),
        ..GoSettings::default()
    };
    let storage = Arc::new(modmesh_storage::backends::memory::MemoryStorage::new());
    let f: Arc<dyn Fetcher> = Arc::new(
        GoFetcher::new(settings, storage)
            .with_sumdb(SumDbClient::new(vec![db], Duration::from_millis(800))),
    );
    let srv = LoopbackServer::start(server::routes(f.clone()), &[server::SERVICE_NAME])
        .await
        .unwrap();
    let client: Arc<dyn Fetcher> = Arc::new(FetcherClient::new(&srv.url).unwrap());
    for f in [f, client.clone()] {
        let b = f.sumdb(&name, "lookup/example.com/a@v1.0.0").await.unwrap();
        assert_eq!(&b[..], b"record a\n");
        assert!(f.sumdb(&name, "supported").await.unwrap().is_empty());
        let kind = |e: modmesh_proto::Error| e.kind;
        let cases = [
            (name.as_str(), "tile/8/0/000", ErrorKind::Gone),
            (
                name.as_str(),
                "lookup/example.com/b@v1.0.0",
                ErrorKind::NotFound,
            ),
            (name.as_str(), "latest", ErrorKind::Unavailable),
            (
                name.as_str(),
                "lookup/example.com/private@v1.0.0",
                ErrorKind::Permission,
            ),
            (
                name.as_str(),
                "lookup/example.com/slow@v1.0.0",
                ErrorKind::Timeout,
            ),
            (
                name.as_str(),
                "lookup/../../etc/passwd",
                ErrorKind::NotFound,
            ),
            ("other.example", "supported", ErrorKind::NotFound),
            ("other.example", "latest", ErrorKind::NotFound),
        ];
        for (db, path, want) in cases {
            let got = kind(f.sumdb(db, path).await.unwrap_err());
            assert_eq!(got, want, "{db} {path}");
        }
    }
    // A database that cannot be reached is Unavailable.
    let gone = SumDb::from_url("http://127.0.0.1:1").unwrap();
    let c = SumDbClient::new(vec![gone.clone()], Duration::from_secs(2));
    let e = c.get(&gone.name, "latest").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    srv.stop().await.unwrap();
}

/// Where only the module proxy is reachable, the checksum database is
/// reached through the proxy (`<proxy>/sumdb/<name>/...`) when the proxy
/// says it serves it, as the go command does; a proxy that does not is
/// skipped for the database itself.
#[tokio::test(flavor = "multi_thread")]
async fn the_database_is_reached_through_a_proxy_that_serves_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sumdb/db.example");
    std::fs::create_dir_all(db.join("lookup")).unwrap();
    std::fs::write(db.join("supported"), "").unwrap();
    std::fs::write(db.join("lookup/example.com!a@v1.0.0"), "record\n").unwrap();
    let serving = modmesh_tests::server::StaticServer::start(dir.path()).unwrap();
    let empty = tempfile::tempdir().unwrap();
    let not_serving = modmesh_tests::server::StaticServer::start(empty.path()).unwrap();
    // The database's own host is unreachable.
    let client = SumDbClient::new(
        vec![SumDb {
            name: "db.example".into(),
            url: "http://127.0.0.1:1".into(),
        }],
        Duration::from_secs(5),
    );
    let proxies = [not_serving.url(), serving.url()];
    let got = client
        .get_via("db.example", "lookup/example.com!a@v1.0.0", &proxies)
        .await
        .unwrap();
    assert_eq!(&got[..], b"record\n");
    assert_eq!(
        serving.count("/sumdb/db.example/lookup/example.com!a@v1.0.0"),
        1
    );
    assert_eq!(not_serving.count("/sumdb/db.example/supported"), 1);
    // Without a proxy that serves it, the unreachable database is the answer.
    let e = client
        .get_via(
            "db.example",
            "lookup/example.com!a@v1.0.0",
            &[not_serving.url()],
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
}
