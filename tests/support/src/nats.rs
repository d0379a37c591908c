//! A real nats-server with JetStream, on free loopback ports, with its own store directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::process::{PeerFailed, PeerProcess};
use crate::{peers, ports, short_tempdir, wait};

/// How long a start may take before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(30);

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
        server.write_config();
        server.launch().await?;
        Ok(server)
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

    async fn launch(&mut self) -> Result<(), PeerFailed> {
        let log = self.dir.path().join("nats-server.log");
        let args = vec!["-c".to_owned(), self.config_path().display().to_string()];
        let process =
            PeerProcess::spawn("nats-server", &peers().nats_server.path, &args, &[], &log)
                .await
                .map_err(|error| PeerFailed {
                    name: "nats-server".into(),
                    message: error.to_string(),
                    log_tail: crate::process::log_tail(&log),
                })?;
        let url = self.url();
        let credentials = self.options.probe_credentials.clone();
        let ready = wait::until(
            "nats-server with JetStream to be ready",
            START_TIMEOUT,
            || {
                let url = url.clone();
                let credentials = credentials.clone();
                async move { probe_jetstream(&url, credentials).await.then_some(()) }
            },
        )
        .await;
        if let Err(error) = ready {
            return Err(PeerFailed::from_wait(&process, error));
        }
        self.process = Some(process);
        Ok(())
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
        self.launch().await
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
