//! A service run in-process with [`run_service`]: a test-built [`Context`], an admin listener bound
//! to `127.0.0.1:0`, and a channel instead of a signal (mini-redis style).

use std::net::SocketAddr;
use std::time::Duration;

use countersign_runtime::config::{
    AdminConfig, ConfigError, Environment, ServiceConfig, ShutdownConfig, TelemetryConfig,
    parse_config,
};
use countersign_runtime::http_client::{HttpClientOptions, http_client};
use countersign_runtime::service::{ServiceError, exit_code};
use countersign_runtime::{Context, RunOutcome, run_service};
use countersign_test_support::wait;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    admin: AdminConfig,
    #[serde(default)]
    telemetry: TelemetryConfig,
    #[serde(default)]
    shutdown: ShutdownConfig,
}

impl ServiceConfig for Config {
    fn admin(&self) -> &AdminConfig {
        &self.admin
    }
    fn telemetry(&self) -> &TelemetryConfig {
        &self.telemetry
    }
    fn shutdown(&self) -> &ShutdownConfig {
        &self.shutdown
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the dependency is gone")]
struct DependencyGone;

fn context() -> Context<Config> {
    let config: Config = parse_config("[shutdown]\ngrace_period = \"10s\"\n", &Environment::new())
        .unwrap_or_else(|error: ConfigError| panic!("a valid config: {error}"));
    Context::new("in-process", config)
}

async fn bind() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a free port");
    let address = listener.local_addr().expect("the bound address");
    (listener, address)
}

async fn readyz(client: &reqwest::Client, admin: SocketAddr) -> Option<(u16, String)> {
    let response = client
        .get(format!("http://{admin}/readyz"))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

#[tokio::test]
async fn readyz_follows_latches_and_shutdown_drains_in_flight_work() {
    let ctx = context();
    let grace_period = ctx.config.shutdown.grace_period;
    let (listener, admin) = bind().await;
    let (connected_tx, connected_rx) = oneshot::channel::<()>();
    let (finish_tx, finish_rx) = oneshot::channel::<()>();
    let (done_tx, done_rx) = oneshot::channel::<()>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();

    let service = move |ctx: Context<Config>| async move {
        let connected = ctx.readiness.latch("nats connected");
        ctx.shutdown.spawn(move |token| async move {
            token.cancelled().await;
            // The message in flight is finished (and would be acked) after shutdown starts.
            let _ = finish_rx.await;
            let _ = done_tx.send(());
        });
        let _ = connected_rx.await;
        connected.release();
        Ok::<(), DependencyGone>(())
    };
    let running = tokio::spawn(run_service(
        ctx,
        listener,
        grace_period,
        async {
            let _ = stop_rx.await;
        },
        service,
    ));
    let client =
        http_client(HttpClientOptions::new().timeout(Duration::from_secs(5))).expect("a client");

    let pending = wait::until("readyz to answer", TIMEOUT, || readyz(&client, admin))
        .await
        .expect("an answer");
    assert_eq!(pending.0, 503);
    assert!(pending.1.contains("nats connected"), "{}", pending.1);

    connected_tx.send(()).expect("the service is waiting");
    wait::until_true("readyz to be 200", TIMEOUT, || async {
        matches!(readyz(&client, admin).await, Some((200, _)))
    })
    .await
    .expect("ready");

    stop_tx.send(()).expect("run_service is waiting");
    wait::until_true("readyz to be 503 draining", TIMEOUT, || async {
        matches!(readyz(&client, admin).await, Some((503, body)) if body.contains("draining"))
    })
    .await
    .expect("draining");
    assert!(
        !running.is_finished(),
        "the drain waits for the work in flight"
    );

    finish_tx.send(()).expect("the task is waiting");
    let outcome = tokio::time::timeout(TIMEOUT, running)
        .await
        .expect("finishes")
        .expect("no panic");
    assert!(matches!(outcome, RunOutcome::Drained { .. }), "{outcome:?}");
    assert_eq!(outcome.exit_code(), exit_code::OK);
    assert!(done_rx.await.is_ok(), "the in-flight work completed");
    // The admin server is gone once run_service returns.
    assert!(readyz(&client, admin).await.is_none());
}

#[tokio::test]
async fn a_failing_service_ends_in_failed_after_draining_its_tasks() {
    let ctx = context();
    let (listener, _) = bind().await;
    let (task_done_tx, task_done_rx) = oneshot::channel::<()>();
    let service = move |ctx: Context<Config>| async move {
        ctx.shutdown.spawn(move |token| async move {
            token.cancelled().await;
            let _ = task_done_tx.send(());
        });
        Err::<(), _>(DependencyGone)
    };
    let outcome = tokio::time::timeout(
        TIMEOUT,
        run_service(
            ctx,
            listener,
            Duration::from_secs(10),
            std::future::pending(),
            service,
        ),
    )
    .await
    .expect("the failure ends the run");
    match &outcome {
        RunOutcome::Failed(ServiceError::Returned(error)) => assert!(error.is::<DependencyGone>()),
        other => panic!("expected a returned error, got {other:?}"),
    }
    assert_eq!(outcome.exit_code(), exit_code::SOFTWARE);
    assert!(
        task_done_rx.await.is_ok(),
        "the tasks were cancelled and drained"
    );
}

#[tokio::test]
async fn a_panicking_service_ends_in_failed() {
    let ctx = context();
    let (listener, _) = bind().await;
    let service = |_ctx: Context<Config>| async move {
        let nothing: Option<()> = None;
        if nothing.is_none() {
            panic!("the service broke");
        }
        Ok::<(), DependencyGone>(())
    };
    let outcome = run_service(
        ctx,
        listener,
        Duration::from_secs(10),
        std::future::pending(),
        service,
    )
    .await;
    assert!(
        matches!(outcome, RunOutcome::Failed(ServiceError::Panicked(_))),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn the_service_can_start_shutdown_itself() {
    let ctx = context();
    let (listener, _) = bind().await;
    let service = |ctx: Context<Config>| async move {
        // For example: a fatal condition seen by a worker.
        ctx.shutdown.cancel();
        Ok::<(), DependencyGone>(())
    };
    let outcome = tokio::time::timeout(
        TIMEOUT,
        run_service(
            ctx,
            listener,
            Duration::from_secs(10),
            std::future::pending(),
            service,
        ),
    )
    .await
    .expect("the run ends");
    assert!(matches!(outcome, RunOutcome::Drained { .. }), "{outcome:?}");
}

#[tokio::test(start_paused = true)]
async fn a_task_that_ignores_cancellation_times_out_the_drain() {
    let ctx = context();
    let (listener, _) = bind().await;
    let service = |ctx: Context<Config>| async move {
        ctx.shutdown.spawn(|_token| async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        Ok::<(), DependencyGone>(())
    };
    let outcome = run_service(
        ctx,
        listener,
        Duration::from_secs(5),
        std::future::ready(()),
        service,
    )
    .await;
    match outcome {
        RunOutcome::DrainTimedOut {
            grace_period,
            still_running,
        } => {
            assert_eq!(grace_period, Duration::from_secs(5));
            assert_eq!(still_running, 1);
        }
        other => panic!("expected a timed-out drain, got {other:?}"),
    }
}
