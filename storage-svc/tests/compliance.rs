//! The compliance suite against every backend, in process and behind a
//! real gRPC server; plus disk-layout, server-protocol, client and binary
//! tests. A new backend is one more `storage_compliance_tests!` line.

mod common;

use bytes::Bytes;
use common::*;
use futures::StreamExt;
use modmesh_proto::pb::{self, save_chunk, storage_client::StorageClient as RawClient};
use modmesh_proto::{Coordinates, ErrorKind, ModulePath, Result, MAX_CHUNK};
use modmesh_storage::backends::DiskStorage;
use modmesh_storage::client::StorageClient;
use modmesh_storage::compliance::{self, coords};
use modmesh_storage::{
    storage_compliance_tests, ByteStream, Capabilities, CatalogPage, SaveRequest, Storage,
    VersionStat, ZipReader,
};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

storage_compliance_tests!(memory, memory_backend());
storage_compliance_tests!(disk, disk_backend());
storage_compliance_tests!(grpc_memory, grpc_memory_backend());
storage_compliance_tests!(grpc_disk, grpc_disk_backend());
storage_compliance_tests!(gcp, modmesh_storage::backends::gcp::testing::fixture());
storage_compliance_tests!(
    azureblob,
    modmesh_storage::backends::azureblob::testing::fixture()
);

/// The gcp and azureblob backends beyond the suite, each against its real
/// server (fake-gcs-server, Azurite): an Athens-filled bucket served as it
/// is, crashed saves' leftovers, start-up checks, an outage.
mod cloud {
    use modmesh_storage::backends::azureblob::testing::{self as az, Azurite};
    use modmesh_storage::backends::cloud_servers as checks;
    use modmesh_storage::backends::gcp::testing::{self as gcs, FakeGcs};
    use modmesh_storage::backends::{azureblob::AzureBlobStorage, gcp::GcpStorage};
    use std::sync::{Arc, Mutex};

