//! The Fetcher gRPC service over any `Arc<dyn Fetcher>`.
//!
//! Wire coordinates are validated again here (`Coordinates::from_pb`,
//! `ModulePath::new`), so nothing unchecked reaches a fetcher. Errors keep
//! their kind across the hop (see `modmesh_proto::error`). When the client
//! goes away, tonic drops the handler's future, which cancels the fetch (the
//! go fetcher then kills its go process group).

use crate::Fetcher;
use modmesh_proto::pb::fetcher_server::{Fetcher as FetcherRpc, FetcherServer};
use modmesh_proto::pb::{
    Blob, Coordinates as PbCoordinates, Fetched, ModuleRef, SumDbRequest, VersionList,
};
use modmesh_proto::{Coordinates, ModulePath, MAX_MESSAGE};
use std::sync::Arc;
use tonic::service::Routes;
use tonic::{Request, Response, Status};

/// The fully qualified gRPC service name, for health reporting.
pub const SERVICE_NAME: &str = "modmesh.v1.Fetcher";

/// Serves one [`Fetcher`] over gRPC.
#[derive(Clone)]
pub struct FetcherService {
    inner: Arc<dyn Fetcher>,
}

impl std::fmt::Debug for FetcherService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetcherService").finish_non_exhaustive()
    }
}

impl FetcherService {
    /// A service answering with `fetcher`.
    pub fn new(fetcher: Arc<dyn Fetcher>) -> Self {
        FetcherService { inner: fetcher }
    }
}

#[tonic::async_trait]
impl FetcherRpc for FetcherService {
    async fn download(&self, req: Request<PbCoordinates>) -> Result<Response<Fetched>, Status> {
        let c = Coordinates::from_pb(req.get_ref())?;
        let f = self.inner.download(&c).await?;
        Ok(Response::new(Fetched {
            version: f.version.as_str().to_string(),
            info: f.info,
        }))
    }

    async fn list(&self, req: Request<ModuleRef>) -> Result<Response<VersionList>, Status> {
        let module = ModulePath::new(req.get_ref().module.as_str())?;
        let versions = self.inner.list(&module).await?;
        Ok(Response::new(VersionList { versions }))
    }

    async fn query(&self, req: Request<PbCoordinates>) -> Result<Response<Blob>, Status> {
        let c = Coordinates::from_pb(req.get_ref())?;
        let data = self.inner.query(&c).await?;
        Ok(Response::new(Blob { data }))
    }

    async fn sum_db(&self, req: Request<SumDbRequest>) -> Result<Response<Blob>, Status> {
        let r = req.get_ref();
        let data = self.inner.sumdb(&r.db, &r.path).await?;
        Ok(Response::new(Blob { data }))
    }
}

/// The tonic service for `fetcher`, accepting messages up to
/// [`MAX_MESSAGE`].
pub fn service(fetcher: Arc<dyn Fetcher>) -> FetcherServer<FetcherService> {
    FetcherServer::new(FetcherService::new(fetcher))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

/// Routes holding the Fetcher service, for
/// [`modmesh_common::server::serve_grpc`].
pub fn routes(fetcher: Arc<dyn Fetcher>) -> Routes {
    Routes::new(service(fetcher))
}
