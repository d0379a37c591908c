//! The container runtime a real node needs, from Debian's packages rather than the Go module proxy:
//! containerd 1.6, runc, the CNI plugins (`bridge`, `host-local`, `loopback`) and a static busybox
//! for the step image.
//!
//! [`ensure`] finds them; when one is missing and this process runs as root it installs the packages
//! with `apt-get` (after `apt-get update`), otherwise it fails with the command to run.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The Debian packages the node needs, installed together.
pub const PACKAGES: [&str; 5] = [
    "containerd",
    "runc",
    "containernetworking-plugins",
    "busybox-static",
    "iptables",
];

/// Where the runtime's programs are.
#[derive(Debug, Clone)]
pub struct ContainerRuntime {
    pub containerd: PathBuf,
    /// containerd's own client, used to import images.
    pub ctr: PathBuf,
    pub runc: PathBuf,
    /// The directory holding the CNI plugins.
    pub cni_bin_dir: PathBuf,
    /// A statically linked busybox, copied into the step image.
    pub busybox: PathBuf,
}

/// Why the runtime is not there. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "{missing} not found. A real node needs Debian's packages {packages}; run as root: \
         apt-get update && apt-get install -y {packages}",
        packages = PACKAGES.join(" ")
    )]
    Missing { missing: Missing },
    #[error("`{command}` failed ({status}):\n{output}")]
    AptFailed {
        command: String,
        status: String,
        output: String,
    },
    #[error("running `{command}`: {source}")]
    Io {
        command: String,
        #[source]
        source: io::Error,
    },
}

/// The first missing program.
#[derive(Debug, Clone)]
pub struct Missing(pub &'static str);

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

const CONTAINERD: &str = "/usr/bin/containerd";
const CTR: &str = "/usr/bin/ctr";
const RUNC: &str = "/usr/sbin/runc";
const CNI_BIN_DIR: &str = "/usr/lib/cni";
const BUSYBOX: &str = "/bin/busybox";
const IPTABLES: &str = "/usr/sbin/iptables";

/// Finds the runtime without installing anything.
pub fn locate() -> Result<ContainerRuntime, RuntimeError> {
    let required: [(&'static str, &str); 7] = [
        ("containerd", CONTAINERD),
        ("ctr", CTR),
        ("runc", RUNC),
        ("the CNI bridge plugin", "/usr/lib/cni/bridge"),
        ("the CNI host-local plugin", "/usr/lib/cni/host-local"),
        ("busybox", BUSYBOX),
        ("iptables", IPTABLES),
    ];
    if let Some((name, _)) = required.iter().find(|(_, path)| !Path::new(path).is_file()) {
        return Err(RuntimeError::Missing {
            missing: Missing(name),
        });
    }
    Ok(ContainerRuntime {
        containerd: CONTAINERD.into(),
        ctr: CTR.into(),
        runc: RUNC.into(),
        cni_bin_dir: CNI_BIN_DIR.into(),
        busybox: BUSYBOX.into(),
    })
}

/// Finds the runtime, installing Debian's packages first when something is missing and this process
/// is root.
pub fn ensure(progress: &mut dyn FnMut(&str)) -> Result<ContainerRuntime, RuntimeError> {
    match locate() {
        Ok(runtime) => Ok(runtime),
        Err(RuntimeError::Missing { missing }) if is_root() && has_apt() => {
            progress(&format!(
                "{missing} is missing: installing {} with apt-get",
                PACKAGES.join(" ")
            ));
            apt_get(&["update"])?;
            let mut install = vec!["install", "-y", "--no-install-recommends"];
            install.extend(PACKAGES);
            apt_get(&install)?;
            locate()
        }
        Err(error) => Err(error),
    }
}

/// The Debian packages a podman of the Compose test needs (podman 4.3 with netavark, runc,
/// and busybox for the images' shells).
pub const PODMAN_PACKAGES: [&str; 3] = ["podman", "runc", "busybox-static"];

/// Whether podman is installed; when it is not and this process is root with `apt-get`,
/// installs [`PODMAN_PACKAGES`] first. `Ok(false)`: missing, and not installable here.
pub fn ensure_podman(progress: &mut dyn FnMut(&str)) -> Result<bool, RuntimeError> {
    let installed = || {
        ["/usr/bin/podman", RUNC, BUSYBOX]
            .iter()
            .all(|path| Path::new(path).is_file())
    };
    if installed() {
        return Ok(true);
    }
    if !(is_root() && has_apt()) {
        return Ok(false);
    }
    progress(&format!(
        "podman is missing: installing {} with apt-get",
        PODMAN_PACKAGES.join(" ")
    ));
    apt_get(&["update"])?;
    let mut install = vec!["install", "-y"];
    install.extend(PODMAN_PACKAGES);
    apt_get(&install)?;
    Ok(installed())
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn has_apt() -> bool {
    Path::new("/usr/bin/apt-get").is_file()
}

fn apt_get(args: &[&str]) -> Result<(), RuntimeError> {
    let command = format!("apt-get {}", args.join(" "));
    let output = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| RuntimeError::Io {
            command: command.clone(),
            source,
        })?;
    if output.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    let tail: Vec<&str> = text.lines().rev().take(30).collect();
    Err(RuntimeError::AptFailed {
        command,
        status: output.status.to_string(),
        output: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_is_told_with_the_packages_to_install() {
        let error = RuntimeError::Missing {
            missing: Missing("runc"),
        };
        let text = error.to_string();
        assert!(text.starts_with("runc not found"), "{text}");
        assert!(
            text.contains("apt-get install -y containerd runc"),
            "{text}"
        );
    }
}
