//! The `redis` driver: leases as redis keys, shared by every lock-svc
//! replica pointed at the same server. The `redis-sentinel` driver
//! ([`super::redis_sentinel`]) is this same lock, finding its server
//! through sentinels instead.
//!
//! A lease on `key` is the redis key `modmesh:lock:<key>` holding the lease
//! id, set with `SET NX PX <ttl>`; the id carries the TTL it was granted
//! with (`<ttl ms>.<uuid>`), so a keep-alive (`PEXPIRE`) and a release
//! (`DEL` + `PUBLISH`) are Lua compare-and-set scripts that act only if the
//! key still holds that id. The fencing token comes from `INCR` of one
//! counter (`modmesh:lock:fence`) in the same script as the `SET`, so it is
//! greater than every earlier token on every key.
//!
//! Waiters are woken by pub/sub: a release publishes the key on
//! `modmesh:lock:released`, which one subscriber task per driver hands to
//! the waiters on that key. A waiter also wakes when the holder's remaining
//! TTL (`PTTL`) runs out (a dead holder publishes nothing) and polls with a
//! backoff while the subscription is down, so a lost message costs latency,
//! never a missed lock.
//!
//! Connections: one multiplexed connection, made on first use and made
//! again (re-resolving the master, for sentinel) after a connection error,
//! a timeout or a `READONLY`/`MASTERDOWN`/`LOADING` answer (a failover). A
//! call that still fails after `LockConfig.MaxRetries` retries is
//! `Unavailable`.

use crate::{validate_acquire, validate_lease, Lease, Lock};
use async_trait::async_trait;
use modmesh_common::config::{err, ConfigError, Env, Section};
use modmesh_proto::{Error, Result};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionInfo, IntoConnectionInfo, RedisError};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The prefix of lock keys.
const KEY_PREFIX: &str = "modmesh:lock:";
/// The fencing token counter.
const FENCE_KEY: &str = "modmesh:lock:fence";
/// The pub/sub channel releases are announced on (payload: the lock key).
const RELEASED_CHANNEL: &str = "modmesh:lock:released";
/// How often a waiter re-checks while the subscription is up (a safety net
/// for a message lost in a reconnect).
const POLL_SUBSCRIBED: Duration = Duration::from_secs(1);
/// The first and the longest poll interval while the subscription is down.
const POLL_MIN: Duration = Duration::from_millis(25);
const POLL_MAX: Duration = Duration::from_millis(500);
/// How often the sentinel driver checks where the master is.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);
/// The first pause before a retry of a failed call; it grows linearly.
const RETRY_STEP: Duration = Duration::from_millis(50);

/// `[SingleFlight.Redis.LockConfig]` (also used by
/// `[SingleFlight.RedisSentinel.LockConfig]`), with Athens' names and
/// defaults.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
#[allow(non_snake_case)]
#[non_exhaustive]
pub struct LockConfig {
    /// `ATHENS_REDIS_LOCK_TTL`: the longest lease granted, in seconds
    /// (longer requests are clamped; leases are renewed while held, so this
    /// is only a ceiling).
    pub TTL: u64,
    /// `ATHENS_REDIS_LOCK_TIMEOUT`: seconds a connection attempt or one
    /// command may take before the server counts as unreachable.
    pub Timeout: u64,
    /// `ATHENS_REDIS_LOCK_MAX_RETRIES`: how many times a call that failed
    /// on the connection is retried (reconnecting) before `Unavailable`.
    pub MaxRetries: u64,
}

impl Default for LockConfig {
    fn default() -> Self {
        LockConfig {
            TTL: 900,
            Timeout: 15,
            MaxRetries: 10,
        }
    }
}

impl LockConfig {
    pub(crate) fn check(&self, path: &str) -> std::result::Result<(), ConfigError> {
        for (k, v) in [
            ("TTL", self.TTL),
            ("Timeout", self.Timeout),
            ("MaxRetries", self.MaxRetries),
        ] {
            if v == 0 {
                return Err(err(
                    &format!("{path}.LockConfig.{k}"),
                    "must be greater than 0",
                ));
            }
        }
        Ok(())
    }
}

