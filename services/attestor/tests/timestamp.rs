//! RFC 3161 timestamps end to end, against real peers: nats-server, SPIRE (the attestor's and
//! the TaskRun's SVIDs), sigstore's timestamp authority, the attestor in-process with
//! `[timestamp]`, and the real `countersign` binary. An attestation carries a token over its
//! signature that verifies with the authority's chain, in its event and in its exported Sigstore
//! bundle, and so does each exported VSA (a token over its own signature);
//! `countersign verify --timestamp-authority-chain` accepts both and takes the token's
//! genTime as the signing time, refuses them with another authority's chain, and refuses an
//! attestation without a token. A timestamp authority that is down holds the attestation back
//! (nak and retry), and nothing is stored or published meanwhile.

mod support;

use std::path::Path;
use std::process::Output;

use base64::Engine as _;
use chrono::{TimeDelta, Utc};
use countersign_identity::timestamp::{TimestampAuthorityChain, verify_stored_response};
use countersign_test_support::nats::NatsServer;
use countersign_test_support::spire::SpireOptions;
use countersign_test_support::timestamp_authority::TimestampAuthority;
use countersign_test_support::wait;
use countersign_verdict::attestation::{event_timestamps, timestamped_bytes};
use support::*;

/// `countersign`'s documented exit codes.
mod exit_code {
    pub(super) const OK: u8 = 0;
    pub(super) const REJECTED: u8 = 1;
}

async fn countersign(nats_url: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(cli_binary())
        .args(args)
        .args(["--nats-url", nats_url])
        .env_remove("COUNTERSIGN_TRUST_DOMAIN")
        .env_remove("COUNTERSIGN_ATTESTOR_ID")
        .env_remove("COUNTERSIGN_PREFIX")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap()
}

