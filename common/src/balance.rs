//! Client-side balancing: one gRPC [`Channel`] over every address a service
//! name resolves to, kept current as replicas come and go.
//!
//! A URL whose host is a name (`http://fetcher-svc:50053`) is resolved by a
//! background task every `refresh`; each address that accepts a TCP
//! connection becomes one endpoint of a power-of-two-choices balancer
//! (tonic's [`Channel::balance_channel`]), and an address that vanished from
//! the answer or refuses connections is removed. Until the first answer (or
//! while nothing answers at all) the channel holds one endpoint for the name
//! itself, so calls behave as an unbalanced channel would: they connect by
//! name and fail `Unavailable` if nothing listens. A URL with an IP address
//! gets a plain channel.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};

/// How often a balanced channel re-resolves its name and probes its
/// addresses, unless told otherwise.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(5);

/// How long a probe waits for a TCP connection before it counts the
/// address as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The future a [`Resolver`] returns.
pub type Resolving = Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>>;

/// Turns a host name and port into addresses (the system resolver in
/// production: [`dns`]; tests may give names of their own).
pub type Resolver = Arc<dyn Fn(&str, u16) -> Resolving + Send + Sync>;

/// The system resolver (`/etc/hosts`, then DNS: a compose network's DNS
/// answers a service name with every replica's address).
pub fn dns() -> Resolver {
    Arc::new(|host: &str, port: u16| {
        let target = format!("{host}:{port}");
        Box::pin(async move { Ok(tokio::net::lookup_host(target).await?.collect()) })
    })
}

/// A channel to `url` balanced over every address its host resolves to
/// (through `resolve`, again every `refresh`). `configure` sets each
/// endpoint's options (timeouts, keep-alive, windows) and is applied to
/// every address alike. Needs a tokio runtime when the host is a name; the
/// re-resolution task ends when the last clone of the channel is dropped.
pub fn balanced_channel(
    url: &str,
    configure: impl Fn(Endpoint) -> Endpoint + Send + Sync + 'static,
    refresh: Duration,
    resolve: Resolver,
) -> Result<Channel, tonic::transport::Error> {
    let named = configure(Endpoint::from_shared(url.to_string())?);
    let uri = named.uri().clone();
    let host = uri.host().unwrap_or_default().to_string();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let is_ip = bare.parse::<std::net::IpAddr>().is_ok();
    if is_ip || host.is_empty() || tokio::runtime::Handle::try_current().is_err() {
        return Ok(named.connect_lazy());
    }
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    });
    let (channel, changes) = Channel::balance_channel::<Key>(64);
    // Until the first answer: the name itself.
    let _ = changes.try_send(Change::Insert(Key::Name, named));
    let per_address = move |addr: SocketAddr| -> Result<Endpoint, tonic::transport::Error> {
        let scheme = uri.scheme_str().unwrap_or("http");
        let ep = Endpoint::from_shared(format!("{scheme}://{addr}"))?.origin(uri.clone());
        Ok(configure(ep))
    };
    let asked = Arc::new(Asked::default());
    register(&asked);
    tokio::spawn(async move {
        let mut current: BTreeSet<SocketAddr> = BTreeSet::new();
        let mut has_name = true;
        loop {
            let live = match resolve_live(&resolve, &host, port).await {
                Ok(live) => live,
                Err(e) => {
                    tracing::debug!(%host, error = %e, "re-resolution failed; keeping the replicas known");
                    None
                }
            };
            if let Some(live) = live {
                for gone in current.difference(&live) {
                    if changes
                        .send(Change::Remove(Key::Addr(*gone)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    tracing::info!(%host, addr = %gone, "replica left the balance");
                }
                for new in live.difference(&current) {
                    let Ok(ep) = per_address(*new) else { continue };
                    if changes
                        .send(Change::Insert(Key::Addr(*new), ep))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    tracing::info!(%host, addr = %new, "replica joined the balance");
                }
                if has_name && !live.is_empty() {
                    if changes.send(Change::Remove(Key::Name)).await.is_err() {
                        return;
                    }
                    has_name = false;
                }
                current = live;
            }
            asked.passes.send_modify(|n| *n += 1);
            tokio::select! {
                _ = tokio::time::sleep(refresh) => {}
                _ = asked.wake.notified() => {}
                _ = changes.closed() => return,
            }
        }
    });
    Ok(channel)
}

/// How a balanced channel's re-resolution task is asked for a pass out of
/// turn ([`refresh_now`]) and says it has made one.
#[derive(Default)]
struct Asked {
    wake: tokio::sync::Notify,
    passes: tokio::sync::watch::Sender<u64>,
}

/// Every balanced channel's [`Asked`] in this process (dead ones are
/// dropped as they are found).
static ASKED: std::sync::Mutex<Vec<std::sync::Weak<Asked>>> = std::sync::Mutex::new(Vec::new());

fn register(asked: &Arc<Asked>) {
    let mut all = ASKED.lock().unwrap_or_else(|p| p.into_inner());
    all.retain(|a| a.strong_count() > 0);
    all.push(Arc::downgrade(asked));
}

/// How long [`refresh_now`] waits for the passes it asked for.
const REFRESH_NOW_WAIT: Duration = Duration::from_millis(1500);

/// Has every balanced channel of this process re-resolve and probe its name
/// now, and waits (at most 1.5 s) until each has: a replica that went away
/// since the last pass leaves its balance before the caller tries again.
/// Called when a call could not connect
/// ([`crate::server::retry_unsent`]).
pub async fn refresh_now() {
    let all: Vec<Arc<Asked>> = {
        let mut all = ASKED.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|a| a.strong_count() > 0);
        all.iter().filter_map(std::sync::Weak::upgrade).collect()
    };
    let mut waits = tokio::task::JoinSet::new();
    for asked in all {
        waits.spawn(async move {
            let mut passes = asked.passes.subscribe();
            let seen = *passes.borrow_and_update();
            asked.wake.notify_one();
            let _ = tokio::time::timeout(REFRESH_NOW_WAIT, passes.wait_for(|n| *n > seen)).await;
        });
    }
    while waits.join_next().await.is_some() {}
}

/// An endpoint of the balance: the name (before the first answer) or one
/// resolved address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Name,
    Addr(SocketAddr),
}

/// Resolves `host:port` through `resolve` and keeps the addresses that
/// accept a TCP connection within 1 s; `Ok(None)` if none does (callers then
/// keep the set they knew: better a call that fails on its own than an
/// empty balance that waits for ever). The one resolve-and-probe step of
/// every balancer of the mesh (gRPC channels here, the `modmesh edge` HTTP
/// front).
pub async fn resolve_live(
    resolve: &Resolver,
    host: &str,
    port: u16,
) -> std::io::Result<Option<BTreeSet<SocketAddr>>> {
    Ok(probe(resolve(host, port).await?).await)
}

/// The addresses among `addrs` that accept a TCP connection; `None` if none
/// does.
async fn probe(addrs: Vec<SocketAddr>) -> Option<BTreeSet<SocketAddr>> {
    let mut checks = tokio::task::JoinSet::new();
    for addr in addrs {
        checks.spawn(async move {
            let ok = matches!(
                tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await,
                Ok(Ok(_))
            );
            (addr, ok)
        });
    }
    let mut live = BTreeSet::new();
    while let Some(Ok((addr, ok))) = checks.join_next().await {
        if ok {
            live.insert(addr);
        }
    }
    (!live.is_empty()).then_some(live)
}
