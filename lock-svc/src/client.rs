//! [`LockClient`]: a [`Lock`] that is the lock service reached over gRPC.
//!
//! Every call carries the current request id (`x-request-id`) and a
//! deadline, so a dead or wedged server cannot hang a caller:
//!
//! - `Acquire`: the caller's `wait` plus [`ACQUIRE_SLACK`] (the server
//!   answers `DEADLINE_EXCEEDED` itself when `wait` ends; the slack covers
//!   the network and a connection being set up);
//! - `KeepAlive`: the lease's TTL, between 1 and 10 seconds (a renewal that
//!   comes later than the TTL is too late anyway);
//! - `Release`: [`RPC_TIMEOUT`];
//! - health (`grpc.health.v1.Health/Check` for `modmesh.v1.Lock`, over the
//!   same channel): [`HEALTH_TIMEOUT`].
//!
//! A call that runs out of its deadline is `Timeout`; every error the
//! server sends keeps its kind.

use crate::server::millis;
use crate::{Lease, Lock};
use async_trait::async_trait;
use modmesh_common::request_id;
use modmesh_proto::{pb, Error, Result};
use std::future::Future;
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// How much longer than its `wait` an `Acquire` may take before the client
/// gives up on the server.
pub const ACQUIRE_SLACK: Duration = Duration::from_secs(1);
/// The deadline of a `Release`, and the most a `KeepAlive` gets.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// The deadline of a health check.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);

type Interceptor = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;
type Inner = pb::lock_client::LockClient<InterceptedService<Channel, Interceptor>>;

/// A [`Lock`] over gRPC. Cheap to clone; clones share one connection.
#[derive(Debug, Clone)]
pub struct LockClient {
    inner: Inner,
    channel: Channel,
}

impl LockClient {
    /// A client for the lock service at `url` (`http://host:port`). It
    /// connects on first use, so the server need not be up yet.
    pub fn new(url: &str) -> Result<Self> {
        let channel = modmesh_common::server::channel(url)
            .map_err(|e| Error::invalid(format!("lock service url {url:?}: {e}")))?;
        Ok(Self::from_channel(channel))
    }

    /// A client over an existing channel.
    pub fn from_channel(channel: Channel) -> Self {
        let inner = pb::lock_client::LockClient::with_interceptor(
            channel.clone(),
            request_id::propagate as Interceptor,
        )
        .max_decoding_message_size(modmesh_proto::MAX_MESSAGE)
        .max_encoding_message_size(modmesh_proto::MAX_MESSAGE);
        LockClient { inner, channel }
    }
}

/// Sends `msg` with a gRPC deadline of `deadline` (plus a little, so the
/// server is never cut off before the client's own timer, which maps to
/// `Timeout`) and waits at most `deadline` for the answer.
/// A call that could not connect is made again within that time
/// ([`modmesh_common::server::retry_unsent`]).
async fn call<M, T, F, Fut>(what: &str, msg: M, deadline: Duration, mut f: F) -> Result<T>
where
    M: Clone,
    F: FnMut(tonic::Request<M>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let attempts = modmesh_common::server::retry_unsent(|| {
        let mut req = tonic::Request::new(msg.clone());
        req.set_timeout(deadline.saturating_add(Duration::from_millis(500)));
        f(req)
    });
    match tokio::time::timeout(deadline, attempts).await {
        Ok(Ok(resp)) => Ok(resp.into_inner()),
        Ok(Err(status)) => Err(status.into()),
        Err(_) => Err(Error::timeout(format!(
            "lock service did not answer {what} within {deadline:?}"
        ))),
    }
}

#[async_trait]
impl Lock for LockClient {
    async fn acquire(&self, key: &str, ttl: Duration, wait: Duration) -> Result<Lease> {
        let msg = pb::AcquireRequest {
            key: key.to_string(),
            ttl_ms: millis(ttl),
            wait_ms: millis(wait),
        };
        // The server caps waits at MAX_WAIT; no need to wait longer here.
        let deadline = wait
            .min(crate::server::MAX_WAIT)
            .saturating_add(ACQUIRE_SLACK);
        let c = self.inner.clone();
        let g = call("Acquire", msg, deadline, |r| {
            let mut c = c.clone();
            async move { c.acquire(r).await }
        })
        .await?;
        Ok(Lease {
            key: key.to_string(),
            id: g.lease_id,
            ttl: Duration::from_millis(g.ttl_ms),
            token: g.token,
        })
    }

