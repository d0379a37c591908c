//! Container images without a registry or a daemon: an OCI image archive written directly from a
//! few files (`FROM scratch` plus static binaries), then imported into containerd with `ctr`.
//!
//! [`ImageSpec::write_archive`] writes the OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/…`) as one tar file: a single uncompressed layer holding the files, the image
//! config and the manifest, each addressed by its SHA-256. Every timestamp is zero and every
//! owner is root, so the same inputs always give the same digests. [`import`] loads an archive into
//! a containerd namespace (`k8s.io` for the kubelet), unpacked into its default snapshotter, so a
//! pod with `imagePullPolicy: Never` runs it. [`load`] loads the same archive into podman or
//! docker ([`ContainerCli`]) under its name, which is how `cargo xtask images` and the Compose
//! test get every image: one way of building images, whatever runs them.
//!
//! [`with_parent_directories`] and [`shared_libraries`] assemble a root filesystem from files of
//! this machine: a dynamically linked program with the exact libraries `ldd` resolves for it (the
//! distribution's glibc, as distroless `cc` images carry), so no base image is pulled.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{Value, json};

/// The tar block size.
const BLOCK: usize = 512;

/// One entry of an image's only layer.
#[derive(Debug, Clone)]
pub enum ImageEntry {
    /// A directory (parents of files are not added implicitly).
    Directory { path: String, mode: u32 },
    /// A regular file copied from `source` on this machine.
    File {
        path: String,
        source: PathBuf,
        mode: u32,
    },
    /// A regular file with the given contents.
    Contents {
        path: String,
        contents: Vec<u8>,
        mode: u32,
    },
    /// A symbolic link to `target`.
    Symlink { path: String, target: String },
}

impl ImageEntry {
    /// Where the entry goes in the image (relative to its root).
    pub fn path(&self) -> &str {
        match self {
            ImageEntry::Directory { path, .. }
            | ImageEntry::File { path, .. }
            | ImageEntry::Contents { path, .. }
            | ImageEntry::Symlink { path, .. } => path,
        }
    }
}

/// The `created_by` of the one history entry of every image written here: how an engine's image
/// is told apart from one pulled under the same name.
pub const CREATED_BY: &str = "countersign-test-support";

/// An image `FROM scratch`: its name, its files and how it starts.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// The full reference containerd stores it under, e.g. `localhost/countersign/pause:1`.
    pub name: String,
    pub entries: Vec<ImageEntry>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    /// The user it runs as (`uid:gid`), as a Dockerfile's `USER`; empty for root (and then left out
    /// of the config, so images without one keep their digests).
    pub user: String,
}

/// What an archive holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenImage {
    pub name: String,
    /// `sha256:<hex>` of the manifest: the image's digest.
    pub manifest_digest: String,
    /// `sha256:<hex>` of the image config: containerd's and the kubelet's image id.
    pub config_digest: String,
}

/// Why an image could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("path {path:?} in image {image} is longer than a plain tar header holds")]
    PathTooLong { image: String, path: String },
}

/// Why [`import`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("running {}", ctr.display())]
    Spawn {
        ctr: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`ctr images import {}` failed ({status}): {output}", archive.display())]
    Failed {
        archive: PathBuf,
        status: String,
        output: String,
    },
}

impl ImageSpec {
    /// An image named `name` with `entries`, started as `entrypoint`, with a usual `PATH`.
    pub fn new(name: impl Into<String>, entries: Vec<ImageEntry>, entrypoint: &[&str]) -> Self {
        ImageSpec {
            name: name.into(),
            entries,
            entrypoint: entrypoint.iter().map(|s| (*s).to_owned()).collect(),
            cmd: Vec::new(),
            env: vec!["PATH=/usr/local/bin:/usr/bin:/bin:/ko-app".to_owned()],
            working_dir: "/".to_owned(),
            user: String::new(),
        }
    }

