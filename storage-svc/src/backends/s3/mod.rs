//! The `s3` backend: an S3 bucket in Athens' S3 layout
//! (`<module>/@v/<version>.info`, `.mod`, `.zip`), so a bucket Athens
//! filled is served as it is. The bucket must exist (as in Athens): a
//! missing one stops start-up with a message naming `Storage.S3.Bucket`.
//!
//! Credentials, in Athens' order: unless `UseDefaultConfiguration`, first
//! the credentials endpoint (`CredentialsEndpoint` +
//! `AwsContainerCredentialsRelativeURI`) if set, then the static `Key`,
//! `Secret` and `Token` if set; with `UseDefaultConfiguration`, or when
//! neither is set, the SDK's default chain (environment, shared files,
//! container and instance roles).
//!
//! The store itself ([`store::ObjectStore`]) is shared with `minio`.

pub mod creds;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

use crate::Storage;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_s3::config::{
    BehaviorVersion, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    StalledStreamProtectionConfig,
};
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use modmesh_common::config::{err, ConfigError, Env, Section};
use modmesh_proto::{Error, Result};
use std::sync::Arc;
pub use store::{Layout, ObjectStore, Tuning};

/// The `[Storage.S3]` table (Athens' keys and environment overrides).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
#[allow(non_snake_case)]
#[non_exhaustive]
pub struct S3Config {
    /// `AWS_REGION` (required).
    pub Region: String,
    /// `AWS_ACCESS_KEY_ID`.
    pub Key: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub Secret: String,
    /// `AWS_SESSION_TOKEN`.
    pub Token: String,
    /// `ATHENS_S3_BUCKET_NAME` (required; the bucket must exist).
    pub Bucket: String,
    /// `AWS_FORCE_PATH_STYLE`: path-style URLs (`endpoint/bucket/key`).
    pub ForcePathStyle: bool,
    /// `AWS_USE_DEFAULT_CONFIGURATION`: the SDK's default credential chain
    /// only.
    pub UseDefaultConfiguration: bool,
    /// `AWS_CREDENTIALS_ENDPOINT`: a container credentials endpoint, tried
    /// first.
    pub CredentialsEndpoint: String,
    /// `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`: appended to
    /// `CredentialsEndpoint`.
    pub AwsContainerCredentialsRelativeURI: String,
    /// `AWS_ENDPOINT`: a host name or URL replacing the default S3 endpoint.
    pub Endpoint: String,
}

impl Section for S3Config {
    const PATH: &'static str = "Storage.S3";
    const ENV: &'static [Env] = &[
        Env::new("AWS_REGION", "Region"),
        Env::new("AWS_ACCESS_KEY_ID", "Key"),
        Env::new("AWS_SECRET_ACCESS_KEY", "Secret"),
        Env::new("AWS_SESSION_TOKEN", "Token"),
        Env::new("ATHENS_S3_BUCKET_NAME", "Bucket"),
        Env::new("AWS_FORCE_PATH_STYLE", "ForcePathStyle"),
        Env::new("AWS_USE_DEFAULT_CONFIGURATION", "UseDefaultConfiguration"),
        Env::new("AWS_CREDENTIALS_ENDPOINT", "CredentialsEndpoint"),
        Env::new(
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "AwsContainerCredentialsRelativeURI",
        ),
        Env::new("AWS_ENDPOINT", "Endpoint"),
    ];
    fn validate(&self) -> std::result::Result<(), ConfigError> {
        if self.Region.trim().is_empty() {
            return Err(err(&Self::key("Region"), "required when StorageType is s3"));
        }
        if self.Bucket.trim().is_empty() {
            return Err(err(&Self::key("Bucket"), "required when StorageType is s3"));
        }
        if self.Key.trim().is_empty() != self.Secret.trim().is_empty() {
            return Err(err(
                &Self::key("Secret"),
                "Key and Secret are given together or not at all",
            ));
        }
        Ok(())
    }
}

impl S3Config {
    /// The endpoint URL, if one is set (a bare host name gets `https://`).
    pub fn endpoint_url(&self) -> Option<String> {
        let e = self.Endpoint.trim();
        if e.is_empty() {
            None
        } else if e.contains("://") {
            Some(e.trim_end_matches('/').to_string())
        } else {
            Some(format!("https://{}", e.trim_end_matches('/')))
        }
    }

