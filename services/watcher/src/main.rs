//! The `countersign-watcher` binary: configuration, telemetry, admin server and signals come from
//! `countersign-runtime`; the watcher itself is [`countersign_watcher::run`].

fn main() -> std::process::ExitCode {
    countersign_runtime::run_main::<countersign_watcher::WatcherConfig, _, _, _>(
        countersign_watcher::SERVICE_NAME,
        countersign_watcher::run,
    )
}
