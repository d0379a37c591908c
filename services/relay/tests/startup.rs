//! The relay's start-up against a real nats-server: the shared `[nats]` connection waits for a
//! server that is down (readiness stays on `nats connected`), and a credentials file that cannot
//! be read stops the relay at once.

use std::time::Duration;

use countersign_relay::{RelayConfig, RunError, run};
use countersign_runtime::config::{Environment, ServiceConfig, parse_config};
use countersign_runtime::health::ReadinessStatus;
use countersign_runtime::nats::NatsConnectError;
use countersign_runtime::service::ServiceError;
use countersign_runtime::{Context, RunOutcome};
use countersign_test_support::nats::NatsServer;
use countersign_test_support::service::RunningService;
use countersign_test_support::wait;

/// How long any one condition may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The relay with `[nats]` body `nats` and one sink that is never called (no event is published),
/// started without waiting for readiness.
async fn start_relay(nats: &str) -> RunningService<RelayConfig> {
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[nats]\n{nats}\n\
         [[sinks]]\nname = \"idle\"\nurl = \"http://127.0.0.1:9/\"\n"
    );
    let config: RelayConfig = parse_config(&text, &Environment::new()).expect("a valid config");
    config.validate().expect("a valid config");
    let grace_period = config.shutdown.grace_period;
    RunningService::start(Context::new("relay", config), grace_period, run).await
}

#[tokio::test]
async fn waits_for_nats_at_start_up_and_is_ready_once_it_is_up() {
    let mut server = NatsServer::start().await.expect("starting nats-server");
    server.stop();
    let relay = start_relay(&format!("url = \"{}\"", server.url())).await;
    let context = &relay.context;

    wait::until_true("readiness waits on NATS", TIMEOUT, || async {
        matches!(
            context.readiness.status(),
            ReadinessStatus::Pending(pending) if pending.iter().any(|latch| latch == "nats connected")
        )
    })
    .await
    .expect("the relay takes its NATS latch");
    assert!(
        !relay.is_finished(),
        "the relay keeps waiting instead of exiting"
    );

    server.restart().await.expect("restarting nats-server");
    let status = tokio::time::timeout(TIMEOUT, context.readiness.wait_ready())
        .await
        .expect("the relay becomes ready once NATS is up");
    assert_eq!(status, ReadinessStatus::Ready);

    let outcome = relay.stop().await;
    assert!(matches!(outcome, RunOutcome::Drained { .. }), "{outcome:?}");
}

#[tokio::test]
async fn an_unreadable_credentials_file_stops_the_relay_at_once() {
    let server = NatsServer::start().await.expect("starting nats-server");
    let missing = tempfile::tempdir()
        .expect("a temporary directory")
        .path()
        .join("relay.creds");
    let relay = start_relay(&format!(
        "url = \"{}\"\ncredentials_file = \"{}\"",
        server.url(),
        missing.display()
    ))
    .await;

    let readiness = relay.context.readiness.clone();
    let outcome = relay.wait_finished().await;
    let RunOutcome::Failed(ServiceError::Returned(error)) = outcome else {
        panic!("expected the relay to fail, got {outcome:?}");
    };
    let error = error
        .downcast_ref::<RunError>()
        .expect("the relay's own error");
    assert!(
        matches!(
            error,
            RunError::Nats(nats @ NatsConnectError::Credentials { .. }) if !nats.is_transient()
        ),
        "{error:?}"
    );
    assert!(!readiness.status().is_ready());
}
