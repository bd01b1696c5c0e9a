//! The real object stores storage-svc runs on in the end-to-end suite and
//! the benchmark (feature `servers`): for each, a fresh bucket on a server
//! this process shares (started once, by the storage crate's test
//! harnesses), the environment that points storage-svc at it, and a plain
//! listing of what the bucket holds (through the store's own API, not our
//! backend), to check Athens' layout.
//!
//! A missing server gives `Ok(None)` after printing `SKIPPED: <why>`, or an
//! error under `CI=true`.

use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use modmesh_storage::backends::cloud_servers::{CloudServer, ServerProc};
use modmesh_storage::backends::s3::testing as s3t;
use modmesh_storage::backends::{azureblob, gcp};

/// An object store storage-svc can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `StorageType = "s3"` on s3s-fs (which checks request signatures).
    S3OnS3sFs,
    /// `StorageType = "s3"` on moto.
    S3OnMoto,
    /// `StorageType = "minio"` on the MinIO server.
    Minio,
    /// `StorageType = "gcp"` on fake-gcs-server.
    Gcp,
    /// `StorageType = "azureblob"` on Azurite.
    AzureBlob,
    /// `StorageType = "mongo"` on FerretDB (SQLite).
    Mongo,
}

impl Kind {
    /// Every kind, in the order the suite runs them.
    pub const ALL: [Kind; 6] = [
        Kind::S3OnS3sFs,
        Kind::S3OnMoto,
        Kind::Minio,
        Kind::Gcp,
        Kind::AzureBlob,
        Kind::Mongo,
    ];

    /// A short label (`s3@s3s-fs`, `gcp`, ...).
    pub fn label(self) -> &'static str {
        match self {
            Kind::S3OnS3sFs => "s3@s3s-fs",
            Kind::S3OnMoto => "s3@moto",
            Kind::Minio => "minio",
            Kind::Gcp => "gcp",
            Kind::AzureBlob => "azureblob",
            Kind::Mongo => "mongo@ferretdb",
        }
    }
}

/// A fresh, empty bucket (container, database) on a running store.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// Which store.
    pub kind: Kind,
    /// The bucket's (container's, database's) name.
    pub name: String,
    /// `ATHENS_STORAGE_TYPE` and the backend's settings, for storage-svc.
    pub env: Vec<(String, String)>,
    url: String,
}

fn missing(why: &str, deps: &str) -> Result<Option<Bucket>> {
    if modmesh_test_support::on_ci() {
        bail!("{why} (CI=true: real servers are required; run {deps})");
    }
    eprintln!("SKIPPED: {why}");
    Ok(None)
}

fn kv(k: &str, v: impl Into<String>) -> (String, String) {
    (k.to_string(), v.into())
}

/// A FerretDB (SQLite handler, in a temporary directory) this process
/// shares, started on first use; `None` if `ferretdb` is not installed.
fn ferretdb() -> Option<&'static (ServerProc, tempfile::TempDir)> {
    static S: OnceLock<Option<(ServerProc, tempfile::TempDir)>> = OnceLock::new();
    S.get_or_init(|| {
        let bin = modmesh_test_support::find_program("ferretdb")?;
        let dir = tempfile::tempdir().expect("ferretdb directory");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("ferretdb data directory");
        let port = modmesh_test_support::free_port();
        let args = vec![
            "--handler=sqlite".to_string(),
            format!("--sqlite-url=file:{}/", data.display()),
            format!("--listen-addr=127.0.0.1:{port}"),
            format!("--state-dir={}", dir.path().display()),
            "--telemetry=disable".into(),
            "--debug-addr=-".into(),
            "--log-level=error".into(),
        ];
        Some((ServerProc::start("ferretdb", &bin, args, port), dir))
    })
    .as_ref()
}

/// A fresh bucket on `kind`'s server (started on first use).
pub async fn open(kind: Kind) -> Result<Option<Bucket>> {
    let name = s3t::bucket_name();
    let bucket = match kind {
        Kind::S3OnS3sFs | Kind::S3OnMoto => {
            let (url, key, secret) = if kind == Kind::S3OnS3sFs {
                let Some(s) = s3t::s3s_fs() else {
                    return missing("s3s-fs is not installed", "scripts/deps/30-storage.sh");
                };
                (s.server.url(), "modmesh", "modmesh-secret")
            } else {
                let Some(m) = s3t::moto() else {
                    return missing("moto_server is not installed", "scripts/deps/30-storage.sh");
                };
                (m.url(), "test-key", "test-secret")
            };
            s3t::client_at(&url, key, secret)
                .create_bucket()
                .bucket(&name)
                .send()
                .await
                .with_context(|| format!("create bucket {name} at {url}"))?;
            let env = vec![
                kv("ATHENS_STORAGE_TYPE", "s3"),
                kv("AWS_REGION", "us-east-1"),
                kv("AWS_ACCESS_KEY_ID", key),
                kv("AWS_SECRET_ACCESS_KEY", secret),
                kv("ATHENS_S3_BUCKET_NAME", &name),
                kv("AWS_ENDPOINT", &url),
                kv("AWS_FORCE_PATH_STYLE", "true"),
            ];
            Bucket {
                kind,
                name,
                env,
                url,
            }
        }
        Kind::Minio => {
            let Some(m) = s3t::minio() else {
                return missing("minio is not installed", "scripts/deps/37-minio.sh");
            };
            // The minio backend creates its bucket at start-up, as Athens does.
            let env = vec![
                kv("ATHENS_STORAGE_TYPE", "minio"),
                kv(
                    "ATHENS_MINIO_ENDPOINT",
                    format!("127.0.0.1:{}", m.server.port),
                ),
                kv("ATHENS_MINIO_ACCESS_KEY_ID", s3t::MINIO_USER),
                kv("ATHENS_MINIO_SECRET_ACCESS_KEY", s3t::MINIO_PASSWORD),
                kv("ATHENS_MINIO_USE_SSL", "false"),
                kv("ATHENS_MINIO_BUCKET_NAME", &name),
            ];
            Bucket {
                kind,
                name,
                env,
                url: m.server.url(),
            }
        }
        Kind::Gcp | Kind::AzureBlob => {
            let server: &dyn CloudServer = if kind == Kind::Gcp {
                match gcp::testing::shared() {
                    Some(s) => s,
                    None => {
                        return missing(
                            "fake-gcs-server is not installed",
                            "scripts/deps/35-cloud.sh",
                        )
                    }
                }
            } else {
                match azureblob::testing::shared() {
                    Some(s) => s,
                    None => {
                        return missing("azurite-blob is not installed", "scripts/deps/35-cloud.sh")
                    }
                }
            };
            let name = server.new_bucket().await;
            let mut env = server.env(&name);
            env.push(kv("ATHENS_STORAGE_TYPE", kind_type(kind)));
            Bucket {
                kind,
                name,
                env,
                url: String::new(),
            }
        }
        Kind::Mongo => {
            let Some((f, _)) = ferretdb() else {
                return missing("ferretdb is not installed", "scripts/deps/36-mongo.sh");
            };
            let name = name.replace('-', "_");
            let url = format!("mongodb://127.0.0.1:{}/", f.port);
            let env = vec![
                kv("ATHENS_STORAGE_TYPE", "mongo"),
                kv("ATHENS_MONGO_STORAGE_URL", &url),
                kv("ATHENS_MONGO_DEFAULT_DATABASE", &name),
            ];
            Bucket {
                kind,
                name,
                env,
                url,
            }
        }
    };
    Ok(Some(bucket))
}

