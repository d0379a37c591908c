//! The service skeleton as a real process: the example service binary is started, probed over
//! HTTP, sent SIGTERM/SIGINT with `nix`, and its exit code checked.
//!
//! Each test has its own temporary directory and binds its admin server to `127.0.0.1:0`; the
//! bound address is read from the service's JSON startup log line.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use countersign_runtime::http_client::{HttpClientOptions, http_client};
use countersign_test_support::wait;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const EXAMPLE: &str = env!("CARGO_BIN_EXE_countersign-example-service");
const TIMEOUT: Duration = Duration::from_secs(30);

/// A running example service.
struct Service {
    child: Child,
    admin: String,
    log: Arc<Mutex<Vec<String>>>,
    /// The task reading stderr into `log`; it ends at EOF, after the child exits.
    reader: Option<tokio::task::JoinHandle<()>>,
}

impl Service {
    /// Starts the example with `config` (TOML) written to a file in `dir`, and waits for its
    /// startup log line to learn the admin address.
    async fn start(dir: &Path, config: &str) -> Service {
        let path = dir.join("service.toml");
        std::fs::write(&path, config).expect("writing the config");
        let mut child = Command::new(EXAMPLE)
            .env_clear()
            .env("COUNTERSIGN_CONFIG", &path)
            .env("COUNTERSIGN_TELEMETRY__LOG_FORMAT", "json")
            .env("COUNTERSIGN_ADMIN__LISTEN", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting the example service");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (admin_tx, admin_rx) = tokio::sync::oneshot::channel();
        let reader = tokio::spawn({
            let log = Arc::clone(&log);
            async move {
                let mut admin_tx = Some(admin_tx);
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(admin) = startup_admin_address(&line)
                        && let Some(tx) = admin_tx.take()
                    {
                        let _ = tx.send(admin);
                    }
                    log.lock().expect("log lock").push(line);
                }
            }
        });
        let admin = tokio::time::timeout(TIMEOUT, admin_rx)
            .await
            .unwrap_or_else(|_| panic!("no startup line within {TIMEOUT:?}; log: {:?}", log.lock()))
            .unwrap_or_else(|_| {
                panic!("the service exited before starting; log: {:?}", log.lock())
            });
        Service {
            child,
            admin,
            log,
            reader: Some(reader),
        }
    }

    fn signal(&self, signal: Signal) {
        let pid = self.child.id().expect("the service is running");
        signal::kill(Pid::from_raw(pid as i32), signal).expect("sending the signal");
    }

    /// Waits for the service to exit and for its last log lines to be read.
    async fn exit_status(&mut self) -> ExitStatus {
        let status = tokio::time::timeout(TIMEOUT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the service did not exit; log: {:?}", self.log()))
            .expect("waiting for the service");
        if let Some(reader) = self.reader.take() {
            tokio::time::timeout(TIMEOUT, reader)
                .await
                .unwrap_or_else(|_| panic!("stderr was not closed; log: {:?}", self.log()))
                .expect("the log reader");
        }
        status
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().expect("log lock").clone()
    }

    fn logged(&self, message: &str) -> bool {
        self.log()
            .iter()
            .any(|line| log_message(line).as_deref() == Some(message))
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }
}

fn startup_admin_address(line: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    if value.get("message")?.as_str()? != "starting" {
        return None;
    }
    Some(value.get("admin")?.as_str()?.to_owned())
}

fn log_message(line: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    Some(value.get("message")?.as_str()?.to_owned())
}

async fn get(client: &reqwest::Client, url: &str) -> Option<(u16, String)> {
    let response = client.get(url).send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

/// Waits until `GET url` answers `status` with a body containing `needle`.
async fn wait_for_response(client: &reqwest::Client, url: &str, status: u16, needle: &str) {
    wait::until_true(&format!("{url} to answer {status} with {needle:?}"), TIMEOUT, || async {
        matches!(get(client, url).await, Some((code, body)) if code == status && body.contains(needle))
    })
    .await
    .expect("the expected response");
}

fn client() -> reqwest::Client {
    http_client(HttpClientOptions::new().timeout(Duration::from_secs(5))).expect("an HTTP client")
}

fn touch(path: &Path) {
    std::fs::write(path, b"").expect("creating the file");
}

fn file_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("ready"), dir.join("finish"))
}

