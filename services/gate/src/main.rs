//! The `countersign-gate` binary: the runtime's fixed start-up order around
//! [`countersign_gate::run`].

fn main() -> std::process::ExitCode {
    countersign_runtime::run_main::<countersign_gate::GateConfig, _, _, _>(
        countersign_gate::SERVICE_NAME,
        countersign_gate::run,
    )
}
