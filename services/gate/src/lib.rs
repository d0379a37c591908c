//! Gate: makes Countersign's verdict binding. A validating admission webhook admits a TaskRun
//! that a PipelineRun creates only if every upstream result its params read was signed, verified
//! by Countersign, and is the value being passed; a small HTTP API serves the verdicts to other
//! policy engines.
//!
//! The pure core, without I/O:
//!
//! - [`expression`]: Tekton's `$(...)` variables and result references (`tasks.<t>.results.<r>`,
//!   `[*]`, `[i]`, `.key`), with Tekton v1.15.0's grammar.
//! - [`substitution`]: Tekton's substitution into param values, as patterns to compare with what
//!   was passed.
//! - [`pipeline`]: what is read of a PipelineRun and of the TaskRun being created.
//! - [`decide`]: the rule: [`decide::plan`], then [`decide::Plan::decide`], with one
//!   [`decide::DenyCode`] per check.
//! - [`pod`]: the optional Pod rule: an image a rejected TaskRun produced is not run, and where a
//!   namespace requires it, only images a verified TaskRun produced.
//!
//! The service around it:
//!
//! - [`replica`]: the attestations, in memory, from a KV watch; shared waits for pending verdicts.
//! - [`cluster`]: PipelineRuns, TaskRuns (with the artifact-digest index) and namespaces, from
//!   Kubernetes watches.
//! - [`webhook`]: the AdmissionReview handler and the namespace modes (`enforce`, `warn`, `off`).
//! - [`decisions`]: each checked admission as an event on the bus (`{p}.gate.<decision>`), from a
//!   bounded queue, off the answer's path.
//! - [`api`]: `GET /v1/verdicts/{namespace}/{taskrun}` and `GET /v1/digests/{digest}`.
//! - [`tls`]: the HTTPS server, its certificate reloaded when its files change.
//! - [`config`], [`metrics`], [`service`]: [`run`].

pub mod api;
pub mod cluster;
pub mod config;
pub mod decide;
pub mod decisions;
pub mod expression;
pub mod metrics;
pub mod pipeline;
pub mod pod;
pub mod replica;
pub mod service;
pub mod substitution;
pub mod tls;
pub mod webhook;

pub use config::GateConfig;
pub use service::{RunError, SERVICE_NAME, run};