#[tokio::test]
async fn sigterm_drains_in_flight_work_and_exits_zero_with_readyz_flipping() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (ready_file, finish_file) = file_paths(dir.path());
    let config = format!(
        "[example]\nready_file = {:?}\nfinish_file = {:?}\n[shutdown]\ngrace_period = \"20s\"\n",
        ready_file, finish_file
    );
    let mut service = Service::start(dir.path(), &config).await;
    let client = client();

    // Not ready until the latch is released, and `/readyz` says which latch.
    wait_for_response(&client, &service.url("/readyz"), 503, "example ready").await;
    assert_eq!(
        get(&client, &service.url("/livez"))
            .await
            .map(|(code, _)| code),
        Some(200)
    );
    touch(&ready_file);
    wait_for_response(&client, &service.url("/readyz"), 200, "ready").await;
    wait_for_response(
        &client,
        &service.url("/metrics"),
        200,
        "countersign_example_work_finished_total 0",
    )
    .await;

    // SIGTERM: unready at once, still alive while the work in flight finishes.
    service.signal(Signal::SIGTERM);
    wait_for_response(&client, &service.url("/readyz"), 503, "draining").await;
    assert_eq!(
        get(&client, &service.url("/livez"))
            .await
            .map(|(code, _)| code),
        Some(200)
    );
    assert!(
        service
            .child
            .try_wait()
            .expect("checking the child")
            .is_none(),
        "exited before its work finished"
    );
    touch(&finish_file);

    let status = service.exit_status().await;
    assert_eq!(status.code(), Some(0), "log: {:?}", service.log());
    assert!(
        service.logged("work in flight finished"),
        "log: {:?}",
        service.log()
    );
    assert!(
        service.logged("drain completed; exiting"),
        "log: {:?}",
        service.log()
    );
}

#[tokio::test]
async fn sigint_drains_too() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut service = Service::start(dir.path(), "").await;
    wait_for_response(&client(), &service.url("/readyz"), 200, "ready").await;
    service.signal(Signal::SIGINT);
    assert_eq!(
        service.exit_status().await.code(),
        Some(0),
        "log: {:?}",
        service.log()
    );
    assert!(service.logged("work in flight finished"));
}

#[tokio::test]
async fn work_that_outlives_the_grace_period_is_reported_and_exits_75() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (_, finish_file) = file_paths(dir.path());
    // The finish file is never created: the in-flight work cannot finish.
    let config =
        format!("[example]\nfinish_file = {finish_file:?}\n[shutdown]\ngrace_period = \"300ms\"\n");
    let mut service = Service::start(dir.path(), &config).await;
    wait_for_response(&client(), &service.url("/readyz"), 200, "ready").await;
    service.signal(Signal::SIGTERM);
    let status = service.exit_status().await;
    assert_eq!(
        status.code(),
        Some(i32::from(
            countersign_runtime::service::exit_code::DRAIN_TIMED_OUT
        )),
        "log: {:?}",
        service.log()
    );
    assert!(
        service.logged("drain timed out; abandoning in-flight work"),
        "log: {:?}",
        service.log()
    );
    assert!(!service.logged("work in flight finished"));
}

#[tokio::test]
async fn an_unreachable_otlp_collector_does_not_block_startup_or_shutdown() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    // A port that was free a moment ago: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("binding")
        .local_addr()
        .expect("an address");
    let config = format!("[telemetry]\notlp_endpoint = \"http://{closed}\"\n");
    let mut service = Service::start(dir.path(), &config).await;
    wait_for_response(&client(), &service.url("/readyz"), 200, "ready").await;
    service.signal(Signal::SIGTERM);
    assert_eq!(
        service.exit_status().await.code(),
        Some(0),
        "log: {:?}",
        service.log()
    );
}

