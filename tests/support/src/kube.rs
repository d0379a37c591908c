//! etcd and kube-apiserver (filled in by the Kubernetes harness work).
