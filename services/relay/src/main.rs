//! The `countersign-relay` binary: the runtime's fixed start-up order around
//! [`countersign_relay::run`].

use std::process::ExitCode;

fn main() -> ExitCode {
    countersign_runtime::run_main::<countersign_relay::RelayConfig, _, _, _>(
        "relay",
        countersign_relay::run,
    )
}
