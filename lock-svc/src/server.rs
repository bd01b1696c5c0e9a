//! The `modmesh.v1.Lock` gRPC service over any [`Lock`].
//!
//! Requests are checked before they reach the driver: an empty or too long
//! key, a zero TTL or an empty lease id is `INVALID_ARGUMENT`. Absurd
//! durations are clamped rather than refused:
//!
//! - a TTL above [`MAX_TTL`] (15 minutes, Athens' Redis lock TTL) is granted
//!   as [`MAX_TTL`], and the grant says so in `ttl_ms`. Holders renew
//!   leases, so a long TTL buys nothing but a long wait behind a dead holder.
//! - a wait above [`MAX_WAIT`] (15 minutes, Athens' whole-download budget)
//!   waits [`MAX_WAIT`].
//!
//! `Acquire` blocks in the server until the lock is granted, the wait ends
//! (`DEADLINE_EXCEEDED`) or the server shuts down (`UNAVAILABLE`, so the
//! caller can retry elsewhere). If the caller goes away while waiting, tonic
//! drops the handler's future and with it the wait. A lease granted just as
//! its caller went away is never renewed by anyone, so it expires within its
//! TTL.

use crate::{Lease, Lock};
use modmesh_proto::pb;
use modmesh_proto::Error;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// The longest lease TTL granted; longer requests are clamped to it.
pub const MAX_TTL: Duration = Duration::from_secs(15 * 60);
/// The longest `Acquire` wait; longer requests are clamped to it.
pub const MAX_WAIT: Duration = Duration::from_secs(15 * 60);

/// The gRPC service's fully qualified name (for health checks).
pub const SERVICE_NAME: &str = "modmesh.v1.Lock";

/// Serves a [`Lock`] as `modmesh.v1.Lock`.
#[derive(Debug, Clone)]
pub struct LockService {
    lock: Arc<dyn Lock>,
    stop: CancellationToken,
}

impl LockService {
    /// A service over `lock` whose waits end only by grant or timeout.
    pub fn new(lock: Arc<dyn Lock>) -> Self {
        Self::with_shutdown(lock, CancellationToken::new())
    }

    /// A service over `lock` whose pending `Acquire` waits end with
    /// `UNAVAILABLE` once `stop` is cancelled, so a shutting-down server
    /// does not sit on them until its grace period runs out.
    pub fn with_shutdown(lock: Arc<dyn Lock>, stop: CancellationToken) -> Self {
        LockService { lock, stop }
    }
}

/// The tonic server for `lock`, with the mesh's message size limits.
pub fn service(lock: Arc<dyn Lock>) -> pb::lock_server::LockServer<LockService> {
    wrap(LockService::new(lock))
}

/// The routes serving `lock` (for [`modmesh_common::server::serve_grpc`]).
pub fn routes(lock: Arc<dyn Lock>) -> tonic::service::Routes {
    tonic::service::Routes::new(service(lock))
}

/// Like [`routes`], but pending waits end with `UNAVAILABLE` once `stop`
/// is cancelled (see [`LockService::with_shutdown`]).
pub fn routes_with_shutdown(
    lock: Arc<dyn Lock>,
    stop: CancellationToken,
) -> tonic::service::Routes {
    tonic::service::Routes::new(wrap(LockService::with_shutdown(lock, stop)))
}

fn wrap(svc: LockService) -> pb::lock_server::LockServer<LockService> {
    pb::lock_server::LockServer::new(svc)
        .max_decoding_message_size(modmesh_proto::MAX_MESSAGE)
        .max_encoding_message_size(modmesh_proto::MAX_MESSAGE)
}

fn lease_from(r: pb::LeaseRef) -> Result<Lease, Status> {
    let lease = Lease {
        key: r.key,
        id: r.lease_id,
        // Not carried by LeaseRef; drivers renew by the TTL they granted.
        ttl: Duration::ZERO,
        token: 0,
    };
    crate::validate_lease(&lease)?;
    Ok(lease)
}

fn grant(lease: Lease) -> pb::LeaseGrant {
    pb::LeaseGrant {
        key: lease.key,
        lease_id: lease.id,
        ttl_ms: millis(lease.ttl),
        token: lease.token,
    }
}

/// Whole milliseconds, rounded up so that a non-zero duration stays non-zero.
pub(crate) fn millis(d: Duration) -> u64 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX)
}

