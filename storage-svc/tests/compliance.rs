//! The compliance suite against every backend, in process and behind a
//! real gRPC server; plus disk-layout, server-protocol, client and binary
//! tests. A new backend is one more `storage_compliance_tests!` line.

mod common;

use bytes::Bytes;
use common::*;
use futures::StreamExt;
use modmesh_proto::pb::{self, save_chunk, storage_client::StorageClient as RawClient};
use modmesh_proto::{Coordinates, ErrorKind, ModulePath, Result, MAX_CHUNK};
use modmesh_storage::backends::s3::Tuning;
use modmesh_storage::backends::DiskStorage;
use modmesh_storage::client::StorageClient;
use modmesh_storage::compliance::{self, coords};
use modmesh_storage::{
    storage_compliance_tests, ByteStream, Capabilities, CatalogPage, SaveRequest, Storage,
    VersionStat, ZipReader,
};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

storage_compliance_tests!(memory, memory_backend());
storage_compliance_tests!(disk, disk_backend());
storage_compliance_tests!(grpc_memory, grpc_memory_backend());
storage_compliance_tests!(grpc_disk, grpc_disk_backend());
storage_compliance_tests!(s3, s3_backend());
storage_compliance_tests!(minio, minio_backend());
storage_compliance_tests!(s3_on_s3s, s3s_backend());
storage_compliance_tests!(grpc_s3, grpc_s3_backend());
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
    for t in modmesh_storage::backends::types() {
        assert!(e.message.contains(t), "{t} not listed: {e}");
    }
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
            raw.zip(bad_coords.clone()).await.unwrap_err().code(),
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

/// A backend that yields one big chunk (and optionally lies about the size,
/// or fails after the chunk), to check the server's re-chunking, size check
/// and errors in the middle of a zip.
struct OneBigChunk {
    data: Bytes,
    announced: u64,
    then_fail: Option<ErrorKind>,
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
            .push(modmesh_common::request_id::current());
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
        let fail = self
            .then_fail
            .map(|k| Err(modmesh_proto::Error::new(k, "the disk went away")));
        Ok(ZipReader {
            size: self.announced,
            stream: futures::stream::once(async move { Ok(data) })
                .chain(futures::stream::iter(fail))
                .boxed(),
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
        then_fail: None,
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
    modmesh_common::request_id::scope("rid-42".into(), client.list(&c.module))
        .await
        .unwrap();
    let seen = backend.seen_request_ids.lock().unwrap().clone();
    assert_eq!(seen, [Some("rid-42".to_string())]);

    // A backend whose zip is shorter than announced: the reader gets an
    // error, never a silently short zip.
    let liar = Arc::new(OneBigChunk {
        data: big.clone(),
        announced: big.len() as u64 + 1,
        then_fail: None,
        seen_request_ids: Mutex::new(vec![]),
    });
    let server2 = serve(liar).await;
    let client2 = StorageClient::new(&server2.url).unwrap();
    assert!(compliance::read_zip(&client2, &c).await.is_err());

    // A zip that fails after its first MiBs: the reader gets every byte
    // sent before the failure, then the failure with its kind.
    let failing = Arc::new(OneBigChunk {
        data: big.clone(),
        announced: 2 * big.len() as u64,
        then_fail: Some(ErrorKind::Unavailable),
        seen_request_ids: Mutex::new(vec![]),
    });
    let server3 = serve(failing).await;
    let client3 = StorageClient::new(&server3.url).unwrap();
    let mut z = client3.zip(&c).await.unwrap();
    assert_eq!(z.size, 2 * big.len() as u64);
    let mut got = 0usize;
    let e = loop {
        match z.stream.next().await {
            Some(Ok(b)) => got += b.len(),
            Some(Err(e)) => break e,
            None => panic!("the zip stream ended without its error"),
        }
    };
    assert_eq!(got, big.len());
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains("the disk went away"), "{e}");

    // A zip the backend does not have: the kind crosses the hop before
    // any data.
    let missing = Arc::new(modmesh_storage::backends::MemoryStorage::new());
    let server4 = serve(missing).await;
    let client4 = StorageClient::new(&server4.url).unwrap();
    let Err(e) = client4.zip(&c).await else {
        panic!("a zip of an empty store")
    };
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
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
    let e = client.health().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "health: {e}");
}

// ------------------------------------------------------------------ binary

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

// ------------------------------------------------------- s3 and minio

