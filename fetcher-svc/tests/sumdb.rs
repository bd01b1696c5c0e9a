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

/// The log code (record and node hashes, stored-hash numbering, tiles,
/// tree hashes, record and tree proofs, tree notes) agrees with the go
/// command's own package: vectors printed by `golang.org/x/mod/sumdb/tlog`
/// through the tests' checksum-database helper (`-vectors`), for trees of
/// 1 to 600 records (full tiles, partial tiles, two tile levels). Every
/// proof Go made is recomputed here from the tiles alone (authenticated
/// against the root) and accepted; changed ones are refused.
#[tokio::test]
async fn the_log_code_agrees_with_the_go_tlog_package() {
    use modmesh_fetcher::native::tlog::{self, HashRead, Tree, TILE_HEIGHT};
    if modmesh_test_support::find_program("go").is_none() {
        modmesh_test_support::skip("go is not installed", "scripts/deps/60-sumdb.sh");
        return;
    }
    let bin = modmesh_tests::sumdb::helper().await.unwrap();
    let out = tokio::process::Command::new(bin)
        .arg("-vectors")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let hash = |s: &serde_json::Value| tlog::parse_hash(s.as_str().unwrap()).unwrap();
    let hashes = |s: &serde_json::Value| -> Vec<tlog::Hash> {
        s.as_array().unwrap().iter().map(hash).collect()
    };
    let int = |s: &serde_json::Value| s.as_i64().unwrap();

    let records: Vec<&str> = v["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let leaves = hashes(&v["record_hashes"]);
    assert_eq!(records.len(), 600);
    for (r, h) in records.iter().zip(&leaves) {
        assert_eq!(tlog::record_hash(r.as_bytes()), *h, "{r:?}");
    }
    assert_eq!(
        tlog::node_hash(&leaves[0], &leaves[1]),
        hash(&v["node_hash"])
    );
    for x in v["indexes"].as_array().unwrap() {
        let (index, level, n) = (int(&x["index"]), int(&x["level"]) as u32, int(&x["n"]));
        assert_eq!(tlog::split_stored_hash_index(index), (level, n), "{x}");
        assert_eq!(tlog::stored_hash_index(level, n), index, "{x}");
        assert_eq!(
            tlog::tile_for_index(TILE_HEIGHT, index).path(),
            x["tile"].as_str().unwrap()
        );
    }
    let tiles: std::collections::HashMap<String, Vec<u8>> = v["tiles"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(p, d)| {
            use base64::Engine;
            let d = base64::engine::general_purpose::STANDARD
                .decode(d.as_str().unwrap())
                .unwrap();
            (p.clone(), d)
        })
        .collect();
    let mut trees = std::collections::HashMap::new();
    for t in v["trees"].as_array().unwrap() {
        let tree = Tree::parse(t["text"].as_str().unwrap()).unwrap();
        assert_eq!(tree.n, int(&t["n"]));
        assert_eq!(tree.hash, hash(&t["hash"]));
        trees.insert(tree.n, tree);
    }
    assert_eq!(trees.len(), 17);
    // Hashes of a tree, read from its tiles as the fetcher reads them.
    let read = |tree: Tree, indexes: &[i64]| -> Vec<tlog::Hash> {
        let plan = HashRead::plan(tree, TILE_HEIGHT, indexes).unwrap();
        let data: Vec<&Vec<u8>> = plan
            .tiles()
            .iter()
            .map(|t| {
                tiles
                    .get(&t.path())
                    .unwrap_or_else(|| panic!("no {}", t.path()))
            })
            .collect();
        plan.finish(&data).unwrap()
    };
    for tree in trees.values() {
        let got = tlog::tree_hash(tree.n, &read(*tree, &tlog::tree_hash_indexes(tree.n)));
        assert_eq!(got.unwrap(), tree.hash, "tree {}", tree.n);
        // A flipped byte in any tile the read needs is refused.
        let idx = tlog::tree_hash_indexes(tree.n);
        let plan = HashRead::plan(*tree, TILE_HEIGHT, &idx).unwrap();
        for bad in 0..plan.tiles().len() {
            let data: Vec<Vec<u8>> = plan
                .tiles()
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let mut d = tiles[&t.path()].clone();
                    if i == bad {
                        d[0] ^= 1;
                    }
                    d
                })
                .collect();
            assert!(plan.finish(&data).is_err(), "tree {} tile {bad}", tree.n);
        }
    }
    let mut checked = 0;
    for p in v["record_proofs"].as_array().unwrap() {
        let (t, n, want) = (int(&p["t"]), int(&p["n"]), hashes(&p["proof"]));
        let tree = trees[&t];
        let got = tlog::record_proof(
            t,
            n,
            &read(tree, &tlog::record_proof_indexes(t, n).unwrap()),
        )
        .unwrap();
        assert_eq!(got, want, "record proof {n} in {t}");
        // Every tile the proof reads is authenticated: a child tile too
        // (for 300 records and record 5, the full first tile under the
        // partial level-1 tile), so a flipped byte anywhere is refused.
        let plan = HashRead::plan(
            tree,
            TILE_HEIGHT,
            &tlog::record_proof_indexes(t, n).unwrap(),
        )
        .unwrap();
        for bad in 0..plan.tiles().len() {
            let data: Vec<Vec<u8>> = plan
                .tiles()
                .iter()
                .enumerate()
                .map(|(i, tl)| {
                    let mut d = tiles[&tl.path()].clone();
                    if i == bad {
                        d[0] ^= 1;
                    }
                    d
                })
                .collect();
            assert!(plan.finish(&data).is_err(), "record {n} in {t}: tile {bad}");
        }
        let leaf = &leaves[n as usize];
        tlog::check_record(&got, t, &tree.hash, n, leaf).unwrap();
        // Another record, another position, a changed proof: refused.
        let other = &leaves[(n as usize + 1) % 600];
        assert!(tlog::check_record(&got, t, &tree.hash, n, other).is_err());
        if t > 1 {
            let pos = (n + 1) % t;
            assert!(tlog::check_record(&got, t, &tree.hash, pos, leaf).is_err());
            let mut bad = got.clone();
            bad[0][31] ^= 1;
            assert!(tlog::check_record(&bad, t, &tree.hash, n, leaf).is_err());
        }
        checked += 1;
    }
    for p in v["tree_proofs"].as_array().unwrap() {
        let (t, n, want) = (int(&p["t"]), int(&p["n"]), hashes(&p["proof"]));
        let (newer, older) = (trees[&t], trees.get(&n).copied());
        let got =
            tlog::tree_proof(t, n, &read(newer, &tlog::tree_proof_indexes(t, n).unwrap())).unwrap();
        assert_eq!(got, want, "tree proof {n} in {t}");
        let old_hash = match older {
            Some(o) => o.hash,
            None => tlog::tree_hash(n, &read(newer, &tlog::tree_hash_indexes(n))).unwrap(),
        };
        tlog::check_tree(&got, t, &newer.hash, n, &old_hash).unwrap();
        if n < t {
            // A forked old tree is not a prefix.
            let mut forked = old_hash;
            forked[0] ^= 1;
            assert!(tlog::check_tree(&got, t, &newer.hash, n, &forked).is_err());
        }
        checked += 1;
    }
    assert!(checked > 200, "{checked} proofs");
}

