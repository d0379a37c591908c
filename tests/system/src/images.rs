//! Every image Countersign's deployments name, built on this machine without a registry: the
//! services' images under the names the manifests and the Compose file use
//! (`ghcr.io/countersign-dev/countersign-<service>:0.1.0`), and the images the Compose file takes
//! from others (NATS, nats-box, SPIRE server and agent) under their public names, made of the
//! same programs built from the Go module proxy (the peers cache).
//!
//! Nothing is pulled:
//!
//! - the services' images are built by the engine (`<engine> build`) from their Dockerfiles,
//!   `compose/docker/<service>.Dockerfile`, with `BINARIES=prebuilt`: the binary cargo built on
//!   this machine, on the Dockerfiles' base, distroless `cc-debian12:nonroot`;
//! - that base is built here under its public name ([`distroless_cc_image`]) from the files of
//!   the Debian 12 packages distroless makes it of, as installed on this machine (its glibc is
//!   the one the binaries were linked against), unless the engine already has an image of that
//!   name that is not ours (pulled from `gcr.io`), which is then used as it is;
//! - the NATS, nats-box and SPIRE images hold the peer binary, its libraries (SPIRE is built with
//!   cgo for sqlite) and Debian's static busybox for the shell, `wget`, `sed` the Compose file's
//!   scripts and health checks use, with the entrypoints of the public images.
//!
//! The images made of files are written `FROM scratch` by [`countersign_test_support::images`]
//! (the one image writer the node tests use too) and loaded into podman or docker.
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

/// The base image the services' Dockerfiles end on.
pub const DISTROLESS_CC: &str = "gcr.io/distroless/cc-debian12:nonroot";

/// The Debian packages distroless makes `cc-debian12` of (its `static`, `base` and `cc` layers),
/// taken whole but for documentation; of `base-files` only `os-release` is taken, and of
/// `ca-certificates` only the bundle it generates.
const DISTROLESS_CC_PACKAGES: [&str; 7] = [
    "libc6",
    "libgcc-s1",
    "libgomp1",
    "libstdc++6",
    "libssl3",
    "netbase",
    "tzdata",
];

/// distroless's users and groups: root, nobody and nonroot (65532).
const PASSWD: &str = "root:x:0:0:root:/root:/sbin/nologin\n\
                      nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n\
                      nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n";
const GROUP: &str = "root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\ntty:x:5:\nstaff:x:50:\n";
const NSSWITCH: &str = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n\
                        networks: files\nprotocols: files\nservices: files\n";

