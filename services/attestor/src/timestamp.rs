//! RFC 3161 timestamps for attestations, when `[timestamp]` names a timestamp authority (TSA).
//!
//! After the attestation is signed and before it is stored, [`Timestamper::stamp`] posts a
//! `TimeStampReq` over the envelope's signature bytes (what a Sigstore bundle's timestamp
//! covers) to the TSA, verifies the response with the configured chain
//! (`countersign_identity::timestamp`: status, imprint, nonce, signer, chain, `genTime`) and adds
//! the response (DER `TimeStampResp`, as a Sigstore bundle's `signedTimestamp` holds it) to the
//! attestation. An attestation is never stored or published without its
//! timestamp when a TSA is configured: every failure here (the TSA down or slow, an HTTP error, a
//! response that does not verify) is transient, so the `finished` event is nak'ed and retried.
//!
//! Each exported VSA is a signature of its own, so it gets its own token
//! ([`Timestamper::token`]) before its bundle is stored: admission policies that read VSAs from
//! a registry with no transparency log (sigstore policy-controller with `signatureFormat:
//! bundle`) require a signed timestamp.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;
use countersign_events::AttestationEvent;
use countersign_identity::timestamp::{
    MAX_TIMESTAMP_RESPONSE_BYTES, TIMESTAMP_QUERY_MEDIA_TYPE, TimestampAuthorityChain,
    TimestampChainError, TimestampError, TimestampRequest, TimestampRequestError,
    VerifiedTimestamp, verify_response,
};
use countersign_runtime::bounded_read::{ReadFileError, read_to_string_bounded};
use countersign_runtime::http_client::{
    BodyError, HttpClientError, HttpClientOptions, http_client, read_body_bounded,
};
use countersign_verdict::attestation::{FromEventError, timestamped_bytes};
use url::Url;

use crate::config::TimestampConfig;
use crate::metrics::AttestorMetrics;

/// The largest TSA chain file read (a chain is a few KiB of PEM).
const MAX_CHAIN_FILE_BYTES: u64 = 1024 * 1024;