fn code(output: &Output) -> u8 {
    u8::try_from(output.status.code().unwrap_or(-1)).unwrap_or(u8::MAX)
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn timestamp_section(authority: &TimestampAuthority) -> String {
    format!(
        "[timestamp]\nurl = \"{}\"\ncertificate_chain = \"{}\"\ntimeout = \"2s\"\n",
        authority.timestamp_url(),
        authority.chain_path().display()
    )
}

/// `countersign verify --json` of `file` with the SPIRE bundle and `extra` arguments.
async fn verify(nats_url: &str, file: &Path, bundle: &Path, extra: &[&str]) -> Output {
    let file = file.display().to_string();
    let bundle = bundle.display().to_string();
    let mut args = vec![
        "verify",
        "--attestation",
        &file,
        "--bundle",
        &bundle,
        "--trust-domain",
        "example.org",
        "--json",
    ];
    args.extend_from_slice(extra);
    countersign(nats_url, &args).await
}

#[tokio::test]
async fn attestations_carry_a_verified_timestamp_and_countersign_verifies_it() {
    let nats = NatsServer::start().await.unwrap();
    let spire = spire_with_attestor(SpireOptions::default()).await;
    let (authority, other_authority) =
        tokio::join!(TimestampAuthority::start(), TimestampAuthority::start());
    let (authority, other_authority) = (authority.unwrap(), other_authority.unwrap());
    let bus = TestBus::connect(&nats, "watcher").await;
    let attestor = start_attestor(attestor_config(
        &nats.url(),
        &spire.agent_endpoint(),
        &timestamp_section(&authority),
    ))
    .await;
    attestor.wait_ready().await;

    let taskrun = taskrun("stamped-build");
    let pod = Pod::register(&spire, &taskrun_id(&taskrun.name)).await;
    let entries = pod.sign(&FIXTURE_RESULTS).await;
    let before = Utc::now();
    bus.finished(finished(
        &taskrun,
        Utc::now() - TimeDelta::seconds(2),
        Some(taskrun_id(&taskrun.name)),
        vec![step("build", entries.clone(), Utc::now())],
        merged(&entries),
        &["commit", "IMAGE_DIGEST", "image", "tags"],
    ))
    .await;

    // The stored (and published) attestation carries one token over its signature.
    let stored = bus.attestation(&taskrun.uid).await;
    let published = bus.wait_published(&taskrun, 1).await;
    assert_eq!(published[0].data, stored.data);
    let attestation = stored.data.attestation();
    let tokens = event_timestamps(attestation).unwrap();
    assert_eq!(tokens.len(), 1);
    let signature = timestamped_bytes(attestation).unwrap().unwrap();
    let chain = TimestampAuthorityChain::from_pem(authority.chain_pem()).unwrap();
    let stamp = verify_stored_response(&tokens[0], &signature, &chain).unwrap();
    assert!(stamp.gen_time() >= before - TimeDelta::seconds(5));
    assert!(stamp.gen_time() <= Utc::now() + TimeDelta::seconds(5));
    assert!(attestor.metric("countersign_attestor_timestamps_total") >= 1.0);

    // `countersign verify` with the authority's chain: the event, and the exported bundle.
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, spire.bundle_pem()).unwrap();
    let output = countersign(&nats.url(), &["get", "--uid", &taskrun.uid, "--json"]).await;
    assert_eq!(code(&output), exit_code::OK, "{}", text(&output));
    let event_file = dir.path().join("event.json");
    std::fs::write(&event_file, &output.stdout).unwrap();
    let export_dir = dir.path().join("export");
    let output = countersign(
        &nats.url(),
        &[
            "export",
            "--uid",
            &taskrun.uid,
            "--output",
            &export_dir.display().to_string(),
            "--trust-bundle",
            &bundle.display().to_string(),
            "--trust-domain",
            "example.org",
            "--timestamp-authority-chain",
            &authority.chain_path().display().to_string(),
        ],
    )
    .await;
    assert_eq!(code(&output), exit_code::OK, "{}", text(&output));
    // cosign's trusted root names the authority, its chain as served (signer first).
    let trusted_root: serde_json::Value =
        serde_json::from_slice(&std::fs::read(export_dir.join("trusted_root.json")).unwrap())
            .unwrap();
    let served: Vec<String> = chain
        .certificates_der()
        .iter()
        .map(|der| base64::engine::general_purpose::STANDARD.encode(der))
        .collect();
    assert_eq!(
        trusted_root["timestampAuthorities"][0]["certChain"]["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|certificate| certificate["rawBytes"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>(),
        served
    );
    let bundle_file = export_dir.join("attestation.sigstore.json");
    let sigstore: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&bundle_file).unwrap()).unwrap();
    assert_eq!(
        sigstore["verificationMaterial"]["timestampVerificationData"]["rfc3161Timestamps"][0]["signedTimestamp"],
        base64::engine::general_purpose::STANDARD.encode(&tokens[0])
    );

    // Every VSA is a signature of its own, with its own token over it.
    let mut vsa_files: Vec<_> = std::fs::read_dir(&export_dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("vsa-") && name.ends_with(".sigstore.json"))
        })
        .collect();
    vsa_files.sort();
    assert!(!vsa_files.is_empty(), "at least the TaskRun's VSA");
    for file in &vsa_files {
        let vsa: serde_json::Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
        let tokens = vsa["verificationMaterial"]["timestampVerificationData"]["rfc3161Timestamps"]
            .as_array()
            .unwrap_or_else(|| panic!("{} has no timestamp: {vsa}", file.display()));
        assert_eq!(tokens.len(), 1, "{vsa}");
        let decode = |value: &serde_json::Value| {
            base64::engine::general_purpose::STANDARD
                .decode(value.as_str().unwrap())
                .unwrap()
        };
        let token = decode(&tokens[0]["signedTimestamp"]);
        let vsa_signature = decode(&vsa["dsseEnvelope"]["signatures"][0]["sig"]);
        let vsa_stamp = verify_stored_response(&token, &vsa_signature, &chain)
            .unwrap_or_else(|error| panic!("{}: {error}", file.display()));
        assert!(vsa_stamp.gen_time() >= before - TimeDelta::seconds(5));
        // Over this VSA's signature, not the attestation's.
        assert!(verify_stored_response(&token, &signature, &chain).is_err());
    }
    assert!(
        attestor.metric("countersign_attestor_timestamps_total") >= 1.0 + vsa_files.len() as f64
    );

    let chain_path = authority.chain_path().display().to_string();
    let other_chain_path = other_authority.chain_path().display().to_string();
    for file in [&event_file, &bundle_file] {
        let output = verify(
            &nats.url(),
            file,
            &bundle,
            &["--timestamp-authority-chain", &chain_path],
        )
        .await;
        assert_eq!(code(&output), exit_code::OK, "{}", text(&output));
        let shown: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(shown["valid"], true);
        let gen_time: chrono::DateTime<Utc> =
            serde_json::from_value(shown["timestamp"]["genTime"].clone()).unwrap();
        assert_eq!(gen_time, stamp.gen_time());

        // Another authority's chain refuses the token.
        let output = verify(
            &nats.url(),
            file,
            &bundle,
            &["--timestamp-authority-chain", &other_chain_path],
        )
        .await;
        assert_eq!(code(&output), exit_code::REJECTED, "{}", text(&output));
        let shown: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(shown["error"], "timestamp_invalid", "{shown}");

        // Without the flag the token is not used: verified as before, no timestamp shown.
        let output = verify(&nats.url(), file, &bundle, &[]).await;
        assert_eq!(code(&output), exit_code::OK, "{}", text(&output));
        let shown: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(shown["timestamp"], serde_json::Value::Null);
    }

    // An attestation whose token was removed is refused when a timestamp is required.
    let mut event: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&event_file).unwrap()).unwrap();
    event["data"]["attestation"]
        .as_object_mut()
        .unwrap()
        .remove("rfc3161Timestamps");
    let stripped = dir.path().join("stripped.json");
    std::fs::write(&stripped, serde_json::to_vec(&event).unwrap()).unwrap();
    let output = verify(
        &nats.url(),
        &stripped,
        &bundle,
        &["--timestamp-authority-chain", &chain_path],
    )
    .await;
    assert_eq!(code(&output), exit_code::REJECTED, "{}", text(&output));
    let shown: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(shown["error"], "timestamp_missing", "{shown}");
}

