//! The `countersign-watcher` binary: the runtime's fixed start-up order around
//! [`countersign_watcher::run`].

fn main() -> std::process::ExitCode {
    countersign_runtime::run_main::<countersign_watcher::WatcherConfig, _, _, _>(
        countersign_watcher::SERVICE_NAME,
        countersign_watcher::run,
    )
}
