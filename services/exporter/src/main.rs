//! The `countersign-exporter` binary: the runtime's fixed start-up order around
//! [`countersign_exporter::run`].

fn main() -> std::process::ExitCode {
    countersign_runtime::run_main::<countersign_exporter::ExporterConfig, _, _, _>(
        countersign_exporter::SERVICE_NAME,
        countersign_exporter::run,
    )
}