/// Runs the example to completion with `config` and extra variables; returns its code and stderr.
async fn run_to_exit(dir: &Path, config: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    run_to_exit_with_args(dir, config, env, &[]).await
}

/// Like [`run_to_exit`], with extra command-line arguments.
async fn run_to_exit_with_args(
    dir: &Path,
    config: &str,
    env: &[(&str, &str)],
    args: &[&str],
) -> (Option<i32>, String) {
    let path = dir.join("service.toml");
    std::fs::write(&path, config).expect("writing the config");
    let output = tokio::time::timeout(
        TIMEOUT,
        Command::new(EXAMPLE)
            .env_clear()
            .arg("--config")
            .arg(&path)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("the service exits")
    .expect("running the example service");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn invalid_config_exits_64_naming_the_key_before_binding() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    // Hold the admin port: had the service tried to bind it, it would exit 69, not 64.
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("binding");
    let address = held.local_addr().expect("an address");
    let config = format!("[admin]\nlisten = \"{address}\"\n[example]\nready_fil = \"/tmp/x\"\n");
    let (code, stderr) = run_to_exit(dir.path(), &config, &[]).await;
    assert_eq!(
        code,
        Some(i32::from(countersign_runtime::service::exit_code::USAGE)),
        "{stderr}"
    );
    assert!(stderr.contains("example.ready_fil"), "{stderr}");
    assert!(
        !stderr.contains("starting"),
        "nothing may start on a bad config: {stderr}"
    );
}

#[tokio::test]
async fn invalid_environment_value_exits_64_naming_the_key_and_variable() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (code, stderr) = run_to_exit(
        dir.path(),
        "",
        &[("COUNTERSIGN_SHUTDOWN__GRACE_PERIOD", "soonish")],
    )
    .await;
    assert_eq!(
        code,
        Some(i32::from(countersign_runtime::service::exit_code::USAGE)),
        "{stderr}"
    );
    assert!(stderr.contains("shutdown.grace_period"), "{stderr}");
    assert!(
        stderr.contains("COUNTERSIGN_SHUTDOWN__GRACE_PERIOD"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_taken_admin_port_exits_69() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("binding");
    let address = held.local_addr().expect("an address");
    let (code, stderr) = run_to_exit(
        dir.path(),
        &format!("[admin]\nlisten = \"{address}\"\n"),
        &[],
    )
    .await;
    assert_eq!(
        code,
        Some(i32::from(
            countersign_runtime::service::exit_code::UNAVAILABLE
        )),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_invalid_nats_url_fails_check_config_with_64_naming_the_key() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for (config, env) in [
        ("[nats]\nurl = \"not a url\"\n", vec![]),
        ("", vec![("COUNTERSIGN_NATS__URL", "http://nats:4222")]),
        ("[nats]\nurl = \"nats://a:4222,nats://\"\n", vec![]),
    ] {
        let (code, stderr) =
            run_to_exit_with_args(dir.path(), config, &env, &["--check-config"]).await;
        assert_eq!(
            code,
            Some(i32::from(countersign_runtime::service::exit_code::USAGE)),
            "{config} {env:?}: {stderr}"
        );
        assert!(stderr.contains("nats.url"), "{stderr}");
    }
    let (code, stdout_or_err) = run_to_exit_with_args(
        dir.path(),
        "[nats]\nurl = \"nats://a:4222, tls://b:4443\"\n",
        &[],
        &["--check-config"],
    )
    .await;
    assert_eq!(code, Some(0), "a list of servers is valid: {stdout_or_err}");
}

#[tokio::test]
async fn a_config_path_to_an_endless_file_fails_with_64_naming_the_file() {
    let output = tokio::time::timeout(
        TIMEOUT,
        Command::new(EXAMPLE)
            .env_clear()
            .args(["--check-config", "--config", "/dev/zero"])
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("the service exits")
    .expect("running the example service");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(i32::from(countersign_runtime::service::exit_code::USAGE)),
        "{stderr}"
    );
    assert!(stderr.contains("/dev/zero"), "{stderr}");
}
