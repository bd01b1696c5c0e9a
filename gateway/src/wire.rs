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
use tonic::transport::Channel;

/// The three services, whatever their transport.
#[derive(Clone)]
pub struct Services {
    /// Where modules are kept.
    pub storage: Arc<dyn Storage>,
    /// Single-flight locks.
    pub lock: Arc<dyn Lock>,
    /// The upstream.
    pub fetcher: Arc<dyn Fetcher>,
    /// Channels to the remote services, for readiness checks.
    pub remotes: Vec<(&'static str, Channel)>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field(
                "remotes",
                &self.remotes.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            )
            .finish()
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
    let mut remotes = Vec::new();
    let mut embedded = Embedded::default();
    let chan = |url: &str| {
        modmesh_common::server::channel(url).map_err(|e| Error::invalid(format!("{url}: {e}")))
    };

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
        remotes.push(("storage", chan(&cfg.StorageSvcURL)?));
        Arc::new(modmesh_storage::client::StorageClient::new(
            &cfg.StorageSvcURL,
        )?)
    };

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
        remotes.push(("lock", chan(&cfg.LockSvcURL)?));
        Arc::new(modmesh_lock::client::LockClient::new(&cfg.LockSvcURL)?)
    };

    let fetcher: Arc<dyn Fetcher> = if cfg.FetcherSvcURL.is_empty() {
        let f: Arc<dyn Fetcher> = Arc::new(modmesh_fetcher::gocmd::GoFetcher::new(
            modmesh_fetcher::gocmd::GoSettings::from_config(cfg),
            storage.clone(),
        ));
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
        remotes.push(("fetcher", chan(&cfg.FetcherSvcURL)?));
        Arc::new(modmesh_fetcher::client::FetcherClient::new(
            &cfg.FetcherSvcURL,
        )?)
    };

    Ok((
        Services {
            storage,
            lock,
            fetcher,
            remotes,
        },
        embedded,
    ))
}
