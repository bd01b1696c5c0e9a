//! HTTPS (`TLSCertFile`, `TLSKeyFile`) with rustls, HTTP/1.1 and HTTP/2 by
//! ALPN. The files are watched: when either changes and the pair loads, new
//! handshakes use the new certificate; a pair that does not load (half
//! written, mismatched) is logged and the old certificate stays.

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// How often the files are checked for changes.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// The ring crypto provider the gateway's TLS uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads a certificate chain and its key from PEM files.
pub fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("TLSCertFile {}: {e}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("TLSCertFile {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("TLSCertFile {}: no certificate", cert.display()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("TLSKeyFile {}: {e}", key.display()))?;
    CertifiedKey::from_der(chain, key_der, &provider())
        .map_err(|e| format!("TLSCertFile/TLSKeyFile: {e}"))
}

type Stamp = Option<(SystemTime, u64)>;

fn stamp(p: &Path) -> Stamp {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// The current certificate, replaced when the files change.
#[derive(Debug)]
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    seen: std::sync::Mutex<(Stamp, Stamp)>,
}

impl CertStore {
    /// Loads the pair (an error names the key at fault).
    pub fn open(cert: &str, key: &str) -> Result<Arc<CertStore>, String> {
        let (cert, key) = (PathBuf::from(cert), PathBuf::from(key));
        let seen = (stamp(&cert), stamp(&key));
        let ck = load(&cert, &key)?;
        Ok(Arc::new(CertStore {
            cert,
            key,
            current: RwLock::new(Arc::new(ck)),
            seen: std::sync::Mutex::new(seen),
        }))
    }

    /// Reloads if either file changed since the last look; true if a new
    /// certificate is now in use.
    pub fn reload_if_changed(&self) -> bool {
        let now = (stamp(&self.cert), stamp(&self.key));
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return false;
            }
            *seen = now;
        }
        match load(&self.cert, &self.key) {
            Ok(ck) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ck);
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "TLS certificate changed but does not load; keeping the previous one");
                false
            }
        }
    }

    /// Checks the files every [`RELOAD_EVERY`] until the store is dropped
    /// everywhere else.
    pub fn watch(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RELOAD_EVERY).await;
                let Some(store) = weak.upgrade() else { return };
                tokio::task::spawn_blocking(move || store.reload_if_changed())
                    .await
                    .ok();
            }
        });
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// A rustls server configuration over `store`, offering h2 and http/1.1.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<rustls::ServerConfig>, String> {
    let mut c = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(store);
    c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}
