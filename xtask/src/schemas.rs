//! `cargo xtask schemas`: regenerate `schemas/` (one JSON Schema per event type and the AsyncAPI
//! document) from the Rust types in `crates/events`. With `--check`, write nothing and fail when
//! the committed files differ.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only check that the committed files are up to date.
    #[arg(long)]
    check: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let dir = countersign_events::schema::schemas_dir();
    let files = countersign_events::schema::generate();
    let generated: BTreeSet<PathBuf> = files.iter().map(|(path, _)| path.clone()).collect();
    let mut drifted = Vec::new();
    for (path, content) in &files {
        let target = dir.join(path);
        let current = std::fs::read_to_string(&target).ok();
        if current.as_deref() == Some(content.as_str()) {
            continue;
        }
        drifted.push(path.display().to_string());
        if !args.check {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::write(&target, content)
                .with_context(|| format!("writing {}", target.display()))?;
        }
    }
    // Schemas of types that no longer exist.
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let name = PathBuf::from(entry.file_name());
            let ours = name.extension().is_some_and(|ext| ext == "json")
                || name.as_path()
                    == std::path::Path::new(countersign_events::schema::ASYNCAPI_FILE);
            if ours && !generated.contains(&name) {
                drifted.push(format!("{} (stale)", name.display()));
                if !args.check {
                    std::fs::remove_file(entry.path())
                        .with_context(|| format!("removing {}", name.display()))?;
                }
            }
        }
    }
    if drifted.is_empty() {
        println!(
            "schemas: {} files up to date in {}",
            files.len(),
            dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    if args.check {
        eprintln!(
            "schemas: out of date ({}); run `cargo xtask schemas`",
            drifted.join(", ")
        );
        return Ok(ExitCode::FAILURE);
    }
    println!("schemas: wrote {} in {}", drifted.join(", "), dir.display());
    Ok(ExitCode::SUCCESS)
}
