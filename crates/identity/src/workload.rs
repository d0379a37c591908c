//! The SPIFFE Workload API, through the `spiffe` crate.
//!
//! * [`WorkloadSource`] wraps `spiffe::X509Source`: the current SVID and trust bundles, kept
//!   current as SPIRE rotates them, with a timeout for the first SVID. For long-running
//!   services (the attestor signs with its SVID and verifies against the bundles).
//! * [`fetch_svid_with_retry`] is for the in-pod signer: the TaskRun's registration entry may not
//!   exist yet, so "no identity" (`PERMISSION_DENIED`) and an unreachable agent are retried with
//!   backoff until a timeout, as Tekton's entrypointer retries for 20 s.
//!
//! The address comes from configuration or from `SPIFFE_ENDPOINT_SOCKET`, read through a
//! lookup function the caller passes ([`WorkloadEndpoint::from_config`]), never from the process
//! environment directly.

use std::sync::Arc;
use std::time::Duration;

use spiffe::{WorkloadApiClient, WorkloadApiError, X509Source, X509SourceError, X509Svid};

use crate::svid::{BundleError, SigningSvid, SigningSvidError, TrustBundleSet};

/// The environment variable naming the Workload API socket.
pub const SPIFFE_ENDPOINT_SOCKET: &str = "SPIFFE_ENDPOINT_SOCKET";

/// Tekton's `spire-socket-path` default.
pub const TEKTON_DEFAULT_SOCKET: &str = "unix:///spiffe-workload-api/spire-agent.sock";

/// A validated Workload API address (`unix:///path`, `unix:/path` or `tcp://ip:port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadEndpoint(String);

/// Why no usable address was found.
#[derive(Debug, thiserror::Error)]
pub enum EndpointConfigError {
    /// Neither configuration nor `SPIFFE_ENDPOINT_SOCKET` gave an address.
    #[error("no Workload API address: configure one or set SPIFFE_ENDPOINT_SOCKET")]
    NotConfigured,
    /// The address does not parse.
    #[error("invalid Workload API address {address:?}")]
    Invalid {
        /// The address.
        address: String,
        /// Why.
        #[source]
        source: spiffe::transport::EndpointError,
    },
}

impl WorkloadEndpoint {
    /// Validates an address.
    pub fn new(address: impl Into<String>) -> Result<Self, EndpointConfigError> {
        let address = address.into();
        match spiffe::transport::Endpoint::parse(&address) {
            Ok(_) => Ok(Self(address)),
            Err(source) => Err(EndpointConfigError::Invalid { address, source }),
        }
    }

    /// The configured address if any, else `SPIFFE_ENDPOINT_SOCKET` as `lookup` reports it
    /// (pass `|name| std::env::var(name).ok()` in `main`, a map in tests).
    pub fn from_config(
        configured: Option<&str>,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, EndpointConfigError> {
        match configured.filter(|address| !address.is_empty()) {
            Some(address) => Self::new(address),
            None => match lookup(SPIFFE_ENDPOINT_SOCKET).filter(|address| !address.is_empty()) {
                Some(address) => Self::new(address),
                None => Err(EndpointConfigError::NotConfigured),
            },
        }
    }

    /// The address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why the Workload API source failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// The source could not start, or has no SVID (e.g. the first SVID did not arrive in time).
    #[error("workload API source")]
    Source(#[from] X509SourceError),
    /// The delivered bundles are unusable.
    #[error("workload API bundles")]
    Bundles(#[from] BundleError),
    /// The delivered SVID cannot sign (unsupported key type, ...).
    #[error("workload API SVID cannot sign")]
    Svid(#[from] SigningSvidError),
}

impl WorkloadError {
    /// Whether waiting and retrying may help (the agent or the entry may appear later).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Source(
                X509SourceError::InitialSyncTimeout
                    | X509SourceError::Source(_)
                    | X509SourceError::StreamEnded
            )
        )
    }
}

/// The current X509-SVID and bundles from the Workload API, kept current by the `spiffe`
/// crate's `X509Source` (it reconnects with backoff and replaces, never merges, bundles).
#[derive(Debug, Clone)]
pub struct WorkloadSource {
    source: X509Source,
}

impl WorkloadSource {
    /// Connects and waits up to `first_svid_timeout` for the first SVID.
    pub async fn connect(
        endpoint: &WorkloadEndpoint,
        first_svid_timeout: Duration,
    ) -> Result<Self, WorkloadError> {
        let source = X509Source::builder()
            .endpoint(endpoint.as_str())
            .initial_sync_timeout(first_svid_timeout)
            .build()
            .await?;
        Ok(Self { source })
    }