    fn gcs() -> &'static FakeGcs {
        gcs::shared().expect("fake-gcs-server (scripts/deps/35-cloud.sh)")
    }
    fn azurite() -> &'static Azurite {
        az::shared().expect("azurite-blob (scripts/deps/35-cloud.sh)")
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn gcp_athens_layout_served_as_is() {
        checks::athens_layout_served_as_is(gcs()).await;
    }
    #[tokio::test(flavor = "multi_thread")]
    async fn azureblob_athens_layout_served_as_is() {
        checks::athens_layout_served_as_is(azurite()).await;
    }
    #[tokio::test(flavor = "multi_thread")]
    async fn gcp_orphans_never_served_then_replaced() {
        checks::orphans_never_served_then_replaced(gcs()).await;
    }
    #[tokio::test(flavor = "multi_thread")]
    async fn azureblob_orphans_never_served_then_replaced() {
        checks::orphans_never_served_then_replaced(azurite()).await;
    }
    #[tokio::test(flavor = "multi_thread")]
    async fn gcp_from_config_checks_bucket() {
        checks::from_config_checks_bucket(gcs(), "gcp", "Storage.GCP.Bucket").await;
    }
    #[tokio::test(flavor = "multi_thread")]
    async fn azureblob_from_config_checks_container() {
        checks::from_config_checks_bucket(
            azurite(),
            "azureblob",
            "Storage.AzureBlob.ContainerName",
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn gcp_outage_then_recovery() {
        let server = Mutex::new(FakeGcs::start().expect("fake-gcs-server"));
        let bucket = "mm-outage";
        let url = server.lock().unwrap().url();
        gcs::create_bucket_at(&url, bucket).await;
        let deadline = std::time::Duration::from_secs(2);
        let s = Arc::new(
            GcpStorage::new(server.lock().unwrap().config(bucket))
                .unwrap()
                .with_call_timeout(deadline),
        );
        checks::outage_then_recovery(
            s,
            deadline,
            || server.lock().unwrap().proc.pause(),
            || server.lock().unwrap().proc.resume(),
            || server.lock().unwrap().proc.stop(),
            || async {
                tokio::task::block_in_place(|| server.lock().unwrap().proc.restart());
                gcs::create_bucket_at(&url, bucket).await;
            },
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn azureblob_outage_then_recovery() {
        let server = Mutex::new(Azurite::start().expect("azurite-blob"));
        let container = "mm-outage";
        let cfg = server.lock().unwrap().config(container);
        cfg.container_client().unwrap().create().await.unwrap();
        let deadline = std::time::Duration::from_secs(2);
        let s = Arc::new(
            AzureBlobStorage::new(cfg.clone())
                .unwrap()
                .with_call_timeout(deadline),
        );
        checks::outage_then_recovery(
            s,
            deadline,
            || server.lock().unwrap().proc.pause(),
            || server.lock().unwrap().proc.resume(),
            || server.lock().unwrap().proc.stop(),
            || async {
                tokio::task::block_in_place(|| server.lock().unwrap().proc.restart());
                cfg.container_client().unwrap().create().await.unwrap();
            },
        )
        .await;
    }

    /// The connection-string and SAS-token forms of `[Storage.AzureBlob]`
    /// work against Azurite (presigned reads need the key, so the SAS form
    /// has none).
    #[tokio::test(flavor = "multi_thread")]
    async fn azureblob_connection_string_and_sas_token() {
        use azure_storage::shared_access_signature::SasToken;
        use modmesh_storage::backends::cloud_servers::CloudServer;
        use modmesh_storage::compliance::{assert_stored, coords, save_mock};
        let server = azurite();
        let container = server.new_bucket().await;
        let build = |env: &[(&str, &str)]| {
            let mut all = vec![
                ("ATHENS_STORAGE_TYPE", "azureblob"),
                ("ATHENS_AZURE_CONTAINER_NAME", container.as_str()),
            ];
            all.extend_from_slice(env);
            let cfg = modmesh_common::Config::from_text("", &all).unwrap();
            modmesh_storage::from_config(&cfg).unwrap()
        };
        let cs = format!(
            "DefaultEndpointsProtocol=http;AccountName={};AccountKey={};BlobEndpoint={};",
            az::ACCOUNT,
            az::KEY,
            server.endpoint()
        );
        let s = build(&[("AZURE_STORAGE_CONNECTION_STRING", &cs)]);
        let c = coords("example.com/forms", "v1.0.0");
        save_mock(&*s, &c).await;
        assert_stored(&*s, &c, b"123", b"456", b"789").await;
        assert!(s.capabilities().presigned_reads);

        let perms = azure_storage::shared_access_signature::service_sas::BlobSasPermissions {
            read: true,
            add: true,
            create: true,
            write: true,
            delete: true,
            list: true,
            ..Default::default()
        };
        let sas = server
            .config(&container)
            .container_client()
            .unwrap()
            .shared_access_signature(
                perms,
                time::OffsetDateTime::now_utc() + time::Duration::hours(1),
            )
            .await
            .unwrap()
            .token()
            .unwrap();
        let endpoint = server.endpoint();
        let s = build(&[
            ("ATHENS_AZURE_ACCOUNT_NAME", az::ACCOUNT),
            ("ATHENS_AZURE_SAS_TOKEN", &sas),
            ("ATHENS_AZURE_ENDPOINT", &endpoint),
        ]);
        assert_stored(&*s, &c, b"123", b"456", b"789").await;
        let c2 = coords("example.com/forms", "v1.1.0");
        save_mock(&*s, &c2).await;
        assert_eq!(s.list(&c.module).await.unwrap(), ["v1.0.0", "v1.1.0"]);
        assert!(!s.capabilities().presigned_reads);
        assert_eq!(
            s.presign_zip(&c2, std::time::Duration::from_secs(60))
                .await
                .unwrap(),
            None
        );
    }

    /// Azurite checks SAS signatures: the presigned URL serves the zip, the
    /// same URL with its signature altered is refused.
    #[tokio::test(flavor = "multi_thread")]
    async fn azureblob_presigned_url_is_verified() {
        let f = az::fixture().await;
        let c = modmesh_storage::compliance::coords("example.com/sas", "v1.0.0");
        modmesh_storage::compliance::save_mock(&*f.storage, &c).await;
        let url = f
            .storage
            .presign_zip(&c, std::time::Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        let ok = reqwest::get(&url).await.unwrap();
        assert!(ok.status().is_success(), "{}", ok.status());
        assert_eq!(ok.bytes().await.unwrap(), &b"789"[..]);
        let forged = url.replace("sig=", "sig=AAAA");
        let bad = reqwest::get(&forged).await.unwrap();
        assert_eq!(bad.status(), reqwest::StatusCode::FORBIDDEN);
    }
}

// ------------------------------------------------------------ disk layout

const QUOTE_ZIP: &[u8] = include_bytes!("fixtures/rsc.io-quote-v1.5.2.zip");
const QUOTE_MOD: &[u8] = include_bytes!("fixtures/rsc.io-quote-v1.5.2.mod");
const QUOTE_INFO: &[u8] = include_bytes!("fixtures/rsc.io-quote-v1.5.2.info");
/// From `go mod download -json rsc.io/quote@v1.5.2` (and go.sum).
const QUOTE_H1: &str = "h1:w5fcysjrx7yqtD/aO+QwRjYZOKnaM9Uh2b40tElTs3Y=";
const QUOTE_MOD_H1: &str = "h1:LzX7hefJvL54yjefDEDHNONDjII0t9xZLPXsUe+TKr0=";

fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

#[test]
fn hashes_match_the_go_toolchain() {
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("quote.zip");
    std::fs::write(&zip, QUOTE_ZIP).unwrap();
    assert_eq!(modmesh_storage::zip_hash(&zip).unwrap(), QUOTE_H1);
    assert_eq!(modmesh_storage::mod_hash(QUOTE_MOD), QUOTE_MOD_H1);
    let not_zip = dir.path().join("x.zip");
    std::fs::write(&not_zip, b"789").unwrap();
    assert_eq!(
        modmesh_storage::zip_hash(&not_zip).unwrap_err().kind,
        ErrorKind::Invalid
    );
}

/// A store written by Athens (by hand here, in its layout) is listed, read,
/// stat'ed and catalogued as it is.
#[tokio::test(flavor = "multi_thread")]
async fn athens_disk_store_is_served_as_is() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let foo = root.join("example.com/Foo");
    write(&foo.join("v1.0.0/go.mod"), b"module example.com/Foo\n");
    write(&foo.join("v1.0.0/source.zip"), b"zipbytes");
    write(&foo.join("v1.0.0/v1.0.0.info"), br#"{"Version":"v1.0.0"}"#);
    // Athens' real files for rsc.io/quote, and a nested major version.
    let quote = root.join("rsc.io/quote/v1.5.2");
    write(&quote.join("go.mod"), QUOTE_MOD);
    write(&quote.join("source.zip"), QUOTE_ZIP);
    write(&quote.join("v1.5.2.info"), QUOTE_INFO);
    let v3 = root.join("rsc.io/quote/v3/v3.1.0");
    write(&v3.join("go.mod"), b"module rsc.io/quote/v3\n");
    write(&v3.join("source.zip"), b"z3");
    write(&v3.join("v3.1.0.info"), b"{}");
    // A half-written Athens save (no .info yet) is not there.
    write(&foo.join("v1.1.0/go.mod"), b"module example.com/Foo\n");
    write(&foo.join("v1.1.0/source.zip"), b"partial");

    let s = DiskStorage::new(root).unwrap();
    let foo_mod = ModulePath::new("example.com/Foo").unwrap();
    assert_eq!(s.list(&foo_mod).await.unwrap(), ["v1.0.0"]);
    assert!(s
        .list(&ModulePath::new("example.com/foo").unwrap())
        .await
        .unwrap()
        .is_empty());
    let c = coords("example.com/Foo", "v1.0.0");
    compliance::assert_stored(
        &s,
        &c,
        br#"{"Version":"v1.0.0"}"#,
        b"module example.com/Foo\n",
        b"zipbytes",
    )
    .await;
    compliance::assert_absent(&s, &coords("example.com/Foo", "v1.1.0")).await;

    let q = coords("rsc.io/quote", "v1.5.2");
    compliance::assert_stored(&s, &q, QUOTE_INFO, QUOTE_MOD, QUOTE_ZIP).await;
    assert_eq!(s.list(&q.module).await.unwrap(), ["v1.5.2"]);
    let st = s.stat(&q).await.unwrap();
    assert_eq!(st.zip_hash.as_deref(), Some(QUOTE_H1));
    assert_eq!(st.mod_hash, QUOTE_MOD_H1);
    assert_eq!(st.zip_size, QUOTE_ZIP.len() as u64);
    let mtime = std::fs::metadata(quote.join("v1.5.2.info"))
        .unwrap()
        .modified()
        .unwrap();
    let ms = mtime
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert_eq!(st.stored_at_unix_ms, ms);

    let page = s.catalog(None, 10, "").await.unwrap();
    assert_eq!(
        page.entries,
        [
            coords("example.com/Foo", "v1.0.0"),
            coords("rsc.io/quote", "v1.5.2"),
            coords("rsc.io/quote/v3", "v3.1.0"),
        ]
    );
    assert_eq!(page.next_page_token, None);

    // Saving the half-written version replaces the leftover.
    compliance::save(
        &s,
        &coords("example.com/Foo", "v1.1.0"),
        b"i",
        b"m",
        b"whole",
    )
    .await
    .unwrap();
    compliance::assert_stored(
        &s,
        &coords("example.com/Foo", "v1.1.0"),
        b"i",
        b"m",
        b"whole",
    )
    .await;
    assert_eq!(s.list(&foo_mod).await.unwrap(), ["v1.0.0", "v1.1.0"]);
    // Files land where Athens expects them.
    assert_eq!(
        std::fs::read(foo.join("v1.1.0/source.zip")).unwrap(),
        b"whole"
    );
    assert_eq!(std::fs::read(foo.join("v1.1.0/v1.1.0.info")).unwrap(), b"i");
    assert_eq!(std::fs::read(foo.join("v1.1.0/go.mod")).unwrap(), b"m");
}

fn tree(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            out.push((e.path(), m.len()));
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Saves (odd but valid names included) write under the root only, and
/// leave no temporaries behind.
#[tokio::test(flavor = "multi_thread")]
async fn disk_save_never_writes_outside_root() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    std::fs::create_dir(&root).unwrap();
    write(&outer.path().join("sibling/file"), b"x");
    let before = tree(outer.path());
    let s = DiskStorage::new(&root).unwrap();
    for (m, v) in [
        ("example.com/a", "v1.0.0"),
        ("example.com/UPPER/Case", "v0.1.0-RC.1"),
        ("example.com/a/b~c/d_e", "v2.0.0+incompatible"),
        ("gopkg.in/yaml.v3", "v3.0.1"),
        ("example.com/a/v1.2.3", "v1.0.0"),
    ] {
        let c = coords(m, v);
        compliance::save(&s, &c, b"i", b"m", b"z").await.unwrap();
        compliance::assert_stored(&s, &c, b"i", b"m", b"z").await;
    }
    // Failed and refused saves too.
    let c = coords("example.com/fail", "v1.0.0");
    let r = s
        .save(
            SaveRequest::new(&c, Bytes::from_static(b"i"), Bytes::from_static(b"m")).unwrap(),
            compliance::failing_stream(MAX_CHUNK + 1, modmesh_proto::Error::internal("x")),
        )
        .await;
    assert!(r.is_err());

    let after = tree(outer.path());
    let outside = |t: &[(PathBuf, u64)]| -> Vec<(PathBuf, u64)> {
        t.iter()
            .filter(|(p, _)| !p.starts_with(&root))
            .cloned()
            .collect()
    };
    assert_eq!(
        outside(&before),
        outside(&after),
        "something changed outside the root"
    );
    assert!(after.iter().all(|(p, _)| p
        .canonicalize()
        .unwrap()
        .starts_with(outer.path().canonicalize().unwrap())));
    let tmp = root.join(modmesh_storage::backends::disk::TMP_DIR);
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "temporaries left"
    );
    assert!(!root.join("example.com/fail").join("v1.0.0").exists());
}

/// A save dropped mid-stream leaves no temporary directory for long.
#[tokio::test(flavor = "multi_thread")]
async fn disk_cancelled_save_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(DiskStorage::new(dir.path()).unwrap());
    compliance::cancelled_save(s.clone()).await;
    let tmp = dir.path().join(modmesh_storage::backends::disk::TMP_DIR);
    for _ in 0..50 {
        if std::fs::read_dir(&tmp).unwrap().count() == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("temporaries left: {:?}", tree(&tmp));
}

/// Temporaries older than an hour (crashed saves) go when the store opens;
/// newer ones (saves in progress elsewhere) stay.
#[test]
fn disk_open_removes_stale_temporaries() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join(modmesh_storage::backends::disk::TMP_DIR);
    write(&tmp.join("old/source.zip"), b"half");
    write(&tmp.join("new/source.zip"), b"half");
    let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    std::fs::File::open(tmp.join("old"))
        .unwrap()
        .set_modified(two_hours_ago)
        .unwrap();
    DiskStorage::new(dir.path()).unwrap();
    assert!(!tmp.join("old").exists());
    assert!(tmp.join("new/source.zip").exists());
}

#[test]
fn disk_root_must_be_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        DiskStorage::new(dir.path().join("missing"))
            .unwrap_err()
            .kind,
        ErrorKind::Invalid
    );
    write(&dir.path().join("file"), b"x");
    assert_eq!(
        DiskStorage::new(dir.path().join("file")).unwrap_err().kind,
        ErrorKind::Invalid
    );
}

