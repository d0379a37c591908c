//! The `countersign-attestor` binary: the runtime's fixed start-up order around
//! [`countersign_attestor::run`].

fn main() -> std::process::ExitCode {
    countersign_runtime::run_main::<countersign_attestor::AttestorConfig, _, _, _>(
        countersign_attestor::SERVICE_NAME,
        countersign_attestor::run,
    )
}