use modmesh_storage::backends::minio::MinioConfig;
use modmesh_storage::backends::s3::{Layout, S3Config};

/// The shared moto, or `None` after printing why the test is skipped
/// (`CI=true` panics in `moto()` instead).
fn moto_or_skip(test: &str) -> Option<&'static Moto> {
    let m = moto();
    if m.is_none() {
        println!("{test}: SKIPPED: moto_server is not installed");
    }
    m
}

#[test]
fn s3_and_minio_config_keys_and_env() {
    let file = r#"
StorageType = "s3"
[Storage.S3]
Region = "eu-west-1"
Key = "file-key"
Secret = "file-secret"
Token = "file-token"
Bucket = "file-bucket"
ForcePathStyle = false
UseDefaultConfiguration = false
CredentialsEndpoint = "http://169.254.170.2"
AwsContainerCredentialsRelativeURI = "/v2/credentials/x"
Endpoint = "s3.example.com"
"#;
    let cfg = modmesh_common::Config::from_text(file, &[]).unwrap();
    let c: S3Config = cfg.section().unwrap();
    assert_eq!(
        (
            c.Region.as_str(),
            c.Key.as_str(),
            c.Secret.as_str(),
            c.Token.as_str()
        ),
        ("eu-west-1", "file-key", "file-secret", "file-token")
    );
    assert_eq!(c.endpoint_url().as_deref(), Some("https://s3.example.com"));
    assert_eq!(c.CredentialsEndpoint, "http://169.254.170.2");
    // Every key's environment override beats the file.
    let env = [
        ("AWS_REGION", "us-west-2"),
        ("AWS_ACCESS_KEY_ID", "env-key"),
        ("AWS_SECRET_ACCESS_KEY", "env-secret"),
        ("AWS_SESSION_TOKEN", "env-token"),
        ("ATHENS_S3_BUCKET_NAME", "env-bucket"),
        ("AWS_FORCE_PATH_STYLE", "true"),
        ("AWS_USE_DEFAULT_CONFIGURATION", "true"),
        ("AWS_CREDENTIALS_ENDPOINT", "http://127.0.0.1:9"),
        ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/creds"),
        ("AWS_ENDPOINT", "http://127.0.0.1:1234"),
    ];
    let c: S3Config = modmesh_common::Config::from_text(file, &env)
        .unwrap()
        .section()
        .unwrap();
    assert_eq!(
        (
            c.Region.as_str(),
            c.Key.as_str(),
            c.Secret.as_str(),
            c.Token.as_str()
        ),
        ("us-west-2", "env-key", "env-secret", "env-token")
    );
    assert_eq!(c.Bucket, "env-bucket");
    assert!(c.ForcePathStyle && c.UseDefaultConfiguration);
    assert_eq!(c.CredentialsEndpoint, "http://127.0.0.1:9");
    assert_eq!(c.AwsContainerCredentialsRelativeURI, "/creds");
    assert_eq!(c.endpoint_url().as_deref(), Some("http://127.0.0.1:1234"));
    // Required keys are named.
    for (text, key) in [
        ("StorageType = \"s3\"\n[Storage.S3]\nBucket = \"b\"\n", "Storage.S3.Region"),
        ("StorageType = \"s3\"\n[Storage.S3]\nRegion = \"r\"\n", "Storage.S3.Bucket"),
        ("StorageType = \"minio\"\n[Storage.Minio]\nKey = \"k\"\nSecret = \"s\"\nBucket = \"b\"\n", "Storage.Minio.Endpoint"),
        ("StorageType = \"minio\"\n[Storage.Minio]\nEndpoint = \"h:1\"\nKey = \"k\"\nSecret = \"s\"\n", "Storage.Minio.Bucket"),
    ] {
        let cfg = modmesh_common::Config::from_text(text, &[]).unwrap();
        let e = modmesh_storage::from_config(&cfg).err().expect(key);
        assert_eq!(e.kind, ErrorKind::Invalid);
        assert!(e.message.contains(key), "{key}: {e}");
    }
    // minio: defaults, the scheme from EnableSSL, overrides.
    let m: MinioConfig = modmesh_common::Config::from_text(
        "[Storage.Minio]\nEndpoint = \"http://127.0.0.1:9001\"\nKey = \"k\"\nSecret = \"s\"\nBucket = \"b\"\n",
        &[],
    )
    .unwrap()
    .section()
    .unwrap();
    assert!(m.EnableSSL, "EnableSSL defaults to true");
    assert_eq!(m.region(), "us-east-1");
    assert_eq!(m.endpoint_url(), "https://127.0.0.1:9001");
    let m: MinioConfig = modmesh_common::Config::from_text(
        "[Storage.Minio]\nEndpoint = \"a:1\"\n",
        &[
            ("ATHENS_MINIO_ENDPOINT", "https://b:2"),
            ("ATHENS_MINIO_ACCESS_KEY_ID", "k"),
            ("ATHENS_MINIO_SECRET_ACCESS_KEY", "s"),
            ("ATHENS_MINIO_USE_SSL", "false"),
            ("ATHENS_MINIO_BUCKET_NAME", "bk"),
            ("ATHENS_MINIO_REGION", "nyc3"),
        ],
    )
    .unwrap()
    .section()
    .unwrap();
    assert_eq!(m.endpoint_url(), "http://b:2");
    assert_eq!((m.Key.as_str(), m.Secret.as_str()), ("k", "s"));
    assert_eq!((m.Bucket.as_str(), m.region()), ("bk", "nyc3"));
}