    /// The credentials provider in Athens' order (see the module docs).
    pub fn credentials(&self) -> SharedCredentialsProvider {
        let region = self.Region.trim().to_string();
        if self.UseDefaultConfiguration {
            return SharedCredentialsProvider::new(creds::DefaultChain::new(region));
        }
        let endpoint = self.CredentialsEndpoint.trim();
        let endpoint = (!endpoint.is_empty()).then(|| {
            creds::EndpointCredentials::new(format!(
                "{endpoint}{}",
                self.AwsContainerCredentialsRelativeURI.trim()
            ))
        });
        let fixed = (!self.Key.trim().is_empty()).then(|| {
            aws_credential_types::Credentials::new(
                self.Key.trim(),
                self.Secret.trim(),
                Some(self.Token.trim().to_string()).filter(|t| !t.is_empty()),
                None,
                "Storage.S3.Key",
            )
        });
        match (endpoint, fixed) {
            (Some(e), Some(f)) => SharedCredentialsProvider::new(
                aws_config::meta::credentials::CredentialsProviderChain::first_try(
                    "CredentialsEndpoint",
                    e,
                )
                .or_else("Storage.S3.Key", f),
            ),
            (Some(e), None) => SharedCredentialsProvider::new(e),
            (None, Some(f)) => SharedCredentialsProvider::new(f),
            (None, None) => SharedCredentialsProvider::new(creds::DefaultChain::new(region)),
        }
    }
}

/// An S3 client for `endpoint` (or AWS's), with our deadlines on every call
/// and the checksums every S3 API understands.
pub fn client(
    endpoint: Option<String>,
    region: &str,
    path_style: bool,
    credentials: SharedCredentialsProvider,
    tuning: &Tuning,
) -> aws_sdk_s3::Client {
    let mut conf = aws_sdk_s3::Config::builder();
    conf.set_endpoint_url(endpoint);
    let conf = conf
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .credentials_provider(credentials)
        .force_path_style(path_style)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(tuning.connect_timeout)
                .read_timeout(tuning.read_timeout)
                .operation_attempt_timeout(tuning.attempt_timeout)
                .operation_timeout(tuning.operation_timeout)
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(tuning.max_attempts.max(1)))
        // A slow reader (a slow go client) is not a stalled server.
        .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Builds the s3 backend from `[Storage.S3]`.
pub fn build(cfg: &modmesh_common::Config) -> Result<Arc<dyn Storage>> {
    let c: S3Config = cfg.section().map_err(super::config_error)?;
    let tuning = Tuning {
        operation_timeout: cfg.timeout().max(std::time::Duration::from_secs(1)),
        ..Tuning::default()
    };
    let make = move || {
        let client = client(
            c.endpoint_url(),
            c.Region.trim(),
            c.ForcePathStyle,
            c.credentials(),
            &tuning,
        );
        ObjectStore::new(client, c.Bucket.trim(), Layout::AtV, tuning, "s3")
    };
    let store = start_up(&make, false, "Storage.S3.Bucket")?;
    Ok(Arc::new(store))
}

/// Checks (or creates) the bucket and aborts stale multipart uploads, with
/// a store of its own on a runtime of its own (builders are synchronous),
/// then makes the store to serve with.
pub(crate) fn start_up(
    make: &(dyn Fn() -> ObjectStore + Sync),
    create: bool,
    key: &str,
) -> Result<ObjectStore> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::internal(format!("start-up runtime: {e}")))?;
            rt.block_on(async {
                let store = make();
                store.ensure_bucket(create, key).await?;
                // Uploads of saves that crashed; failing to sweep is no
                // reason not to serve.
                match store.sweep_stale_uploads(store.tuning().orphan_after).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(aborted = n, "aborted stale multipart uploads"),
                    Err(e) => tracing::warn!(error = %e, "sweeping stale multipart uploads"),
                }
                Ok(())
            })
        })
        .join()
        .unwrap_or_else(|_| Err(Error::internal("the bucket check panicked")))
    })?;
    Ok(make())
}
