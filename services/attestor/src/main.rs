//! The `countersign-attestor` binary: the runtime's fixed start-up order around
//! [`countersign_attestor::run`].

use std::process::ExitCode;

use countersign_attestor::{AttestorConfig, SERVICE_NAME, run};
use countersign_identity::workload::SPIFFE_ENDPOINT_SOCKET;

fn main() -> ExitCode {
    // Read once, here at the edge: the library never reads the process environment.
    let spiffe_endpoint_socket = std::env::var(SPIFFE_ENDPOINT_SOCKET).ok();
    countersign_runtime::run_main::<AttestorConfig, _, _, _>(SERVICE_NAME, move |ctx| {
        run(ctx, spiffe_endpoint_socket)
    })
}