/// The lock-tuning env overrides both redis sections share.
pub(crate) const LOCK_ENV: [Env; 3] = [
    Env::new("ATHENS_REDIS_LOCK_TTL", "LockConfig.TTL"),
    Env::new("ATHENS_REDIS_LOCK_TIMEOUT", "LockConfig.Timeout"),
    Env::new("ATHENS_REDIS_LOCK_MAX_RETRIES", "LockConfig.MaxRetries"),
];

/// The `[SingleFlight.Redis]` table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
#[allow(non_snake_case)]
#[non_exhaustive]
pub struct RedisConfig {
    /// `ATHENS_REDIS_ENDPOINT`: `host:port` or a `redis://` URL.
    pub Endpoint: String,
    /// `ATHENS_REDIS_PASSWORD`: the server's password (empty: none). If the
    /// URL carries one too, they must match.
    pub Password: String,
    /// The lock's tuning.
    pub LockConfig: LockConfig,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            Endpoint: "127.0.0.1:6379".into(),
            Password: String::new(),
            LockConfig: LockConfig::default(),
        }
    }
}

impl Section for RedisConfig {
    const PATH: &'static str = "SingleFlight.Redis";
    const ENV: &'static [Env] = &[
        Env::new("ATHENS_REDIS_ENDPOINT", "Endpoint"),
        Env::new("ATHENS_REDIS_PASSWORD", "Password"),
        LOCK_ENV[0],
        LOCK_ENV[1],
        LOCK_ENV[2],
    ];
    fn validate(&self) -> std::result::Result<(), ConfigError> {
        let info = parse_endpoint(&self.Endpoint).map_err(|p| err(&Self::key("Endpoint"), p))?;
        if let Some(url_pw) = info.redis_settings().password() {
            if !self.Password.is_empty() && url_pw != self.Password {
                return Err(err(
                    &Self::key("Password"),
                    "differs from the password in Endpoint's URL",
                ));
            }
        }
        self.LockConfig.check(Self::PATH)
    }
}

/// `host:port` or a `redis[s]://` URL as connection info.
pub(crate) fn parse_endpoint(endpoint: &str) -> std::result::Result<ConnectionInfo, String> {
    let e = endpoint.trim();
    if e.is_empty() {
        return Err("must not be empty".into());
    }
    let url = if e.starts_with("redis://") || e.starts_with("rediss://") {
        e.to_string()
    } else {
        format!("redis://{e}")
    };
    url.as_str()
        .into_connection_info()
        .map_err(|x| format!("{e:?} is not host:port or a redis:// URL: {x}"))
}

/// Builds the redis driver from `[SingleFlight.Redis]`.
pub fn build(cfg: &modmesh_common::Config) -> Result<Arc<dyn Lock>> {
    let c: RedisConfig = cfg.section().map_err(super::config_error)?;
    let mut info = parse_endpoint(&c.Endpoint).map_err(Error::invalid)?;
    if !c.Password.is_empty() {
        let settings = info.redis_settings().clone().set_password(&c.Password);
        info = info.set_redis_settings(settings);
    }
    Ok(Arc::new(RedisLock::new(
        Locator::Direct(info),
        &c.LockConfig,
    )))
}

/// How the driver finds its server.
#[derive(Debug, Clone)]
pub(crate) enum Locator {
    /// One server.
    Direct(ConnectionInfo),
    /// The master named `master` as the sentinels report it, reached with
    /// `settings` (username, password, db).
    Sentinel {
        sentinels: Vec<ConnectionInfo>,
        master: String,
        settings: redis::RedisConnectionInfo,
    },
}

/// A [`Lock`] on a redis server (see the module docs).
#[derive(Debug, Clone)]
pub struct RedisLock {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    locator: Locator,
    max_ttl: Duration,
    timeout: Duration,
    max_retries: u64,
    /// The current connection and its generation (bumped on each reconnect).
    conn: tokio::sync::Mutex<Option<(MultiplexedConnection, u64, String)>>,
    generation: AtomicU64,
    /// Waiters per lock key; a waiter holds a clone of the `Arc` while it
    /// waits.
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
    subscribed: AtomicBool,
    subscriber: Mutex<Option<tokio::task::JoinHandle<()>>>,
    follower: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Signalled when the command connection is made again (the server may
    /// have changed: a failover), so the subscriber follows it.
    reconnected: Arc<Notify>,
    acquire: redis::Script,
    keep_alive: redis::Script,
    release: redis::Script,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in [&self.subscriber, &self.follower] {
            if let Some(t) = task.lock().ok().and_then(|mut t| t.take()) {
                t.abort();
            }
        }
    }
}

