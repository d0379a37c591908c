//! SPIRE server and agent (filled in by the SPIRE harness work).
