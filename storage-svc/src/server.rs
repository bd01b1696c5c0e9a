//! The gRPC server for any [`Storage`]: `modmesh.v1.Storage` over an
//! `Arc<dyn Storage>`.
//!
//! Coordinates from the wire are validated again (`Invalid` otherwise),
//! saves must carry a canonical version, and zips stream both ways in
//! messages of at most [`MAX_CHUNK`] bytes. A save stream that ends or fails
//! before its `SaveCommit`, or whose commit names a different size, reaches
//! the backend as a zip stream that ends in an error, so the backend stores
//! nothing.

use crate::{ByteStream, SaveRequest, Storage};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use modmesh_proto::pb::{self, save_chunk, zip_chunk};
use modmesh_proto::{Coordinates, Error, ModulePath, Result, MAX_CHUNK, MAX_MESSAGE};
use std::sync::Arc;
use tonic::{Request, Response, Status, Streaming};

/// The largest catalog page one reply carries; larger requests get pages of
/// this size (the token still continues where the page ended).
pub const MAX_PAGE_SIZE: usize = 10_000;

/// The longest presigned URL lifetime the server grants (7 days, S3's limit).
pub const MAX_PRESIGN_TTL_SECS: u64 = 7 * 24 * 3600;

/// The fully qualified gRPC service name, for health reporting.
pub const SERVICE_NAME: &str = "modmesh.v1.Storage";

/// Serves one [`Storage`] as `modmesh.v1.Storage`.
#[derive(Clone)]
pub struct StorageService {
    storage: Arc<dyn Storage>,
}

impl std::fmt::Debug for StorageService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageService").finish_non_exhaustive()
    }
}

impl StorageService {
    /// Serves `storage`.
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        StorageService { storage }
    }
}

/// The tonic service for `storage`, accepting and sending messages up to
/// [`MAX_MESSAGE`].
pub fn service(storage: Arc<dyn Storage>) -> pb::storage_server::StorageServer<StorageService> {
    pb::storage_server::StorageServer::new(StorageService::new(storage))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

/// [`service`] as routes, for `modmesh_common::server::serve_grpc` or a
/// server that serves other services too; `Zip` is answered without copying
/// the zip into tonic's encode buffer (`crate::zipwire`), with the same
/// messages on the wire.
pub fn routes(storage: Arc<dyn Storage>) -> tonic::service::Routes {
    let generated = tonic::service::Routes::new(service(storage.clone()));
    // `Zip` without the generated service's copy of every chunk
    // (crate::zipwire); the same messages on the wire.
    let router = generated.into_axum_router().route(
        crate::zipwire::PATH,
        axum::routing::post(move |req: axum::extract::Request| {
            crate::zipwire::serve(storage.clone(), req)
        }),
    );
    tonic::service::Routes::from(router)
}

fn coords(pb: &pb::Coordinates) -> Result<Coordinates, Status> {
    Ok(Coordinates::from_pb(pb)?)
}

/// Splits `b` into pieces of at most [`MAX_CHUNK`] bytes (no copying).
pub(crate) fn rechunk(mut b: Bytes) -> impl Iterator<Item = Bytes> {
    std::iter::from_fn(move || {
        if b.is_empty() {
            None
        } else {
            Some(b.split_to(b.len().min(MAX_CHUNK)))
        }
    })
}

/// A stored zip's bytes in pieces of at most [`MAX_CHUNK`] (no copying),
/// for both ways of answering `Zip`. A backend's error ends the stream with
/// that error; so does a backend that yields another size than the one it
/// announced.
pub(crate) fn pieces(
    reader: crate::ZipReader,
    key: String,
) -> BoxStream<'static, Result<Bytes, Status>> {
    let size = reader.size;
    futures::stream::unfold(
        (reader.stream, 0u64, false),
        move |(mut stream, mut sent, done)| {
            let key = key.clone();
            async move {
                if done {
                    return None;
                }
                let items: Vec<Result<Bytes, Status>> = match stream.next().await {
                    Some(Ok(b)) => {
                        sent += b.len() as u64;
                        rechunk(b).map(Ok).collect()
                    }
                    Some(Err(e)) => return Some((vec![Err(e.into())], (stream, sent, true))),
                    None if sent != size => {
                        let e = Status::internal(format!(
                            "{key}: the stored zip has {sent} bytes, not the {size} announced"
                        ));
                        return Some((vec![Err(e)], (stream, sent, true)));
                    }
                    None => return None,
                };
                Some((items, (stream, sent, false)))
            }
        },
    )
    .flat_map(futures::stream::iter)
    .boxed()
}

/// State of an incoming save stream as the backend reads it.
struct Incoming {
    inbound: Streaming<pb::SaveChunk>,
    received: u64,
    done: bool,
    /// Data of one message not yet handed on (messages can exceed MAX_CHUNK).
    pending: Option<Bytes>,
}

