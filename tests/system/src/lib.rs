//! System tests: the deployment manifests and the services together, against real peers.
//!
//! The tests live in `tests/`; this library holds what several of them share:
//!
//! - [`attestation_count`]: how many attestations the attestations stream holds, counted by
//!   the server per subject (the load harness and the chaos run poll it).
//! - [`nack`]: the streams and consumers NACK would create from rendered `Stream`/`Consumer`
//!   objects, to provision a real nats-server as a cluster would.
//! - [`render`]: `k8s/` rendered by the real kustomize into JSON documents, and lookups in them.
//! - [`nats_auth`]: the NATS permission files shipped in `k8s/nats/permissions`, and operator-mode
//!   credentials minted from them (operator, account and user JWTs, `.creds` files) for a real
//!   nats-server started by [`nats_auth::OperatorNats`].
//! - [`promql`]: the metric names a PromQL expression refers to, and those a Prometheus text
//!   exposition exports, so dashboards and alerts can be checked against the services.
//! - [`http`]: a minimal HTTP/1.1 GET for admin endpoints on loopback (no TLS, no client stack).
//! - [`demo`]: the whole system on one machine, end to end (`cargo xtask demo` and
//!   `tests/demo.rs`): the peers and every service as its own process, two TaskRuns played
//!   through the API server, and what is expected of them.
//! - [`load`]: the whole system under load (`cargo xtask bench system` and `tests/load.rs`):
//!   every service as its own process, TaskRuns at a rate through the bus or the API server,
//!   latencies, exactly-once attestation, CPU and memory per process.
//! - [`traces`]: traces read back from Jaeger's query API, and shown as a tree of spans.
//! - [`images`]: every image the deployments name, built without a registry and loaded into
//!   podman or docker (`cargo xtask images`, the Compose test).
//! - [`compose`]: `compose/compose.yaml` run by Docker Compose against a podman of its own.

pub mod attestation_count;
pub mod compose;
pub mod demo;
pub mod http;
pub mod images;
pub mod load;
pub mod nack;
pub mod nats_auth;
pub mod promql;
pub mod render;
pub mod traces;

use std::path::PathBuf;

/// `k8s/` in the repository.
pub fn k8s_dir() -> PathBuf {
    countersign_test_support::repo_root().join("k8s")
}

/// `compose/` in the repository.
pub fn compose_dir() -> PathBuf {
    countersign_test_support::repo_root().join("compose")
}
