//! The Fetcher gRPC service over any `Arc<dyn Fetcher>`.
//!
//! Wire coordinates are validated again here (`Coordinates::from_pb`,
//! `ModulePath::new`), so nothing unchecked reaches a fetcher. Errors keep
//! their kind across the hop (see `modmesh_proto::error`). When the client
//! goes away, tonic drops the handler's future, which cancels the fetch (the
//! go fetcher then kills its go process group).

use crate::{Event, Fetcher, Progress};
use futures::Stream;
use modmesh_common::request_id;
use modmesh_proto::pb::download_event::Kind;
use modmesh_proto::pb::fetcher_server::{Fetcher as FetcherRpc, FetcherServer};
use modmesh_proto::pb::{
    Blob, Coordinates as PbCoordinates, DownloadEvent, DownloadMetadata, Empty, Fetched, ModuleRef,
    SumDbRequest, VersionList, ZipStart,
};
use modmesh_proto::{Coordinates, ModulePath, MAX_CHUNK, MAX_MESSAGE};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::service::Routes;
use tonic::{Request, Response, Status};
use tracing::Instrument;

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

/// The events of one `DownloadProgress` call; dropping it (the client went
/// away) aborts the download.
pub struct ProgressStream {
    rx: tokio::sync::mpsc::Receiver<Result<DownloadEvent, Status>>,
    task: tokio::task::AbortHandle,
}

impl Stream for ProgressStream {
    type Item = Result<DownloadEvent, Status>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for ProgressStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for ProgressStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProgressStream").finish_non_exhaustive()
    }
}

/// The wire messages of `e` (zip data in chunks of at most [`MAX_CHUNK`]).
fn to_pb(e: Event) -> Vec<DownloadEvent> {
    let one = |kind| vec![DownloadEvent { kind: Some(kind) }];
    match e {
        Event::Metadata {
            version,
            info,
            go_mod,
        } => one(Kind::Metadata(DownloadMetadata {
            version: version.as_str().to_string(),
            info,
            go_mod,
        })),
        Event::ZipStart { size } => one(Kind::ZipStart(ZipStart {
            size: size.unwrap_or(0),
            size_known: size.is_some(),
        })),
        Event::ZipData(mut b) => {
            let mut out = Vec::with_capacity(b.len() / MAX_CHUNK + 1);
            while b.len() > MAX_CHUNK {
                out.push(DownloadEvent {
                    kind: Some(Kind::ZipData(b.split_to(MAX_CHUNK))),
                });
            }
            out.push(DownloadEvent {
                kind: Some(Kind::ZipData(b)),
            });
            out
        }
        Event::Verified => one(Kind::Verified(Empty {})),
    }
}

#[tonic::async_trait]
impl FetcherRpc for FetcherService {
    type DownloadProgressStream = ProgressStream;

    async fn download_progress(
        &self,
        req: Request<PbCoordinates>,
    ) -> Result<Response<ProgressStream>, Status> {
        let c = Coordinates::from_pb(req.get_ref())?;
        let inner = self.inner.clone();
        let (progress, mut events) = Progress::channel(16);
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        // The download runs in a task of its own, in the request's trace
        // and with its id; the stream's drop aborts it.
        let rid = request_id::current().unwrap_or_else(request_id::generate);
        let task = tokio::spawn(
            request_id::scope(rid, async move {
                let forward = async {
                    while let Some(e) = events.recv().await {
                        for m in to_pb(e) {
                            if tx.send(Ok(m)).await.is_err() {
                                return;
                            }
                        }
                    }
                };
                let (verdict, ()) = tokio::join!(inner.download_progress(&c, progress), forward);
                let last = verdict.map(|f| DownloadEvent {
                    kind: Some(Kind::Stored(Fetched {
                        version: f.version.as_str().to_string(),
                        info: f.info,
                    })),
                });
                let _ = tx.send(last.map_err(Status::from)).await;
            })
            .instrument(tracing::Span::current()),
        );
        Ok(Response::new(ProgressStream {
            rx,
            task: task.abort_handle(),
        }))
    }

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
