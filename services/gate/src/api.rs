//! The verdict API, plain HTTP, for Kyverno's `context.apiCall` or any other policy engine, read
//! from the same memory as the webhook:
//!
//! - `GET /v1/verdicts/{namespace}/{taskrun}`: the attestation of the TaskRun of that name (the
//!   one the cluster has now, else the latest attested): `verdict`, `reason`, `uid`,
//!   `attestationDigest`, `attestedAt`, `signedResults` (name → SHA-256); 404 when none.
//! - `GET /v1/digests/{digest}` (`sha256:<hex>`): the TaskRuns whose results name that artifact
//!   digest by Tekton Chains' type hints, each with its verdict (`pending` before one arrives) and
//!   whether the naming result still holds the signed value; `verified` is true when at least one
//!   producer is verified with its result signed and none is rejected. 404 when no TaskRun names it.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use countersign_identity::intoto::Verdict;
use serde_json::json;

use crate::webhook::Gate;

/// The API's router.
pub fn router(gate: Arc<Gate>) -> Router {
    Router::new()
        .route("/v1/verdicts/{namespace}/{taskrun}", get(get_verdict))
        .route("/v1/digests/{digest}", get(get_digest))
        .with_state(gate)
}

fn not_found(what: String) -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"error": what}))).into_response()
}

async fn get_verdict(
    State(gate): State<Arc<Gate>>,
    Path((namespace, taskrun)): Path<(String, String)>,
) -> Response {
    let record = match gate.taskruns.get(&namespace, &taskrun) {
        Some(entry) => gate.replica.get(&entry.uid),
        None => gate.replica.get_by_name(&namespace, &taskrun),
    };
    match record {
        Some(record) => Json(json!({
            "namespace": record.namespace,
            "name": record.name,
            "uid": record.uid,
            "verdict": record.verdict,
            "verified": record.verdict == Verdict::Verified,
            "reason": record.reason,
            "attestationDigest": record.attestation_digest,
            "attestedAt": record.attested_at,
            "signedResults": record.signed_results,
        }))
        .into_response(),
        None => not_found(format!("no verdict for TaskRun {namespace}/{taskrun}")),
    }
}

async fn get_digest(State(gate): State<Arc<Gate>>, Path(digest): Path<String>) -> Response {
    let producers = gate.taskruns.indexed(&digest);
    if producers.is_empty() {
        return not_found(format!("no TaskRun result names {digest}"));
    }
    let mut verified = false;
    let mut rejected = false;
    let listed: Vec<serde_json::Value> = producers
        .iter()
        .flat_map(|((namespace, name), entry)| {
            let record = gate.replica.get(&entry.uid);
            entry
                .artifacts
                .iter()
                .filter(|artifact| artifact.digest == digest)
                .map(|artifact| {
                    let result_signed = record.as_ref().is_some_and(|record| {
                        record.signed_results.get(&artifact.result) == entry.result_digest(&artifact.result).as_ref()
                    });
                    let verdict = record.as_ref().map(|record| record.verdict);
                    verified |= verdict == Some(Verdict::Verified) && result_signed;
                    rejected |= verdict == Some(Verdict::Rejected);
                    json!({
                        "namespace": namespace,
                        "name": name,
                        "uid": entry.uid,
                        "result": artifact.result,
                        "uri": artifact.uri,
                        "verdict": verdict.map_or("pending", Verdict::as_str),
                        "resultSigned": result_signed,
                        "attestationDigest": record.as_ref().map(|record| record.attestation_digest.clone()),
                    })
                })
                .collect::<Vec<_>>()
        })
        .collect();
    Json(json!({
        "digest": digest,
        "verified": verified && !rejected,
        "producers": listed,
    }))
    .into_response()
}
