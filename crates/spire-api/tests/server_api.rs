//! The SPIRE server API client against a real spire-server and spire-agent (one SPIRE per test):
//! the smoke test of issue 2 (BatchCreateEntry through our client, then the SVID from the real
//! agent), paging and filters, batch outcomes, agents and bundles, mTLS over TCP with an admin
//! and a non-admin SVID, and an outage.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use countersign_spire_api::{
    Code, CreateOutcome, DeleteOutcome, Entry, EntryFilter, GetAgentError, GetEntryError,
    ListEntriesError, Match, Selector, SpiffeId, SpireServerClient, TrustDomain, UpdateOutcome,
};
use countersign_test_support::spire::{Spire, SpireOptions, test_process_selectors};
use countersign_test_support::wait;
use spiffe::X509Source;

const SVID_TIMEOUT: Duration = Duration::from_secs(60);

fn id(text: &str) -> SpiffeId {
    SpiffeId::new(text).expect("a valid SPIFFE ID")
}

fn selector(text: &str) -> Selector {
    text.parse().expect("a valid selector")
}

fn selectors(texts: &[&str]) -> Vec<Selector> {
    texts.iter().map(|text| selector(text)).collect()
}

async fn start_spire(node_name: &str) -> Spire {
    Spire::start(SpireOptions {
        node_name: node_name.to_owned(),
        ..SpireOptions::default()
    })
    .await
    .expect("SPIRE starts")
}

async fn admin_socket_client(spire: &Spire) -> SpireServerClient {
    SpireServerClient::connect_unix(spire.server_socket_path())
        .await
        .expect("connects to the admin socket")
}

/// An X509 source on the real agent for this test process, once it serves `spiffe_id`.
async fn workload_source(spire: &Spire, spiffe_id: &str) -> X509Source {
    spire
        .wait_for_svid(spiffe_id, SVID_TIMEOUT)
        .await
        .expect("the agent serves the SVID");
    X509Source::builder()
        .endpoint(spire.agent_endpoint())
        .initial_sync_timeout(SVID_TIMEOUT)
        .build()
        .await
        .expect("an X509 source on the agent")
}

fn created(outcome: &CreateOutcome) -> &Entry {
    match outcome {
        CreateOutcome::Created(entry) => entry,
        other => panic!("expected Created, got {other:?}"),
    }
}

#[tokio::test]
async fn smoke_an_entry_created_through_the_admin_socket_yields_an_svid_from_the_agent() {
    let spire = start_spire("node-smoke").await;
    let client = admin_socket_client(&spire).await;

    let spiffe_id = "spiffe://example.org/smoke/workload";
    let process_selectors: Vec<Selector> = test_process_selectors()
        .iter()
        .map(|text| selector(text))
        .collect();
    let entry = Entry::new(id(spiffe_id), id(&spire.node_alias_id()), process_selectors);
    let outcomes = client
        .batch_create_entries(&[entry])
        .await
        .expect("BatchCreateEntry");
    assert_eq!(outcomes.len(), 1);
    let stored = created(&outcomes[0]);
    assert!(!stored.id.is_empty(), "the server chose an id");
    assert_eq!(stored.spiffe_id.to_string(), spiffe_id);

    // The `spiffe` crate fetches the SVID of that entry from the real agent.
    let svid = spire
        .wait_for_svid(spiffe_id, SVID_TIMEOUT)
        .await
        .expect("the agent serves it");
    assert_eq!(svid.spiffe_id().to_string(), spiffe_id);
}

