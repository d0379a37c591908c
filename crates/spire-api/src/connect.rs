//! The two ways to reach a SPIRE server: its local admin Unix socket, or its TCP port with mTLS
//! using the caller's own X509-SVID from the Workload API.
//!
//! Both build a tonic [`Channel`] over a custom connector. The channel reconnects by itself when
//! the server closes a connection (it sends GOAWAY after 3 minutes on TCP, and on shutdown), so a
//! caller never handles reconnection; calls made while the server is down fail with a transient
//! error. Each connector counts the connections it opened.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use spiffe::{SpiffeId, TrustDomain, X509Source};
use spiffe_rustls::{LocalOnly, authorizer, mtls_client};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::ConnectError;

/// How long opening one connection (and its TLS handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one call may take before it fails as a transient (client-side) timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The URI tonic is given for the Unix socket; only its (ignored) authority reaches the server.
const UNIX_DUMMY_URI: &str = "http://spire-server.local";

/// A channel and the counter of connections its connector opened.
#[derive(Debug, Clone)]
pub(crate) struct Connection {
    pub(crate) channel: Channel,
    pub(crate) connections_opened: Arc<AtomicU64>,
}

/// The SPIFFE ID every SPIRE server presents on its TCP port: `spiffe://<td>/spire/server`.
pub fn server_spiffe_id(trust_domain: &TrustDomain) -> SpiffeId {
    // `spire` and `server` are valid path segments, so this cannot fail.
    SpiffeId::from_segments(trust_domain.clone(), &["spire", "server"])
        .unwrap_or_else(|_| unreachable!("constant, valid path segments"))
}

fn base_endpoint(uri: Uri) -> Endpoint {
    Endpoint::from(uri)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
}

/// A channel over the server's admin Unix socket (`socket_path` in the server config), dialled
/// now.
pub(crate) async fn unix(path: &Path) -> Result<Connection, ConnectError> {
    let connections_opened = Arc::new(AtomicU64::new(0));
    let connector = unix_connector(path.to_owned(), connections_opened.clone());
    let channel = unix_endpoint()
        .connect_with_connector(connector)
        .await
        .map_err(|source| ConnectError::Unavailable {
            address: path.display().to_string(),
            source,
        })?;
    Ok(Connection {
        channel,
        connections_opened,
    })
}

/// A channel over the server's admin Unix socket, dialled on the first call.
pub(crate) fn unix_lazy(path: &Path) -> Connection {
    let connections_opened = Arc::new(AtomicU64::new(0));
    let connector = unix_connector(path.to_owned(), connections_opened.clone());
    Connection {
        channel: unix_endpoint().connect_with_connector_lazy(connector),
        connections_opened,
    }
}

fn unix_endpoint() -> Endpoint {
    base_endpoint(Uri::from_static(UNIX_DUMMY_URI))
}

fn unix_connector(
    path: PathBuf,
    connections_opened: Arc<AtomicU64>,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<tokio::net::UnixStream>,
    Error = std::io::Error,
    Future = impl Future<Output = std::io::Result<TokioIo<tokio::net::UnixStream>>> + Send,
> + Send
+ Clone
+ 'static {
    let path: Arc<PathBuf> = Arc::new(path);
    tower::service_fn(move |_: Uri| {
        let path = path.clone();
        let connections_opened = connections_opened.clone();
        async move {
            let stream = tokio::net::UnixStream::connect(path.as_path()).await?;
            connections_opened.fetch_add(1, Ordering::Relaxed);
            Ok(TokioIo::new(stream))
        }
    })
}