#[tokio::test]
async fn a_timestamp_authority_that_is_down_holds_the_attestation_back() {
    let nats = NatsServer::start().await.unwrap();
    let spire = spire_with_attestor(SpireOptions::default()).await;
    let mut authority = TimestampAuthority::start().await.unwrap();
    let bus = TestBus::connect(&nats, "watcher").await;
    let attestor = start_attestor(attestor_config(
        &nats.url(),
        &spire.agent_endpoint(),
        &timestamp_section(&authority),
    ))
    .await;
    attestor.wait_ready().await;
    authority.kill();

    let taskrun = taskrun("unstamped-build");
    let pod = Pod::register(&spire, &taskrun_id(&taskrun.name)).await;
    let entries = pod.sign(&FIXTURE_RESULTS).await;
    bus.finished(finished(
        &taskrun,
        Utc::now() - TimeDelta::seconds(2),
        Some(taskrun_id(&taskrun.name)),
        vec![step("build", entries.clone(), Utc::now())],
        merged(&entries),
        &[],
    ))
    .await;

    // Tried, nak'ed, redelivered and tried again: at least two failed requests.
    let failures = || {
        countersign_test_support::metrics::sum(
            &attestor.metrics(),
            "countersign_attestor_timestamp_failures_total",
            &[("reason", "unreachable")],
        )
    };
    wait::until("two failed timestamp requests", TIMEOUT, || async {
        (failures() >= 2.0).then_some(())
    })
    .await
    .unwrap();
    // Nothing stored, nothing published, and nothing dead-lettered: the event waits.
    let store = bus.store().await;
    assert!(store.get(&taskrun.uid).await.unwrap().is_none());
    assert!(bus.published(&taskrun).await.is_empty());
    assert_eq!(
        attestor
            .metric("countersign_attestor_verdicts_total{verdict=\"verified\",reason=\"none\"}"),
        0.0
    );
}