#[tonic::async_trait]
impl pb::lock_server::Lock for LockService {
    async fn acquire(
        &self,
        request: Request<pb::AcquireRequest>,
    ) -> Result<Response<pb::LeaseGrant>, Status> {
        let r = request.into_inner();
        let ttl = Duration::from_millis(r.ttl_ms).min(MAX_TTL);
        let wait = Duration::from_millis(r.wait_ms).min(MAX_WAIT);
        crate::validate_acquire(&r.key, ttl)?;
        let started = std::time::Instant::now();
        let lease = tokio::select! {
            // A grant that is ready wins over a shutdown that is too.
            biased;
            res = self.lock.acquire(&r.key, ttl, wait) => {
                let result = if res.is_ok() { "granted" } else { "error" };
                metrics::counter!("modmesh_lock_acquires_total", "result" => result).increment(1);
                metrics::histogram!("modmesh_lock_wait_seconds").record(started.elapsed().as_secs_f64());
                res?
            }
            _ = self.stop.cancelled() => {
                return Err(Error::unavailable("lock service is shutting down").into());
            }
        };
        Ok(Response::new(grant(lease)))
    }

    async fn keep_alive(
        &self,
        request: Request<pb::LeaseRef>,
    ) -> Result<Response<pb::Empty>, Status> {
        let lease = lease_from(request.into_inner())?;
        self.lock.keep_alive(&lease).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn release(&self, request: Request<pb::LeaseRef>) -> Result<Response<pb::Empty>, Status> {
        let lease = lease_from(request.into_inner())?;
        self.lock.release(&lease).await?;
        Ok(Response::new(pb::Empty {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::MemoryLock;
    use pb::lock_server::Lock as _;
    use tonic::Code;

    fn svc() -> LockService {
        LockService::new(Arc::new(MemoryLock::new()))
    }

    fn acq(key: &str, ttl_ms: u64, wait_ms: u64) -> Request<pb::AcquireRequest> {
        Request::new(pb::AcquireRequest {
            key: key.into(),
            ttl_ms,
            wait_ms,
        })
    }

    #[tokio::test]
    async fn rejects_bad_requests() {
        fn code<T>(r: Result<T, Status>) -> Code {
            r.map(|_| ()).unwrap_err().code()
        }
        let s = svc();
        assert_eq!(
            code(s.acquire(acq("", 1000, 0)).await),
            Code::InvalidArgument
        );
        assert_eq!(code(s.acquire(acq("k", 0, 0)).await), Code::InvalidArgument);
        let long = "k".repeat(crate::MAX_KEY_LEN + 1);
        assert_eq!(
            code(s.acquire(acq(&long, 1000, 0)).await),
            Code::InvalidArgument
        );
        let r = |key: &str, id: &str| {
            Request::new(pb::LeaseRef {
                key: key.into(),
                lease_id: id.into(),
            })
        };
        assert_eq!(code(s.keep_alive(r("k", "")).await), Code::InvalidArgument);
        assert_eq!(code(s.release(r("", "x")).await), Code::InvalidArgument);
        assert_eq!(code(s.keep_alive(r("k", "x")).await), Code::NotFound);
        assert!(s.release(r("k", "x")).await.is_ok());
    }

    #[tokio::test]
    async fn clamps_absurd_durations() {
        let s = svc();
        let g = s
            .acquire(acq("k", u64::MAX, u64::MAX))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(g.ttl_ms, millis(MAX_TTL));
        assert_eq!(g.key, "k");
        assert!(!g.lease_id.is_empty());
        assert!(g.token > 0, "the grant carries the fencing token");
        let e = s.acquire(acq("k", 1000, 0)).await.unwrap_err();
        assert_eq!(e.code(), Code::DeadlineExceeded);
    }

    #[tokio::test]
    async fn shutdown_ends_pending_waits() {
        let stop = CancellationToken::new();
        let s = LockService::with_shutdown(Arc::new(MemoryLock::new()), stop.clone());
        s.acquire(acq("k", 60_000, 0)).await.unwrap();
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move { s.acquire(acq("k", 1000, 60_000)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.cancel();
        let e = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("waiter ends promptly")
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable);
    }

    #[test]
    fn millis_round_up() {
        assert_eq!(millis(Duration::from_nanos(1)), 1);
        assert_eq!(millis(Duration::from_millis(5)), 5);
        assert_eq!(millis(Duration::from_micros(5001)), 6);
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }
}
