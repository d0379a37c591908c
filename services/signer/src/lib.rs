//! Signer: signs TaskRun results with the pod's SVID, in Tekton's format.
