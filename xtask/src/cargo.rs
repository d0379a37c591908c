//! Running cargo from a task: the cargo that runs xtask, in the repository root, with its
//! progress shown (the heavy code, the demo, the benchmarks and the schema generator, is built
//! by the command a task runs, not linked into xtask, so xtask builds in seconds).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;

/// The repository root.
pub(crate) fn repo_root() -> anyhow::Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .context("xtask sits in the repository")
}

/// `cargo <args>` in the repository root.
pub(crate) fn command(args: &[&str]) -> anyhow::Result<Command> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(repo_root()?).args(args);
    Ok(command)
}

/// Replaces this process with `command` (so Ctrl-C reaches the command alone, and what it
/// prints and its exit status are the task's). Returns only when it could not be started.
pub(crate) fn exec(mut command: Command) -> anyhow::Error {
    use std::os::unix::process::CommandExt as _;
    let error = command.exec();
    anyhow::Error::new(error).context(format!("running {command:?}"))
}