fn kind_type(kind: Kind) -> &'static str {
    match kind {
        Kind::S3OnS3sFs | Kind::S3OnMoto => "s3",
        Kind::Minio => "minio",
        Kind::Gcp => "gcp",
        Kind::AzureBlob => "azureblob",
        Kind::Mongo => "mongo",
    }
}

impl Bucket {
    /// What the bucket holds, listed through the store's own API: object
    /// names; for Mongo, `doc:<module>@<version>` per document of the
    /// `modules` collection and `gridfs:<file name>` per GridFS file.
    pub async fn names(&self) -> Result<Vec<String>> {
        Ok(match self.kind {
            Kind::S3OnS3sFs => {
                let c = s3t::client_at(&self.url, "modmesh", "modmesh-secret");
                s3t::keys(&c, &self.name).await
            }
            Kind::S3OnMoto => {
                let c = s3t::client_at(&self.url, "test-key", "test-secret");
                s3t::keys(&c, &self.name).await
            }
            Kind::Minio => {
                let c = s3t::client_at(&self.url, s3t::MINIO_USER, s3t::MINIO_PASSWORD);
                s3t::keys(&c, &self.name).await
            }
            Kind::Gcp => {
                let s = gcp::testing::shared().context("fake-gcs-server")?;
                s.names(&self.name).await
            }
            Kind::AzureBlob => {
                let s = azureblob::testing::shared().context("azurite")?;
                s.names(&self.name).await
            }
            Kind::Mongo => mongo_names(&self.url, &self.name).await?,
        })
    }

    /// The names [`Bucket::names`] shows for one stored version in
    /// Athens' layout of this store.
    pub fn layout(&self, module: &str, version: &str) -> Vec<String> {
        match self.kind {
            Kind::Minio => vec![
                format!("{module}/{version}/{version}.info"),
                format!("{module}/{version}/go.mod"),
                format!("{module}/{version}/source.zip"),
            ],
            Kind::Mongo => vec![
                format!("doc:{module}@{version}"),
                format!("gridfs:{}_{version}.zip", module.replace('/', "_")),
            ],
            _ => ["info", "mod", "zip"]
                .iter()
                .map(|ext| format!("{module}/@v/{version}.{ext}"))
                .collect(),
        }
    }
}

async fn mongo_names(url: &str, db: &str) -> Result<Vec<String>> {
    use futures::TryStreamExt;
    use mongodb::bson::Document;
    let client = mongodb::Client::with_uri_str(url).await?;
    let db = client.database(db);
    let mut out = Vec::new();
    let docs: Vec<Document> = db
        .collection::<Document>("modules")
        .find(Document::new())
        .await?
        .try_collect()
        .await?;
    for d in docs {
        out.push(format!(
            "doc:{}@{}",
            d.get_str("module").unwrap_or("?"),
            d.get_str("version").unwrap_or("?")
        ));
    }
    let files: Vec<Document> = db
        .collection::<Document>("fs.files")
        .find(Document::new())
        .await?
        .try_collect()
        .await?;
    for f in files {
        out.push(format!("gridfs:{}", f.get_str("filename").unwrap_or("?")));
    }
    Ok(out)
}

/// The module and version of a decoded upstream path
/// `/<escaped module>/@v/<version>.zip` (`!x` in the module is `X`).
pub fn zip_coords(path: &str) -> Option<(String, String)> {
    let (module, file) = path.trim_start_matches('/').split_once("/@v/")?;
    let version = file.strip_suffix(".zip")?;
    let mut m = String::new();
    let mut bang = false;
    for ch in module.chars() {
        if bang {
            m.extend(ch.to_uppercase());
            bang = false;
        } else if ch == '!' {
            bang = true;
        } else {
            m.push(ch);
        }
    }
    Some((m, version.to_string()))
}
