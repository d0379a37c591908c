//! The `countersign-registrar` binary: the runtime's fixed start-up order around
//! [`countersign_registrar::run`].

fn main() -> std::process::ExitCode {
    countersign_runtime::run_main::<countersign_registrar::RegistrarConfig, _, _, _>(
        countersign_registrar::SERVICE_NAME,
        countersign_registrar::run,
    )
}
