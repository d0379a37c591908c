//! Attestor: verifies signed TaskRun results and publishes signed attestations.