    /// Writes the image as an OCI image layout in one tar file at `archive`.
    pub fn write_archive(&self, archive: &Path) -> Result<WrittenImage, WriteError> {
        let layer = self.layer()?;
        let layer_digest = sha256_digest(&layer);
        let mut config = json!({
            "architecture": "amd64",
            "os": "linux",
            "created": "1970-01-01T00:00:00Z",
            "config": {
                "Entrypoint": self.entrypoint,
                "Cmd": if self.cmd.is_empty() { Value::Null } else { json!(self.cmd) },
                "Env": self.env,
                "WorkingDir": self.working_dir,
            },
            "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
            "history": [{ "created": "1970-01-01T00:00:00Z", "created_by": CREATED_BY }],
        });
        if !self.user.is_empty() {
            config["config"]["User"] = json!(self.user);
        }
        let config = canonical_json(&config);
        let config_digest = sha256_digest(&config);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest,
                "size": layer.len(),
            }],
        });
        let manifest = canonical_json(&manifest);
        let manifest_digest = sha256_digest(&manifest);
        let tag = self
            .name
            .rsplit_once(':')
            .map(|(_, tag)| tag)
            .unwrap_or("latest");
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest.len(),
                "platform": { "architecture": "amd64", "os": "linux" },
                "annotations": {
                    "io.containerd.image.name": self.name,
                    "org.opencontainers.image.ref.name": tag,
                },
            }],
        });
        let mut outer = TarWriter::default();
        let blob_path = |digest: &str| format!("blobs/sha256/{}", &digest["sha256:".len()..]);
        for directory in ["blobs/", "blobs/sha256/"] {
            outer.directory(directory, 0o755);
        }
        outer.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, 0o644);
        outer.file("index.json", &canonical_json(&index), 0o644);
        outer.file(&blob_path(&manifest_digest), &manifest, 0o644);
        outer.file(&blob_path(&config_digest), &config, 0o644);
        outer.file(&blob_path(&layer_digest), &layer, 0o644);
        fs::write(archive, outer.finish()).map_err(|source| WriteError::Write {
            path: archive.to_owned(),
            source,
        })?;
        Ok(WrittenImage {
            name: self.name.clone(),
            manifest_digest,
            config_digest,
        })
    }

    /// The layer: every entry, in order, as an uncompressed tar.
    fn layer(&self) -> Result<Vec<u8>, WriteError> {
        let mut tar = TarWriter::default();
        for entry in &self.entries {
            let path = entry.path();
            if path.len() > 99 {
                return Err(WriteError::PathTooLong {
                    image: self.name.clone(),
                    path: path.to_owned(),
                });
            }
            match entry {
                ImageEntry::Directory { path, mode } => {
                    tar.directory(&format!("{}/", path.trim_end_matches('/')), *mode)
                }
                ImageEntry::File { path, source, mode } => {
                    let contents = fs::read(source).map_err(|error| WriteError::Read {
                        path: source.clone(),
                        source: error,
                    })?;
                    tar.file(path, &contents, *mode);
                }
                ImageEntry::Contents {
                    path,
                    contents,
                    mode,
                } => tar.file(path, contents, *mode),
                ImageEntry::Symlink { path, target } => tar.symlink(path, target),
            }
        }
        Ok(tar.finish())
    }
}

/// A container engine's command line that loads and tags images: podman or docker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerCli {
    /// `podman` or `docker`, as found on `PATH`, or a path.
    pub program: PathBuf,
    /// Arguments put before every command (e.g. podman's `--root`/`--runroot`).
    pub global_args: Vec<String>,
    /// Environment for every command (e.g. podman's `CONTAINERS_CONF`).
    pub env: Vec<(String, String)>,
}

/// Why [`ContainerCli::detect`] found no engine.
#[derive(Debug, thiserror::Error)]
#[error(
    "neither podman nor docker answers `version` on this machine ({tried}): install one (Debian: \
     apt-get install podman; or Docker Engine) to build and load the images"
)]
pub struct NoContainerCli {
    pub tried: String,
}

/// Why an engine command ([`load`], [`ContainerCli::run`]) failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("running {program}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed ({status}): {output}")]
    Failed {
        command: String,
        status: String,
        output: String,
    },
}