/// PUTs `data` at `key` of `bucket` with plain HTTP (not our code).
async fn plain_put(url: &str, bucket: &str, key: &str, data: &[u8]) {
    let r = reqwest::Client::new()
        .put(format!("{url}/{bucket}/{key}"))
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "PUT {key}: {}", r.status());
}

/// The object at `key`, read with a plain `GetObject` (saved objects are
/// private, so not with an anonymous GET).
async fn get_object(s: &modmesh_storage::backends::ObjectStore, key: &str) -> Vec<u8> {
    let out = s
        .client()
        .get_object()
        .bucket(s.bucket())
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {key}: {e:?}"));
    out.body.collect().await.unwrap().into_bytes().to_vec()
}

/// Buckets Athens filled (here by plain PUTs in its layouts: `@v` for s3,
/// directories for minio) are listed, read, stat'ed and catalogued as
/// they are; a version without `.info` (half-written) is not there.
#[tokio::test(flavor = "multi_thread")]
async fn athens_filled_buckets_are_served_as_is() {
    let Some(moto) = moto_or_skip("athens_filled_buckets_are_served_as_is") else {
        return;
    };
    let url = moto.url();
    for layout in [Layout::AtV, Layout::Dirs] {
        let bucket = bucket_name();
        create_bucket(&url, &bucket).await;
        let keys = |m: &str, v: &str| match layout {
            Layout::AtV => [
                format!("{m}/@v/{v}.info"),
                format!("{m}/@v/{v}.mod"),
                format!("{m}/@v/{v}.zip"),
            ],
            Layout::Dirs => [
                format!("{m}/{v}/{v}.info"),
                format!("{m}/{v}/go.mod"),
                format!("{m}/{v}/source.zip"),
            ],
        };
        let [i, m, z] = keys("rsc.io/quote", "v1.5.2");
        plain_put(&url, &bucket, &i, QUOTE_INFO).await;
        plain_put(&url, &bucket, &m, QUOTE_MOD).await;
        plain_put(&url, &bucket, &z, QUOTE_ZIP).await;
        let [i, m, z] = keys("example.com/Foo", "v1.0.0");
        plain_put(&url, &bucket, &i, b"{}").await;
        plain_put(&url, &bucket, &m, b"module example.com/Foo\n").await;
        plain_put(&url, &bucket, &z, b"zipbytes").await;
        let [_, m, z] = keys("example.com/Foo", "v1.1.0");
        plain_put(&url, &bucket, &m, b"module example.com/Foo\n").await;
        plain_put(&url, &bucket, &z, b"half").await;

        let s = object_store(&url, &bucket, layout, test_tuning());
        let q = coords("rsc.io/quote", "v1.5.2");
        compliance::assert_stored(&s, &q, QUOTE_INFO, QUOTE_MOD, QUOTE_ZIP).await;
        let st = s.stat(&q).await.unwrap();
        assert_eq!(st.zip_hash.as_deref(), Some(QUOTE_H1), "{layout:?}");
        assert_eq!(st.mod_hash, QUOTE_MOD_H1);
        assert_eq!(st.zip_size, QUOTE_ZIP.len() as u64);
        let foo = ModulePath::new("example.com/Foo").unwrap();
        assert_eq!(s.list(&foo).await.unwrap(), ["v1.0.0"], "{layout:?}");
        compliance::assert_absent(&s, &coords("example.com/Foo", "v1.1.0")).await;
        let page = s.catalog(None, 10, "").await.unwrap();
        let got: BTreeSet<Coordinates> = page.entries.into_iter().collect();
        assert_eq!(
            got,
            [coords("example.com/Foo", "v1.0.0"), q.clone()]
                .into_iter()
                .collect::<BTreeSet<_>>(),
            "{layout:?}"
        );
        // What we save lands where Athens looks.
        let c = coords("example.com/Foo", "v1.2.0");
        compliance::save(&s, &c, b"i", b"m", b"z").await.unwrap();
        let [i, m, z] = keys("example.com/Foo", "v1.2.0");
        for (key, want) in [(i, b"i"), (m, b"m"), (z, b"z")] {
            let got = get_object(&s, &key).await;
            assert_eq!(&got[..], want, "{key}");
        }
    }
}

