//! A real RFC 3161 timestamp authority: sigstore's timestamp-authority REST API server with its
//! in-memory signer (a fresh root, intermediate and timestamping leaf per start, the leaf with the
//! critical timeStamping extended key usage), on a free loopback port, in a temporary directory.
//! Its certificate chain is fetched from `/api/v1/timestamp/certchain` once it answers, and written
//! to a PEM file for the configs and flags that take a path.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::process::{PeerFailed, PeerProcess};
use crate::{peers, ports, short_tempdir, wait};

/// How long a start may take before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one readiness probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A running timestamp authority. Dropping it stops it (its signing keys live in its memory and go
/// with it).
#[derive(Debug)]
pub struct TimestampAuthority {
    process: PeerProcess,
    dir: tempfile::TempDir,
    port: u16,
    chain_pem: String,
    http: reqwest::Client,
}

impl TimestampAuthority {
    /// Starts the authority on a free loopback port and waits until it serves its certificate
    /// chain.
    pub async fn start() -> Result<TimestampAuthority, PeerFailed> {
        let dir = short_tempdir("cs-tsa-");
        let log = dir.path().join("timestamp-authority.log");
        let port = ports::free_port();
        let args = [
            "-host".to_owned(),
            "127.0.0.1".to_owned(),
            "-port".to_owned(),
            port.to_string(),
            "-signer".to_owned(),
            "memory".to_owned(),
        ];
        let process = PeerProcess::spawn(
            "timestamp-authority",
            &peers().timestamp_authority.path,
            &args,
            &[],
            &log,
        )
        .await
        .map_err(|error| PeerFailed {
            name: "timestamp-authority".into(),
            message: error.to_string(),
            log_tail: crate::process::log_tail(&log),
        })?;
        let http = plain_http_client();
        let chain_url = format!("http://127.0.0.1:{port}/api/v1/timestamp/certchain");
        let (process_ref, http_ref, chain_url_ref) = (&process, &http, &chain_url);
        let chain = wait::until(
            "the timestamp authority to serve its certificate chain",
            START_TIMEOUT,
            || async move {
                if !process_ref.is_running() {
                    return Some(None);
                }
                let response = http_ref
                    .get(chain_url_ref)
                    .timeout(PROBE_TIMEOUT)
                    .send()
                    .await
                    .ok()?;
                if !response.status().is_success() {
                    return None;
                }
                let text = response.text().await.ok()?;
                text.contains("-----BEGIN CERTIFICATE-----")
                    .then_some(Some(text))
            },
        )
        .await
        .map_err(|error| PeerFailed::from_wait(&process, error))?;
        let Some(chain_pem) = chain else {
            return Err(PeerFailed::new(
                &process,
                "the timestamp authority exited during start-up",
            ));
        };
        std::fs::write(dir.path().join("chain.pem"), &chain_pem)
            .map_err(|error| PeerFailed::new(&process, format!("writing chain.pem: {error}")))?;
        Ok(TimestampAuthority {
            process,
            dir,
            port,
            chain_pem,
            http,
        })
    }

    /// `http://127.0.0.1:<port>/api/v1/timestamp`: where a DER `TimeStampReq` is posted.
    pub fn timestamp_url(&self) -> String {
        format!("http://127.0.0.1:{}/api/v1/timestamp", self.port)
    }

    /// The authority's certificate chain as it served it (PEM: the timestamping leaf, the
    /// intermediate, the root).
    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }

    /// A file holding [`Self::chain_pem`].
    pub fn chain_path(&self) -> PathBuf {
        self.dir.path().join("chain.pem")
    }

    /// Posts a DER `TimeStampReq` as a client would and returns the HTTP status and the body
    /// (a DER `TimeStampResp` when the status is 200).
    pub async fn post_request(&self, request_der: &[u8]) -> Result<(u16, Vec<u8>), reqwest::Error> {
        let response = self
            .http
            .post(self.timestamp_url())
            .header("Content-Type", "application/timestamp-query")
            .body(request_der.to_vec())
            .timeout(Duration::from_secs(10))
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.bytes().await?.to_vec()))
    }

    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// Stops the authority at once, as an outage would (its port then refuses connections).
    pub fn kill(&mut self) {
        self.process.kill();
    }
}

/// reqwest builds a TLS configuration even for plain HTTP, and this workspace's rustls has no
/// process-wide provider: give it ring's.
fn plain_http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
        )
        .build()
        .expect("a plain HTTP client builds")
}