/// Why [`shared_libraries`] could not list a program's libraries.
#[derive(Debug, thiserror::Error)]
pub enum LibrariesError {
    #[error("running ldd on {}", binary.display())]
    Spawn {
        binary: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("ldd {} did not resolve {library}", binary.display())]
    Unresolved { binary: PathBuf, library: String },
}

impl ContainerCli {
    /// The first of `podman` and `docker` whose `version` succeeds (`docker version` fails
    /// without a running engine, so a client alone does not count).
    pub fn detect() -> Result<ContainerCli, NoContainerCli> {
        let mut tried = Vec::new();
        for program in ["podman", "docker"] {
            let status = std::process::Command::new(program)
                .arg("version")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            match status {
                Ok(status) if status.success() => {
                    return Ok(ContainerCli {
                        program: PathBuf::from(program),
                        global_args: Vec::new(),
                        env: Vec::new(),
                    });
                }
                Ok(status) => tried.push(format!("{program}: {status}")),
                Err(error) => tried.push(format!("{program}: {error}")),
            }
        }
        Err(NoContainerCli {
            tried: tried.join("; "),
        })
    }

    /// A command for this engine, its global arguments already given.
    pub fn command(&self) -> std::process::Command {
        let mut command = std::process::Command::new(&self.program);
        command.args(&self.global_args);
        command.envs(self.env.iter().map(|(key, value)| (key, value)));
        command
    }

    /// Runs `args`; its output (stdout then stderr) if it succeeds.
    pub fn run(&self, args: &[&str]) -> Result<String, EngineError> {
        let command_line = format!("{} {}", self.program.display(), args.join(" "));
        let output = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| EngineError::Spawn {
                program: self.program.display().to_string(),
                source,
            })?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if output.status.success() {
            Ok(text)
        } else {
            Err(EngineError::Failed {
                command: command_line,
                status: output.status.to_string(),
                output: text,
            })
        }
    }
}

/// Loads the archive [`ImageSpec::write_archive`] wrote into `cli`'s image store, and tags it
/// with its name (an OCI archive carries only the tag in `org.opencontainers.image.ref.name`,
/// which engines do not agree on reading).
pub fn load(cli: &ContainerCli, archive: &Path, image: &WrittenImage) -> Result<(), EngineError> {
    let archive = archive.display().to_string();
    cli.run(&["load", "--input", &archive])?;
    let id = &image.config_digest["sha256:".len()..];
    cli.run(&["tag", id, &image.name])?;
    Ok(())
}

/// `entries` with a [`ImageEntry::Directory`] (mode 0755) for every parent directory not listed
/// before it, each once, just before the first entry inside it (a directory listed later keeps
/// its entry, which sets its mode).
pub fn with_parent_directories(entries: Vec<ImageEntry>) -> Vec<ImageEntry> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.path().trim_end_matches('/').to_owned();
        let mut parent = String::new();
        let parts: Vec<&str> = path.split('/').filter(|part| !part.is_empty()).collect();
        for part in parts.iter().take(parts.len().saturating_sub(1)) {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            if seen.insert(parent.clone()) {
                out.push(ImageEntry::Directory {
                    path: parent.clone(),
                    mode: 0o755,
                });
            }
        }
        if let ImageEntry::Directory { .. } = entry {
            seen.insert(path);
        }
        out.push(entry);
    }
    out
}

/// The shared libraries `binary` loads, the dynamic loader included, as `ldd` resolves them on
/// this machine: absolute paths, in `ldd`'s order. Empty for a static binary.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, LibrariesError> {
    let output = std::process::Command::new("ldd")
        .arg(binary)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LibrariesError::Spawn {
            binary: binary.to_owned(),
            source,
        })?;
    // A static binary: ldd exits non-zero with "not a dynamic executable".
    if !output.status.success() {
        return Ok(Vec::new());
    }
    parse_ldd(&String::from_utf8_lossy(&output.stdout)).map_err(|library| {
        LibrariesError::Unresolved {
            binary: binary.to_owned(),
            library,
        }
    })
}

