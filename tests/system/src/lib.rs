//! System tests: the deployment manifests and the services together, against real peers.