/// Why the timestamp client could not be set up (at startup: the service does not start).
#[derive(Debug, thiserror::Error)]
pub enum TimestamperSetupError {
    /// The chain file could not be read.
    #[error("reading the timestamp authority chain {path}")]
    ReadChain {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: ReadFileError,
    },
    /// The chain file is not a usable chain.
    #[error("the timestamp authority chain {path}")]
    Chain {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: TimestampChainError,
    },
    /// The HTTP client could not be built.
    #[error("building the timestamp authority's HTTP client")]
    Client(#[from] HttpClientError),
}

/// Why an attestation could not be timestamped. Every variant is transient.
#[derive(Debug, thiserror::Error)]
pub enum TimestampFailure {
    /// The attestation's signature could not be read.
    #[error("reading the attestation's signature")]
    Signature(#[from] FromEventError),
    /// The attestation has no signature to timestamp.
    #[error("the attestation has no signature to timestamp")]
    Unsigned,
    /// The request could not be built.
    #[error(transparent)]
    Request(#[from] TimestampRequestError),
    /// The TSA did not answer in time, or the connection failed.
    #[error("the timestamp authority did not answer")]
    Unreachable(#[source] reqwest::Error),
    /// The TSA answered with an HTTP error.
    #[error("the timestamp authority answered HTTP {status}")]
    Status {
        /// The HTTP status.
        status: u16,
    },
    /// The response is larger than a response may be.
    #[error("the timestamp authority's response is over {MAX_TIMESTAMP_RESPONSE_BYTES} bytes")]
    TooLarge,
    /// The response does not verify with the configured chain.
    #[error("the timestamp authority's response does not verify")]
    Refused(#[from] TimestampError),
}

impl TimestampFailure {
    /// The `reason` label of the failure metric.
    pub fn reason(&self) -> &'static str {
        match self {
            TimestampFailure::Signature(_) | TimestampFailure::Unsigned => "unsigned",
            TimestampFailure::Request(_) => "request",
            TimestampFailure::Unreachable(_) => "unreachable",
            TimestampFailure::Status { .. } => "http_status",
            TimestampFailure::TooLarge => "too_large",
            TimestampFailure::Refused(_) => "refused",
        }
    }
}

/// The TSA client: its URL, its chain, an HTTP client with the configured timeout.
#[derive(Debug, Clone)]
pub struct Timestamper {
    url: Url,
    chain: TimestampAuthorityChain,
    http: reqwest::Client,
    metrics: AttestorMetrics,
}

impl Timestamper {
    /// The client `config` describes, or `None` when no TSA is configured.
    pub fn from_config(
        config: &TimestampConfig,
        metrics: AttestorMetrics,
    ) -> Result<Option<Timestamper>, TimestamperSetupError> {
        let (Some(url), Some(path)) = (&config.url, &config.certificate_chain) else {
            return Ok(None);
        };
        let pem = read_to_string_bounded(path, MAX_CHAIN_FILE_BYTES).map_err(|source| {
            TimestamperSetupError::ReadChain {
                path: path.clone(),
                source,
            }
        })?;
        let chain = TimestampAuthorityChain::from_pem(&pem).map_err(|source| {
            TimestamperSetupError::Chain {
                path: path.clone(),
                source,
            }
        })?;
        let http = http_client(
            HttpClientOptions::new()
                .timeout(config.timeout)
                .connect_timeout(config.timeout.min(Duration::from_secs(10))),
        )?;
        tracing::info!(
            url = %url,
            roots_sha256 = %chain.roots_digest(),
            "attestations are timestamped by this timestamp authority"
        );
        Ok(Some(Timestamper {
            url: url.clone(),
            chain,
            http,
            metrics,
        }))
    }

    /// Timestamps the attestation of `event`: requests, verifies, and adds the token.
    pub async fn stamp(&self, event: &mut AttestationEvent) -> Result<(), TimestampFailure> {
        let signature = match timestamped_bytes(event.attestation()) {
            Ok(Some(signature)) => signature,
            Ok(None) => return Err(self.failed(TimestampFailure::Unsigned)),
            Err(error) => return Err(self.failed(error.into())),
        };
        let token = self.token(&signature).await?;
        event
            .attestation_mut()
            .rfc3161_timestamps
            .push(base64::engine::general_purpose::STANDARD.encode(token));
        Ok(())
    }

    /// A verified RFC 3161 timestamp token over `signature` (a DSSE signature's bytes, as
    /// Sigstore timestamps them): the DER of the authority's response. The attestation's own
    /// signature is stamped by [`Timestamper::stamp`]; each VSA's by this.
    pub async fn token(&self, signature: &[u8]) -> Result<Vec<u8>, TimestampFailure> {
        let started = Instant::now();
        match self.request(signature).await {
            Ok(verified) => {
                self.metrics.timestamp_obtained(started.elapsed());
                tracing::debug!(gen_time = %verified.gen_time(), "signature timestamped");
                Ok(verified.into_response_der())
            }
            Err(failure) => Err(self.failed(failure)),
        }
    }

    /// Counts and logs `failure`, and returns it.
    fn failed(&self, failure: TimestampFailure) -> TimestampFailure {
        self.metrics.timestamp_failed(failure.reason());
        tracing::warn!(
            url = %self.url,
            reason = failure.reason(),
            error = %countersign_runtime::error_chain(&failure),
            "no timestamp from the timestamp authority; the TaskRun is retried"
        );
        failure
    }

    async fn request(&self, signature: &[u8]) -> Result<VerifiedTimestamp, TimestampFailure> {
        let request = TimestampRequest::new(signature)?;
        let response = self
            .http
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, TIMESTAMP_QUERY_MEDIA_TYPE)
            .body(request.der().to_vec())
            .send()
            .await
            .map_err(TimestampFailure::Unreachable)?;
        if !response.status().is_success() {
            return Err(TimestampFailure::Status {
                status: response.status().as_u16(),
            });
        }
        let body = read_body_bounded(response, MAX_TIMESTAMP_RESPONSE_BYTES)
            .await
            .map_err(|error| match error {
                BodyError::TooLarge { .. } => TimestampFailure::TooLarge,
                BodyError::Read(error) => TimestampFailure::Unreachable(error),
            })?;
        Ok(verify_response(&body, &request, &self.chain)?)
    }
}
