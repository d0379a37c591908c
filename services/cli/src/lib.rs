//! The countersign command: verify, get and tail attestations.
