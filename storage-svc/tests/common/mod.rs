//! Backend constructors shared by the integration tests: each returns a
//! fresh, empty store (with whatever must live as long as it).

#![allow(dead_code)]

use modmesh_common::server::LoopbackServer;
use modmesh_storage::backends::{DiskStorage, MemoryStorage};
use modmesh_storage::client::StorageClient;
use modmesh_storage::compliance::Fixture;
use modmesh_storage::Storage;
use std::sync::Arc;

/// The `memory` backend.
pub async fn memory_backend() -> Fixture {
    Fixture::new(Arc::new(MemoryStorage::new()))
}

/// The `disk` backend in a fresh temporary directory.
pub async fn disk_backend() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = DiskStorage::new(dir.path()).expect("open disk storage");
    Fixture::new(Arc::new(storage)).keep(dir)
}

/// Serves `storage` the way storage-svc does (health, reflection,
/// request-id layer) on 127.0.0.1 and an ephemeral port.
pub async fn serve(storage: Arc<dyn Storage>) -> LoopbackServer {
    LoopbackServer::start(
        modmesh_storage::server::routes(storage),
        &[modmesh_storage::server::SERVICE_NAME],
    )
    .await
    .expect("serve")
}

/// `inner` behind a real gRPC server, reached through [`StorageClient`].
pub async fn over_grpc(inner: Fixture) -> Fixture {
    if let Some(why) = inner.skip_reason() {
        return Fixture::skipped(why);
    }
    let server = serve(inner.storage.clone()).await;
    let client = StorageClient::new(&server.url).expect("client");
    let caps = client.fetch_capabilities().await.expect("capabilities");
    assert_eq!(caps, inner.storage.capabilities(), "capabilities over gRPC");
    Fixture::new(Arc::new(client)).keep(server).keep(inner)
}

/// `memory` over gRPC.
pub async fn grpc_memory_backend() -> Fixture {
    over_grpc(memory_backend().await).await
}

/// `disk` over gRPC.
pub async fn grpc_disk_backend() -> Fixture {
    over_grpc(disk_backend().await).await
}

// ------------------------------------------------------------ S3 servers

use modmesh_storage::backends::s3;
pub use modmesh_storage::backends::s3::testing::*;

/// The `s3` backend, built from configuration (environment overrides)
/// against the shared moto, in a fresh bucket.
pub async fn s3_backend() -> Fixture {
    let Some(moto) = moto() else {
        return Fixture::skipped("moto_server is not installed");
    };
    let bucket = bucket_name();
    create_bucket(&moto.url(), &bucket).await;
    let url = moto.url();
    let cfg = modmesh_common::Config::from_text(
        "StorageType = \"s3\"\n",
        &[
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "test-key"),
            ("AWS_SECRET_ACCESS_KEY", "test-secret"),
            ("ATHENS_S3_BUCKET_NAME", &bucket),
            ("AWS_ENDPOINT", &url),
            ("AWS_FORCE_PATH_STYLE", "true"),
        ],
    )
    .expect("config");
    let storage = modmesh_storage::from_config(&cfg).expect("s3 backend");
    Fixture::new(storage)
}

/// `s3` (on moto) over gRPC: presigned URLs and capabilities cross the hop.
pub async fn grpc_s3_backend() -> Fixture {
    over_grpc(s3_backend().await).await
}

/// The `minio` backend, built from configuration against the shared MinIO
/// server; it creates its fresh bucket itself.
pub async fn minio_backend() -> Fixture {
    let Some(minio) = minio() else {
        return Fixture::skipped("minio is not installed (scripts/deps/37-minio.sh)");
    };
    let bucket = bucket_name();
    let endpoint = format!("127.0.0.1:{}", minio.server.port);
    let cfg = modmesh_common::Config::from_text(
        "StorageType = \"minio\"\n",
        &[
            ("ATHENS_MINIO_ENDPOINT", &endpoint),
            ("ATHENS_MINIO_ACCESS_KEY_ID", MINIO_USER),
            ("ATHENS_MINIO_SECRET_ACCESS_KEY", MINIO_PASSWORD),
            ("ATHENS_MINIO_USE_SSL", "false"),
            ("ATHENS_MINIO_BUCKET_NAME", &bucket),
        ],
    )
    .expect("config");
    let storage = modmesh_storage::from_config(&cfg).expect("minio backend");
    Fixture::new(storage)
}

// ---------------------------------------------------------------- s3s-fs
/// The `s3` backend against s3s-fs (real signature checks), built from
/// configuration, in a fresh bucket it creates first.
pub async fn s3s_backend() -> Fixture {
    let Some(s3s) = s3s_fs() else {
        return Fixture::skipped("s3s-fs is not installed");
    };
    let url = s3s.server.url();
    let bucket = bucket_name();
    let creds =
        aws_credential_types::Credentials::new("modmesh", "modmesh-secret", None, None, "test");
    let admin = s3::client(
        Some(url.clone()),
        "us-east-1",
        true,
        aws_credential_types::provider::SharedCredentialsProvider::new(creds),
        &test_tuning(),
    );
    admin
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create a bucket on s3s-fs");
    let cfg = modmesh_common::Config::from_text(
        "StorageType = \"s3\"\n",
        &[
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "modmesh"),
            ("AWS_SECRET_ACCESS_KEY", "modmesh-secret"),
            ("ATHENS_S3_BUCKET_NAME", &bucket),
            ("AWS_ENDPOINT", &url),
            ("AWS_FORCE_PATH_STYLE", "true"),
        ],
    )
    .expect("config");
    Fixture::new(modmesh_storage::from_config(&cfg).expect("s3 backend on s3s-fs")).excluding(
        "concurrent_saves",
        "s3s-fs 0.14 checks If-None-Match and then writes, so concurrent \
         conditional writes can all succeed (AWS S3, MinIO and moto decide atomically)",
    )
}