/// Why a Debian package's files could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("running dpkg-query (is this a Debian or Debian-based machine?)")]
    Spawn(#[source] std::io::Error),
    #[error("dpkg-query -L failed ({status}): {stderr}")]
    NotInstalled { status: String, stderr: String },
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// [`DISTROLESS_CC`] made of this machine's Debian 12 packages, as distroless makes it of the
/// same packages: [`DISTROLESS_CC_PACKAGES`] on a merged `/usr` (`/lib`, `/lib64`, `/bin` and
/// `/sbin` link into `/usr`), `os-release`, the CA bundle, distroless's `passwd`, `group` and
/// `nsswitch.conf`, `/tmp` and `/home/nonroot`; no shell. It runs as `65532:65532` in
/// `/home/nonroot`, with `SSL_CERT_FILE` set, as the public `:nonroot` image. Unlike that image,
/// every file is owned by root (the image writer's), `/home/nonroot` too (mode 0755).
pub fn distroless_cc_image() -> Result<ImageSpec, BuildError> {
    // By path in the image, so that each path is written once and parents come first.
    let mut files = std::collections::BTreeMap::new();
    let mut add = |entry: ImageEntry| {
        files.insert(entry.path().to_owned(), entry);
    };
    for package in DISTROLESS_CC_PACKAGES {
        let error = |source| BuildError::Package {
            package: package.to_owned(),
            source,
        };
        for path in package_files(package).map_err(error)? {
            // Merged `/usr`: these are the links added below, not directories.
            if ["/bin", "/lib", "/lib64", "/sbin"].contains(&path.as_str()) {
                continue;
            }
            if let Some(entry) = host_entry(&path).map_err(error)? {
                add(entry);
            }
        }
    }
    for (path, target) in [
        ("bin", "usr/bin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
        ("sbin", "usr/sbin"),
        ("etc/os-release", "../usr/lib/os-release"),
    ] {
        add(ImageEntry::Symlink {
            path: path.to_owned(),
            target: target.to_owned(),
        });
    }
    for (path, source) in [
        ("usr/lib/os-release", "/usr/lib/os-release"),
        (CA_CERTIFICATES.trim_start_matches('/'), CA_CERTIFICATES),
    ] {
        add(ImageEntry::File {
            path: path.to_owned(),
            source: source.into(),
            mode: 0o644,
        });
    }
    for (path, contents) in [
        ("etc/passwd", PASSWD),
        ("etc/group", GROUP),
        ("etc/nsswitch.conf", NSSWITCH),
    ] {
        add(ImageEntry::Contents {
            path: path.to_owned(),
            contents: contents.as_bytes().to_vec(),
            mode: 0o644,
        });
    }
    for (path, mode) in [("tmp", 0o1777), ("home/nonroot", 0o755)] {
        add(ImageEntry::Directory {
            path: path.to_owned(),
            mode,
        });
    }
    let mut spec = ImageSpec::new(
        DISTROLESS_CC,
        with_parent_directories(files.into_values().collect()),
        &[],
    );
    spec.env = vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        format!("SSL_CERT_FILE={CA_CERTIFICATES}"),
    ];
    spec.user = "65532:65532".into();
    spec.working_dir = "/home/nonroot".into();
    Ok(spec)
}

/// The absolute paths `dpkg-query -L` lists for `package`, documentation left out (distroless
/// keeps only the copyright files of `/usr/share/doc`).
fn package_files(package: &str) -> Result<Vec<String>, PackageError> {
    let output = std::process::Command::new("dpkg-query")
        .args(["-L", package])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(PackageError::Spawn)?;
    if !output.status.success() {
        return Err(PackageError::NotInstalled {
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        // Other lines are dpkg's notes ("diverted by ..."); `/.` is the root itself.
        .filter(|line| line.starts_with('/') && *line != "/.")
        .filter(|path| kept(path))
        .map(str::to_owned)
        .collect())
}

/// Whether a packaged file goes into the image: not manuals, translations, lintian overrides or
/// documentation other than copyright files.
fn kept(path: &str) -> bool {
    const LEFT_OUT: [&str; 4] = [
        "/usr/share/man/",
        "/usr/share/locale/",
        "/usr/share/lintian/",
        "/usr/share/info/",
    ];
    if LEFT_OUT.iter().any(|prefix| path.starts_with(prefix)) {
        return false;
    }
    match path.strip_prefix("/usr/share/doc/") {
        Some(rest) => !rest.contains('/') || rest.ends_with("/copyright"),
        None => true,
    }
}

/// The image entry of `path` as it is on this machine: a directory, a file or a symbolic link
/// with its mode and target; `None` when it is not there (dpkg's `path-exclude` may drop files
/// a package lists).
fn host_entry(path: &str) -> Result<Option<ImageEntry>, PackageError> {
    use std::os::unix::fs::PermissionsExt as _;
    let image_path = merged_usr(path);
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(PackageError::Read {
                path: path.into(),
                source,
            });
        }
    };
    let mode = metadata.permissions().mode() & 0o7777;
    Ok(Some(if metadata.is_symlink() {
        let target = std::fs::read_link(path).map_err(|source| PackageError::Read {
            path: path.into(),
            source,
        })?;
        ImageEntry::Symlink {
            path: image_path,
            target: target.display().to_string(),
        }
    } else if metadata.is_dir() {
        ImageEntry::Directory {
            path: image_path,
            mode,
        }
    } else {
        ImageEntry::File {
            path: image_path,
            source: path.into(),
            mode,
        }
    }))
}

/// `path` (absolute) relative to the image root on a merged `/usr`, as Debian 12 installs it:
/// `/lib/x` is `usr/lib/x`, and so for `/lib64`, `/bin` and `/sbin`.
fn merged_usr(path: &str) -> String {
    let relative = path.trim_start_matches('/');
    for top in ["lib", "lib64", "bin", "sbin"] {
        if relative == top {
            return format!("usr/{top}");
        }
        if let Some(rest) = relative
            .strip_prefix(top)
            .and_then(|rest| rest.strip_prefix('/'))
        {
            return format!("usr/{top}/{rest}");
        }
    }
    relative.to_owned()
}

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
    #[error("putting the binary {} in the build context of {image}", binary.display())]
    Stage {
        image: String,
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("building {image} from its Dockerfile")]
    Build {
        image: String,
        #[source]
        source: EngineError,
    },
    #[error("the files of the Debian package {package} (for {DISTROLESS_CC})")]
    Package {
        package: String,
        #[source]
        source: PackageError,
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

/// The images of others the Compose file names (NATS, nats-box, SPIRE server and agent),
/// specified (nothing written yet).
pub fn third_party_specs(programs: &Programs) -> Result<Vec<ImageSpec>, BuildError> {
    let mut specs = Vec::new();
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

/// The Dockerfile of a service, relative to the repository root.
pub fn dockerfile(service: &str) -> String {
    format!("compose/docker/{service}.Dockerfile")
}

/// Builds every image without a registry and loads it into `cli`, reporting and returning each
/// name: the Dockerfiles' base ([`prepare_base`]), each service's image from its Dockerfile with
/// the binary of `programs` ([`build_service_images`]), then the images of others
/// ([`third_party_specs`]). `dir` holds the build contexts and archives meanwhile.
pub fn build_all(
    programs: &Programs,
    cli: &ContainerCli,
    repo_root: &Path,
    dir: &Path,
    report: &mut dyn FnMut(&str),
) -> Result<Vec<String>, BuildError> {
    let mut names = vec![prepare_base(cli, dir, report)?];
    names.extend(build_service_images(
        cli,
        repo_root,
        &programs.services,
        dir,
        report,
    )?);
    let specs = third_party_specs(programs)?;
    for image in build_and_load(&specs, cli, dir, &mut |image| report(&image.name))? {
        names.push(image.name);
    }
    Ok(names)
}

/// Makes sure `cli` has [`DISTROLESS_CC`]: an image of that name that someone pulled is kept;
/// otherwise (absent, or one written here before) it is written from this machine's Debian
/// packages ([`distroless_cc_image`]) and loaded. Returns its name.
pub fn prepare_base(
    cli: &ContainerCli,
    dir: &Path,
    report: &mut dyn FnMut(&str),
) -> Result<String, BuildError> {
    // `created_by` of the image writer's one history entry marks an image written here.
    let history = cli.run(&[
        "image",
        "inspect",
        "--format",
        "{{range .History}}{{.CreatedBy}} {{end}}",
        DISTROLESS_CC,
    ]);
    if let Ok(history) = history
        && !history.contains(images::CREATED_BY)
    {
        report(&format!("{DISTROLESS_CC} (as found, not rebuilt)"));
        return Ok(DISTROLESS_CC.to_owned());
    }
    let spec = distroless_cc_image()?;
    build_and_load(std::slice::from_ref(&spec), cli, dir, &mut |image| {
        report(&image.name)
    })?;
    Ok(DISTROLESS_CC.to_owned())
}

/// Builds each service's image from its Dockerfile with `cli` (`<engine> build --build-arg
/// BINARIES=prebuilt`), under the name the manifests use, from a build context in `dir` that
/// holds only its binary. Returns the names.
pub fn build_service_images(
    cli: &ContainerCli,
    repo_root: &Path,
    services: &[(&'static str, PathBuf)],
    dir: &Path,
    report: &mut dyn FnMut(&str),
) -> Result<Vec<String>, BuildError> {
    let mut names = Vec::new();
    for (service, binary) in services {
        let name = service_image_name(service);
        let context = dir.join(format!("context-{service}"));
        let staged = context.join(format!("countersign-{service}"));
        stage(binary, &staged).map_err(|source| BuildError::Stage {
            image: name.clone(),
            binary: binary.clone(),
            source,
        })?;
        let file = repo_root.join(dockerfile(service)).display().to_string();
        let built = cli.run(&[
            "build",
            "--file",
            &file,
            "--build-arg",
            "BINARIES=prebuilt",
            "--tag",
            &name,
            &context.display().to_string(),
        ]);
        let _ = std::fs::remove_dir_all(&context);
        built.map_err(|source| BuildError::Build {
            image: name.clone(),
            source,
        })?;
        report(&name);
        names.push(name);
    }
    Ok(names)
}

/// `binary` at `staged` (a new directory): a hard link where they share a file system, else a
/// copy.
fn stage(binary: &Path, staged: &Path) -> std::io::Result<()> {
    if let Some(parent) = staged.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::hard_link(binary, staged).or_else(|_| std::fs::copy(binary, staged).map(drop))
}

/// Builds each service's image from its Dockerfile from source (`<engine> build`, context: the
/// repository root), under the name the manifests use. Needs a registry: the source stage starts
/// `FROM` Docker Hub's `rust` image and the last one from distroless. The images of others (NATS,
/// SPIRE) are then pulled by Compose itself.
pub fn build_from_source(
    cli: &ContainerCli,
    repo_root: &Path,
    report: &mut dyn FnMut(&str),
) -> Result<(), BuildError> {
    for service in SERVICES {
        let name = service_image_name(service);
        let file = repo_root.join(dockerfile(service)).display().to_string();
        let context = repo_root.display().to_string();
        cli.run(&["build", "--file", &file, "--tag", &name, &context])
            .map_err(|source| BuildError::Build {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_usr_moves_the_top_level_program_and_library_directories_under_usr() {
        assert_eq!(
            merged_usr("/lib/x86_64-linux-gnu/libc.so.6"),
            "usr/lib/x86_64-linux-gnu/libc.so.6"
        );
        assert_eq!(
            merged_usr("/lib64/ld-linux-x86-64.so.2"),
            "usr/lib64/ld-linux-x86-64.so.2"
        );
        assert_eq!(merged_usr("/sbin/ldconfig"), "usr/sbin/ldconfig");
        assert_eq!(merged_usr("/bin"), "usr/bin");
        // Only whole path components: `/libexec` and `/binaries` are not `/lib` and `/bin`.
        assert_eq!(merged_usr("/libexec/x"), "libexec/x");
        assert_eq!(merged_usr("/binaries"), "binaries");
        assert_eq!(
            merged_usr("/usr/lib/x86_64-linux-gnu/libssl.so.3"),
            "usr/lib/x86_64-linux-gnu/libssl.so.3"
        );
        assert_eq!(merged_usr("/etc/ld.so.conf.d"), "etc/ld.so.conf.d");
    }

    #[test]
    fn documentation_is_left_out_but_for_copyright_files() {
        assert!(kept("/usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert!(kept("/usr/share/zoneinfo/UTC"));
        assert!(kept("/usr/share/doc/libc6"));
        assert!(kept("/usr/share/doc/libc6/copyright"));
        assert!(!kept("/usr/share/doc/libc6/changelog.Debian.gz"));
        assert!(!kept("/usr/share/doc/libc6/examples/x"));
        assert!(!kept("/usr/share/man/man8/ld.so.8.gz"));
        assert!(!kept("/usr/share/locale/de/LC_MESSAGES/libc.mo"));
        assert!(!kept("/usr/share/lintian/overrides/libc6"));
    }

    /// On a Debian machine (this project's), the base holds the dynamic loader and glibc where a
    /// binary linked here looks for them, and runs as distroless's non-root user.
    #[test]
    fn the_base_made_of_debian_packages_has_the_loader_and_the_nonroot_user() {
        if !Path::new("/usr/bin/dpkg-query").exists() {
            eprintln!("skipped: no dpkg-query (not a Debian machine)");
            return;
        }
        let spec = distroless_cc_image().expect("the base image");
        let paths: Vec<&str> = spec.entries.iter().map(ImageEntry::path).collect();
        for wanted in [
            "usr/lib64/ld-linux-x86-64.so.2",
            "usr/lib/x86_64-linux-gnu/libc.so.6",
            "usr/lib/x86_64-linux-gnu/libgcc_s.so.1",
            "etc/ssl/certs/ca-certificates.crt",
            "etc/passwd",
            "lib64",
            "tmp",
            "home/nonroot",
        ] {
            assert!(paths.contains(&wanted), "{wanted} in the base");
        }
        assert!(
            spec.entries.iter().any(|entry| matches!(
                entry,
                ImageEntry::Symlink { path, target } if path == "lib64" && target == "usr/lib64"
            )),
            "/lib64 links into /usr"
        );
        assert!(
            !paths.iter().any(|path| path.starts_with("usr/share/man/")),
            "no manuals"
        );
        assert_eq!(spec.user, "65532:65532");
        assert_eq!(spec.working_dir, "/home/nonroot");
        assert!(spec.entrypoint.is_empty(), "no shell, no entrypoint");
    }
}
