//! The webhook's HTTPS server: rustls (ring), its serving certificate and key read from files and
//! replaced without a restart when the files change (cert-manager, or a Secret volume, rotates
//! them in place).
//!
//! [`ReloadingCertificate`] holds the current certificate; [`ReloadingCertificate::watch`] checks
//! the files' modification times every interval and loads a new pair once both parse and the key
//! matches (a half-written rotation keeps the previous pair and is logged). [`serve_https`]
//! accepts TCP connections, completes the TLS handshake within a bound, and serves an axum router
//! over HTTP/1.1 on each, until shutdown.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::crypto::ring::sign::any_supported_type;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use countersign_runtime::bounded_read::{ReadFileError, read_bounded};

/// The largest certificate or key file read.
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;
/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the request headers may take to arrive.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a certificate and key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadCertificateError {
    /// A file could not be read.
    #[error("reading {}", .0.path().display())]
    Read(#[source] ReadFileError),
    /// The certificate file holds no PEM certificate.
    #[error("{0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    /// The certificate file is not PEM.
    #[error("{path} is not PEM")]
    Pem {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The key is not one rustls (ring) can sign with.
    #[error("the key in {path} is not usable")]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// The key is not the certificate's.
    #[error("the key does not match the certificate")]
    Mismatch(#[source] rustls::Error),
}

/// Reads a PEM certificate chain and its key into a [`CertifiedKey`].
pub fn load_certified_key(
    cert_file: &Path,
    key_file: &Path,
) -> Result<CertifiedKey, LoadCertificateError> {
    let cert_pem = read_bounded(cert_file, MAX_PEM_BYTES).map_err(LoadCertificateError::Read)?;
    let key_pem = read_bounded(key_file, MAX_PEM_BYTES).map_err(LoadCertificateError::Read)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| LoadCertificateError::Pem {
            path: cert_file.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(LoadCertificateError::NoCertificate(cert_file.to_owned()));
    }
    let key =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| LoadCertificateError::Pem {
            path: key_file.to_owned(),
            source,
        })?;
    let signing_key = any_supported_type(&key).map_err(|source| LoadCertificateError::Key {
        path: key_file.to_owned(),
        source,
    })?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified
        .keys_match()
        .map_err(LoadCertificateError::Mismatch)?;
    Ok(certified)
}

/// The serving certificate, replaced when its files change.
#[derive(Debug)]
pub struct ReloadingCertificate {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    loaded_at: RwLock<(Option<SystemTime>, Option<SystemTime>)>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path)
        .and_then(|metadata| metadata.modified())
        .ok()
}

impl ReloadingCertificate {
    /// Loads the pair once; an error here stops the gate (nothing to serve with).
    pub fn load(
        cert_file: &Path,
        key_file: &Path,
    ) -> Result<Arc<ReloadingCertificate>, LoadCertificateError> {
        let stamps = (modified(cert_file), modified(key_file));
        let certified = load_certified_key(cert_file, key_file)?;
        Ok(Arc::new(ReloadingCertificate {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            current: RwLock::new(Arc::new(certified)),
            loaded_at: RwLock::new(stamps),
        }))
    }

    /// Loads the pair again if either file changed since the last load. `Ok(true)` when replaced.
    pub fn reload_if_changed(&self) -> Result<bool, LoadCertificateError> {
        let stamps = (modified(&self.cert_file), modified(&self.key_file));
        if *self
            .loaded_at
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            == stamps
        {
            return Ok(false);
        }
        let certified = load_certified_key(&self.cert_file, &self.key_file)?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(certified);
        *self
            .loaded_at
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = stamps;
        Ok(true)
    }

    /// Checks the files every `interval` until `token` is cancelled.
    pub async fn watch(self: Arc<Self>, interval: Duration, token: CancellationToken) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                _ = ticks.tick() => {}
            }
            match self.reload_if_changed() {
                Ok(true) => {
                    tracing::info!(cert_file = %self.cert_file.display(), "serving certificate reloaded")
                }
                Ok(false) => {}
                Err(error) => tracing::warn!(
                    error = %countersign_runtime::error_chain(&error),
                    "the serving certificate files changed but do not load; keeping the previous pair"
                ),
            }
        }
    }

    /// A rustls server configuration (ring) serving the current certificate (HTTP/1.1).
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, rustls::Error> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        ))
    }
}

/// Serves `router` over TLS on `listener` until `token` is cancelled, then lets each connection
/// finish its request in flight and returns.
pub async fn serve_https(
    listener: TcpListener,
    router: Router,
    config: Arc<rustls::ServerConfig>,
    token: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(config);
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = token.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting a webhook connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let token = token.clone();
        connections.spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let connection = builder.serve_connection(
                TokioIo::new(tls),
                TowerToHyperService::new(router.into_service()),
            );
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%peer, %error, "webhook connection ended");
                    }
                }
                () = token.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
}
