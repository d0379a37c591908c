//! `countersign-schemas [--check]`: regenerate `schemas/` (one JSON Schema per event type and the
//! AsyncAPI document) from the Rust types of this crate. With `--check`, write nothing and fail
//! when the committed files differ. What `cargo xtask schemas` runs (with `cargo run`, so xtask
//! itself does not link this crate and stays small to build).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use countersign_events::schema::{ASYNCAPI_FILE, generate, schemas_dir};

/// The exit status of a bad command line (`EX_USAGE`).
const USAGE: u8 = 64;

fn main() -> ExitCode {
    let mut check = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check" => check = true,
            other => {
                eprintln!("countersign-schemas: unexpected argument {other:?} (only --check)");
                return ExitCode::from(USAGE);
            }
        }
    }
    match run(check) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("schemas: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(check: bool) -> Result<ExitCode, String> {
    let dir = schemas_dir();
    let files = generate();
    let generated: BTreeSet<PathBuf> = files.iter().map(|(path, _)| path.clone()).collect();
    let mut drifted = Vec::new();
    for (path, content) in &files {
        let target = dir.join(path);
        let current = std::fs::read_to_string(&target).ok();
        if current.as_deref() == Some(content.as_str()) {
            continue;
        }
        drifted.push(path.display().to_string());
        if !check {
            std::fs::create_dir_all(&dir)
                .map_err(|error| format!("creating {}: {error}", dir.display()))?;
            std::fs::write(&target, content)
                .map_err(|error| format!("writing {}: {error}", target.display()))?;
        }
    }
    // Schemas of types that no longer exist.
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let name = PathBuf::from(entry.file_name());
            let ours = name.extension().is_some_and(|ext| ext == "json")
                || name.as_path() == Path::new(ASYNCAPI_FILE);
            if ours && !generated.contains(&name) {
                drifted.push(format!("{} (stale)", name.display()));
                if !check {
                    std::fs::remove_file(entry.path())
                        .map_err(|error| format!("removing {}: {error}", name.display()))?;
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
    if check {
        eprintln!(
            "schemas: out of date ({}); run `cargo xtask schemas`",
            drifted.join(", ")
        );
        return Ok(ExitCode::FAILURE);
    }
    println!("schemas: wrote {} in {}", drifted.join(", "), dir.display());
    Ok(ExitCode::SUCCESS)
}
