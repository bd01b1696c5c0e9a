//! [`FetcherClient`]: a [`Fetcher`] over gRPC, so callers cannot tell
//! whether their fetcher runs in-process or in `fetcher-svc`.

use crate::{Fetched, Fetcher};
use async_trait::async_trait;
use bytes::Bytes;
use modmesh_proto::pb::fetcher_client::FetcherClient as RpcClient;
use modmesh_proto::pb::ModuleRef;
use modmesh_proto::{request_id, Coordinates, Error, ModulePath, Result, Version, MAX_MESSAGE};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Interceptor = fn(tonic::Request<()>) -> std::result::Result<tonic::Request<()>, tonic::Status>;
type Inner = RpcClient<InterceptedService<Channel, Interceptor>>;

/// A [`Fetcher`] that calls a remote Fetcher service. Every call carries
/// the current request id; errors keep their kind.
#[derive(Debug, Clone)]
pub struct FetcherClient {
    inner: Inner,
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
        let inner = RpcClient::with_interceptor(channel, request_id::propagate as Interceptor)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        FetcherClient { inner }
    }
}

#[async_trait]
impl Fetcher for FetcherClient {
    async fn download(&self, c: &Coordinates) -> Result<Fetched> {
        let reply = self.inner.clone().download(c.to_pb()).await?.into_inner();
        let version = Version::new(reply.version.as_str())
            .ok()
            .filter(Version::is_canonical)
            .ok_or_else(|| {
                Error::internal(format!(
                    "the fetcher resolved {c} to {:?}, not a canonical version",
                    reply.version
                ))
            })?;
        Ok(Fetched {
            version,
            info: reply.info,
        })
    }

    async fn list(&self, module: &ModulePath) -> Result<Vec<String>> {
        let req = ModuleRef {
            module: module.as_str().to_string(),
        };
        Ok(self.inner.clone().list(req).await?.into_inner().versions)
    }

    async fn query(&self, c: &Coordinates) -> Result<Bytes> {
        let reply = self.inner.clone().query(c.to_pb()).await?.into_inner();
        Ok(reply.data)
    }
}
