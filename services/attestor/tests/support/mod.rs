//! Test support of the attestor's integration tests (its own, and the `countersign` command run
//! against it): a SPIRE that serves this process the attestor's identity and the attestor run
//! in-process (the shared `RunningService`). What is not about the attestor itself comes from
//! `countersign-test-support` and is re-exported here: the bus as the watcher and subscribers
//! see it (`TestBus`, `AttestorBus`), TaskRun "pods" that sign with the real `countersign-signer`
//! binary as workloads of the real agent, and the watcher's events built by hand
//! (`countersign_test_support::taskrun`).

// Shared by the test files of one test crate, which has no public API: `pub` here is for
// them, so `unreachable_pub` does not apply.
#![allow(unreachable_pub)]
#![allow(dead_code)]

use std::time::Duration;

use countersign_attestor::{AttestorConfig, run};
use countersign_runtime::Context;
use countersign_runtime::config::{Environment, ServiceConfig, parse_config};
pub use countersign_test_support::bus::{TIMEOUT, TestBus};
use countersign_test_support::service::RunningService;
use countersign_test_support::spire::{Spire, SpireOptions};
pub use countersign_test_support::taskrun::*;
// Not every test file runs the `countersign` binary.
#[allow(unused_imports)]
pub use countersign_test_support::workspace::cli_binary;

// === peers ===

/// A SPIRE whose agent serves this test process the attestor's identity.
pub async fn spire_with_attestor(options: SpireOptions) -> Spire {
    let spire = Spire::start(options).await.expect("SPIRE starts");
    register_attestor(&spire).await;
    spire
}

/// Registers the attestor's identity for this test process.
pub async fn register_attestor(spire: &Spire) {
    let id = format!("spiffe://{}/countersign/attestor", spire.trust_domain());
    spire
        .register_test_process(&id, false)
        .await
        .expect("registering the attestor");
}

// === the attestor, in-process ===

/// The attestor's configuration for a test: this NATS, this agent, quick retries.
pub fn attestor_config(nats_url: &str, agent_endpoint: &str, extra: &str) -> AttestorConfig {
    let text = attestor_config_text(nats_url, agent_endpoint, extra);
    let config: AttestorConfig =
        parse_config(&text, &Environment::new()).expect("a valid attestor config");
    config.validate().expect("a valid attestor config");
    config
}

/// An attestor running in-process on the runtime's skeleton, on a free admin port.
pub type RunningAttestor = RunningService<AttestorConfig>;

/// Starts an attestor (not waiting for readiness).
pub async fn start_attestor(config: AttestorConfig) -> RunningAttestor {
    RunningService::start(
        Context::new("attestor", config),
        Duration::from_secs(10),
        run,
    )
    .await
}
