//! A real Jaeger v2 as the trace store: OTLP/gRPC in, traces in memory, the query API out, every
//! port on loopback. It runs with the same config file a user runs (`tests/peers/jaeger/config.yaml`),
//! its ports moved to free ones through the environment variables that file reads.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::process::{PeerFailed, PeerProcess};
use crate::{peers, ports, short_tempdir, wait};

/// How long a start may take before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one readiness probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The config file a user runs Jaeger with, and so do the tests.
pub fn config_path() -> PathBuf {
    countersign_peers::modules_dir()
        .join("jaeger")
        .join("config.yaml")
}

/// A running Jaeger. Dropping it stops it (its traces are in memory and go with it).
#[derive(Debug)]
pub struct Jaeger {
    process: PeerProcess,
    _dir: tempfile::TempDir,
    otlp_grpc_port: u16,
    query_http_port: u16,
}

impl Jaeger {
    /// Starts Jaeger on free loopback ports and waits until it takes OTLP and answers queries.
    pub async fn start() -> Result<Jaeger, PeerFailed> {
        let dir = short_tempdir("cs-jaeger-");
        let log = dir.path().join("jaeger.log");
        let otlp_grpc_port = ports::free_port();
        let query_http_port = ports::free_port();
        let query_grpc_port = ports::free_port();
        let args = vec!["--config".to_owned(), config_path().display().to_string()];
        let envs = [
            ("JAEGER_OTLP_GRPC_PORT", otlp_grpc_port),
            ("JAEGER_QUERY_HTTP_PORT", query_http_port),
            ("JAEGER_QUERY_GRPC_PORT", query_grpc_port),
        ]
        .map(|(name, port)| (name.to_owned(), port.to_string()));
        let process = PeerProcess::spawn("jaeger", &peers().jaeger.path, &args, &envs, &log)
            .await
            .map_err(|error| PeerFailed {
                name: "jaeger".into(),
                message: error.to_string(),
                log_tail: crate::process::log_tail(&log),
            })?;
        let process_ref = &process;
        let ready = wait::until(
            "jaeger to take OTLP and answer /api/services",
            START_TIMEOUT,
            || async move {
                if !process_ref.is_running() {
                    return Some(false);
                }
                let otlp = TcpStream::connect(("127.0.0.1", otlp_grpc_port))
                    .await
                    .is_ok();
                (otlp && http_status(query_http_port, "/api/services").await == Some(200))
                    .then_some(true)
            },
        )
        .await
        .map_err(|error| PeerFailed::from_wait(&process, error))?;
        if !ready {
            return Err(PeerFailed::new(&process, "jaeger exited during start-up"));
        }
        Ok(Jaeger {
            process,
            _dir: dir,
            otlp_grpc_port,
            query_http_port,
        })
    }

    /// `http://127.0.0.1:<port>`: what a service's `telemetry.otlp_endpoint` is set to.
    pub fn otlp_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.otlp_grpc_port)
    }

    /// `127.0.0.1:<port>` of the query API (`/api/v3/traces`, `/api/traces/{id}`).
    pub fn query_address(&self) -> String {
        format!("127.0.0.1:{}", self.query_http_port)
    }

    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }
}

/// The status code of `GET http://127.0.0.1:<port><path>`, if anything answered in time.
async fn http_status(port: u16, path: &str) -> Option<u16> {
    let probe = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        // `HTTP/1.1 200`
        std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
    };
    tokio::time::timeout(PROBE_TIMEOUT, probe)
        .await
        .ok()
        .flatten()
}
