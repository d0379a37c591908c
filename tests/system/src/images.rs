//! Every image Countersign's deployments name, built on this machine without a registry: the
//! services' images under the names the manifests and the Compose file use
//! (`ghcr.io/countersign-dev/countersign-<service>:0.1.0`), and the images the Compose file takes
//! from others (NATS, nats-box, SPIRE server and agent) under their public names, made of the
//! same programs built from the Go module proxy (the peers cache).
//!
//! No base image is pulled. Each image is `FROM scratch` plus files of this machine, written by
//! [`countersign_test_support::images`] (the one image writer the node tests use too) and loaded
//! into podman or docker:
//!
//! - a service image holds its binary (a glibc build: cargo's output on this Debian 12 machine),
//!   the libraries `ldd` resolves for it, the CA certificates and `/tmp`, and runs as
//!   `65532:65532`: what the Dockerfiles' distroless `cc-debian12:nonroot` stage holds;
//! - the NATS, nats-box and SPIRE images hold the peer binary, its libraries (SPIRE is built with
//!   cgo for sqlite) and Debian's static busybox for the shell, `wget`, `sed` the Compose file's
//!   scripts and health checks use, with the entrypoints of the public images.
//!
//! The public nats-box also carries `nsc`, which the Go module proxy does not serve; the one built
//! here has `nats` (natscli) and no `nsc`, so its `nats-setup` step needs credentials made
//! beforehand (see `compose/README.md`).

use std::path::{Path, PathBuf};

use countersign_test_support::images::{
    self, ContainerCli, EngineError, ImageEntry, ImageSpec, LibrariesError, WriteError,
    WrittenImage, shared_libraries, with_parent_directories,
};

/// The version the manifests and the Compose file give Countersign's own images.
pub const SERVICE_IMAGE_TAG: &str = "0.1.0";

/// The services with an image of their own (the signer's runs in TaskRun pods).
pub const SERVICES: [&str; 7] = [
    "watcher",
    "registrar",
    "attestor",
    "relay",
    "gate",
    "exporter",
    "signer",
];

/// Debian's `busybox-static`.
pub const BUSYBOX: &str = "/bin/busybox";

