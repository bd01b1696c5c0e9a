//! [`StorageClient`]: a [`Storage`] whose backend is a `storage-svc` (or any
//! server of [`crate::server`]) across gRPC. Errors keep their kind across
//! the hop; the current request id travels in `x-request-id`.

use crate::server::rechunk;
use crate::watch::DeleteEvent;
use crate::{ByteStream, Capabilities, CatalogPage, SaveRequest, Storage, VersionStat, ZipReader};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use modmesh_common::{request_id, rpc};
use modmesh_proto::pb::{self, save_chunk, zip_chunk};
use modmesh_proto::{Coordinates, Error, ModulePath, Result, MAX_MESSAGE};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tonic::codegen::InterceptedService;
use tonic::transport::Channel;

type Interceptor = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;
type Grpc = pb::storage_client::StorageClient<InterceptedService<Channel, Interceptor>>;

/// A [`Storage`] over gRPC. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct StorageClient {
    grpc: Grpc,
    channel: Channel,
    capabilities: Arc<OnceLock<Capabilities>>,
    deletes: Arc<OnceLock<tokio::sync::broadcast::Sender<DeleteEvent>>>,
}

/// How long [`StorageClient::health`] waits for the server's answer.
pub const HEALTH_DEADLINE: Duration = Duration::from_secs(5);

impl std::fmt::Debug for StorageClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageClient").finish_non_exhaustive()
    }
}

impl StorageClient {
    /// A client of the storage service at `url` (`http://host:port`). The
    /// connection opens on first use, so the server need not be up yet.
    /// Must be called within a tokio runtime.
    pub fn new(url: &str) -> Result<Self> {
        let channel = modmesh_common::server::channel(url)
            .map_err(|e| Error::invalid(format!("storage service URL {url:?}: {e}")))?;
        Ok(Self::from_channel(channel))
    }

    /// A client over an existing channel.
    pub fn from_channel(channel: Channel) -> Self {
        let grpc = pb::storage_client::StorageClient::with_interceptor(
            channel.clone(),
            request_id::propagate as Interceptor,
        )
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
        StorageClient {
            grpc,
            channel,
            capabilities: Arc::default(),
            deletes: Arc::default(),
        }
    }

    /// Asks the server what its backend can do, and remembers it for
    /// [`Storage::capabilities`] (which, until then, declares nothing
    /// optional).
    pub async fn fetch_capabilities(&self) -> Result<Capabilities> {
        let reply = rpc!(self.grpc(), capabilities(pb::Empty {}));
        let caps = Capabilities::from_pb(&reply);
        Ok(*self.capabilities.get_or_init(|| caps))
    }

