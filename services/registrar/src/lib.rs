//! Registrar: a SPIRE registration entry for every TaskRun pod, and none left behind.
