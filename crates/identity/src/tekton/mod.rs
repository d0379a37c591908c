//! Tekton's result-signature format (TEP-0089), both directions, byte-compatible with
//! `tektoncd/pipeline` v1.15.0 (`pkg/spire`, `pkg/termination`).
//!
//! * [`termination`]: step termination messages (`{key, value, type}` arrays, `tknz:`).
//! * [`canonical`]: the bytes signed for a value, from raw text or from a typed status value.
//! * [`sign`]: producing `SVID`, `<name>.sig`, `RESULT_MANIFEST`, `RESULT_MANIFEST.sig`.
//! * [`verify`]: checking one step's signed set in a fixed order, with reason codes.

pub mod canonical;
pub mod sign;
pub mod termination;
pub mod verify;

pub use canonical::{ResultValue, canonical};
pub use sign::{SignResultsError, sign_results, signed_step_entries};
pub use termination::{ResultType, TerminationEntry, TerminationMessage, TerminationMessageError};
pub use verify::{
    Check, CheckOutcome, DEFAULT_CLOCK_SKEW, Freshness, Outcome, ReasonCode, ResultsPolicy,
    ResultsVerifier, VerifiedResults, VerifiedValue, VerifyError, checks_for_failure,
};

/// The key of the signing SVID (PEM of the leaf).
pub const KEY_SVID: &str = "SVID";
/// The key of the comma-joined list of signed result names.
pub const KEY_RESULT_MANIFEST: &str = "RESULT_MANIFEST";
/// Suffix of a signature entry: `<name>.sig`.
pub const SIGNATURE_SUFFIX: &str = ".sig";

/// Whether `key` is signing material rather than a result: `SVID`, `RESULT_MANIFEST` or a
/// `.sig` entry.
pub fn is_signing_key(key: &str) -> bool {
    key == KEY_SVID || key == KEY_RESULT_MANIFEST || key.ends_with(SIGNATURE_SUFFIX)
}