/// s3 refuses a missing bucket at start-up, naming the key; minio creates it.
#[tokio::test(flavor = "multi_thread")]
async fn missing_buckets_at_start_up() {
    let Some(moto) = moto_or_skip("missing_buckets_at_start_up") else {
        return;
    };
    let url = moto.url();
    let bucket = bucket_name();
    let cfg = modmesh_common::Config::from_text(
        "StorageType = \"s3\"\n",
        &[
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "k"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
            ("ATHENS_S3_BUCKET_NAME", &bucket),
            ("AWS_ENDPOINT", &url),
            ("AWS_FORCE_PATH_STYLE", "true"),
        ],
    )
    .unwrap();
    let e = modmesh_storage::from_config(&cfg).err().expect("refused");
    assert_eq!(e.kind, ErrorKind::Invalid, "{e}");
    assert!(e.message.contains("Storage.S3.Bucket"), "{e}");
    let status = reqwest::get(format!("{url}/{bucket}"))
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404, "s3 created the bucket");

    let endpoint = format!("127.0.0.1:{}", moto.port);
    let cfg = modmesh_common::Config::from_text(
        "StorageType = \"minio\"\n",
        &[
            ("ATHENS_MINIO_ENDPOINT", &endpoint),
            ("ATHENS_MINIO_ACCESS_KEY_ID", "k"),
            ("ATHENS_MINIO_SECRET_ACCESS_KEY", "s"),
            ("ATHENS_MINIO_USE_SSL", "false"),
            ("ATHENS_MINIO_BUCKET_NAME", &bucket),
        ],
    )
    .unwrap();
    let s = modmesh_storage::from_config(&cfg).expect("minio creates its bucket");
    s.health().await.unwrap();
    let status = reqwest::get(format!("{url}/{bucket}"))
        .await
        .unwrap()
        .status();
    assert!(status.is_success(), "bucket not created: {status}");
}

/// A credentials endpoint we serve: answers the container credentials
/// document at `path` (or 500 when `fail`), recording the paths asked.
async fn serve_credentials(
    path: &'static str,
    fail: bool,
) -> (String, Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen2 = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 4096];
            let n = sock.read(&mut buf).await.unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let asked = req.split_whitespace().nth(1).unwrap_or("").to_string();
            seen2.lock().unwrap().push(asked.clone());
            let (status, body) = if fail || asked != path {
                ("500 Internal Server Error", String::new())
            } else {
                (
                    "200 OK",
                    r#"{"AccessKeyId":"AKIDFROMENDPOINT","SecretAccessKey":"secret","Token":"tok","Expiration":"2099-01-01T00:00:00Z"}"#.to_string(),
                )
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        }
    });
    (url, seen, task)
}