/// The paths in `ldd`'s output; the name of a library it could not find as the error.
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut libraries = Vec::new();
    for line in text.lines().map(str::trim) {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)`, `/lib64/ld-linux-x86-64.so.2 (0x…)`,
        // `linux-vdso.so.1 (0x…)` (in the kernel: nothing to copy).
        let (name, resolved) = match line.split_once("=>") {
            Some((name, rest)) => (name.trim(), rest.trim()),
            None => (line, line),
        };
        if resolved.starts_with("not found") {
            return Err(name.to_owned());
        }
        let path = resolved.split_whitespace().next().unwrap_or("");
        if path.starts_with('/') {
            libraries.push(PathBuf::from(path));
        }
    }
    Ok(libraries)
}

/// Imports `archive` into containerd (at socket `address`) in `namespace`, unpacked.
pub async fn import(
    ctr: &Path,
    address: &Path,
    namespace: &str,
    archive: &Path,
) -> Result<(), ImportError> {
    let output = tokio::process::Command::new(ctr)
        .arg("--address")
        .arg(address)
        .args(["--namespace", namespace, "images", "import"])
        .arg(archive)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| ImportError::Spawn {
            ctr: ctr.to_owned(),
            source,
        })?;
    if output.status.success() {
        return Ok(());
    }
    Err(ImportError::Failed {
        archive: archive.to_owned(),
        status: output.status.to_string(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    })
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
    )
}

/// Compact JSON with object keys in the order serde_json keeps them (sorted: no `preserve_order`).
fn canonical_json(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// A ustar writer for short paths, root-owned entries and zero timestamps.
#[derive(Debug, Default)]
struct TarWriter {
    bytes: Vec<u8>,
}

impl TarWriter {
    fn directory(&mut self, path: &str, mode: u32) {
        self.header(path, mode, 0, b'5', "");
    }

    fn file(&mut self, path: &str, contents: &[u8], mode: u32) {
        self.header(path, mode, contents.len() as u64, b'0', "");
        self.bytes.extend_from_slice(contents);
        self.pad();
    }

    fn symlink(&mut self, path: &str, target: &str) {
        self.header(path, 0o777, 0, b'2', target);
    }

    fn header(&mut self, path: &str, mode: u32, size: u64, kind: u8, link: &str) {
        let mut header = [0u8; BLOCK];
        put(&mut header[0..100], path.as_bytes());
        put_octal(&mut header[100..108], u64::from(mode));
        put_octal(&mut header[108..116], 0);
        put_octal(&mut header[116..124], 0);
        put_octal(&mut header[124..136], size);
        put_octal(&mut header[136..148], 0);
        header[148..156].fill(b' ');
        header[156] = kind;
        put(&mut header[157..257], link.as_bytes());
        put(&mut header[257..263], b"ustar\0");
        put(&mut header[263..265], b"00");
        put(&mut header[265..297], b"root");
        put(&mut header[297..329], b"root");
        let checksum: u32 = header.iter().map(|b| u32::from(*b)).sum();
        let text = format!("{checksum:06o}\0 ");
        header[148..156].copy_from_slice(text.as_bytes());
        self.bytes.extend_from_slice(&header);
    }

    fn pad(&mut self) {
        let remainder = self.bytes.len() % BLOCK;
        if remainder != 0 {
            self.bytes.resize(self.bytes.len() + BLOCK - remainder, 0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.bytes.resize(self.bytes.len() + 2 * BLOCK, 0);
        self.bytes
    }
}

fn put(field: &mut [u8], value: &[u8]) {
    let length = value.len().min(field.len());
    field[..length].copy_from_slice(&value[..length]);
}

/// A NUL-terminated octal number filling `field`.
fn put_octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let text = format!("{value:0width$o}");
    let _ = (&mut field[..width]).write_all(text.as_bytes());
    field[width] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ImageSpec {
        ImageSpec::new(
            "localhost/countersign/test:1",
            vec![
                ImageEntry::Directory {
                    path: "bin".into(),
                    mode: 0o755,
                },
                ImageEntry::Contents {
                    path: "bin/hello".into(),
                    contents: b"#!/bin/sh\necho hello\n".to_vec(),
                    mode: 0o755,
                },
                ImageEntry::Symlink {
                    path: "bin/hi".into(),
                    target: "hello".into(),
                },
            ],
            &["/bin/hello"],
        )
    }

    #[test]
    fn the_same_image_always_has_the_same_digests() {
        let dir = tempfile::tempdir().unwrap();
        let first = spec().write_archive(&dir.path().join("a.tar")).unwrap();
        let second = spec().write_archive(&dir.path().join("b.tar")).unwrap();
        assert_eq!(first, second);
        assert_eq!(
            fs::read(dir.path().join("a.tar")).unwrap(),
            fs::read(dir.path().join("b.tar")).unwrap()
        );
    }

    #[test]
    fn tar_headers_carry_a_valid_checksum_and_blocks_are_aligned() {
        let mut tar = TarWriter::default();
        tar.file("a", b"abc", 0o644);
        let bytes = tar.finish();
        assert_eq!(bytes.len() % BLOCK, 0);
        let header = &bytes[..BLOCK];
        let mut copy = header.to_vec();
        copy[148..156].fill(b' ');
        let sum: u32 = copy.iter().map(|b| u32::from(*b)).sum();
        let stored = std::str::from_utf8(&header[148..154]).unwrap();
        assert_eq!(u32::from_str_radix(stored, 8).unwrap(), sum);
        assert_eq!(&bytes[BLOCK..BLOCK + 3], b"abc");
    }

    #[test]
    fn a_user_is_in_the_config_only_when_set() {
        let dir = tempfile::tempdir().unwrap();
        let root = spec().write_archive(&dir.path().join("a.tar")).unwrap();
        let mut with_user = spec();
        with_user.user = "65532:65532".into();
        let nonroot = with_user.write_archive(&dir.path().join("b.tar")).unwrap();
        assert_ne!(root.config_digest, nonroot.config_digest);
        let archive = fs::read(dir.path().join("b.tar")).unwrap();
        let needle = br#""User":"65532:65532""#;
        assert!(archive.windows(needle.len()).any(|window| window == needle));
        let archive = fs::read(dir.path().join("a.tar")).unwrap();
        assert!(!archive.windows(6).any(|window| window == br#""User""#));
    }

    #[test]
    fn parents_are_added_once_before_their_children() {
        let entries = with_parent_directories(vec![
            ImageEntry::Contents {
                path: "usr/local/bin/a".into(),
                contents: Vec::new(),
                mode: 0o755,
            },
            ImageEntry::Directory {
                path: "usr/local".into(),
                mode: 0o700,
            },
            ImageEntry::Symlink {
                path: "usr/local/bin/b".into(),
                target: "a".into(),
            },
        ]);
        let paths: Vec<String> = entries
            .iter()
            .map(|entry| match entry {
                ImageEntry::Directory { path, mode } => format!("{path}/ {mode:o}"),
                ImageEntry::File { path, .. }
                | ImageEntry::Contents { path, .. }
                | ImageEntry::Symlink { path, .. } => path.clone(),
            })
            .collect();
        assert_eq!(
            paths,
            [
                "usr/ 755",
                "usr/local/ 755",
                "usr/local/bin/ 755",
                "usr/local/bin/a",
                "usr/local/ 700",
                "usr/local/bin/b"
            ]
        );
    }

    #[test]
    fn ldd_output_gives_the_files_to_copy_and_a_missing_library_is_an_error() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
        assert_eq!(
            parse_ldd("\tlibfoo.so.1 => not found\n").unwrap_err(),
            "libfoo.so.1"
        );
    }

    #[test]
    fn a_path_too_long_for_a_plain_header_is_refused() {
        let mut spec = spec();
        spec.entries.push(ImageEntry::Symlink {
            path: "x".repeat(120),
            target: "y".into(),
        });
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            spec.write_archive(&dir.path().join("a.tar")),
            Err(WriteError::PathTooLong { .. })
        ));
    }
}