    async fn keep_alive(&self, lease: &Lease) -> Result<()> {
        let msg = pb::LeaseRef {
            key: lease.key.clone(),
            lease_id: lease.id.clone(),
        };
        let deadline = lease.ttl.clamp(Duration::from_secs(1), RPC_TIMEOUT);
        let c = self.inner.clone();
        call("KeepAlive", msg, deadline, |r| {
            let mut c = c.clone();
            async move { c.keep_alive(r).await }
        })
        .await?;
        Ok(())
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        let msg = pb::LeaseRef {
            key: lease.key.clone(),
            lease_id: lease.id.clone(),
        };
        let c = self.inner.clone();
        call("Release", msg, RPC_TIMEOUT, |r| {
            let mut c = c.clone();
            async move { c.release(r).await }
        })
        .await?;
        Ok(())
    }

    /// `grpc.health.v1.Health/Check` for [`crate::server::SERVICE_NAME`]:
    /// `Ok` when the service says SERVING, `Unavailable` otherwise (also
    /// when it does not answer within [`HEALTH_TIMEOUT`]).
    async fn health(&self) -> Result<()> {
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
        let c = HealthClient::new(self.channel.clone());
        let msg = HealthCheckRequest {
            service: crate::server::SERVICE_NAME.to_string(),
        };
        let status = match call("Health/Check", msg, HEALTH_TIMEOUT, |r| {
            let mut c = c.clone();
            async move { c.check(r).await }
        })
        .await
        {
            Ok(r) => r.status(),
            Err(e) => {
                return Err(Error::unavailable(format!(
                    "lock service health check: {e}"
                )))
            }
        };
        if status == ServingStatus::Serving {
            Ok(())
        } else {
            Err(Error::unavailable(format!(
                "lock service is {}",
                status.as_str_name()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use modmesh_proto::ErrorKind;

    #[tokio::test]
    async fn a_bad_url_is_invalid() {
        let e = LockClient::new("not a url").unwrap_err();
        assert!(e.is(ErrorKind::Invalid), "{e}");
    }

    #[tokio::test]
    async fn no_server_is_unavailable() {
        // A port nobody listens on.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let c = LockClient::new(&format!("http://{addr}")).unwrap();
        let e = c
            .acquire("k", Duration::from_secs(1), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(e.is(ErrorKind::Unavailable), "{e}");
        let e = c.health().await.unwrap_err();
        assert!(e.is(ErrorKind::Unavailable), "{e}");
    }

    #[tokio::test]
    async fn a_silent_server_cannot_hang_the_caller() {
        // Accepts connections and never speaks HTTP/2.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let sink = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let c = LockClient::new(&format!("http://{addr}")).unwrap();
        let start = std::time::Instant::now();
        let wait = Duration::from_millis(100);
        let e = c
            .acquire("k", Duration::from_secs(1), wait)
            .await
            .unwrap_err();
        let took = start.elapsed();
        assert!(e.is(ErrorKind::Timeout), "{e}");
        assert!(
            took >= wait + ACQUIRE_SLACK && took < wait + ACQUIRE_SLACK * 3,
            "{took:?}"
        );
        let lease = Lease {
            key: "k".into(),
            id: "x".into(),
            ttl: Duration::from_millis(10),
            token: 0,
        };
        let start = std::time::Instant::now();
        let e = c.keep_alive(&lease).await.unwrap_err();
        assert!(e.is(ErrorKind::Timeout), "{e}");
        assert!(start.elapsed() < Duration::from_secs(3));
        let start = std::time::Instant::now();
        let e = c.health().await.unwrap_err();
        assert!(e.is(ErrorKind::Unavailable), "{e}");
        let took = start.elapsed();
        assert!(
            took >= HEALTH_TIMEOUT && took < HEALTH_TIMEOUT * 2,
            "{took:?}"
        );
        sink.abort();
    }
}
