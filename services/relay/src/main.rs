//! The `countersign-relay` binary: the runtime's fixed start-up order around
//! [`countersign_relay::run`].

fn main() -> std::process::ExitCode {
    countersign_runtime::run_main::<countersign_relay::RelayConfig, _, _, _>(
        countersign_relay::SERVICE_NAME,
        countersign_relay::run,
    )
}