/// The tree checks of one fetcher process against the tests' real signed
/// database (300 made-up records): a lookup is proved from tiles, the same
/// and a neighbouring record again from the cache alone; a record text
/// changed under its signed head is refused; after the database forks
/// (same key, another history), its smaller head is refused and the latest
/// head stays the one verified.
#[tokio::test]
async fn lookups_are_proved_from_cached_tiles_and_forks_refused() {
    use modmesh_fetcher::native::sumcheck::{parse_lookup, Verifier};
    use modmesh_fetcher::native::sumtree::TreeState;
    if modmesh_test_support::find_program("go").is_none() {
        modmesh_test_support::skip("go is not installed", "scripts/deps/60-sumdb.sh");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let db = modmesh_tests::sumdb::TestSumDb::start_with(root.path(), &["-pad", "300"])
        .await
        .unwrap();
    let verifier = Verifier::parse(&db.vkey).unwrap();
    let sumdb = SumDb::from_url(&db.url).unwrap();
    let client = SumDbClient::new(vec![sumdb.clone()], Duration::from_secs(10));
    let name = sumdb.name.as_str();
    let fetch = |path: String| {
        let client = &client;
        async move { client.get(name, &path).await }
    };
    let state = TreeState::default();
    let lookup = |path: &'static str| {
        let client = &client;
        async move {
            let body = client.get(name, path).await.unwrap();
            String::from_utf8(body.to_vec()).unwrap()
        }
    };

    let body = lookup("lookup/pad.example/honest@v0.0.5").await;
    let l = parse_lookup(&body, &verifier).unwrap();
    assert_eq!((l.id, l.tree.n), (5, 300));
    state.verify(name, &l, fetch).await.unwrap();
    let first = state.tiles_fetched();
    assert!(first > 0);
    assert_eq!(state.latest(name), l.tree);
    // Again, and a record of the same tiles: nothing asked.
    state.verify(name, &l, fetch).await.unwrap();
    let body = lookup("lookup/pad.example/honest@v0.0.200").await;
    let l2 = parse_lookup(&body, &verifier).unwrap();
    state.verify(name, &l2, fetch).await.unwrap();
    assert_eq!(state.tiles_fetched(), first);
    let served: u64 = db
        .tiles_served()
        .await
        .unwrap()
        .iter()
        .map(|(n, _)| n)
        .sum();
    assert_eq!(served, first, "the database counted other tile requests");

    // Another text under the same id and signed head.
    let forged = body.replacen("v0.0.200 h1:", "v0.0.200 h1:A", 1);
    let l3 = parse_lookup(&forged, &verifier).unwrap();
    let e = state.verify(name, &l3, fetch).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permission, "{e}");
    assert!(e.message.contains("cannot authenticate record data"), "{e}");

    // A forked database: its head of 2 records is not a prefix of the 300.
    db.fork(2).await.unwrap();
    let body = lookup("lookup/pad.example/fork@v0.0.1").await;
    let l4 = parse_lookup(&body, &verifier).unwrap();
    assert_eq!(l4.tree.n, 2);
    let e = state.verify(name, &l4, fetch).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permission, "{e}");
    assert!(e.message.contains("misbehavior detected"), "{e}");
    assert_eq!(state.latest(name), l.tree);
}
