//! An HTTP client (`reqwest`) whose TLS is rustls with the **ring** provider, configured
//! explicitly: no process-wide default crypto provider is installed or needed, and aws-lc-rs is
//! never linked (our `reqwest` has `rustls-no-provider`).
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use countersign_runtime::http_client::{http_client, HttpClientOptions};
//!
//! let client = http_client(HttpClientOptions::new().timeout(Duration::from_secs(10)))?;
//! let response = client.get("https://sink.example/events").send().await?;
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Which certificate authorities the client trusts for `https://`.
#[derive(Debug, Clone, Default)]
pub enum TrustRoots {
    /// The operating system's store (`/etc/ssl/certs` and the like; `SSL_CERT_FILE` and
    /// `SSL_CERT_DIR` are honoured).
    #[default]
    Native,
    /// Only these certificates (a private CA, a test CA).
    Only(Vec<CertificateDer<'static>>),
    /// The operating system's store plus these certificates.
    NativeAnd(Vec<CertificateDer<'static>>),
}

impl TrustRoots {
    /// Reads every `CERTIFICATE` block of a PEM document.
    pub fn certificates_from_pem(
        pem: &[u8],
    ) -> Result<Vec<CertificateDer<'static>>, HttpClientError> {
        let certificates = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| HttpClientError::Pem { source })?;
        if certificates.is_empty() {
            return Err(HttpClientError::NoCertificateInPem);
        }
        Ok(certificates)
    }
}

/// How to build the client. Start from [`HttpClientOptions::new`] and change what you need.
#[derive(Debug, Clone)]
pub struct HttpClientOptions {
    /// Trusted certificate authorities. Default: [`TrustRoots::Native`].
    pub roots: TrustRoots,
    /// Deadline for a whole request, response body included. Default: none.
    pub timeout: Option<Duration>,
    /// Deadline for connecting (TCP and TLS). Default: 10 s.
    pub connect_timeout: Duration,
    /// The `User-Agent` header. Default: `countersign/<version>`.
    pub user_agent: String,
}

impl HttpClientOptions {
    /// The defaults.
    pub fn new() -> HttpClientOptions {
        HttpClientOptions {
            roots: TrustRoots::Native,
            timeout: None,
            connect_timeout: Duration::from_secs(10),
            user_agent: concat!("countersign/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }

    /// Sets the trusted certificate authorities.
    pub fn roots(mut self, roots: TrustRoots) -> HttpClientOptions {
        self.roots = roots;
        self
    }

    /// Sets the deadline for a whole request.
    pub fn timeout(mut self, timeout: Duration) -> HttpClientOptions {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the deadline for connecting.
    pub fn connect_timeout(mut self, timeout: Duration) -> HttpClientOptions {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the `User-Agent` header.
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> HttpClientOptions {
        self.user_agent = user_agent.into();
        self
    }
}

impl Default for HttpClientOptions {
    fn default() -> Self {
        HttpClientOptions::new()
    }
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpClientError {
    /// A PEM document could not be read.
    #[error("reading PEM certificates: {source}")]
    Pem {
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A PEM document held no certificate.
    #[error("the PEM document holds no CERTIFICATE block")]
    NoCertificateInPem,
    /// A trusted certificate is not a usable trust anchor.
    #[error("adding a trusted certificate: {source}")]
    TrustAnchor {
        #[source]
        source: rustls::Error,
    },
    /// rustls refused the protocol versions (cannot happen with ring's defaults).
    #[error("configuring TLS: {source}")]
    Tls {
        #[source]
        source: rustls::Error,
    },
    /// reqwest refused the configuration.
    #[error("building the HTTP client: {source}")]
    Build {
        #[source]
        source: reqwest::Error,
    },
}

/// Why a response body could not be read whole by [`read_body_bounded`].
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body (its `Content-Length`, or what arrived) is over the limit.
    #[error("the body is larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The connection failed while the body was read.
    #[error("reading the body")]
    Read(#[source] reqwest::Error),
}

/// Reads `response`'s body, refusing one over `limit` bytes: at once when its `Content-Length`
/// says so, else as soon as the chunks received pass it (nothing past the limit is buffered).
pub async fn read_body_bounded(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, BodyError> {
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(BodyError::TooLarge { limit });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Read)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A `reqwest::Client` using rustls with ring; see [`http_client_builder`] to set more options.
pub fn http_client(options: HttpClientOptions) -> Result<reqwest::Client, HttpClientError> {
    http_client_builder(options)?
        .build()
        .map_err(|source| HttpClientError::Build { source })
}

/// A `reqwest::ClientBuilder` with rustls (ring) and `options` applied, for callers that need more
/// settings (default headers, redirect policy) before `build()`.
pub fn http_client_builder(
    options: HttpClientOptions,
) -> Result<reqwest::ClientBuilder, HttpClientError> {
    let tls = rustls_client_config(&options.roots)?;
    let mut builder = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(options.connect_timeout)
        .user_agent(options.user_agent);
    if let Some(timeout) = options.timeout {
        builder = builder.timeout(timeout);
    }
    Ok(builder)
}

/// The rustls client configuration the HTTP client uses: ring, safe default protocol versions,
/// the given roots, ALPN `h2` then `http/1.1`.
pub fn rustls_client_config(roots: &TrustRoots) -> Result<rustls::ClientConfig, HttpClientError> {
    let mut store = RootCertStore::empty();
    let extra = match roots {
        TrustRoots::Native => &[][..],
        TrustRoots::Only(certificates) => certificates.as_slice(),
        TrustRoots::NativeAnd(certificates) => certificates.as_slice(),
    };
    if matches!(roots, TrustRoots::Native | TrustRoots::NativeAnd(_)) {
        let native = rustls_native_certs::load_native_certs();
        for error in &native.errors {
            tracing::warn!(%error, "reading a native root certificate failed");
        }
        let (added, ignored) = store.add_parsable_certificates(native.certs);
        if added == 0 {
            tracing::warn!(
                ignored,
                "no native root certificates found; https to public hosts will fail"
            );
        }
    }
    for certificate in extra {
        store
            .add(certificate.clone())
            .map_err(|source| HttpClientError::TrustAnchor { source })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| HttpClientError::Tls { source })?
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn building_with_native_roots_does_not_panic() {
        // No process-wide crypto provider is installed in this test process.
        assert!(rustls::crypto::CryptoProvider::get_default().is_none());
        let client = http_client(HttpClientOptions::new().timeout(Duration::from_secs(1)));
        assert!(client.is_ok(), "{client:?}");
    }

    #[test]
    fn pem_without_certificates_is_refused() {
        let error = TrustRoots::certificates_from_pem(b"not a pem").expect_err("no certificate");
        assert!(matches!(error, HttpClientError::NoCertificateInPem));
    }

    #[test]
    fn garbage_trust_anchor_is_refused() {
        let roots = TrustRoots::Only(vec![CertificateDer::from(vec![1, 2, 3])]);
        let error =
            http_client(HttpClientOptions::new().roots(roots)).expect_err("not a certificate");
        assert!(matches!(error, HttpClientError::TrustAnchor { .. }));
    }
}