/// Whether `e` means "this connection (or this server's role) is no good":
/// reconnect, re-resolve and retry.
fn reconnectable(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.code(),
            Some("READONLY" | "MASTERDOWN" | "LOADING" | "TRYAGAIN")
        )
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Error {
    Error::unavailable(format!("redis lock: {what}: {e}"))
}

/// The outcome of the acquire script.
enum Try {
    Got(u64),
    /// Held; the holder's remaining TTL in ms (negative: none / gone).
    Held(i64),
}

/// A waiter's registration on a key; unregisters on drop.
struct Waiting<'a> {
    inner: &'a Inner,
    key: String,
    notify: Arc<Notify>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut w = self.inner.waiters.lock().unwrap_or_else(|e| e.into_inner());
        // The map's Arc plus ours: nobody else waits on this key.
        if Arc::strong_count(&self.notify) <= 2 {
            w.remove(&self.key);
        }
    }
}

impl RedisLock {
    pub(crate) fn new(locator: Locator, cfg: &LockConfig) -> Self {
        RedisLock {
            inner: Arc::new(Inner {
                locator,
                max_ttl: Duration::from_secs(cfg.TTL),
                timeout: Duration::from_secs(cfg.Timeout),
                max_retries: cfg.MaxRetries,
                conn: tokio::sync::Mutex::new(None),
                generation: AtomicU64::new(0),
                waiters: Mutex::new(HashMap::new()),
                subscribed: AtomicBool::new(false),
                subscriber: Mutex::new(None),
                follower: Mutex::new(None),
                reconnected: Arc::new(Notify::new()),
                acquire: redis::Script::new(
                    r"if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
                        return {1, redis.call('INCR', KEYS[2])}
                      end
                      return {0, redis.call('PTTL', KEYS[1])}",
                ),
                keep_alive: redis::Script::new(
                    r"if redis.call('GET', KEYS[1]) == ARGV[1] then
                        return redis.call('PEXPIRE', KEYS[1], ARGV[2])
                      end
                      return 0",
                ),
                release: redis::Script::new(
                    r"if redis.call('GET', KEYS[1]) == ARGV[1] then
                        redis.call('DEL', KEYS[1])
                        redis.call('PUBLISH', ARGV[2], ARGV[3])
                        return 1
                      end
                      return 0",
                ),
            }),
        }
    }

    /// A driver for the server at `info` with default tuning.
    pub fn direct(info: ConnectionInfo) -> Self {
        Self::new(Locator::Direct(info), &LockConfig::default())
    }
}

impl Inner {
    fn conn_config(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
    }

    /// The address of the server to use now (for sentinel: the master, as
    /// the first sentinel that answers reports it, checked with `ROLE`).
    async fn connect(&self) -> Result<(MultiplexedConnection, String)> {
        match &self.locator {
            Locator::Direct(info) => {
                let client =
                    redis::Client::open(info.clone()).map_err(|e| unavailable("client", e))?;
                let c = client
                    .get_multiplexed_async_connection_with_config(&self.conn_config())
                    .await
                    .map_err(|e| unavailable("connect", e))?;
                Ok((c, info.addr().to_string()))
            }
            Locator::Sentinel {
                sentinels,
                master,
                settings,
            } => {
                let mut last = String::from("no sentinel configured");
                for s in sentinels {
                    match self.master_via(s, master, settings).await {
                        Ok(c) => return Ok(c),
                        Err(e) => last = format!("{}: {e}", s.addr()),
                    }
                }
                Err(unavailable(
                    &format!("no sentinel gave a writable master {master:?}"),
                    last,
                ))
            }
        }
    }

    /// The master's `(host, port)` as `sentinel` reports it.
    async fn ask_sentinel(
        &self,
        sentinel: &ConnectionInfo,
        master: &str,
    ) -> std::result::Result<(String, u16), String> {
        let client = redis::Client::open(sentinel.clone()).map_err(|e| e.to_string())?;
        let mut s = client
            .get_multiplexed_async_connection_with_config(&self.conn_config())
            .await
            .map_err(|e| e.to_string())?;
        let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(master)
            .query_async(&mut s)
            .await
            .map_err(|e| e.to_string())?;
        addr.ok_or_else(|| format!("does not know master {master:?}"))
    }