/// The credentials endpoint (`CredentialsEndpoint` + relative URI) is
/// asked first; when it fails, the static key is used.
#[tokio::test(flavor = "multi_thread")]
async fn s3_credentials_endpoint_is_used() {
    let Some(moto) = moto_or_skip("s3_credentials_endpoint_is_used") else {
        return;
    };
    let url = moto.url();
    for fail in [false, true] {
        let (creds_url, seen, task) = serve_credentials("/v2/credentials/abc", fail).await;
        let bucket = bucket_name();
        create_bucket(&url, &bucket).await;
        let cfg = modmesh_common::Config::from_text(
            "StorageType = \"s3\"\n[Storage.S3]\nRegion = \"us-east-1\"\nKey = \"static-key\"\nSecret = \"static-secret\"\nForcePathStyle = true\n",
            &[
                ("ATHENS_S3_BUCKET_NAME", &bucket),
                ("AWS_ENDPOINT", &url),
                ("AWS_CREDENTIALS_ENDPOINT", &creds_url),
                ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v2/credentials/abc"),
            ],
        )
        .unwrap();
        let s = modmesh_storage::from_config(&cfg).expect("s3 backend");
        let c = coords("example.com/creds", "v1.0.0");
        compliance::save_mock(&*s, &c).await;
        compliance::assert_stored(&*s, &c, b"123", b"456", b"789").await;
        let asked = seen.lock().unwrap().clone();
        assert!(
            asked.iter().any(|p| p == "/v2/credentials/abc"),
            "fail={fail}: the endpoint was not asked: {asked:?}"
        );
        task.abort();
    }
}

/// Leftovers of a crashed save (zip and go.mod, no `.info`) are never
/// served; a later save clears them once older than the bound, and stores.
#[tokio::test(flavor = "multi_thread")]
async fn object_store_orphans_are_never_served_and_cleared() {
    let Some(moto) = moto_or_skip("object_store_orphans_are_never_served_and_cleared") else {
        return;
    };
    let url = moto.url();
    let bucket = bucket_name();
    create_bucket(&url, &bucket).await;
    let tuning = Tuning {
        orphan_after: Duration::from_secs(2),
        ..test_tuning()
    };
    let s = object_store(&url, &bucket, Layout::AtV, tuning);
    let c = coords("example.com/orphan", "v1.0.0");
    plain_put(&url, &bucket, "example.com/orphan/@v/v1.0.0.zip", b"old").await;
    plain_put(&url, &bucket, "example.com/orphan/@v/v1.0.0.mod", b"old").await;
    compliance::assert_absent(&s, &c).await;
    let started = std::time::Instant::now();
    compliance::save(&s, &c, b"info", b"mod", b"new")
        .await
        .unwrap();
    compliance::assert_stored(&s, &c, b"info", b"mod", b"new").await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "a fresh leftover (maybe a save in progress) was deleted at once"
    );
}