impl Incoming {
    /// The first MAX_CHUNK bytes of `data`; keeps the rest for later.
    fn take_piece(&mut self, mut data: Bytes) -> Bytes {
        let piece = data.split_to(data.len().min(MAX_CHUNK));
        if !data.is_empty() {
            self.pending = Some(data);
        }
        piece
    }

    /// The next zip chunk for the backend: data, then `None` after a valid
    /// commit and the end of the request stream, or one error.
    async fn next(&mut self) -> Option<Result<Bytes>> {
        if self.done {
            return None;
        }
        if let Some(p) = self.pending.take() {
            return Some(Ok(self.take_piece(p)));
        }
        let fail = |this: &mut Self, e: Error| {
            this.done = true;
            Some(Err(e))
        };
        match self.inbound.message().await {
            Err(status) => fail(self, status.into()),
            Ok(None) => fail(
                self,
                Error::invalid("save stream ended before its SaveCommit; nothing stored"),
            ),
            Ok(Some(pb::SaveChunk { kind: None })) => {
                fail(self, Error::invalid("empty SaveChunk in a save stream"))
            }
            Ok(Some(pb::SaveChunk {
                kind: Some(save_chunk::Kind::Header(_)),
            })) => fail(self, Error::invalid("a second SaveHeader in a save stream")),
            Ok(Some(pb::SaveChunk {
                kind: Some(save_chunk::Kind::ZipData(data)),
            })) => {
                self.received += data.len() as u64;
                Some(Ok(self.take_piece(data)))
            }
            Ok(Some(pb::SaveChunk {
                kind: Some(save_chunk::Kind::Commit(commit)),
            })) => {
                if commit.zip_size != self.received {
                    return fail(
                        self,
                        Error::invalid(format!(
                            "SaveCommit says {} zip bytes but {} arrived",
                            commit.zip_size, self.received
                        )),
                    );
                }
                // The commit must be the last message.
                match self.inbound.message().await {
                    Ok(None) => {
                        self.done = true;
                        None
                    }
                    Ok(Some(_)) => fail(self, Error::invalid("a message after SaveCommit")),
                    Err(status) => fail(self, status.into()),
                }
            }
        }
    }
}

#[tonic::async_trait]
impl pb::storage_server::Storage for StorageService {
    async fn list(&self, req: Request<pb::ModuleRef>) -> Result<Response<pb::VersionList>, Status> {
        let module = ModulePath::new(req.into_inner().module)?;
        let versions = self.storage.list(&module).await?;
        Ok(Response::new(pb::VersionList { versions }))
    }

    async fn info(&self, req: Request<pb::Coordinates>) -> Result<Response<pb::Blob>, Status> {
        let c = coords(req.get_ref())?;
        let data = self.storage.info(&c).await?;
        Ok(Response::new(pb::Blob { data }))
    }

    async fn go_mod(&self, req: Request<pb::Coordinates>) -> Result<Response<pb::Blob>, Status> {
        let c = coords(req.get_ref())?;
        let data = self.storage.go_mod(&c).await?;
        Ok(Response::new(pb::Blob { data }))
    }

    type ZipStream = BoxStream<'static, Result<pb::ZipChunk, Status>>;

    async fn zip(
        &self,
        req: Request<pb::Coordinates>,
    ) -> Result<Response<Self::ZipStream>, Status> {
        let c = coords(req.get_ref())?;
        let reader = self.storage.zip(&c).await?;
        let size = reader.size;
        let header = futures::stream::once(async move {
            Ok(pb::ZipChunk {
                kind: Some(zip_chunk::Kind::Header(pb::ZipHeader { size })),
            })
        });
        let data = pieces(reader, c.to_string()).map(|r| {
            r.map(|d| pb::ZipChunk {
                kind: Some(zip_chunk::Kind::Data(d)),
            })
        });
        Ok(Response::new(header.chain(data).boxed()))
    }

    async fn exists(
        &self,
        req: Request<pb::Coordinates>,
    ) -> Result<Response<pb::ExistsReply>, Status> {
        let c = coords(req.get_ref())?;
        let exists = self.storage.exists(&c).await?;
        Ok(Response::new(pb::ExistsReply { exists }))
    }

    async fn stat(
        &self,
        req: Request<pb::Coordinates>,
    ) -> Result<Response<pb::VersionStat>, Status> {
        let c = coords(req.get_ref())?;
        let s = self.storage.stat(&c).await?;
        Ok(Response::new(pb::VersionStat {
            module: s.coordinates.module.to_string(),
            version: s.coordinates.version.to_string(),
            info_size: s.info_size,
            mod_size: s.mod_size,
            zip_size: s.zip_size,
            stored_at_unix_ms: s.stored_at_unix_ms,
            zip_hash: s.zip_hash.unwrap_or_default(),
            mod_hash: s.mod_hash,
        }))
    }