    async fn master_via(
        &self,
        sentinel: &ConnectionInfo,
        master: &str,
        settings: &redis::RedisConnectionInfo,
    ) -> std::result::Result<(MultiplexedConnection, String), String> {
        let (host, port) = self.ask_sentinel(sentinel, master).await?;
        let info = redis::ConnectionAddr::Tcp(host.clone(), port)
            .into_connection_info()
            .map_err(|e| e.to_string())?
            .set_redis_settings(settings.clone());
        let client = redis::Client::open(info).map_err(|e| e.to_string())?;
        let mut c = client
            .get_multiplexed_async_connection_with_config(&self.conn_config())
            .await
            .map_err(|e| format!("master {host}:{port}: {e}"))?;
        let role: Vec<redis::Value> = redis::cmd("ROLE")
            .query_async(&mut c)
            .await
            .map_err(|e| format!("master {host}:{port}: ROLE: {e}"))?;
        match role.first() {
            Some(redis::Value::BulkString(r)) if r == b"master" => {
                Ok((c, format!("{host}:{port}")))
            }
            _ => Err(format!("{host}:{port} is not a master (yet)")),
        }
    }

    /// The current connection, made if there is none.
    async fn con(&self) -> Result<(MultiplexedConnection, u64)> {
        let mut slot = self.conn.lock().await;
        if let Some((c, g, _)) = slot.as_ref() {
            return Ok((c.clone(), *g));
        }
        let (c, addr) = tokio::time::timeout(self.timeout, self.connect())
            .await
            .map_err(|_| unavailable("connect", "timed out"))??;
        let g = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        *slot = Some((c.clone(), g, addr));
        if g > 1 {
            self.reconnected.notify_waiters();
        }
        Ok((c, g))
    }

    /// Forgets connection generation `g` (if it is still the current one).
    async fn drop_con(&self, g: u64) {
        let mut slot = self.conn.lock().await;
        if slot.as_ref().is_some_and(|(_, cur, _)| *cur == g) {
            *slot = None;
        }
    }

    /// Runs `f` on the connection, reconnecting and retrying (up to
    /// `max_retries` times, with a linearly growing pause) when the
    /// connection or the server's role fails it.
    async fn run<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let mut attempt = 0;
        loop {
            let e = match self.con().await {
                Ok((c, g)) => match f(c).await {
                    Ok(v) => return Ok(v),
                    Err(e) if reconnectable(&e) => {
                        self.drop_con(g).await;
                        unavailable(what, e)
                    }
                    Err(e) => return Err(Error::internal(format!("redis lock: {what}: {e}"))),
                },
                Err(e) => e,
            };
            if attempt >= self.max_retries {
                return Err(e);
            }
            attempt += 1;
            tracing::debug!(error = %e, attempt, "redis lock: retrying");
            tokio::time::sleep((RETRY_STEP * attempt as u32).min(POLL_MAX)).await;
        }
    }

    async fn try_acquire(&self, key: &str, id: &str, ttl: Duration) -> Result<Try> {
        let k = format!("{KEY_PREFIX}{key}");
        let ttl_ms = crate::server::millis(ttl);
        let k = &k;
        let (got, n): (i64, i64) = self
            .run("acquire", |mut c| async move {
                self.acquire
                    .key(k)
                    .key(FENCE_KEY)
                    .arg(id)
                    .arg(ttl_ms)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(if got == 1 {
            Try::Got(n as u64)
        } else {
            Try::Held(n)
        })
    }

    fn register(&self, key: &str) -> Waiting<'_> {
        let mut w = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        let notify = w.entry(key.to_string()).or_default().clone();
        Waiting {
            inner: self,
            key: key.to_string(),
            notify,
        }
    }
}