#[tokio::test]
async fn list_entries_follows_pages_and_applies_filters() {
    let spire = start_spire("node-paging").await;
    let client = admin_socket_client(&spire).await;
    let parent_a = id("spiffe://example.org/paging/parent-a");
    let parent_b = id("spiffe://example.org/paging/parent-b");
    let mut entries = Vec::new();
    for index in 0..15 {
        entries.push(Entry::new(
            id(&format!("spiffe://example.org/paging/a/{index}")),
            parent_a.clone(),
            selectors(&["k8s:ns:paging", &format!("k8s:pod-uid:a-{index}")]),
        ));
    }
    for index in 0..10 {
        entries.push(Entry::new(
            id(&format!("spiffe://example.org/paging/b/{index}")),
            parent_b.clone(),
            selectors(&["k8s:ns:other", &format!("k8s:pod-uid:b-{index}")]),
        ));
    }
    let outcomes = client
        .batch_create_entries(&entries)
        .await
        .expect("BatchCreateEntry");
    for outcome in &outcomes {
        created(outcome);
    }

    // Everything, 4 at a time: our 25 plus the node alias entry of the join token.
    let everything = client
        .list_entries(&EntryFilter::all(), 4)
        .await
        .expect("ListEntries");
    assert_eq!(everything.len(), 26);
    let ids: BTreeSet<&str> = everything.iter().map(|entry| entry.id.as_str()).collect();
    assert_eq!(ids.len(), 26, "no entry is listed twice across pages");
    assert_eq!(
        client
            .count_entries(&EntryFilter::all())
            .await
            .expect("CountEntries"),
        26
    );

    // By parent, page by page: 4 + 4 + 4 + 3.
    let by_parent = EntryFilter::all().by_parent_id(parent_a.clone());
    let mut pages = client.entry_pages(&by_parent, 4);
    let mut page_sizes = Vec::new();
    while let Some(page) = pages.next_page().await.expect("a page") {
        assert!(page.iter().all(|entry| entry.parent_id == parent_a));
        page_sizes.push(page.len());
    }
    assert_eq!(page_sizes, [4, 4, 4, 3]);
    assert_eq!(pages.next_page().await.expect("after the end"), None);
    assert_eq!(
        client
            .count_entries(&by_parent)
            .await
            .expect("CountEntries"),
        15
    );

    // By SPIFFE ID.
    let one = client
        .list_entries(
            &EntryFilter::all().by_spiffe_id(id("spiffe://example.org/paging/b/7")),
            4,
        )
        .await
        .expect("ListEntries");
    assert_eq!(one.len(), 1);
    assert_eq!(
        one[0].selectors,
        selectors(&["k8s:ns:other", "k8s:pod-uid:b-7"])
    );

    // By selectors, each match behaviour.
    let superset = EntryFilter::all().by_selectors(selectors(&["k8s:ns:paging"]), Match::Superset);
    assert_eq!(
        client
            .list_entries(&superset, 4)
            .await
            .expect("superset")
            .len(),
        15
    );
    let exact = EntryFilter::all().by_selectors(
        selectors(&["k8s:pod-uid:a-3", "k8s:ns:paging"]),
        Match::Exact,
    );
    let exact = client.list_entries(&exact, 4).await.expect("exact");
    assert_eq!(exact.len(), 1);
    assert_eq!(exact[0].spiffe_id, id("spiffe://example.org/paging/a/3"));
    let any = EntryFilter::all().by_selectors(
        selectors(&["k8s:pod-uid:a-1", "k8s:pod-uid:b-1"]),
        Match::Any,
    );
    assert_eq!(client.list_entries(&any, 4).await.expect("any").len(), 2);

    // Conditions are ANDed.
    let none = EntryFilter::all()
        .by_parent_id(parent_b)
        .by_selectors(selectors(&["k8s:ns:paging"]), Match::Superset);
    assert!(
        client
            .list_entries(&none, 4)
            .await
            .expect("both")
            .is_empty()
    );

    // An empty selector set is refused by the server, as a permanent error.
    let empty = EntryFilter::all().by_selectors(Vec::new(), Match::Superset);
    match client.list_entries(&empty, 4).await {
        Err(ListEntriesError::Call(error)) => {
            assert_eq!(error.code(), Code::InvalidArgument);
            assert!(!error.is_transient());
        }
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
}

#[tokio::test]
async fn batch_outcomes_are_typed_and_correlated_by_index() {
    let spire = start_spire("node-batch").await;
    let client = admin_socket_client(&spire).await;
    let parent = id(&spire.node_alias_id());
    let mut original = Entry::new(
        id("spiffe://example.org/batch/one"),
        parent.clone(),
        selectors(&["k8s:pod-uid:1", "k8s:pod-name:one"]),
    )
    .with_id("countersign.batch-1");
    original.hint = Some("first".into());
    original.x509_svid_ttl = Some(Duration::from_secs(600));
    let expires_at = SystemTime::now() + Duration::from_secs(3600);
    original.expires_at = Some(expires_at);
    let outcomes = client
        .batch_create_entries(std::slice::from_ref(&original))
        .await
        .expect("create");
    let stored = created(&outcomes[0]).clone();
    assert_eq!(stored.id, "countersign.batch-1");
    assert_eq!(stored.hint.as_deref(), Some("first"));
    assert_eq!(stored.x509_svid_ttl, Some(Duration::from_secs(600)));
    assert!(stored.expires_at.is_some());
    assert!(stored.created_at.is_some());
    assert_eq!(
        client
            .get_entry("countersign.batch-1")
            .await
            .expect("GetEntry"),
        stored
    );

    // One batch, four different fates, reported in input order.
    let mut similar = original.clone().with_id("countersign.batch-2");
    similar.selectors.reverse();
    similar.hint = Some("second".into());
    let fresh = Entry::new(
        id("spiffe://example.org/batch/two"),
        parent.clone(),
        selectors(&["k8s:pod-uid:2"]),
    )
    .with_id("countersign.batch-3");
    let reserved = Entry::new(
        id("spiffe://example.org/spire/not-allowed"),
        parent.clone(),
        selectors(&["k8s:pod-uid:3"]),
    );
    let colliding = Entry::new(
        id("spiffe://example.org/batch/three"),
        parent.clone(),
        selectors(&["k8s:pod-uid:4"]),
    )
    .with_id("countersign.batch-1");
    let outcomes = client
        .batch_create_entries(&[similar, fresh, reserved, colliding])
        .await
        .expect("create");
    assert_eq!(outcomes.len(), 4);
    match &outcomes[0] {
        CreateOutcome::AlreadyExists(existing) => {
            assert_eq!(
                existing.id, "countersign.batch-1",
                "the existing entry, not ours"
            );
            assert_eq!(existing.hint.as_deref(), Some("first"));
        }
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(created(&outcomes[1]).id, "countersign.batch-3");
    match &outcomes[2] {
        CreateOutcome::Invalid(status) => assert_eq!(status.code, Code::InvalidArgument),
        other => panic!("expected Invalid, got {other:?}"),
    }
    match &outcomes[3] {
        CreateOutcome::IdCollision(status) => {
            assert_eq!(status.code, Code::AlreadyExists);
            assert!(!status.is_transient());
        }
        other => panic!("expected IdCollision, got {other:?}"),
    }

    // Update: an existing entry converges; an unknown id is not found.
    let mut changed = stored.clone();
    changed.hint = Some("updated".into());
    changed.dns_names = vec!["one.batch".into()];
    let missing = Entry::new(
        id("spiffe://example.org/batch/missing"),
        parent.clone(),
        selectors(&["k8s:pod-uid:5"]),
    )
    .with_id("countersign.missing");
    let updates = client
        .batch_update_entries(&[changed, missing])
        .await
        .expect("update");
    match &updates[0] {
        UpdateOutcome::Updated(entry) => {
            assert_eq!(entry.hint.as_deref(), Some("updated"));
            assert_eq!(entry.dns_names, ["one.batch"]);
            assert!(
                entry.revision_number > stored.revision_number,
                "revision bumped"
            );
        }
        other => panic!("expected Updated, got {other:?}"),
    }
    assert!(
        matches!(&updates[1], UpdateOutcome::NotFound(status) if status.code == Code::NotFound)
    );

    // Delete: per id, in order; a missing id is not found, not an error.
    let deletes = client
        .batch_delete_entries(&[
            "countersign.batch-1".to_owned(),
            "countersign.missing".to_owned(),
        ])
        .await
        .expect("delete");
    assert_eq!(deletes, [DeleteOutcome::Deleted, DeleteOutcome::NotFound]);
    match client.get_entry("countersign.batch-1").await {
        Err(GetEntryError::NotFound { id }) => assert_eq!(id, "countersign.batch-1"),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

#[tokio::test]
async fn agents_join_tokens_and_the_bundle() {
    let spire = start_spire("node-agents").await;
    let client = admin_socket_client(&spire).await;

    let agents = client
        .list_agents(&Default::default(), 10)
        .await
        .expect("ListAgents");
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].attestation_type, "join_token");
    assert!(agents[0].id.path().starts_with("/spire/agent/join_token/"));
    assert_eq!(
        client.get_agent(&agents[0].id).await.expect("GetAgent"),
        agents[0]
    );
    let unknown = id("spiffe://example.org/spire/agent/join_token/unknown");
    assert!(matches!(
        client.get_agent(&unknown).await,
        Err(GetAgentError::NotFound { .. })
    ));

    let alias = id("spiffe://example.org/tekton-node/node-new");
    let token = client
        .create_join_token(Duration::from_secs(600), Some(&alias))
        .await
        .expect("CreateJoinToken");
    assert!(!token.value.is_empty());
    assert!(token.expires_at.is_some_and(|at| at > SystemTime::now()));
    // The token's alias entry exists (parented on the future agent's join-token ID).
    let alias_entries = client
        .list_entries(&EntryFilter::all().by_spiffe_id(alias), 10)
        .await
        .expect("ListEntries");
    assert_eq!(alias_entries.len(), 1);
    assert!(alias_entries[0].parent_id.path().ends_with(&token.value));

    let bundle = client.get_bundle().await.expect("GetBundle");
    assert_eq!(
        bundle.trust_domain,
        TrustDomain::new("example.org").expect("valid")
    );
    let authorities: Vec<Vec<u8>> = bundle
        .x509_authorities
        .iter()
        .map(|a| a.der.clone())
        .collect();
    assert_eq!(authorities, spire.bundle_der());
}

#[tokio::test]
async fn an_admin_svid_lists_entries_over_mtls() {
    let spire = start_spire("node-admin").await;
    let admin_id = "spiffe://example.org/countersign/registrar";
    spire
        .register_test_process(admin_id, true)
        .await
        .expect("registered as admin");
    let source = workload_source(&spire, admin_id).await;
    let trust_domain = TrustDomain::new(spire.trust_domain()).expect("valid");

    let client = SpireServerClient::connect_tcp(&spire.server_address(), &trust_domain, source)
        .await
        .expect("mTLS connection");
    let entries = client
        .list_entries(&EntryFilter::all(), 10)
        .await
        .expect("ListEntries over TCP");
    assert!(
        entries
            .iter()
            .any(|entry| entry.spiffe_id.to_string() == admin_id && entry.admin)
    );
    let outcomes = client
        .batch_create_entries(&[Entry::new(
            id("spiffe://example.org/over-tcp"),
            id(&spire.node_alias_id()),
            selectors(&["k8s:pod-uid:tcp"]),
        )])
        .await
        .expect("BatchCreateEntry over TCP");
    created(&outcomes[0]);
    assert_eq!(client.connections_opened(), 1);
}

#[tokio::test]
async fn a_non_admin_svid_is_permission_denied() {
    let spire = start_spire("node-non-admin").await;
    let workload_id = "spiffe://example.org/just/a/workload";
    spire
        .register_test_process(workload_id, false)
        .await
        .expect("registered");
    let source = workload_source(&spire, workload_id).await;
    let trust_domain = TrustDomain::new(spire.trust_domain()).expect("valid");
    let client = SpireServerClient::connect_tcp(&spire.server_address(), &trust_domain, source)
        .await
        .expect("the TLS handshake itself succeeds");

    match client.list_entries(&EntryFilter::all(), 10).await {
        Err(ListEntriesError::Call(error)) => {
            assert_eq!(error.code(), Code::PermissionDenied);
            assert!(!error.is_transient());
            assert!(!error.is_transport_failure());
        }
        other => panic!("expected PERMISSION_DENIED, got {other:?}"),
    }
    // Any caller may read the bundle.
    let bundle = client
        .get_bundle()
        .await
        .expect("GetBundle is open to every caller");
    assert!(!bundle.x509_authorities.is_empty());
}

#[tokio::test]
async fn a_server_outage_is_transient_and_the_client_recovers_by_itself() {
    let mut spire = start_spire("node-outage").await;
    let client = admin_socket_client(&spire).await;
    let before = client
        .count_entries(&EntryFilter::all())
        .await
        .expect("CountEntries");

    spire.stop_server();
    let during = client
        .count_entries(&EntryFilter::all())
        .await
        .expect_err("the server is down");
    assert!(during.is_transient(), "{during:?}");
    let listing = client
        .list_entries(&EntryFilter::all(), 10)
        .await
        .expect_err("still down");
    assert!(listing.is_transient(), "{listing:?}");

    spire.start_server().await.expect("the server starts again");
    // The same client, with no reconnect call: the first call after the restart succeeds.
    let after = client
        .count_entries(&EntryFilter::all())
        .await
        .expect("CountEntries after restart");
    assert_eq!(after, before);
    assert!(client.connections_opened() >= 2);
}

#[tokio::test]
async fn a_lazy_client_started_before_its_server_works_once_it_is_up() {
    let mut spire = start_spire("node-lazy").await;
    spire.stop_server();
    let client = SpireServerClient::connect_unix_lazy(spire.server_socket_path());
    assert_eq!(client.connections_opened(), 0);
    let down = client.get_bundle().await.expect_err("the server is down");
    assert!(down.is_transient(), "{down:?}");
    assert!(
        SpireServerClient::connect_unix(spire.server_socket_path())
            .await
            .is_err_and(|error| error.is_transient())
    );

    spire.start_server().await.expect("the server starts");
    client
        .get_bundle()
        .await
        .expect("GetBundle once the server is up");
}

/// The server closes every TCP connection after 3 minutes (`MaxConnectionAge`, with GOAWAY);
/// calls made all along must keep succeeding on a new connection.
#[tokio::test]
async fn calls_over_tcp_survive_the_servers_max_connection_age() {
    let spire = start_spire("node-goaway").await;
    let admin_id = "spiffe://example.org/countersign/long-lived";
    spire
        .register_test_process(admin_id, true)
        .await
        .expect("registered as admin");
    let source = workload_source(&spire, admin_id).await;
    let trust_domain = TrustDomain::new(spire.trust_domain()).expect("valid");
    let client = SpireServerClient::connect_tcp(&spire.server_address(), &trust_domain, source)
        .await
        .expect("mTLS connection");

    let mut calls = 0_u64;
    let outcome = wait::until("a second TCP connection", Duration::from_secs(300), || {
        calls += 1;
        let client = client.clone();
        async move {
            match client.count_entries(&EntryFilter::all()).await {
                Err(error) => Some(Err(error)),
                Ok(_) if client.connections_opened() >= 2 => Some(Ok(())),
                Ok(_) => None,
            }
        }
    })
    .await
    .expect("the server closes the first connection within 5 minutes");
    outcome
        .unwrap_or_else(|error| panic!("call {calls} failed around the reconnection: {error:?}"));
    // And the new connection serves calls.
    client
        .list_entries(&EntryFilter::all(), 10)
        .await
        .expect("ListEntries on the new connection");
}
