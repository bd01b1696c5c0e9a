//! Credential providers of the s3 backend beyond static keys: a container
//! credentials endpoint (Athens' `CredentialsEndpoint` +
//! `AwsContainerCredentialsRelativeURI`), and the SDK's default chain made
//! on first use.

use aws_credential_types::provider::{self, error::CredentialsError, ProvideCredentials};
use aws_credential_types::Credentials;
use std::time::{Duration, SystemTime};

/// How long a credentials endpoint may take to answer.
const ENDPOINT_TIMEOUT: Duration = Duration::from_secs(5);

/// Credentials from an HTTP endpoint answering `GET` with the container
/// credentials document: `{"AccessKeyId", "SecretAccessKey", "Token",
/// "Expiration"}`. An endpoint that fails counts as "no credentials here",
/// so a chain goes on to its next provider.
#[derive(Debug, Clone)]
pub struct EndpointCredentials {
    url: String,
}

#[derive(serde::Deserialize)]
#[allow(non_snake_case)]
struct Document {
    AccessKeyId: String,
    SecretAccessKey: String,
    #[serde(default)]
    Token: Option<String>,
    #[serde(default)]
    Expiration: Option<String>,
}

impl EndpointCredentials {
    /// A provider asking `url`.
    pub fn new(url: String) -> Self {
        EndpointCredentials { url }
    }

    async fn fetch(&self) -> provider::Result {
        let client = reqwest::Client::builder()
            .timeout(ENDPOINT_TIMEOUT)
            .build()
            .map_err(CredentialsError::not_loaded)?;
        let resp = client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| CredentialsError::not_loaded(format!("{}: {e}", self.url)))?;
        if !resp.status().is_success() {
            return Err(CredentialsError::not_loaded(format!(
                "{}: {}",
                self.url,
                resp.status()
            )));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| CredentialsError::not_loaded(format!("{}: {e}", self.url)))?;
        let doc: Document = serde_json::from_slice(&body).map_err(|e| {
            CredentialsError::not_loaded(format!("{}: not a credentials document: {e}", self.url))
        })?;
        let expiry = doc.Expiration.as_deref().and_then(|e| {
            aws_smithy_types::DateTime::from_str(e, aws_smithy_types::date_time::Format::DateTime)
                .ok()
                .and_then(|d| SystemTime::try_from(d).ok())
        });
        Ok(Credentials::new(
            doc.AccessKeyId,
            doc.SecretAccessKey,
            doc.Token.filter(|t| !t.is_empty()),
            expiry,
            "CredentialsEndpoint",
        ))
    }
}

impl ProvideCredentials for EndpointCredentials {
    fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        provider::future::ProvideCredentials::new(self.fetch())
    }
}

/// The SDK's default credential chain, built on first use (building it is
/// asynchronous).
#[derive(Debug)]
pub struct DefaultChain {
    region: String,
    chain:
        tokio::sync::OnceCell<aws_config::default_provider::credentials::DefaultCredentialsChain>,
}

impl DefaultChain {
    /// The default chain for `region`.
    pub fn new(region: String) -> Self {
        DefaultChain {
            region,
            chain: tokio::sync::OnceCell::new(),
        }
    }
}

impl ProvideCredentials for DefaultChain {
    fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        provider::future::ProvideCredentials::new(async move {
            let chain = self
                .chain
                .get_or_init(|| async {
                    aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
                        .region(aws_sdk_s3::config::Region::new(self.region.clone()))
                        .build()
                        .await
                })
                .await;
            chain.provide_credentials().await
        })
    }
}
