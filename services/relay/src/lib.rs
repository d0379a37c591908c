//! Relay: delivers attestation events to HTTP CloudEvents sinks.