/// A save dropped mid-upload (a multipart upload under way) aborts it.
#[tokio::test(flavor = "multi_thread")]
async fn object_store_abandoned_upload_is_aborted() {
    let Some(moto) = moto_or_skip("object_store_abandoned_upload_is_aborted") else {
        return;
    };
    let url = moto.url();
    let bucket = bucket_name();
    create_bucket(&url, &bucket).await;
    let s = object_store(&url, &bucket, Layout::AtV, test_tuning());
    let c = coords("example.com/abandoned", "v1.0.0");
    // Two parts' worth, then nothing: the upload has started.
    let head =
        compliance::Rng::new(1).bytes(2 * modmesh_storage::backends::s3::store::MIN_PART + 1);
    let stalled = compliance::stream_of(&head)
        .chain(futures::stream::pending())
        .boxed();
    let uploads = || async {
        s.client()
            .list_multipart_uploads()
            .bucket(&bucket)
            .send()
            .await
            .unwrap()
            .uploads()
            .len()
    };
    let save = s.save(compliance::request(&c, b"i", b"m"), stalled);
    let r = tokio::time::timeout(Duration::from_secs(3), save).await;
    assert!(r.is_err(), "the stalled save ended: {r:?}");
    for _ in 0..100 {
        if uploads().await == 0 {
            compliance::assert_absent(&s, &c).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the abandoned multipart upload was not aborted");
}

/// Multipart uploads left by crashed saves are aborted by the sweep (run at
/// start-up) once older than the bound.
#[tokio::test(flavor = "multi_thread")]
async fn object_store_sweeps_stale_uploads() {
    let Some(moto) = moto_or_skip("object_store_sweeps_stale_uploads") else {
        return;
    };
    let url = moto.url();
    let bucket = bucket_name();
    create_bucket(&url, &bucket).await;
    let s = object_store(&url, &bucket, Layout::AtV, test_tuning());
    s.client()
        .create_multipart_upload()
        .bucket(&bucket)
        .key("example.com/crashed/@v/v1.0.0.zip")
        .send()
        .await
        .unwrap();
    // (moto reports every upload as started in 2010, so "younger ones
    // stay" cannot be checked against it.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        s.sweep_stale_uploads(Duration::from_secs(1)).await.unwrap(),
        1
    );
    let left = s
        .client()
        .list_multipart_uploads()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    assert!(left.uploads().is_empty(), "{:?}", left.uploads());
}

/// With the server down, calls fail `Unavailable` (or `Timeout`); once it
/// is back on the same port, the same store works again.
#[tokio::test(flavor = "multi_thread")]
async fn object_store_recovers_after_an_outage() {
    if moto_or_skip("object_store_recovers_after_an_outage").is_none() {
        return;
    }
    let port = free_port();
    let server = Moto::start(port).expect("moto");
    let url = server.url();
    let bucket = bucket_name();
    create_bucket(&url, &bucket).await;
    let tuning = Tuning {
        attempt_timeout: Duration::from_secs(3),
        operation_timeout: Duration::from_secs(8),
        ..test_tuning()
    };
    let s = object_store(&url, &bucket, Layout::AtV, tuning);
    let c = coords("example.com/outage", "v1.0.0");
    compliance::save_mock(&s, &c).await;
    server.stop();
    for (what, r) in [
        ("exists", s.exists(&c).await.map(|_| ())),
        ("info", s.info(&c).await.map(|_| ())),
        ("health", s.health().await),
        (
            "save",
            compliance::save(
                &s,
                &coords("example.com/outage", "v1.0.1"),
                b"i",
                b"m",
                b"z",
            )
            .await,
        ),
    ] {
        let e = r.expect_err(what);
        assert!(
            matches!(e.kind, ErrorKind::Unavailable | ErrorKind::Timeout),
            "{what} with the server down: {e}"
        );
    }
    // Back on the same port (moto keeps nothing: the bucket is made again).
    let server = Moto::start(port).expect("moto again");
    create_bucket(&url, &bucket).await;
    s.health().await.expect("healthy again");
    let c2 = coords("example.com/outage", "v1.0.2");
    compliance::save(&s, &c2, b"i", b"m", b"z")
        .await
        .expect("save after the outage");
    compliance::assert_stored(&s, &c2, b"i", b"m", b"z").await;
    drop(server);
}

/// A server that accepts connections and never answers: every call ends
/// with `Timeout` (or `Unavailable`) within its deadline.
#[tokio::test(flavor = "multi_thread")]
async fn object_store_slow_server_times_out() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let held = Arc::new(Mutex::new(Vec::new()));
    let held2 = held.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            held2.lock().unwrap().push(conn);
        }
    });
    let tuning = Tuning {
        attempt_timeout: Duration::from_millis(500),
        operation_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_millis(500),
        max_attempts: 2,
        ..test_tuning()
    };
    let s = object_store(&url, "slow-bucket", Layout::AtV, tuning);
    let started = std::time::Instant::now();
    let e = s
        .exists(&coords("example.com/slow", "v1.0.0"))
        .await
        .unwrap_err();
    assert!(
        matches!(e.kind, ErrorKind::Timeout | ErrorKind::Unavailable),
        "{e}"
    );
    assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// The document's DigitalOcean Spaces example loads as it is and works
/// once pointed at the local server by environment overrides.
#[tokio::test(flavor = "multi_thread")]
async fn minio_digitalocean_spaces_example_config() {
    example_config("DigitalOcean Spaces").await;
}

/// The document's Alibaba OSS example loads as it is and works once
/// pointed at the local server by environment overrides.
#[tokio::test(flavor = "multi_thread")]
async fn minio_alibaba_oss_example_config() {
    example_config("Alibaba OSS").await;
}

