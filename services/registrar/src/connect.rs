//! Connecting to the SPIRE server, either over its admin Unix socket (the registrar runs as a
//! sidecar of the server) or over TCP with mTLS, presenting the registrar's own X509-SVID from the
//! Workload API and accepting only `spiffe://<td>/spire/server`. The `spiffe` crate's
//! `X509Source` keeps the SVID rotated, and every new connection (the server closes each one
//! after 3 minutes) uses the current one. (NATS is `countersign_runtime::nats`.)
//!
//! SPIRE connections are lazy: the registrar starts (and binds its consumer) while the server
//! is down, and its calls fail transiently until the server is back.

use countersign_identity::spire_config::SpireConfig;
use countersign_spire_api::{ConnectError, SpireServerClient};
use spiffe::{X509Source, X509SourceError};

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
}

impl ConnectSpireError {
    /// Whether trying again may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            ConnectSpireError::Svid(_) => true,
            ConnectSpireError::Connect(error) => error.is_transient(),
            ConnectSpireError::Endpoint(_) => false,
        }
    }
}

/// A client of the SPIRE server, and the X509 source behind it in TCP mode (keep it alive). In TCP
/// mode the Workload API address is `[spire] socket_path`, else `spiffe_endpoint_socket` (the
/// `SPIFFE_ENDPOINT_SOCKET` variable of the service's environment), else Tekton's default, and
/// one attempt to get the first SVID takes at most `[spire] svid_timeout` (a timeout is
/// transient: the start-up step tries again).
pub async fn connect_spire(
    config: &SpireConfig,
    spiffe_endpoint_socket: Option<&str>,
) -> Result<(SpireServerClient, Option<X509Source>), ConnectSpireError> {
    if let Some(socket) = &config.server_socket_path {
        tracing::info!(socket = %socket.display(), "calling the SPIRE server over its admin socket");
        return Ok((SpireServerClient::connect_unix_lazy(socket), None));
    }
    let endpoint = config.endpoint(spiffe_endpoint_socket)?;
    let trust_domain = config.trust_domain().into_trust_domain();
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