    /// The current SVID as the `spiffe` crate holds it.
    pub fn x509_svid(&self) -> Result<Arc<X509Svid>, WorkloadError> {
        Ok(self.source.svid()?)
    }

    /// The current SVID, ready to sign.
    pub fn signing_svid(&self) -> Result<SigningSvid, WorkloadError> {
        let svid = self.source.svid()?;
        Ok(SigningSvid::from_x509_svid(&svid)?)
    }

    /// The current trust bundles (own and federated trust domains).
    pub fn bundles(&self) -> Result<TrustBundleSet, WorkloadError> {
        let bundle_set = self.source.bundle_set()?;
        Ok(TrustBundleSet::from_x509_bundle_set(&bundle_set)?)
    }

    /// A watcher that wakes on every SVID or bundle update.
    pub fn updates(&self) -> spiffe::X509SourceUpdates {
        self.source.updated()
    }

    /// Whether the source currently holds usable material.
    pub fn is_healthy(&self) -> bool {
        self.source.is_healthy()
    }

    /// Stops the background task.
    pub async fn shutdown(&self) {
        self.source.shutdown().await;
    }
}

/// Why the signer got no SVID.
#[derive(Debug, thiserror::Error)]
pub enum FetchSvidError {
    /// Still no SVID when the timeout expired; `last` is the last error seen.
    #[error("no SVID within {timeout:?}")]
    TimedOut {
        /// The timeout.
        timeout: Duration,
        /// The last error from the Workload API, if any call completed.
        #[source]
        last: Option<WorkloadApiError>,
    },
    /// The agent refused the request as malformed (not retried).
    #[error("workload API refused the request")]
    Refused(#[source] WorkloadApiError),
    /// An SVID arrived but cannot sign (unsupported key type, ...; not retried).
    #[error("SVID cannot sign")]
    Svid(#[from] SigningSvidError),
}

/// Fetches the default SVID, retrying "no identity issued", other `PERMISSION_DENIED` answers and
/// an unreachable agent with backoff (200 ms doubling to 2 s) until `timeout`.
pub async fn fetch_svid_with_retry(
    endpoint: &WorkloadEndpoint,
    timeout: Duration,
) -> Result<SigningSvid, FetchSvidError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut backoff = Duration::from_millis(200);
    let mut last = None;
    loop {
        let attempt = async {
            let client = WorkloadApiClient::connect_to(endpoint.as_str()).await?;
            client.fetch_x509_svid().await
        };
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Ok(svid)) => return Ok(SigningSvid::from_x509_svid(&svid)?),
            Ok(Err(error)) if error.is_invalid_argument() => {
                return Err(FetchSvidError::Refused(error));
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "no SVID yet, retrying");
                last = Some(error);
            }
            Err(_elapsed) => return Err(FetchSvidError::TimedOut { timeout, last }),
        }
        if tokio::time::Instant::now() + backoff >= deadline {
            tokio::time::sleep_until(deadline).await;
            return Err(FetchSvidError::TimedOut { timeout, last });
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn configured_address_wins_over_the_environment() {
        let env = HashMap::from([(
            SPIFFE_ENDPOINT_SOCKET.to_owned(),
            "unix:///from/env.sock".to_owned(),
        )]);
        let endpoint = WorkloadEndpoint::from_config(Some("unix:///configured.sock"), |name| {
            env.get(name).cloned()
        })
        .unwrap();
        assert_eq!(endpoint.as_str(), "unix:///configured.sock");
        let endpoint = WorkloadEndpoint::from_config(None, |name| env.get(name).cloned()).unwrap();
        assert_eq!(endpoint.as_str(), "unix:///from/env.sock");
    }

    #[test]
    fn missing_and_invalid_addresses_are_typed_errors() {
        assert!(matches!(
            WorkloadEndpoint::from_config(None, |_| None),
            Err(EndpointConfigError::NotConfigured)
        ));
        assert!(matches!(
            WorkloadEndpoint::new("http://agent:1234"),
            Err(EndpointConfigError::Invalid { .. })
        ));
        assert!(WorkloadEndpoint::new(TEKTON_DEFAULT_SOCKET).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn fetch_times_out_when_no_agent_listens() {
        let directory = tempfile::tempdir().unwrap();
        let socket = directory.path().join("absent.sock");
        let endpoint = WorkloadEndpoint::new(format!("unix://{}", socket.display())).unwrap();
        let error = fetch_svid_with_retry(&endpoint, Duration::from_secs(3))
            .await
            .unwrap_err();
        assert!(matches!(error, FetchSvidError::TimedOut { .. }));
    }
}