/// One mTLS connection to the server over TCP.
type TlsIo = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// A channel over TCP with mTLS, dialled now: the client presents the current SVID of `source`
/// (rotated by the source), accepts only a server whose certificate chains to the bundle of
/// `trust_domain` and whose SPIFFE ID is exactly `spiffe://<trust_domain>/spire/server`, ignores
/// the TLS server name (the server's SVID has no DNS names) and speaks HTTP/2 (ALPN `h2`).
pub(crate) async fn tcp(
    address: &str,
    trust_domain: &TrustDomain,
    source: X509Source,
) -> Result<Connection, ConnectError> {
    let (endpoint, dial) = tls_dial(address, trust_domain, source)?;
    let connections_opened = Arc::new(AtomicU64::new(0));
    let channel = endpoint
        .connect_with_connector(tls_connector(dial, connections_opened.clone()))
        .await
        .map_err(|source| ConnectError::Unavailable {
            address: address.to_owned(),
            source,
        })?;
    Ok(Connection {
        channel,
        connections_opened,
    })
}

/// As [`tcp`], dialled on the first call.
pub(crate) fn tcp_lazy(
    address: &str,
    trust_domain: &TrustDomain,
    source: X509Source,
) -> Result<Connection, ConnectError> {
    let (endpoint, dial) = tls_dial(address, trust_domain, source)?;
    let connections_opened = Arc::new(AtomicU64::new(0));
    let channel =
        endpoint.connect_with_connector_lazy(tls_connector(dial, connections_opened.clone()));
    Ok(Connection {
        channel,
        connections_opened,
    })
}

/// Where and how to open an mTLS connection.
#[derive(Clone)]
struct TlsDial {
    address: Arc<str>,
    server_name: ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
}

fn tls_dial(
    address: &str,
    trust_domain: &TrustDomain,
    source: X509Source,
) -> Result<(Endpoint, TlsDial), ConnectError> {
    let invalid = || ConnectError::InvalidAddress {
        address: address.to_owned(),
    };
    let server_name = server_name(address).ok_or_else(invalid)?;
    let uri: Uri = format!("https://{address}")
        .parse()
        .map_err(|_| invalid())?;
    let tls_config = mtls_client(source)
        .authorize(authorizer::exact([server_spiffe_id(trust_domain)]).map_err(ConnectError::Tls)?)
        .trust_domain_policy(LocalOnly(trust_domain.clone()))
        .with_alpn_protocols([b"h2"])
        .build()
        .map_err(ConnectError::Tls)?;
    let dial = TlsDial {
        address: Arc::from(address),
        server_name,
        tls: tokio_rustls::TlsConnector::from(Arc::new(tls_config)),
    };
    Ok((base_endpoint(uri), dial))
}

fn tls_connector(
    dial: TlsDial,
    connections_opened: Arc<AtomicU64>,
) -> impl tower::Service<
    Uri,
    Response = TlsIo,
    Error = std::io::Error,
    Future = impl Future<Output = std::io::Result<TlsIo>> + Send,
> + Send
+ Clone
+ 'static {
    tower::service_fn(move |_: Uri| {
        let dial = dial.clone();
        let connections_opened = connections_opened.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(&*dial.address).await?;
            tcp.set_nodelay(true)?;
            let stream = dial.tls.connect(dial.server_name, tcp).await?;
            connections_opened.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(address = %dial.address, "connected to the SPIRE server over mTLS");
            Ok(TokioIo::new(stream))
        }
    })
}

/// The TLS server name for `host:port`: an IP literal or a DNS name. The SPIFFE verifier
/// ignores it, but rustls needs one (and sends SNI only for DNS names).
fn server_name(address: &str) -> Option<ServerName<'static>> {
    let (host, port) = address.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_owned()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_come_from_the_host_part() {
        assert!(matches!(
            server_name("127.0.0.1:8081"),
            Some(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("[::1]:8081"),
            Some(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("spire-server.spire:8081"),
            Some(ServerName::DnsName(_))
        ));
        assert_eq!(server_name("no-port"), None);
        assert_eq!(server_name("host:notaport"), None);
    }

    #[test]
    fn the_server_id_is_under_spire_server() {
        let td = TrustDomain::new("example.org").expect("valid");
        assert_eq!(
            server_spiffe_id(&td).to_string(),
            "spiffe://example.org/spire/server"
        );
    }
}
