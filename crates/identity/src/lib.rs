//! Workload identity: SPIFFE IDs, X509-SVID checks, Tekton's result signatures, DSSE and in-toto.
//!
//! The map:
//!
//! * [`spiffe_id`]: the SPIFFE IDs of TaskRuns, node aliases and the SPIRE server.
//! * [`svid`]: X509-SVID leaf checks, trust bundles by trust domain (federation), chain
//!   validation, and [`svid::SigningSvid`] (an SVID that signs).
//! * [`crypto`]: the one crypto stack (`ring`): digests, closed key algorithms, sign/verify.
//! * [`tekton`]: Tekton's result-signature format, both directions, and its verification with
//!   reason codes (per step and per TaskRun).
//! * [`dsse`] and [`intoto`]: DSSE envelopes around in-toto Statement v1, our TaskRun-results
//!   predicate, and [`attestation`]: signed attestations and their offline verification.
//! * [`sigstore_bundle`]: the same attestations as Sigstore bundles v0.3 (what cosign reads),
//!   and the Sigstore trusted root made from a SPIRE trust bundle.
//! * [`vsa`]: SLSA Verification Summary Attestations, and the artifact digests a TaskRun's
//!   results name by Tekton Chains' type hints.
//! * [`timestamp`]: RFC 3161 timestamps from a timestamp authority: the request, and the
//!   fail-closed verification of a response or stored token against the TSA's chain.
//! * [`workload`]: the SPIFFE Workload API (current SVID and bundles, kept current; a signer's
//!   fetch with retry).
//! * [`spire_config`]: the `[spire]` configuration section the attestor, registrar and watcher share (Tekton's
//!   `config-spire` keys).
//!
//! Verification is parse-then-verify and fails closed: checked types (`SvidLeaf`,
//! `VerifiedResults`, `VerifiedAttestation`) can only be made by the checks, every check has its
//! own error variant, and no policy that accepts everything can be built.

pub mod attestation;
pub mod crypto;
pub mod dsse;
pub mod intoto;
pub mod sigstore_bundle;
pub mod spiffe_id;
pub mod spire_config;
pub mod svid;
pub mod tekton;
pub mod timestamp;
pub mod vsa;
pub mod workload;
