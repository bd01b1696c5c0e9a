//! The `minio` backend: any S3-compatible store (MinIO, DigitalOcean Spaces,
//! Alibaba OSS, ...) through the S3 API, in Athens' MinIO layout
//! (`<module>/<version>/go.mod`, `source.zip`, `<version>.info`), so a bucket
//! Athens filled is served as it is. As in Athens, a missing bucket is
//! created at start-up. Path-style URLs; static `Key` and `Secret`.

use super::s3::{self, Layout, ObjectStore, Tuning};
use crate::Storage;
use aws_credential_types::provider::SharedCredentialsProvider;
use modmesh_common::config::{err, ConfigError, Env, Section};
use modmesh_proto::Result;
use std::sync::Arc;

/// The region used when `Region` is empty (MinIO's default).
pub const DEFAULT_REGION: &str = "us-east-1";

/// The `[Storage.Minio]` table (Athens' keys and environment overrides).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
#[allow(non_snake_case)]
#[non_exhaustive]
pub struct MinioConfig {
    /// `ATHENS_MINIO_ENDPOINT` (required): `host:port`; an `http://` or
    /// `https://` prefix is dropped (`EnableSSL` picks the scheme).
    pub Endpoint: String,
    /// `ATHENS_MINIO_ACCESS_KEY_ID` (required).
    pub Key: String,
    /// `ATHENS_MINIO_SECRET_ACCESS_KEY` (required).
    pub Secret: String,
    /// `ATHENS_MINIO_USE_SSL`: HTTPS (default true).
    pub EnableSSL: bool,
    /// `ATHENS_MINIO_BUCKET_NAME` (required; created if missing).
    pub Bucket: String,
    /// `ATHENS_MINIO_REGION` (default `us-east-1`).
    pub Region: String,
}

impl Default for MinioConfig {
    fn default() -> Self {
        MinioConfig {
            Endpoint: String::new(),
            Key: String::new(),
            Secret: String::new(),
            EnableSSL: true,
            Bucket: String::new(),
            Region: String::new(),
        }
    }
}

impl Section for MinioConfig {
    const PATH: &'static str = "Storage.Minio";
    const ENV: &'static [Env] = &[
        Env::new("ATHENS_MINIO_ENDPOINT", "Endpoint"),
        Env::new("ATHENS_MINIO_ACCESS_KEY_ID", "Key"),
        Env::new("ATHENS_MINIO_SECRET_ACCESS_KEY", "Secret"),
        Env::new("ATHENS_MINIO_USE_SSL", "EnableSSL"),
        Env::new("ATHENS_MINIO_BUCKET_NAME", "Bucket"),
        Env::new("ATHENS_MINIO_REGION", "Region"),
    ];
    fn validate(&self) -> std::result::Result<(), ConfigError> {
        for (key, value) in [
            ("Endpoint", &self.Endpoint),
            ("Key", &self.Key),
            ("Secret", &self.Secret),
            ("Bucket", &self.Bucket),
        ] {
            if value.trim().is_empty() {
                return Err(err(&Self::key(key), "required when StorageType is minio"));
            }
        }
        Ok(())
    }
}

impl MinioConfig {
    /// The endpoint URL: the host with the scheme `EnableSSL` picks.
    pub fn endpoint_url(&self) -> String {
        let host = self.Endpoint.trim();
        let host = host
            .strip_prefix("https://")
            .or_else(|| host.strip_prefix("http://"))
            .unwrap_or(host)
            .trim_end_matches('/');
        let scheme = if self.EnableSSL { "https" } else { "http" };
        format!("{scheme}://{host}")
    }

    /// The region, or [`DEFAULT_REGION`].
    pub fn region(&self) -> &str {
        match self.Region.trim() {
            "" => DEFAULT_REGION,
            r => r,
        }
    }

    /// A store for this configuration (no network call).
    pub fn store(&self, tuning: Tuning) -> ObjectStore {
        let creds = aws_credential_types::Credentials::new(
            self.Key.trim(),
            self.Secret.trim(),
            None,
            None,
            "Storage.Minio.Key",
        );
        let client = s3::client(
            Some(self.endpoint_url()),
            self.region(),
            true,
            SharedCredentialsProvider::new(creds),
            &tuning,
        );
        ObjectStore::new(client, self.Bucket.trim(), Layout::Dirs, tuning, "minio")
    }
}

/// Builds the minio backend from `[Storage.Minio]`, creating the bucket if
/// it is missing.
pub fn build(cfg: &modmesh_common::Config) -> Result<Arc<dyn Storage>> {
    let c: MinioConfig = cfg.section().map_err(super::config_error)?;
    let tuning = Tuning {
        operation_timeout: cfg.timeout().max(std::time::Duration::from_secs(1)),
        ..Tuning::default()
    };
    let make = || c.store(tuning);
    Ok(Arc::new(s3::start_up(&make, true, "Storage.Minio.Bucket")?))
}
