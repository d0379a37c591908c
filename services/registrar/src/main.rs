//! The `countersign-registrar` binary: the runtime's fixed start-up order around
//! [`countersign_registrar::run`] (`--config PATH`, `--check-config`, exit 64 on bad config).

fn main() -> std::process::ExitCode {
    countersign_runtime::run_main::<countersign_registrar::RegistrarConfig, _, _, _>(
        countersign_registrar::service::SERVICE_NAME,
        countersign_registrar::run,
    )
}