/// Keeps one subscription to [`RELEASED_CHANNEL`] and wakes the waiters of
/// each released key; reconnects (re-resolving the server) when it drops.
async fn subscriber(inner: Weak<Inner>) {
    use futures::StreamExt;
    let mut pause = POLL_MIN;
    loop {
        let Some(me) = inner.upgrade() else { return };
        let client = match &me.locator {
            Locator::Direct(info) => redis::Client::open(info.clone()).ok(),
            Locator::Sentinel { .. } => {
                // The master's address: ask through a connection made the
                // same way as the command connection.
                match me.con().await {
                    Ok(_) => resolved_client(&me).await,
                    Err(_) => None,
                }
            }
        };
        let sub = match client {
            Some(c) => {
                let cfg = me.timeout;
                match tokio::time::timeout(cfg, c.get_async_pubsub()).await {
                    Ok(Ok(mut ps)) => match ps.subscribe(RELEASED_CHANNEL).await {
                        Ok(()) => Some(ps),
                        Err(_) => None,
                    },
                    _ => None,
                }
            }
            None => None,
        };
        let Some(ps) = sub else {
            drop(me);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(POLL_MAX);
            continue;
        };
        pause = POLL_MIN;
        let reconnected = me.reconnected.clone();
        let moved = reconnected.notified();
        tokio::pin!(moved);
        moved.as_mut().enable();
        me.subscribed.store(true, Ordering::Release);
        drop(me);
        let mut messages = ps.into_on_message();
        loop {
            let msg = tokio::select! {
                m = messages.next() => m,
                // The command connection moved: subscribe where it is now.
                _ = &mut moved => None,
            };
            let Some(msg) = msg else { break };
            let Some(me) = inner.upgrade() else { return };
            let Ok(key) = msg.get_payload::<String>() else {
                continue;
            };
            let n = me
                .waiters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
                .cloned();
            if let Some(n) = n {
                n.notify_waiters();
            }
        }
        if let Some(me) = inner.upgrade() {
            me.subscribed.store(false, Ordering::Release);
            // Waiters fall back to polling; wake them so they notice.
            for n in me
                .waiters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
            {
                n.notify_waiters();
            }
        }
    }
}

/// Sentinel only: every [`FOLLOW_EVERY`] asks the sentinels for the
/// master and, when it is no longer the server the command connection is
/// on (a failover that left the old master up for a while), drops that
/// connection and moves the subscriber, so no lock is taken on a demoted
/// master for longer than that.
async fn follow_master(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(FOLLOW_EVERY).await;
        let Some(me) = inner.upgrade() else { return };
        let Locator::Sentinel {
            sentinels, master, ..
        } = &me.locator
        else {
            return;
        };
        let current = me
            .conn
            .lock()
            .await
            .as_ref()
            .map(|(_, g, addr)| (*g, addr.clone()));
        let Some((g, addr)) = current else { continue };
        for s in sentinels {
            let asked = tokio::time::timeout(me.timeout, me.ask_sentinel(s, master)).await;
            if let Ok(Ok((host, port))) = asked {
                let now = format!("{host}:{port}");
                if now != addr {
                    tracing::info!(from = %addr, to = %now, "redis lock: master moved; reconnecting");
                    me.drop_con(g).await;
                    me.reconnected.notify_waiters();
                }
                break;
            }
        }
    }
}

/// A client for the server the command connection is on now (sentinel:
/// the current master).
async fn resolved_client(me: &Inner) -> Option<redis::Client> {
    let Locator::Sentinel {
        sentinels,
        master,
        settings,
    } = &me.locator
    else {
        return None;
    };
    for s in sentinels {
        let Ok(client) = redis::Client::open(s.clone()) else {
            continue;
        };
        let Ok(Ok(mut c)) = tokio::time::timeout(
            me.timeout,
            client.get_multiplexed_async_connection_with_config(&me.conn_config()),
        )
        .await
        else {
            continue;
        };
        let addr: redis::RedisResult<Option<(String, u16)>> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(master)
            .query_async(&mut c)
            .await;
        if let Ok(Some((host, port))) = addr {
            let info = redis::ConnectionAddr::Tcp(host, port)
                .into_connection_info()
                .ok()?
                .set_redis_settings(settings.clone());
            return redis::Client::open(info).ok();
        }
    }
    None
}

impl RedisLock {
    /// Starts the sentinel driver's master follower (once per runtime).
    fn ensure_follower(&self) {
        if !matches!(self.inner.locator, Locator::Sentinel { .. }) {
            return;
        }
        let mut t = self
            .inner
            .follower
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if t.as_ref().is_none_or(|t| t.is_finished()) {
            *t = Some(tokio::spawn(follow_master(Arc::downgrade(&self.inner))));
        }
    }

    fn ensure_subscriber(&self) {
        let mut t = self
            .inner
            .subscriber
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if t.as_ref().is_none_or(|t| t.is_finished()) {
            *t = Some(tokio::spawn(subscriber(Arc::downgrade(&self.inner))));
        }
    }
}

