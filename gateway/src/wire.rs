//! The services behind the gateway, in-process or remote.
//!
//! For each of storage, lock and fetcher: if its `*SvcURL` is set the
//! gateway uses a gRPC client, otherwise it builds the service in its own
//! process from the same configuration (the embedded default: `gateway`
//! alone is a complete proxy). An in-process service is also served over
//! gRPC when its `*SvcListen` key is set, so internal clients can reach
//! module metadata of an embedded gateway.

use modmesh_common::Config;
use modmesh_fetcher::Fetcher;
use modmesh_lock::Lock;
use modmesh_proto::{Error, Result};
use modmesh_storage::Storage;
use std::sync::Arc;

/// The three services, whatever their transport.
#[derive(Clone)]
pub struct Services {
    /// Where modules are kept.
    pub storage: Arc<dyn Storage>,
    /// Single-flight locks.
    pub lock: Arc<dyn Lock>,
    /// The upstream.
    pub fetcher: Arc<dyn Fetcher>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services").finish_non_exhaustive()
    }
}

/// In-process services that should also be served over gRPC.
#[derive(Default)]
pub struct Embedded {
    /// (listen address, routes, health name, the key that named the address)
    pub grpc: Vec<(String, tonic::service::Routes, &'static str, &'static str)>,
}

/// Builds the services the configuration describes.
pub fn services(cfg: &Config) -> Result<(Services, Embedded)> {
    let mut embedded = Embedded::default();
    // Every remote call has a deadline: a service that accepts connections
    // and never answers gives `Timeout`, not a hang.
    let chan = |key: &str, url: &str| {
        modmesh_common::server::channel_with_timeout(url, cfg.timeout())
            .map_err(|e| Error::invalid(format!("{key}: {url:?}: {e}")))
    };
    if !cfg.FetcherSvcURL.is_empty() && cfg.StorageSvcURL.is_empty() {
        // A remote fetcher saves into the store it is configured with; this
        // gateway would read its own in-process store and never see the
        // module. Only when this gateway serves its store over gRPC can the
        // fetcher be pointed at it.
        if cfg.StorageSvcListen.is_empty() {
            return Err(Error::invalid(
                "FetcherSvcURL is set but StorageSvcURL is not: fetcher-svc would save modules \
                 into a store this gateway never reads; set StorageSvcURL to the storage-svc \
                 that fetcher-svc saves into (or StorageSvcListen, and point fetcher-svc's \
                 StorageSvcURL at it)",
            ));
        }
        tracing::warn!(
            "FetcherSvcURL is set and StorageSvcURL is not: fetcher-svc must save into this \
             gateway's store, served at StorageSvcListen"
        );
    }

    let storage: Arc<dyn Storage> = if cfg.StorageSvcURL.is_empty() {
        let s = modmesh_storage::from_config(cfg)?;
        if !cfg.StorageSvcListen.is_empty() {
            embedded.grpc.push((
                cfg.StorageSvcListen.clone(),
                modmesh_storage::server::routes(s.clone()),
                "modmesh.v1.Storage",
                "StorageSvcListen",
            ));
        }
        s
    } else {
        let ch = chan("StorageSvcURL", &cfg.StorageSvcURL)?;
        Arc::new(modmesh_storage::client::StorageClient::from_channel(ch))
    };

    // The gateway-local tier in front of either (see `crate::tier`); what
    // this gateway serves over gRPC and what its fetcher saves into is the
    // storage itself.
    let tier: crate::tier::TierConfig = cfg.section().map_err(|e| Error::invalid(e.to_string()))?;
    let served = crate::tier::Tier::wrap(storage.clone(), &tier)?;

    let lock: Arc<dyn Lock> = if cfg.LockSvcURL.is_empty() {
        let l = modmesh_lock::from_config(cfg)?;
        if !cfg.LockSvcListen.is_empty() {
            embedded.grpc.push((
                cfg.LockSvcListen.clone(),
                modmesh_lock::server::routes(l.clone()),
                "modmesh.v1.Lock",
                "LockSvcListen",
            ));
        }
        l
    } else {
        // An acquire waits up to `Timeout` for the lock; the lock client
        // bounds each call itself, the channel's deadline is a backstop.
        let ch = modmesh_common::server::channel_with_timeout(
            &cfg.LockSvcURL,
            cfg.timeout() + std::time::Duration::from_secs(10),
        )
        .map_err(|e| Error::invalid(format!("LockSvcURL: {:?}: {e}", cfg.LockSvcURL)))?;
        Arc::new(modmesh_lock::client::LockClient::from_channel(ch))
    };

    let fetcher: Arc<dyn Fetcher> = if cfg.FetcherSvcURL.is_empty() {
        let f: Arc<dyn Fetcher> = modmesh_fetcher::native::from_config(cfg, storage.clone())
            .map_err(|e| Error::invalid(e.to_string()))?;
        if !cfg.FetcherSvcListen.is_empty() {
            embedded.grpc.push((
                cfg.FetcherSvcListen.clone(),
                modmesh_fetcher::server::routes(f.clone()),
                "modmesh.v1.Fetcher",
                "FetcherSvcListen",
            ));
        }
        f
    } else {
        // A download runs the go command for up to `Timeout`: its deadline
        // leaves room for the answer.
        let ch = modmesh_common::server::channel_with_timeout(
            &cfg.FetcherSvcURL,
            cfg.timeout() + std::time::Duration::from_secs(10),
        )
        .map_err(|e| Error::invalid(format!("FetcherSvcURL: {:?}: {e}", cfg.FetcherSvcURL)))?;
        Arc::new(modmesh_fetcher::client::FetcherClient::from_channel(ch))
    };

    // Checksum-database answers are kept in front of the fetcher (see
    // `crate::sumdb`), whichever transport it has.
    let sumdb: modmesh_fetcher::sumdb::SumDbConfig =
        cfg.section().map_err(|e| Error::invalid(e.to_string()))?;
    let fetcher: Arc<dyn Fetcher> =
        Arc::new(crate::sumdb::SumDbCache::new(fetcher, sumdb.cache_size()));

    Ok((
        Services {
            storage: served,
            lock,
            fetcher,
        },
        embedded,
    ))
}
