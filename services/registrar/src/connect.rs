//! Connections: NATS (the bus and the state bucket), and the SPIRE server, either over its admin
//! Unix socket (the registrar runs as a sidecar of the server) or over TCP with mTLS, presenting
//! the registrar's own X509-SVID from the Workload API and accepting only
//! `spiffe://<td>/spire/server`. The `spiffe` crate's `X509Source` keeps the SVID rotated, and
//! every new connection (the server closes each one after 3 minutes) uses the current one.
//!
//! SPIRE connections are lazy: the registrar starts (and binds its consumer) while the server
//! is down, and its calls fail transiently until the server is back.

use std::time::Duration;

use countersign_identity::workload::WorkloadEndpoint;
use countersign_spire_api::{ConnectError, SpireServerClient};
use spiffe::{X509Source, X509SourceError};
use tokio_util::sync::CancellationToken;

use crate::config::{NatsConfig, SpireConfig};

/// Why NATS could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectNatsError {
    /// The credentials file could not be read.
    #[error("reading the NATS credentials file")]
    Credentials(#[source] std::io::Error),
    /// The server did not answer.
    #[error("connecting to NATS at {url}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
}

impl ConnectNatsError {
    /// Whether trying again may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, ConnectNatsError::Connect { .. })
    }
}

/// Connects to NATS once.
pub async fn connect_nats(
    config: &NatsConfig,
    client_name: &str,
) -> Result<async_nats::Client, ConnectNatsError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(client_name)
        .connection_timeout(config.connect_timeout);
    if let Some(path) = &config.credentials_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(ConnectNatsError::Credentials)?;
    }
    options
        .connect(config.url.as_str())
        .await
        .map_err(|source| ConnectNatsError::Connect {
            url: config.url.clone(),
            source,
        })
}

/// Why the SPIRE server cannot be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectSpireError {
    /// The configured Workload API address is unusable.
    #[error("the Workload API address")]
    Endpoint(#[from] countersign_identity::workload::EndpointConfigError),
    /// The registrar's own SVID did not arrive.
    #[error("getting the registrar's own SVID from the Workload API")]
    Svid(#[from] X509SourceError),
    /// The TLS configuration or the address is unusable.
    #[error("the SPIRE server connection")]
    Connect(#[from] ConnectError),
    /// The trust domain is invalid (checked at start-up already).
    #[error("the trust domain")]
    TrustDomain(#[source] spiffe::SpiffeIdError),
}

impl ConnectSpireError {
    /// Whether trying again may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            ConnectSpireError::Svid(_) => true,
            ConnectSpireError::Connect(error) => error.is_transient(),
            ConnectSpireError::Endpoint(_) | ConnectSpireError::TrustDomain(_) => false,
        }
    }
}

/// A client of the SPIRE server, and the X509 source behind it in TCP mode (keep it alive).
pub async fn connect_spire(
    config: &SpireConfig,
) -> Result<(SpireServerClient, Option<X509Source>), ConnectSpireError> {
    if let Some(socket) = &config.server_socket_path {
        tracing::info!(socket = %socket.display(), "calling the SPIRE server over its admin socket");
        return Ok((SpireServerClient::connect_unix_lazy(socket), None));
    }
    let endpoint = WorkloadEndpoint::new(config.socket_path.clone())?;
    let trust_domain =
        spiffe::TrustDomain::new(&config.trust_domain).map_err(ConnectSpireError::TrustDomain)?;
    let source = X509Source::builder()
        .endpoint(endpoint.as_str())
        .initial_sync_timeout(config.svid_timeout)
        .build()
        .await?;
    if let Ok(svid) = source.svid() {
        tracing::info!(
            address = %config.server_addr,
            spiffe_id = %svid.spiffe_id(),
            "calling the SPIRE server over TCP with mTLS"
        );
    }
    let client =
        SpireServerClient::connect_tcp_lazy(&config.server_addr, &trust_domain, source.clone())?;
    Ok((client, Some(source)))
}

/// Retries `attempt` with exponential backoff (100 ms to 5 s) while its error is transient;
/// `None` when `shutdown` is cancelled first.
pub(crate) async fn retry<T, E, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    is_transient: impl Fn(&E) -> bool,
    mut attempt: F,
) -> Result<Option<T>, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::error::Error + 'static,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        let result = tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            result = attempt() => result,
        };
        match result {
            Ok(value) => return Ok(Some(value)),
            Err(error) if is_transient(&error) => {
                tracing::warn!(what, error = %crate::register::error_chain(&error), retry_in = ?backoff, "not yet; retrying");
            }
            Err(error) => return Err(error),
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
