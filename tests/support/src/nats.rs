//! A real nats-server with JetStream, on free loopback ports, with its own store directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::process::{PeerFailed, PeerProcess};
use crate::{peers, ports, short_tempdir, wait};

/// How long a start may take before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How many times a first start is tried on new ports when the chosen ones were taken.
const START_ATTEMPTS: u32 = 3;

/// Why one launch failed.
#[derive(Debug)]
enum Launch {
    /// Another process bound the port first; worth retrying on other ports.
    PortTaken(PeerFailed),
    Failed(PeerFailed),
}

impl Launch {
    fn into_failure(self) -> PeerFailed {
        match self {
            Launch::PortTaken(failure) | Launch::Failed(failure) => failure,
        }
    }
}

/// Extra configuration for a server.
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// Text appended to the generated config file (accounts, authorization, limits...).
    pub extra_config: String,
    /// Whether the readiness probe may connect anonymously (false when `extra_config` requires
    /// credentials; then `probe_credentials` is used).
    pub probe_credentials: Option<(String, String)>,
}

/// A running nats-server. Dropping it stops the server and removes its store.
#[derive(Debug)]
pub struct NatsServer {
    process: Option<PeerProcess>,
    dir: tempfile::TempDir,
    port: u16,
    monitor_port: u16,
    options: NatsOptions,
}

impl NatsServer {
    /// Starts a server with JetStream.
    pub async fn start() -> Result<NatsServer, PeerFailed> {
        NatsServer::start_with(NatsOptions::default()).await
    }

    /// Starts a server with JetStream and extra configuration.
    pub async fn start_with(options: NatsOptions) -> Result<NatsServer, PeerFailed> {
        let dir = short_tempdir("cs-nats-");
        let mut server = NatsServer {
            process: None,
            dir,
            port: ports::free_port(),
            monitor_port: ports::free_port(),
            options,
        };
        // A port that was free when picked can be taken by another process before nats-server binds
        // it; then the server exits at once and we try again on new ports.
        let mut attempt = 1;
        loop {
            server.write_config();
            match server.launch().await {
                Ok(()) => return Ok(server),
                Err(Launch::PortTaken(failure)) if attempt < START_ATTEMPTS => {
                    tracing::warn!(attempt, error = %failure, "nats-server port taken; retrying on new ports");
                    attempt += 1;
                    server.port = ports::free_port();
                    server.monitor_port = ports::free_port();
                }
                Err(Launch::PortTaken(failure) | Launch::Failed(failure)) => return Err(failure),
            }
        }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("nats.conf")
    }

    /// The JetStream store directory.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn write_config(&self) {
        let config = format!(
            "listen: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor}\nserver_name: countersign-test\n\
             jetstream {{\n  store_dir: \"{store}\"\n  max_memory_store: 256MB\n  max_file_store: 8GB\n}}\n\
             max_payload: 1MB\n{extra}\n",
            port = self.port,
            monitor = self.monitor_port,
            store = self.store_dir().display(),
            extra = self.options.extra_config,
        );
        std::fs::write(self.config_path(), config).expect("writing nats.conf");
    }

    async fn launch(&mut self) -> Result<(), Launch> {
        let log = self.dir.path().join("nats-server.log");
        let args = vec!["-c".to_owned(), self.config_path().display().to_string()];
        let process =
            PeerProcess::spawn("nats-server", &peers().nats_server.path, &args, &[], &log)
                .await
                .map_err(|error| {
                    Launch::Failed(PeerFailed {
                        name: "nats-server".into(),
                        message: error.to_string(),
                        log_tail: crate::process::log_tail(&log),
                    })
                })?;
        let url = self.url();
        let credentials = self.options.probe_credentials.clone();
        let process_ref = &process;
        // Ready, or exited (no point waiting out the timeout for a server that is gone).
        let ready = wait::until(
            "nats-server with JetStream to be ready",
            START_TIMEOUT,
            || {
                let url = url.clone();
                let credentials = credentials.clone();
                async move {
                    if !process_ref.is_running() {
                        return Some(false);
                    }
                    probe_jetstream(&url, credentials).await.then_some(true)
                }
            },
        )
        .await;
        match ready {
            Ok(true) => {
                self.process = Some(process);
                Ok(())
            }
            Ok(false) => {
                let failure = PeerFailed::new(&process, "nats-server exited during start-up");
                if failure.log_tail.contains("address already in use") {
                    Err(Launch::PortTaken(failure))
                } else {
                    Err(Launch::Failed(failure))
                }
            }
            Err(error) => Err(Launch::Failed(PeerFailed::from_wait(&process, error))),
        }
    }

    /// `nats://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`, the monitoring endpoint.
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    /// A new client connection.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("connecting to the test nats-server")
    }

    /// A JetStream context on a new connection.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.client().await)
    }

    /// Stops the server, keeping its store, as an outage would.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop(Duration::from_secs(10));
        }
    }

    /// Starts the server again on the same port with the same store.
    pub async fn restart(&mut self) -> Result<(), PeerFailed> {
        self.stop();
        self.launch().await.map_err(Launch::into_failure)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Connects and asks for the JetStream account info: true once JetStream answers.
async fn probe_jetstream(url: &str, credentials: Option<(String, String)>) -> bool {
    let mut options = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_millis(500))
        .max_reconnects(Some(0));
    if let Some((user, password)) = credentials {
        options = options.user_and_password(user, password);
    }
    let Ok(client) = options.connect(url).await else {
        return false;
    };
    let context = async_nats::jetstream::new(client);
    tokio::time::timeout(Duration::from_secs(2), context.query_account())
        .await
        .is_ok_and(|answer| answer.is_ok())
}
