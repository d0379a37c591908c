//! Workload identity: SPIFFE IDs, X509-SVID checks, Tekton's result signatures, DSSE and in-toto.