#[tokio::test]
async fn from_config_picks_the_backend() {
    let cfg = modmesh_common::Config::from_text("", &[]).unwrap();
    let s = modmesh_storage::from_config(&cfg).unwrap();
    assert!(!s.exists(&coords("example.com/a", "v1.0.0")).await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().display().to_string();
    let cfg = modmesh_common::Config::from_text(
        "StorageType = \"disk\"\n",
        &[("ATHENS_DISK_STORAGE_ROOT", &root)],
    )
    .unwrap();
    let s = modmesh_storage::from_config(&cfg).unwrap();
    compliance::save_mock(&*s, &coords("example.com/a", "v1.0.0")).await;
    assert!(dir.path().join("example.com/a/v1.0.0/v1.0.0.info").exists());
    // The same from the file's own table.
    let cfg = modmesh_common::Config::from_text(
        &format!("StorageType = \"disk\"\n[Storage.Disk]\nRootPath = {root:?}\n"),
        &[],
    )
    .unwrap();
    let s = modmesh_storage::from_config(&cfg).unwrap();
    assert!(s.exists(&coords("example.com/a", "v1.0.0")).await.unwrap());
    let cfg = modmesh_common::Config::from_text("StorageType = \"disk\"\n", &[]).unwrap();
    let e = modmesh_storage::from_config(&cfg).err().unwrap();
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert!(e.message.contains("Storage.Disk.RootPath"), "{e}");
    let cfg = modmesh_common::Config::from_text("StorageType = \"floppy\"\n", &[]).unwrap();
    let e = modmesh_storage::from_config(&cfg).err().unwrap();
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert!(e.message.contains("StorageType"), "{e}");
    assert!(e.message.contains("memory, disk"), "{e}");
}

// --------------------------------------------------------- server protocol

async fn raw_client(url: &str) -> RawClient<tonic::transport::Channel> {
    RawClient::connect(url.to_string()).await.expect("connect")
}

fn header(c: &Coordinates) -> pb::SaveChunk {
    pb::SaveChunk {
        kind: Some(save_chunk::Kind::Header(pb::SaveHeader {
            coordinates: Some(c.to_pb()),
            info: Bytes::from_static(b"info"),
            go_mod: Bytes::from_static(b"mod"),
            zip_hash: String::new(),
            zip_size: None,
        })),
    }
}

fn data(d: &'static [u8]) -> pb::SaveChunk {
    pb::SaveChunk {
        kind: Some(save_chunk::Kind::ZipData(Bytes::from_static(d))),
    }
}

fn commit(n: u64) -> pb::SaveChunk {
    pb::SaveChunk {
        kind: Some(save_chunk::Kind::Commit(pb::SaveCommit { zip_size: n })),
    }
}

async fn raw_save(url: &str, msgs: Vec<pb::SaveChunk>) -> std::result::Result<(), tonic::Status> {
    raw_client(url)
        .await
        .save(futures::stream::iter(msgs))
        .await
        .map(|_| ())
}

/// Malformed save streams store nothing and get INVALID_ARGUMENT.
#[tokio::test(flavor = "multi_thread")]
async fn server_rejects_malformed_saves() {
    for backend in [memory_backend().await, disk_backend().await] {
        let s = backend.storage.clone();
        let server = serve(s.clone()).await;
        let url = &server.url;
        let c = coords("example.com/proto", "v1.0.0");
        let bad_coords = pb::Coordinates {
            module: "example.com/../etc".into(),
            version: "v1.0.0".into(),
        };
        let cases: Vec<(&str, Vec<pb::SaveChunk>)> = vec![
            ("data first", vec![data(b"zip"), header(&c), commit(3)]),
            ("commit first", vec![commit(0)]),
            ("empty stream", vec![]),
            ("no commit", vec![header(&c), data(b"zip")]),
            ("size mismatch", vec![header(&c), data(b"zip"), commit(4)]),
            (
                "two headers",
                vec![header(&c), header(&c), data(b"zip"), commit(3)],
            ),
            (
                "data after commit",
                vec![header(&c), data(b"zip"), commit(3), data(b"more")],
            ),
            (
                "empty chunk",
                vec![header(&c), pb::SaveChunk { kind: None }, commit(0)],
            ),
            (
                "bad coordinates",
                vec![
                    pb::SaveChunk {
                        kind: Some(save_chunk::Kind::Header(pb::SaveHeader {
                            coordinates: Some(bad_coords.clone()),
                            ..Default::default()
                        })),
                    },
                    commit(0),
                ],
            ),
            (
                "no coordinates",
                vec![
                    pb::SaveChunk {
                        kind: Some(save_chunk::Kind::Header(pb::SaveHeader::default())),
                    },
                    commit(0),
                ],
            ),
            (
                "query version",
                vec![header(&coords("example.com/proto", "master")), commit(0)],
            ),
        ];
        for (what, msgs) in cases {
            let e = raw_save(url, msgs).await.expect_err(what);
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{what}: {e:?}");
            compliance::assert_absent(&*s, &c).await;
        }
        // Reads with bad coordinates are INVALID_ARGUMENT too.
        let mut raw = raw_client(url).await;
        assert_eq!(
            raw.info(bad_coords.clone()).await.unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            raw.list(pb::ModuleRef {
                module: "nodot/x".into()
            })
            .await
            .unwrap_err()
            .code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            raw.catalog(pb::CatalogRequest {
                page_token: "%%%".into(),
                ..Default::default()
            })
            .await
            .unwrap_err()
            .code(),
            tonic::Code::InvalidArgument
        );
        // A well-formed stream, with a data message over MAX_CHUNK, works.
        static BIG: [u8; 3 * MAX_CHUNK + 1] = [9u8; 3 * MAX_CHUNK + 1];
        raw_save(
            url,
            vec![
                header(&c),
                data(b"ab"),
                data(&BIG),
                commit(BIG.len() as u64 + 2),
            ],
        )
        .await
        .unwrap();
        let mut expected = b"ab".to_vec();
        expected.extend_from_slice(&BIG);
        compliance::assert_stored(&*s, &c, b"info", b"mod", &expected).await;
        // Zip replies: a header, then data of at most MAX_CHUNK.
        let mut zip = raw.zip(c.to_pb()).await.unwrap().into_inner();
        let first = zip.message().await.unwrap().unwrap();
        assert_eq!(
            first.kind,
            Some(pb::zip_chunk::Kind::Header(pb::ZipHeader {
                size: expected.len() as u64
            }))
        );
        let mut n = 0;
        while let Some(m) = zip.message().await.unwrap() {
            match m.kind {
                Some(pb::zip_chunk::Kind::Data(d)) => {
                    assert!(d.len() <= MAX_CHUNK);
                    n += d.len();
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(n, expected.len());
    }
}

/// A backend that yields one big chunk (and optionally lies about the size),
/// to check the server's re-chunking and size check.
struct OneBigChunk {
    data: Bytes,
    announced: u64,
    seen_request_ids: Mutex<Vec<Option<String>>>,
}

#[async_trait::async_trait]
impl Storage for OneBigChunk {
    fn capabilities(&self) -> Capabilities {
        Capabilities::minimal()
    }
    async fn health(&self) -> Result<()> {
        Err(modmesh_proto::Error::unavailable("always down"))
    }
    async fn list(&self, _: &ModulePath) -> Result<Vec<String>> {
        self.seen_request_ids
            .lock()
            .unwrap()
            .push(modmesh_proto::request_id::current());
        Ok(vec![])
    }
    async fn info(&self, c: &Coordinates) -> Result<Bytes> {
        Err(modmesh_proto::Error::not_found(c.to_string()))
    }
    async fn go_mod(&self, c: &Coordinates) -> Result<Bytes> {
        Err(modmesh_proto::Error::not_found(c.to_string()))
    }
    async fn zip(&self, _: &Coordinates) -> Result<ZipReader> {
        let data = self.data.clone();
        Ok(ZipReader {
            size: self.announced,
            stream: futures::stream::once(async move { Ok(data) }).boxed(),
        })
    }
    async fn exists(&self, _: &Coordinates) -> Result<bool> {
        Ok(true)
    }
    async fn stat(&self, c: &Coordinates) -> Result<VersionStat> {
        Err(modmesh_proto::Error::gone(c.to_string()))
    }
    async fn save(&self, _: SaveRequest, _: ByteStream) -> Result<()> {
        Err(modmesh_proto::Error::permission("read-only"))
    }
    async fn delete(&self, _: &Coordinates) -> Result<()> {
        Err(modmesh_proto::Error::timeout("slow"))
    }
    async fn catalog(&self, _: Option<&str>, _: usize, _: &str) -> Result<CatalogPage> {
        Err(modmesh_proto::Error::unavailable("down"))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn server_rechunks_checks_sizes_and_keeps_error_kinds() {
    let big = Bytes::from(vec![1u8; 5 * MAX_CHUNK / 2]);
    let backend = Arc::new(OneBigChunk {
        data: big.clone(),
        announced: big.len() as u64,
        seen_request_ids: Mutex::new(vec![]),
    });
    let server = serve(backend.clone()).await;
    let client = StorageClient::new(&server.url).unwrap();
    let c = coords("example.com/big", "v1.0.0");
    let got = compliance::read_zip(&client, &c).await.unwrap();
    assert!(got == big);

    // Error kinds survive the hop.
    assert_eq!(client.info(&c).await.unwrap_err().kind, ErrorKind::NotFound);
    assert_eq!(client.stat(&c).await.unwrap_err().kind, ErrorKind::Gone);
    assert_eq!(
        client.delete(&c).await.unwrap_err().kind,
        ErrorKind::Timeout
    );
    assert_eq!(
        client.catalog(None, 1, "").await.unwrap_err().kind,
        ErrorKind::Unavailable
    );
    let e = compliance::save(&client, &c, b"i", b"m", b"z")
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permission);

    // The request id travels with the call.
    modmesh_proto::request_id::scope("rid-42".into(), client.list(&c.module))
        .await
        .unwrap();
    let seen = backend.seen_request_ids.lock().unwrap().clone();
    assert_eq!(seen, [Some("rid-42".to_string())]);

    // A backend whose zip is shorter than announced: the reader gets an
    // error, never a silently short zip.
    let liar = Arc::new(OneBigChunk {
        data: big.clone(),
        announced: big.len() as u64 + 1,
        seen_request_ids: Mutex::new(vec![]),
    });
    let server2 = serve(liar).await;
    let client2 = StorageClient::new(&server2.url).unwrap();
    assert!(compliance::read_zip(&client2, &c).await.is_err());
}

#[tokio::test]
async fn client_errors() {
    let e = StorageClient::new("not a url").unwrap_err();
    assert_eq!(e.kind, ErrorKind::Invalid);
    // Nothing listens on port 1.
    let client = StorageClient::new("http://127.0.0.1:1").unwrap();
    let e = client
        .exists(&coords("example.com/a", "v1.0.0"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
}

// ------------------------------------------------------------------ binary

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn storage_svc(dir: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_storage-svc"));
    cmd.current_dir(dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("ATHENS_") || k == "PORT" || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd
}

#[test]
fn binary_rejects_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = storage_svc(dir.path())
        .env("ATHENS_STORAGE_TYPE", "floppy")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("StorageType"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_serves_disk_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = storage_svc(dir.path())
        .env("ATHENS_STORAGE_TYPE", "disk")
        .env("ATHENS_DISK_STORAGE_ROOT", dir.path())
        .env("ATHENS_STORAGE_SVC_LISTEN", format!("127.0.0.1:{port}"))
        .env("ATHENS_LOG_LEVEL", "error")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = StorageClient::new(&format!("http://127.0.0.1:{port}")).unwrap();
    let c = coords("example.com/bin", "v1.0.0");
    let mut up = false;
    for _ in 0..200 {
        if client.exists(&c).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let result = std::panic::AssertUnwindSafe(async {
        assert!(up, "storage-svc did not come up");
        compliance::save_mock(&client, &c).await;
        compliance::assert_stored(&client, &c, b"123", b"456", b"789").await;
        assert!(dir
            .path()
            .join("example.com/bin/v1.0.0/source.zip")
            .exists());
    });
    let outcome = futures::FutureExt::catch_unwind(result).await;
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut status = None;
    for _ in 0..200 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let Some(status) = status else {
        let _ = child.kill();
        panic!("storage-svc did not stop on SIGTERM");
    };
    if let Err(p) = outcome {
        std::panic::resume_unwind(p);
    }
    assert!(status.success(), "{status}");
}
