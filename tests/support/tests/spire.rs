//! The SPIRE harness against the real spire-server and spire-agent: the agent serves this test
//! process the SVID registered for it, the server survives a restart with its data, a killed
//! agent resumes on its data, and two
//! independent SPIREs (two trust domains) run side by side.

use std::time::Duration;

use countersign_test_support::spire::{RegisterError, Spire, SpireOptions};

const SVID_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_registered_test_process_gets_its_svid_from_the_real_agent() {
    let spire = Spire::start(SpireOptions::default())
        .await
        .expect("SPIRE starts");
    assert_eq!(spire.trust_domain(), "example.org");
    assert_eq!(
        spire.node_alias_id(),
        "spiffe://example.org/tekton-node/node-1"
    );
    assert!(spire.agent_endpoint().starts_with("unix:///tmp/"));
    assert!(
        !spire.bundle_der().is_empty(),
        "the server's bundle has its CA"
    );

    let spiffe_id = "spiffe://example.org/harness/test-process";
    let entry_id = spire
        .register_test_process(spiffe_id, false)
        .await
        .expect("registered");
    assert!(!entry_id.is_empty());

    let svid = spire
        .wait_for_svid(spiffe_id, SVID_TIMEOUT)
        .await
        .expect("the agent serves the SVID");
    assert_eq!(svid.spiffe_id().to_string(), spiffe_id);
    // The SVID is signed by the server's CA: its chain ends below a certificate of the bundle.
    assert!(!svid.cert_chain().is_empty());

    // Registering the same entry again is refused by the real server as a similar entry.
    let again = spire.register_test_process(spiffe_id, false).await;
    assert!(
        matches!(again, Err(RegisterError::Rejected { code: 6, .. })),
        "{again:?}"
    );
}

#[tokio::test]
async fn the_server_restarts_on_the_same_port_with_its_data() {
    let mut spire = Spire::start(SpireOptions {
        node_name: "node-restart".into(),
        ..SpireOptions::default()
    })
    .await
    .expect("SPIRE starts");
    let before = "spiffe://example.org/harness/before-outage";
    spire
        .register_test_process(before, false)
        .await
        .expect("registered");
    let port = spire.server_port();

    spire.stop_server();
    assert!(!spire.is_server_running());
    let during = spire
        .register_test_process("spiffe://example.org/harness/during-outage", false)
        .await;
    assert!(
        matches!(during, Err(RegisterError::Command(_))),
        "{during:?}"
    );

    spire.start_server().await.expect("the server starts again");
    assert!(spire.is_server_running());
    assert_eq!(spire.server_port(), port);
    // The datastore survived: the entry made before the outage still exists.
    let again = spire.register_test_process(before, false).await;
    assert!(
        matches!(again, Err(RegisterError::Rejected { code: 6, .. })),
        "{again:?}"
    );

    // The agent reconnects and serves an entry made after the restart.
    let after = "spiffe://example.org/harness/after-outage";
    spire
        .register_test_process(after, false)
        .await
        .expect("registered after the restart");
    let svid = spire
        .wait_for_svid(after, Duration::from_secs(120))
        .await
        .expect("served after the restart");
    assert_eq!(svid.spiffe_id().to_string(), after);
}

#[tokio::test]
async fn a_killed_agent_resumes_on_its_data_and_serves_again() {
    let mut spire = Spire::start(SpireOptions {
        node_name: "node-agent-restart".into(),
        ..SpireOptions::default()
    })
    .await
    .expect("SPIRE starts");
    let before = "spiffe://example.org/harness/before-agent-crash";
    spire
        .register_test_process(before, false)
        .await
        .expect("registered");
    spire
        .wait_for_svid(before, SVID_TIMEOUT)
        .await
        .expect("served before the crash");

    spire
        .restart_agent()
        .await
        .expect("the agent starts again without a join token");
    assert!(spire.is_agent_running());

    // The same node: what was registered before and after the crash is served.
    let after = "spiffe://example.org/harness/after-agent-crash";
    spire
        .register_test_process(after, false)
        .await
        .expect("registered after the crash");
    for id in [before, after] {
        let svid = spire
            .wait_for_svid(id, SVID_TIMEOUT)
            .await
            .expect("served after the crash");
        assert_eq!(svid.spiffe_id().to_string(), id);
    }
}

#[tokio::test]
async fn two_independent_spires_serve_their_own_trust_domains() {
    let (first, second) = tokio::join!(
        Spire::start(SpireOptions::default()),
        Spire::start(SpireOptions {
            trust_domain: "other.org".into(),
            node_name: "node-2".into(),
            ..SpireOptions::default()
        }),
    );
    let first = first.expect("the first SPIRE starts");
    let second = second.expect("the second SPIRE starts");
    assert_ne!(first.bundle_pem(), second.bundle_pem());
    assert_ne!(first.server_address(), second.server_address());

    first
        .register_test_process("spiffe://example.org/harness/one", false)
        .await
        .expect("registered");
    second
        .register_test_process("spiffe://other.org/harness/two", false)
        .await
        .expect("registered");
    let one = first
        .wait_for_svid("spiffe://example.org/harness/one", SVID_TIMEOUT)
        .await
        .expect("served");
    let two = second
        .wait_for_svid("spiffe://other.org/harness/two", SVID_TIMEOUT)
        .await
        .expect("served");
    assert_eq!(one.spiffe_id().trust_domain().as_str(), "example.org");
    assert_eq!(two.spiffe_id().trust_domain().as_str(), "other.org");
}