/// The CA bundle of Debian's `ca-certificates`.
const CA_CERTIFICATES: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The busybox applets the third-party images link in `/bin` (the Compose scripts and health
/// checks use these).
const APPLETS: [&str; 24] = [
    "sh", "cat", "echo", "printf", "ls", "mkdir", "cp", "mv", "rm", "sleep", "env", "true",
    "false", "test", "[", "sed", "tr", "wget", "basename", "dirname", "grep", "head", "id", "tail",
];

/// The image name of a service, e.g. `ghcr.io/countersign-dev/countersign-relay:0.1.0`.
pub fn service_image_name(service: &str) -> String {
    format!("ghcr.io/countersign-dev/countersign-{service}:{SERVICE_IMAGE_TAG}")
}

/// The programs the images are made of.
#[derive(Debug, Clone)]
pub struct Programs {
    /// `(service, binary)` for each of [`SERVICES`].
    pub services: Vec<(&'static str, PathBuf)>,
    pub nats_server: (String, PathBuf),
    pub nats_cli: PathBuf,
    pub spire_server: (String, PathBuf),
    pub spire_agent: (String, PathBuf),
    pub busybox: PathBuf,
}

/// Why an image could not be built or loaded.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the libraries of {image}")]
    Libraries {
        image: String,
        #[source]
        source: LibrariesError,
    },
    #[error("writing {image}")]
    Write {
        image: String,
        #[source]
        source: WriteError,
    },
    #[error("loading {image}")]
    Load {
        image: String,
        #[source]
        source: EngineError,
    },
}

/// A program and the libraries it loads, at their paths on this machine.
fn program_with_libraries(
    image: &str,
    path_in_image: &str,
    binary: &Path,
) -> Result<Vec<ImageEntry>, BuildError> {
    let mut entries = vec![ImageEntry::File {
        path: path_in_image.to_owned(),
        source: binary.to_owned(),
        mode: 0o755,
    }];
    let libraries = shared_libraries(binary).map_err(|source| BuildError::Libraries {
        image: image.to_owned(),
        source,
    })?;
    for library in libraries {
        entries.push(ImageEntry::File {
            path: library
                .display()
                .to_string()
                .trim_start_matches('/')
                .to_owned(),
            source: library,
            mode: 0o755,
        });
    }
    Ok(entries)
}

fn busybox_entries(busybox: &Path) -> Vec<ImageEntry> {
    let mut entries = vec![ImageEntry::File {
        path: "bin/busybox".into(),
        source: busybox.to_owned(),
        mode: 0o755,
    }];
    entries.extend(APPLETS.iter().map(|applet| ImageEntry::Symlink {
        path: format!("bin/{applet}"),
        target: "busybox".into(),
    }));
    entries
}

fn tmp() -> ImageEntry {
    ImageEntry::Directory {
        path: "tmp".into(),
        mode: 0o1777,
    }
}

/// A service's image: its binary at `/usr/local/bin/countersign-<service>`, as the Dockerfile's
/// final stage puts it.
pub fn service_image(service: &str, binary: &Path) -> Result<ImageSpec, BuildError> {
    let name = service_image_name(service);
    let target = format!("usr/local/bin/countersign-{service}");
    let mut entries = vec![tmp()];
    entries.extend(program_with_libraries(&name, &target, binary)?);
    entries.push(ImageEntry::File {
        path: CA_CERTIFICATES.trim_start_matches('/').to_owned(),
        source: CA_CERTIFICATES.into(),
        mode: 0o644,
    });
    let mut spec = ImageSpec::new(
        name,
        with_parent_directories(entries),
        &[&format!("/{target}")],
    );
    spec.env.push(format!("SSL_CERT_FILE={CA_CERTIFICATES}"));
    spec.user = "65532:65532".into();
    Ok(spec)
}

/// Every image, specified (nothing written yet).
pub fn specs(programs: &Programs) -> Result<Vec<ImageSpec>, BuildError> {
    let mut specs = Vec::new();
    for (service, binary) in &programs.services {
        specs.push(service_image(service, binary)?);
    }
    let version = |v: &str| v.trim_start_matches('v').to_owned();

    // NATS: `nats-server` as the entrypoint, so `command: ["-c", …]` are its flags.
    let name = format!(
        "docker.io/library/nats:{}-alpine",
        version(&programs.nats_server.0)
    );
    let mut entries = vec![tmp()];
    entries.extend(busybox_entries(&programs.busybox));
    entries.extend(program_with_libraries(
        &name,
        "usr/local/bin/nats-server",
        &programs.nats_server.1,
    )?);
    specs.push(ImageSpec::new(
        name,
        with_parent_directories(entries),
        &["/usr/local/bin/nats-server"],
    ));

    // nats-box: a shell with `nats`.
    let name = "docker.io/natsio/nats-box:0.18.1".to_owned();
    let mut entries = vec![tmp()];
    entries.extend(busybox_entries(&programs.busybox));
    entries.extend(program_with_libraries(
        &name,
        "usr/local/bin/nats",
        &programs.nats_cli,
    )?);
    entries.push(ImageEntry::Directory {
        path: "root".into(),
        mode: 0o700,
    });
    let mut spec = ImageSpec::new(name, with_parent_directories(entries), &[]);
    spec.cmd = vec!["sh".into()];
    // natscli finds its contexts under the user's config directory: without cgo, from these.
    spec.env.push("HOME=/root".into());
    spec.env.push("USER=root".into());
    specs.push(spec);

    // SPIRE: `/opt/spire/bin/spire-<x> run` as the entrypoint, as the public images.
    for (program, (pinned, binary)) in [
        ("spire-server", &programs.spire_server),
        ("spire-agent", &programs.spire_agent),
    ] {
        let name = format!("ghcr.io/spiffe/{program}:{}", version(pinned));
        let target = format!("opt/spire/bin/{program}");
        let mut entries = vec![tmp()];
        entries.extend(busybox_entries(&programs.busybox));
        entries.extend(program_with_libraries(&name, &target, binary)?);
        entries.push(ImageEntry::Symlink {
            path: format!("bin/{program}"),
            target: format!("/{target}"),
        });
        specs.push(ImageSpec::new(
            name,
            with_parent_directories(entries),
            &[&format!("/{target}"), "run"],
        ));
    }
    Ok(specs)
}

/// The Dockerfile of a service, relative to the repository root (its build context).
pub fn dockerfile(service: &str) -> String {
    format!("compose/docker/{service}.Dockerfile")
}

/// Builds each service's image from its Dockerfile with `cli` (`<engine> build`), under the name
/// the manifests use. Needs a registry: the Dockerfiles start `FROM` Docker Hub's `rust` and
/// distroless images. The images of others (NATS, SPIRE) are then pulled by Compose itself.
pub fn build_from_dockerfiles(
    cli: &ContainerCli,
    repo_root: &Path,
    report: &mut dyn FnMut(&str),
) -> Result<(), BuildError> {
    for service in SERVICES {
        let name = service_image_name(service);
        let file = repo_root.join(dockerfile(service)).display().to_string();
        let context = repo_root.display().to_string();
        cli.run(&["build", "--file", &file, "--tag", &name, &context])
            .map_err(|source| BuildError::Load {
                image: name.clone(),
                source,
            })?;
        report(&name);
    }
    Ok(())
}

/// Writes each image to an archive in `dir` and loads it into `cli`, reporting each.
pub fn build_and_load(
    specs: &[ImageSpec],
    cli: &ContainerCli,
    dir: &Path,
    report: &mut dyn FnMut(&WrittenImage),
) -> Result<Vec<WrittenImage>, BuildError> {
    let mut written = Vec::new();
    for (index, spec) in specs.iter().enumerate() {
        let archive = dir.join(format!("image-{index}.tar"));
        let image = spec
            .write_archive(&archive)
            .map_err(|source| BuildError::Write {
                image: spec.name.clone(),
                source,
            })?;
        images::load(cli, &archive, &image).map_err(|source| BuildError::Load {
            image: spec.name.clone(),
            source,
        })?;
        let _ = std::fs::remove_file(&archive);
        report(&image);
        written.push(image);
    }
    Ok(written)
}