/// The TTL (ms) a lease id was granted with: ids are `<ttl ms>.<uuid>`.
fn ttl_of(id: &str) -> Option<u64> {
    id.split_once('.')?.0.parse().ok().filter(|t| *t > 0)
}

#[async_trait]
impl Lock for RedisLock {
    async fn acquire(&self, key: &str, ttl: Duration, wait: Duration) -> Result<Lease> {
        validate_acquire(key, ttl)?;
        self.ensure_follower();
        let ttl = ttl.min(self.inner.max_ttl);
        let ttl = Duration::from_millis(crate::server::millis(ttl));
        let id = format!("{}.{}", ttl.as_millis(), uuid::Uuid::new_v4());
        let deadline = super::memory::after(Instant::now(), wait);
        if wait.is_zero() {
            // A try-lock never waits: no registration needed.
            return match self.inner.try_acquire(key, &id, ttl).await? {
                Try::Got(token) => Ok(Lease {
                    key: key.to_string(),
                    id,
                    ttl,
                    token,
                }),
                Try::Held(_) => Err(Error::timeout(format!("lock {key:?} is held"))),
            };
        }
        self.ensure_subscriber();
        // Registered before each try, so a release between the try and the
        // wait still wakes this waiter.
        let w = self.inner.register(key);
        let mut poll = POLL_MIN;
        loop {
            let notified = w.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let remaining = match self.inner.try_acquire(key, &id, ttl).await? {
                Try::Got(token) => {
                    tracing::debug!(key, lease = %id, token, "lock acquired");
                    return Ok(Lease {
                        key: key.to_string(),
                        id,
                        ttl,
                        token,
                    });
                }
                Try::Held(pttl) => pttl,
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::timeout(format!(
                    "lock {key:?} still held after waiting {wait:?}"
                )));
            }
            let step = if self.inner.subscribed.load(Ordering::Acquire) {
                POLL_SUBSCRIBED
            } else {
                let p = poll;
                poll = (poll * 2).min(POLL_MAX);
                p
            };
            let mut wake_at = (now + step).min(deadline);
            match remaining {
                // The holder's lease runs out: try again right then.
                p if p >= 0 => {
                    wake_at = wake_at.min(now + Duration::from_millis(p as u64 + 1));
                }
                // Gone between SET and PTTL: try again at once.
                -2 => continue,
                _ => {}
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }

    async fn keep_alive(&self, lease: &Lease) -> Result<()> {
        validate_lease(lease)?;
        self.ensure_follower();
        let not_found = || {
            Error::not_found(format!(
                "lease {} on {:?} has expired or was released",
                lease.id, lease.key
            ))
        };
        let Some(ttl_ms) = ttl_of(&lease.id) else {
            return Err(not_found());
        };
        let k = format!("{KEY_PREFIX}{}", lease.key);
        let k = &k;
        let renewed: i64 = self
            .inner
            .run("keep-alive", |mut c| async move {
                self.inner
                    .keep_alive
                    .key(k)
                    .arg(&lease.id)
                    .arg(ttl_ms)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        if renewed == 1 {
            Ok(())
        } else {
            Err(not_found())
        }
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        validate_lease(lease)?;
        self.ensure_follower();
        let k = format!("{KEY_PREFIX}{}", lease.key);
        let k = &k;
        let freed: i64 = self
            .inner
            .run("release", |mut c| async move {
                self.inner
                    .release
                    .key(k)
                    .arg(&lease.id)
                    .arg(RELEASED_CHANNEL)
                    .arg(&lease.key)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        if freed == 1 {
            tracing::debug!(key = %lease.key, lease = %lease.id, "lock released");
        }
        Ok(())
    }

    async fn health(&self) -> Result<()> {
        self.ensure_follower();
        let deadline = self.inner.timeout.min(Duration::from_secs(5));
        let ping = async {
            let (mut c, g) = self.inner.con().await?;
            match redis::cmd("PING").query_async::<String>(&mut c).await {
                Ok(_) => Ok(()),
                Err(e) => {
                    self.inner.drop_con(g).await;
                    Err(unavailable("PING", e))
                }
            }
        };
        tokio::time::timeout(deadline, ping)
            .await
            .map_err(|_| unavailable("PING", "timed out"))?
    }
}
