//! Starts the real peers Countersign talks to, for tests: nats-server with JetStream, spire-server and
//! spire-agent, etcd and kube-apiserver.
//!
//! Each peer runs on free loopback ports in its own temporary directory, is probed until it is ready
//! (never a fixed sleep), is stopped when its handle drops (or when the test process dies, see
//! [`process`]), and shows its log tail when a test fails. The binaries come from
//! [`countersign_peers`], built once per machine.
//!
//! - [`nats`]: [`nats::NatsServer`], JetStream with its own store directory.
//! - [`spire`]: [`spire::Spire`], a server, a join token and an agent, plus workload registration helpers.
//! - [`kube`]: [`kube::KubeApiserver`], etcd and kube-apiserver with RBAC, certificates and the
//!   Tekton TaskRun CRD.
//! - [`jaeger`]: [`jaeger::Jaeger`], the trace store the services export OTLP to.
//! - [`registry`]: [`registry::Registry`], an OCI registry: Distribution (tag schema), with or without auth, or go-containerregistry's (Referrers API).
//! - [`timestamp_authority`]: [`timestamp_authority::TimestampAuthority`], an RFC 3161 timestamp
//!   authority (sigstore's) with an in-memory signer, and its certificate chain.
//!
//! And what the services' tests share about Countersign itself:
//!
//! - [`service`]: [`service::RunningService`], a service run in-process on the runtime's skeleton.
//! - [`bus`]: [`bus::TestBus`], the test's side of the bus: a publisher and readers of streams,
//!   dead letters and consumers.
//! - [`metrics`]: reads a Prometheus text exposition (one series, or a sum over labels).
//! - [`taskrun`]: TaskRuns signed by the real `countersign-signer` as workloads of the real agent
//!   ([`taskrun::Pod`]), the watcher's events about them built by hand, and
//!   [`taskrun::AttestorBus`], the bus as the watcher and the attestation's subscribers see it.
//! - [`workspace`]: this workspace's binaries, built into the running test's target directory.
//! - [`webhook`]: [`webhook::WebhookTls`], a CA and a serving certificate for an admission webhook
//!   registered with a real kube-apiserver.

pub mod bus;
pub mod images;
pub mod jaeger;
pub mod kube;
pub mod metrics;
pub mod nats;
pub mod node;
pub mod ports;
pub mod process;
pub mod registry;
pub mod service;
pub mod spiffe_csi;
pub mod spire;
pub mod taskrun;
pub mod tekton;
pub mod timestamp_authority;
pub mod wait;
pub mod webhook;
pub mod workspace;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use countersign_peers::Peers;

/// The built peers, building them first if this machine has not yet.
///
/// Panics with the builder's message (what to install) when they cannot be built: a test that needs
/// a real peer cannot run without one, and must not pass.
pub fn peers() -> &'static Peers {
    static PEERS: OnceLock<Peers> = OnceLock::new();
    PEERS.get_or_init(|| {
        countersign_peers::ensure(&mut |progress| eprintln!("peers: {progress}"))
            .unwrap_or_else(|error| panic!("the real test peers are not available: {error}"))
    })
}

/// A fresh temporary directory under `/tmp` with a short path, so Unix socket paths inside it stay
/// well under the 108-byte `sun_path` limit.
pub fn short_tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .expect("creating a temporary directory under /tmp")
}

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("tests/support sits two levels below the repository root")
        .to_owned()
}

/// The shared fixtures directory (`../shared/fixtures` next to the repository), or the copy that
/// `COUNTERSIGN_FIXTURES` names.
pub fn fixtures_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("COUNTERSIGN_FIXTURES").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    repo_root().join("fixtures")
}

/// A process-unique name with a prefix, for streams, namespaces and the like.
pub fn unique_name(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..10])
}

/// An error and its causes, one per line (`caused by: ...`), for a panic message or a report.
pub fn error_lines(error: &dyn std::error::Error) -> String {
    format!("{:#}", countersign_error_report::ErrorChain::new(error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_is_shown_with_each_cause_on_its_own_line() {
        #[derive(Debug, thiserror::Error)]
        #[error("starting nats-server")]
        struct Outer(#[source] std::io::Error);
        let error = Outer(std::io::Error::other("port taken"));
        assert_eq!(
            error_lines(&error),
            "starting nats-server\n  caused by: port taken"
        );
    }
}
