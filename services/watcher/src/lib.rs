//! Watcher: TaskRun lifecycle events from Kubernetes and from Tekton's CloudEvents.