async fn example_config(which: &str) {
    let Some(moto) = moto_or_skip(which) else {
        return;
    };
    let mut ran = 0;
    const SPACES: &str = r#"
    StorageType = "minio"

    [Storage]
        [Storage.Minio]
            Endpoint = "YOUR_ADDRESS.digitaloceanspaces.com"
            Key = "YOUR_DO_SPACE_KEY_ID"
            Secret = "YOUR_DO_SPACE_SECRET_KEY"
            EnableSSL = true
            Bucket = "YOUR_DO_SPACE_NAME"
            Region = "YOUR_DO_SPACE_REGION"
"#;
    const OSS: &str = r#"
    StorageType = "minio"

    [Storage]
        [Storage.Minio]
            Endpoint = "YOUR_ADDRESS.aliyuncs.com"
            Key = "YOUR_OSS_KEY_ID"
            Secret = "YOUR_OSS_SECRET_KEY"
            EnableSSL = true
            Bucket = "YOUR_OSS_FOLDER_PREFIX"
"#;
    let endpoint = format!("127.0.0.1:{}", moto.port);
    for (name, text, region) in [
        ("DigitalOcean Spaces", SPACES, "YOUR_DO_SPACE_REGION"),
        ("Alibaba OSS", OSS, "us-east-1"),
    ]
    .into_iter()
    .filter(|(name, _, _)| *name == which)
    {
        ran += 1;
        let as_is: MinioConfig = modmesh_common::Config::from_text(text, &[])
            .unwrap()
            .section()
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert!(as_is.EnableSSL, "{name}");
        assert_eq!(as_is.region(), region, "{name}");
        assert!(
            as_is.endpoint_url().starts_with("https://YOUR_ADDRESS."),
            "{name}"
        );
        // Bucket names with capitals are not valid S3 names: a fresh one.
        let bucket = bucket_name();
        let cfg = modmesh_common::Config::from_text(
            text,
            &[
                ("ATHENS_MINIO_ENDPOINT", &endpoint),
                ("ATHENS_MINIO_USE_SSL", "false"),
                ("ATHENS_MINIO_BUCKET_NAME", &bucket),
            ],
        )
        .unwrap();
        let s = modmesh_storage::from_config(&cfg).unwrap_or_else(|e| panic!("{name}: {e}"));
        let c = coords("example.com/example-config", "v1.0.0");
        compliance::save_mock(&*s, &c).await;
        compliance::assert_stored(&*s, &c, b"123", b"456", b"789").await;
        let raw = object_store(&moto.url(), &bucket, Layout::Dirs, test_tuning());
        let got = get_object(&raw, "example.com/example-config/v1.0.0/source.zip").await;
        assert_eq!(&got[..], b"789", "{name}");
    }
    assert_eq!(ran, 1, "no example config named {which:?}");
}

/// Client balancing (`modmesh_common::balance`): one name resolving to two
/// real storage servers (127.0.0.1 and 127.0.0.2, one port) sends work to
/// both; a replica that stops leaves the balance, one that comes back joins.
mod balancing {
    use super::*;
    use modmesh_common::balance::{balanced_channel, Resolver};
    use modmesh_storage::backends::MemoryStorage;
    use std::net::SocketAddr;

    const REFRESH: Duration = Duration::from_millis(200);

    struct Replica {
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<()>,
    }