    async fn save(
        &self,
        req: Request<Streaming<pb::SaveChunk>>,
    ) -> Result<Response<pb::Empty>, Status> {
        let mut inbound = req.into_inner();
        let header = match inbound.message().await? {
            Some(pb::SaveChunk {
                kind: Some(save_chunk::Kind::Header(h)),
            }) => h,
            Some(_) => {
                return Err(Status::invalid_argument(
                    "the first message of a save must be a SaveHeader",
                ))
            }
            None => return Err(Status::invalid_argument("empty save stream")),
        };
        let pbc = header
            .coordinates
            .ok_or_else(|| Status::invalid_argument("SaveHeader without coordinates"))?;
        let c = coords(&pbc)?;
        let mut req = SaveRequest::new(&c, header.info, header.go_mod)
            .map_err(|_| Error::invalid(format!("cannot save {c}: not a canonical version")))?;
        req.zip_hash = Some(header.zip_hash).filter(|h| !h.is_empty());
        req.zip_size = header.zip_size;
        let incoming = Incoming {
            inbound,
            received: 0,
            done: false,
            pending: None,
        };
        let zip: ByteStream = futures::stream::unfold(incoming, |mut inc| async move {
            inc.next().await.map(|item| (item, inc))
        })
        .boxed();
        self.storage.save(req, zip).await?;
        Ok(Response::new(pb::Empty {}))
    }

    type WatchDeletesStream = BoxStream<'static, Result<pb::Coordinates, Status>>;

    async fn watch_deletes(
        &self,
        _req: Request<pb::Empty>,
    ) -> Result<Response<Self::WatchDeletesStream>, Status> {
        use crate::watch::DeleteEvent;
        use tokio::sync::broadcast::error::RecvError;
        let Some(rx) = self.storage.watch_deletes() else {
            return Err(Status::unimplemented(
                "this storage does not announce its deletes",
            ));
        };
        let events = futures::stream::unfold(Some(rx), |rx| async move {
            let mut rx = rx?;
            let item = match rx.recv().await {
                Ok(DeleteEvent::Deleted(c)) => Ok(c.to_pb()),
                Ok(DeleteEvent::Missed) | Err(RecvError::Lagged(_)) => {
                    // The subscriber must forget everything: end here.
                    return Some((Err(Status::data_loss("deletions were missed")), None));
                }
                Err(RecvError::Closed) => return None,
            };
            Some((item, Some(rx)))
        });
        Ok(Response::new(events.boxed()))
    }

    async fn delete(&self, req: Request<pb::Coordinates>) -> Result<Response<pb::Empty>, Status> {
        let c = coords(req.get_ref())?;
        self.storage.delete(&c).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn catalog(
        &self,
        req: Request<pb::CatalogRequest>,
    ) -> Result<Response<pb::CatalogPage>, Status> {
        let r = req.into_inner();
        if r.module_prefix.len() > modmesh_proto::coords::MAX_PATH_LEN {
            return Err(Status::invalid_argument("module_prefix too long"));
        }
        let size = match r.page_size as usize {
            0 => crate::DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let token = Some(r.page_token.as_str()).filter(|t| !t.is_empty());
        let page = self.storage.catalog(token, size, &r.module_prefix).await?;
        Ok(Response::new(pb::CatalogPage {
            entries: page.entries.iter().map(Coordinates::to_pb).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn capabilities(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::StorageCapabilities>, Status> {
        Ok(Response::new(self.storage.capabilities().to_pb()))
    }

    async fn presign_zip(
        &self,
        req: Request<pb::PresignRequest>,
    ) -> Result<Response<pb::PresignReply>, Status> {
        let r = req.into_inner();
        let pbc = r
            .coordinates
            .ok_or_else(|| Status::invalid_argument("PresignRequest without coordinates"))?;
        let c = coords(&pbc)?;
        let ttl = std::time::Duration::from_secs(r.ttl_seconds.clamp(1, MAX_PRESIGN_TTL_SECS));
        let url = self.storage.presign_zip(&c, ttl).await?;
        Ok(Response::new(pb::PresignReply {
            url: url.unwrap_or_default(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rechunk_splits_without_copying() {
        let big = Bytes::from(vec![7u8; 2 * MAX_CHUNK + 5]);
        let parts: Vec<Bytes> = rechunk(big.clone()).collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [MAX_CHUNK, MAX_CHUNK, 5]
        );
        assert_eq!(parts[0].as_ptr(), big.as_ptr());
        assert_eq!(rechunk(Bytes::new()).count(), 0);
    }

    /// `Zip` reaches `crate::zipwire`, not the generated service: a request
    /// that is not a `Coordinates` message is INVALID_ARGUMENT there
    /// (the generated service says INTERNAL).
    #[tokio::test]
    async fn zip_is_served_without_the_generated_codec() {
        use tower::ServiceExt;
        let router = routes(Arc::new(crate::backends::MemoryStorage::new())).into_axum_router();
        let req = axum::http::Request::post(crate::zipwire::PATH)
            .header("content-type", "application/grpc")
            .body(axum::body::Body::from(vec![0u8, 0, 0, 0, 3, 1, 2, 3]))
            .unwrap();
        let resp = router.oneshot(req).await.unwrap();
        let status = Status::from_header_map(resp.headers()).expect("a trailers-only answer");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with("Zip request"), "{status:?}");
    }
}