    /// Starts (once) the task that follows the server's `WatchDeletes`:
    /// it subscribes, says [`DeleteEvent::Missed`] on every (re)subscription,
    /// forwards each deletion, and after a failure subscribes again a second
    /// later.
    fn follow_deletes(&self) -> tokio::sync::broadcast::Sender<DeleteEvent> {
        self.deletes
            .get_or_init(|| {
                let tx = tokio::sync::broadcast::channel(crate::watch::BACKLOG).0;
                let (grpc, out) = (self.grpc(), tx.clone());
                tokio::spawn(async move {
                    loop {
                        let subscribed = grpc.clone().watch_deletes(pb::Empty {}).await;
                        if let Err(e) = &subscribed {
                            tracing::warn!(error = %e, "watching storage-svc's deletes failed; retrying in 1 s");
                        }
                        if let Ok(resp) = subscribed {
                            tracing::debug!("watching storage-svc's deletes");
                            let _ = out.send(DeleteEvent::Missed);
                            let mut events = resp.into_inner();
                            while let Ok(Some(c)) = events.message().await {
                                match Coordinates::from_pb(&c) {
                                    Ok(c) => drop(out.send(DeleteEvent::Deleted(c))),
                                    Err(_) => drop(out.send(DeleteEvent::Missed)),
                                }
                            }
                            // A broken subscription: whatever follows may
                            // have been missed.
                            let _ = out.send(DeleteEvent::Missed);
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                });
                tx
            })
            .clone()
    }

    fn grpc(&self) -> Grpc {
        self.grpc.clone()
    }
}

fn stat_from_pb(s: pb::VersionStat) -> Result<VersionStat> {
    Ok(VersionStat {
        coordinates: Coordinates::new(&s.module, &s.version)?,
        info_size: s.info_size,
        mod_size: s.mod_size,
        zip_size: s.zip_size,
        stored_at_unix_ms: s.stored_at_unix_ms,
        zip_hash: Some(s.zip_hash).filter(|h| !h.is_empty()),
        mod_hash: s.mod_hash,
    })
}

fn data_msg(d: Bytes) -> pb::SaveChunk {
    pb::SaveChunk {
        kind: Some(save_chunk::Kind::ZipData(d)),
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Feeds a save's request stream: `header`, the zip's data in messages of
/// at most `MAX_CHUNK`, then the commit — or, if `zip` fails, its error put
/// in `failed` and the end of the stream without a commit (the server then
/// stores nothing). Stops when the call no longer listens.
async fn feed_save(
    tx: tokio::sync::mpsc::Sender<pb::SaveChunk>,
    header: pb::SaveChunk,
    mut zip: ByteStream,
    failed: Arc<Mutex<Option<Error>>>,
) {
    if tx.send(header).await.is_err() {
        return;
    }
    let mut total = 0u64;
    while let Some(item) = zip.next().await {
        match item {
            Ok(b) => {
                total += b.len() as u64;
                for piece in rechunk(b) {
                    if tx.send(data_msg(piece)).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                return;
            }
        }
    }
    let commit = pb::SaveChunk {
        kind: Some(save_chunk::Kind::Commit(pb::SaveCommit { zip_size: total })),
    };
    let _ = tx.send(commit).await;
}

#[async_trait]
impl Storage for StorageClient {
    /// The server's capabilities once [`StorageClient::fetch_capabilities`]
    /// has run; before, nothing optional (a presign request is still
    /// forwarded and answered by the server).
    fn capabilities(&self) -> Capabilities {
        self.capabilities
            .get()
            .copied()
            .unwrap_or_else(Capabilities::minimal)
    }

    /// `grpc.health.v1.Health/Check` for `modmesh.v1.Storage`, within
    /// [`HEALTH_DEADLINE`]: `Ok` only if the server reports SERVING.
    async fn health(&self) -> Result<()> {
        use tonic_health::pb::health_check_response::ServingStatus;
        let health = tonic_health::pb::health_client::HealthClient::new(self.channel.clone());
        let check = modmesh_common::server::retry_unsent(|| {
            let mut health = health.clone();
            let mut req = tonic::Request::new(tonic_health::pb::HealthCheckRequest {
                service: crate::server::SERVICE_NAME.to_string(),
            });
            req.set_timeout(HEALTH_DEADLINE);
            async move { health.check(req).await }
        });
        let reply = tokio::time::timeout(HEALTH_DEADLINE, check)
            .await
            .map_err(|_| {
                Error::timeout(format!(
                    "storage service health check took over {HEALTH_DEADLINE:?}"
                ))
            })??
            .into_inner();
        if reply.status == ServingStatus::Serving as i32 {
            Ok(())
        } else {
            Err(Error::unavailable(format!(
                "storage service reports {:?}",
                ServingStatus::try_from(reply.status).unwrap_or(ServingStatus::Unknown)
            )))
        }
    }

    async fn presign_zip(&self, c: &Coordinates, ttl: Duration) -> Result<Option<String>> {
        let req = pb::PresignRequest {
            coordinates: Some(c.to_pb()),
            ttl_seconds: ttl.as_secs().max(1),
        };
        let url = rpc!(self.grpc(), presign_zip(req.clone())).url;
        Ok(Some(url).filter(|u| !u.is_empty()))
    }

    async fn list(&self, module: &ModulePath) -> Result<Vec<String>> {
        let req = pb::ModuleRef {
            module: module.to_string(),
        };
        Ok(rpc!(self.grpc(), list(req.clone())).versions)
    }

    async fn info(&self, c: &Coordinates) -> Result<Bytes> {
        Ok(rpc!(self.grpc(), info(c.to_pb())).data)
    }

    async fn go_mod(&self, c: &Coordinates) -> Result<Bytes> {
        Ok(rpc!(self.grpc(), go_mod(c.to_pb())).data)
    }

    async fn zip(&self, c: &Coordinates) -> Result<ZipReader> {
        let mut stream = rpc!(self.grpc(), zip(c.to_pb()));
        let size = match stream.message().await? {
            Some(pb::ZipChunk {
                kind: Some(zip_chunk::Kind::Header(h)),
            }) => h.size,
            Some(_) => return Err(Error::internal("zip stream did not start with a ZipHeader")),
            None => return Err(Error::unavailable("zip stream ended before its ZipHeader")),
        };
        // Data until the end; a stream that ends short (or runs long) of the
        // announced size ends in an error, never silently.
        let data = futures::stream::unfold(
            (stream, 0u64, false),
            move |(mut stream, mut got, done)| async move {
                if done {
                    return None;
                }
                let fail = |e: Error, stream, got| Some((Err(e), (stream, got, true)));
                match stream.message().await {
                    Ok(Some(pb::ZipChunk {
                        kind: Some(zip_chunk::Kind::Data(d)),
                    })) => {
                        got += d.len() as u64;
                        if got > size {
                            return fail(
                                Error::internal(format!("zip stream ran past its size {size}")),
                                stream,
                                got,
                            );
                        }
                        Some((Ok(d), (stream, got, false)))
                    }
                    Ok(Some(_)) => fail(
                        Error::internal("unexpected message in a zip stream"),
                        stream,
                        got,
                    ),
                    Ok(None) if got == size => None,
                    Ok(None) => fail(
                        Error::unavailable(format!("zip stream ended after {got} of {size} bytes")),
                        stream,
                        got,
                    ),
                    Err(status) => fail(status.into(), stream, got),
                }
            },
        );
        Ok(ZipReader {
            size,
            stream: data.boxed(),
        })
    }

    async fn exists(&self, c: &Coordinates) -> Result<bool> {
        Ok(rpc!(self.grpc(), exists(c.to_pb())).exists)
    }

    async fn stat(&self, c: &Coordinates) -> Result<VersionStat> {
        stat_from_pb(rpc!(self.grpc(), stat(c.to_pb())))
    }

    /// Sends the header, the zip in messages of at most `MAX_CHUNK` bytes,
    /// and the commit — the commit only if `zip` ended without an error. If
    /// it fails, the request stream ends without a commit, the server stores
    /// nothing, and this returns `zip`'s error.
    async fn save(&self, req: SaveRequest, zip: ByteStream) -> Result<()> {
        let header = pb::SaveChunk {
            kind: Some(save_chunk::Kind::Header(pb::SaveHeader {
                coordinates: Some(req.coordinates().to_pb()),
                info: req.info,
                go_mod: req.go_mod,
                zip_hash: req.zip_hash.unwrap_or_default(),
                zip_size: req.zip_size,
            })),
        };
        let failure: Arc<Mutex<Option<Error>>> = Arc::default();
        // A small channel: a few MiB in flight at most, whatever the zip's size.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        // The feeder stops when this call ends or is dropped; its request
        // stream then ends without a commit.
        let _feeder = AbortOnDrop(tokio::spawn(feed_save(tx, header, zip, failure.clone())));
        // Each attempt's request stream draws from the one channel: an
        // attempt that could not connect never read from it, so the next
        // attempt sends the whole save.
        let rx = Arc::new(Mutex::new(rx));
        // When the call returns, the feeder has recorded any failure: it
        // does so before it ends the stream the server waits for.
        let result = modmesh_common::server::retry_unsent(|| {
            let rx = rx.clone();
            let body = futures::stream::poll_fn(move |cx| {
                rx.lock().unwrap_or_else(|p| p.into_inner()).poll_recv(cx)
            });
            let mut grpc = self.grpc();
            async move { grpc.save(tonic::Request::new(body)).await }
        })
        .await;
        if let Some(e) = failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(e);
        }
        result.map(|_| ()).map_err(Error::from)
    }

    async fn delete(&self, c: &Coordinates) -> Result<()> {
        rpc!(self.grpc(), delete(c.to_pb()));
        Ok(())
    }

    fn watch_deletes(&self) -> Option<tokio::sync::broadcast::Receiver<DeleteEvent>> {
        if tokio::runtime::Handle::try_current().is_err() {
            return None;
        }
        Some(self.follow_deletes().subscribe())
    }

    async fn catalog(
        &self,
        page_token: Option<&str>,
        page_size: usize,
        module_prefix: &str,
    ) -> Result<CatalogPage> {
        let req = pb::CatalogRequest {
            page_token: page_token.unwrap_or_default().to_string(),
            page_size: page_size.min(u32::MAX as usize) as u32,
            module_prefix: module_prefix.to_string(),
        };
        let page = rpc!(self.grpc(), catalog(req.clone()));
        Ok(CatalogPage {
            entries: page
                .entries
                .iter()
                .map(Coordinates::from_pb)
                .collect::<Result<_>>()?,
            next_page_token: Some(page.next_page_token).filter(|t| !t.is_empty()),
        })
    }
}