    async fn replica(addr: SocketAddr, storage: Arc<dyn Storage>) -> Replica {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            modmesh_common::server::serve_grpc(
                listener,
                modmesh_storage::server::routes(storage),
                &[modmesh_storage::server::SERVICE_NAME],
                "replica",
                async {
                    let _ = stopped.await;
                },
            )
            .await
            .expect("serve");
        });
        Replica {
            stop: Some(stop),
            task,
        }
    }

    impl Replica {
        async fn stop(mut self) {
            let _ = self.stop.take().unwrap().send(());
            self.task.await.unwrap();
        }
    }

    async fn stored(s: &MemoryStorage, cs: &[Coordinates]) -> usize {
        let mut n = 0;
        for c in cs {
            if s.exists(c).await.unwrap() {
                n += 1;
            }
        }
        n
    }

    async fn save_many(
        client: &StorageClient,
        ns: &str,
        from: usize,
        n: usize,
    ) -> Vec<Coordinates> {
        let mut out = Vec::new();
        for i in from..from + n {
            let c = coords(ns, &format!("v1.0.{i}"));
            compliance::save_mock(client, &c).await;
            out.push(c);
        }
        out
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn client_balances_over_every_replica_of_a_name() {
        let port = free_port();
        let a_addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let b_addr: SocketAddr = ([127, 0, 0, 2], port).into();
        let (a, b) = (
            Arc::new(MemoryStorage::new()),
            Arc::new(MemoryStorage::new()),
        );
        let _ra = replica(a_addr, a.clone()).await;
        let rb = replica(b_addr, b.clone()).await;
        // A name of the test's own: both addresses, as a compose network's
        // DNS answers a scaled service's name.
        let resolver: Resolver = Arc::new(move |host: &str, p: u16| {
            assert_eq!((host, p), ("replicas.test", port));
            Box::pin(async move { Ok(vec![a_addr, b_addr]) })
        });
        let channel = balanced_channel(
            &format!("http://replicas.test:{port}"),
            |e| e.timeout(Duration::from_secs(10)),
            REFRESH,
            resolver,
        )
        .expect("channel");
        let client = StorageClient::from_channel(channel);
        tokio::time::sleep(2 * REFRESH).await;

        let ns = compliance::namespace();
        let first = save_many(&client, &ns, 0, 24).await;
        let (on_a, on_b) = (stored(&a, &first).await, stored(&b, &first).await);
        assert_eq!(on_a + on_b, first.len(), "every save landed once");
        assert!(
            on_a > 0 && on_b > 0,
            "both replicas got work: {on_a} and {on_b}"
        );

        // One replica stops: once re-resolved and probed, every call succeeds
        // on the other.
        rb.stop().await;
        tokio::time::sleep(3 * REFRESH).await;
        let second = save_many(&client, &ns, 100, 12).await;
        assert_eq!(
            stored(&a, &second).await,
            second.len(),
            "all on the live one"
        );

        // It comes back (empty): it joins the balance again.
        let b2 = Arc::new(MemoryStorage::new());
        let _rb2 = replica(b_addr, b2.clone()).await;
        tokio::time::sleep(3 * REFRESH).await;
        let third = save_many(&client, &ns, 200, 24).await;
        let back = stored(&b2, &third).await;
        assert!(
            back > 0 && back < third.len(),
            "the returning replica shares work: {back}"
        );
    }

    /// A replica that stops between two re-resolutions is still in the
    /// balance; a call that picks it cannot connect, and is made again on
    /// the live one (after a re-resolution out of turn): no call fails.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_replica_that_stops_between_refreshes_fails_no_call() {
        let port = free_port();
        let a_addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let b_addr: SocketAddr = ([127, 0, 0, 3], port).into();
        let (a, b) = (
            Arc::new(MemoryStorage::new()),
            Arc::new(MemoryStorage::new()),
        );
        let _ra = replica(a_addr, a.clone()).await;
        let rb = replica(b_addr, b.clone()).await;
        let resolver: Resolver =
            Arc::new(move |_: &str, _: u16| Box::pin(async move { Ok(vec![a_addr, b_addr]) }));
        // Re-resolved only once a minute unless asked.
        let channel = balanced_channel(
            &format!("http://replicas.test:{port}"),
            |e| e.timeout(Duration::from_secs(10)),
            Duration::from_secs(60),
            resolver,
        )
        .expect("channel");
        let client = StorageClient::from_channel(channel);
        let ns = compliance::namespace();
        let mut first = Vec::new();
        for round in 0..10 {
            first = save_many(&client, &ns, round * 8, 8).await;
            if stored(&b, &first).await > 0 && stored(&a, &first).await > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(stored(&b, &first).await > 0, "the second replica got work");

        rb.stop().await;
        let start = std::time::Instant::now();
        let after = save_many(&client, &ns, 1000, 16).await;
        for c in &after {
            client
                .info(c)
                .await
                .expect("a read right after a replica stopped");
        }
        assert_eq!(stored(&a, &after).await, after.len(), "all on the live one");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?} for 32 calls",
            start.elapsed()
        );
    }
}

/// Deletions travel over `WatchDeletes`: a subscriber hears `Missed` when it
/// subscribes, then each deleted version, whoever deleted it.
#[tokio::test(flavor = "multi_thread")]
async fn deletes_are_announced_over_grpc() {
    use modmesh_storage::watch::{DeleteEvent, Watched};
    let backend: Arc<dyn modmesh_storage::Storage> = Arc::new(Watched::new(Arc::new(
        modmesh_storage::backends::MemoryStorage::new(),
    )));
    let server = serve(backend.clone()).await;
    let client = StorageClient::new(&server.url).unwrap();
    let mut events = client.watch_deletes().expect("a client announces deletes");
    async fn recv(events: &mut tokio::sync::broadcast::Receiver<DeleteEvent>) -> DeleteEvent {
        tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("an event within 5 s")
            .unwrap()
    }
    assert_eq!(recv(&mut events).await, DeleteEvent::Missed);
    let c = coords("example.com/gone", "v1.0.0");
    compliance::save(&client, &c, b"{}", b"module example.com/gone\n", b"z")
        .await
        .ok();
    // Through the server's client and in-process: both are announced.
    let _ = client.delete(&c).await;
    assert_eq!(recv(&mut events).await, DeleteEvent::Deleted(c.clone()));
    let _ = backend.delete(&c).await;
    assert_eq!(recv(&mut events).await, DeleteEvent::Deleted(c));
}
