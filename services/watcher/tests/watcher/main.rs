//! The watcher against a real kube-apiserver (shared by this test binary, a namespace per test)
//! and a real nats-server (one per test), through the real `countersign-watcher` binary.
//!
//! - [`lifecycle`]: TaskRuns driven through the API as Tekton and the kubelet would; the exact
//!   sequence of events on the bus; names with dots.
//! - [`restarts`]: SIGKILL and restart mid-lifecycle; a TaskRun deleted while the watcher is down.
//! - [`scale`]: 200 TaskRuns at once, watched cluster-wide with a label selector.
//! - [`ingress`]: Tekton's CloudEvents (every fixture, binary and structured), malformed and
//!   oversized bodies, NATS down, and both sources at once.
//! - [`rbac`]: get, list and watch on TaskRuns and pods is all the watcher needs.
//!
//! Every event read back is decoded and validated against its committed schema
//! ([`support::Harness::events`]).

mod ingress;
mod lifecycle;
mod rbac;
mod restarts;
mod scale;
mod support;
