//! [`FetcherClient`]: a [`Fetcher`] over gRPC, so callers cannot tell
//! whether their fetcher runs in-process or in `fetcher-svc`.

use crate::{Event, Fetched, Fetcher, Progress};
use async_trait::async_trait;
use bytes::Bytes;
use modmesh_common::{request_id, rpc};
use modmesh_proto::pb::download_event::Kind;
use modmesh_proto::pb::fetcher_client::FetcherClient as RpcClient;
use modmesh_proto::pb::{ModuleRef, SumDbRequest};
use modmesh_proto::{Coordinates, Error, ModulePath, Result, Version, MAX_MESSAGE};
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

type Interceptor = fn(tonic::Request<()>) -> std::result::Result<tonic::Request<()>, tonic::Status>;
type Inner = RpcClient<InterceptedService<Channel, Interceptor>>;

/// How long [`Fetcher::health`] waits for the remote service's answer.
pub const HEALTH_DEADLINE: Duration = Duration::from_secs(5);

/// A [`Fetcher`] that calls a remote Fetcher service. Every call carries
/// the current request id; errors keep their kind.
#[derive(Debug, Clone)]
pub struct FetcherClient {
    inner: Inner,
    channel: Channel,
}

impl FetcherClient {
    /// A client for the service at `url` (`http://host:port`). It connects
    /// lazily, on the first call.
    pub fn new(url: &str) -> Result<Self> {
        let channel = modmesh_common::server::channel(url)
            .map_err(|e| Error::invalid(format!("fetcher URL {url:?}: {e}")))?;
        Ok(Self::from_channel(channel))
    }

    /// A client over an existing channel.
    pub fn from_channel(channel: Channel) -> Self {
        let inner =
            RpcClient::with_interceptor(channel.clone(), request_id::propagate as Interceptor)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE);
        FetcherClient { inner, channel }
    }
}

/// `version` as the fetcher resolved `c`: canonical, or an error.
fn resolved(c: &Coordinates, version: &str) -> Result<Version> {
    Version::new(version)
        .ok()
        .filter(Version::is_canonical)
        .ok_or_else(|| {
            Error::internal(format!(
                "the fetcher resolved {c} to {version:?}, not a canonical version"
            ))
        })
}

#[async_trait]
impl Fetcher for FetcherClient {
    async fn download(&self, c: &Coordinates) -> Result<Fetched> {
        let reply = rpc!(self.inner.clone(), download(c.to_pb()));
        Ok(Fetched {
            version: resolved(c, &reply.version)?,
            info: reply.info,
        })
    }

    /// `DownloadProgress`: the service's events are passed on as they
    /// arrive; the last message is the verdict.
    async fn download_progress(&self, c: &Coordinates, progress: Progress) -> Result<Fetched> {
        let mut stream = rpc!(self.inner.clone(), download_progress(c.to_pb()));
        while let Some(m) = stream.message().await? {
            let e = match m.kind {
                Some(Kind::Metadata(m)) => Event::Metadata {
                    version: resolved(c, &m.version)?,
                    info: m.info,
                    go_mod: m.go_mod,
                },
                Some(Kind::ZipStart(z)) => Event::ZipStart {
                    size: z.size_known.then_some(z.size),
                },
                Some(Kind::ZipData(d)) => Event::ZipData(d),
                Some(Kind::Verified(_)) => Event::Verified,
                Some(Kind::Stored(f)) => {
                    return Ok(Fetched {
                        version: resolved(c, &f.version)?,
                        info: f.info,
                    })
                }
                None => return Err(Error::internal("an empty download event")),
            };
            progress.send(e).await;
        }
        Err(Error::unavailable(format!(
            "{c}: the fetcher's stream ended without a verdict"
        )))
    }

    async fn list(&self, module: &ModulePath) -> Result<Vec<String>> {
        let req = ModuleRef {
            module: module.as_str().to_string(),
        };
        Ok(rpc!(self.inner.clone(), list(req.clone())).versions)
    }

    async fn query(&self, c: &Coordinates) -> Result<Bytes> {
        let reply = rpc!(self.inner.clone(), query(c.to_pb()));
        Ok(reply.data)
    }

    async fn sumdb(&self, db: &str, path: &str) -> Result<Bytes> {
        let req = SumDbRequest {
            db: db.to_string(),
            path: path.to_string(),
        };
        Ok(rpc!(self.inner.clone(), sum_db(req.clone())).data)
    }

    /// `grpc.health.v1.Health/Check` for `modmesh.v1.Fetcher`, within
    /// [`HEALTH_DEADLINE`].
    async fn health(&self) -> Result<()> {
        let client = HealthClient::new(self.channel.clone());
        let check = modmesh_common::server::retry_unsent(|| {
            let mut client = client.clone();
            let mut req = tonic::Request::new(HealthCheckRequest {
                service: crate::server::SERVICE_NAME.to_string(),
            });
            req.set_timeout(HEALTH_DEADLINE);
            async move { client.check(req).await }
        });
        let reply = tokio::time::timeout(HEALTH_DEADLINE, check)
            .await
            .map_err(|_| {
                Error::timeout(format!(
                    "the fetcher's health check took over {}s",
                    HEALTH_DEADLINE.as_secs()
                ))
            })??
            .into_inner();
        match reply.status() {
            ServingStatus::Serving => Ok(()),
            other => Err(Error::unavailable(format!(
                "the fetcher service reports {}",
                other.as_str_name()
            ))),
        }
    }
}
