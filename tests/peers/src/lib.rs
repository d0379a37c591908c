//! Builds the real peers Countersign is tested against (nats-server, spire-server, spire-agent, etcd,
//! kube-apiserver, and for a real node kubelet, kube-scheduler, kube-controller-manager and Tekton
//! Pipelines' controller, entrypoint, nop and events controller), kustomize to render the deployment manifests, and the
//! independent verifiers of our attestation formats (cosign, policy-controller's `policy-tester`, slsa-verifier, and dsse-verify: our own
//! few lines around go-securesystemslib's DSSE verifier), two OCI registries (CNCF Distribution, and
//! go-containerregistry's with the Referrers API on) with `oras`, a trace store (Jaeger v2), the SPIFFE CSI driver
//! with `kubelet-plugin-registrar` (our own program registering it with the kubelet), and Docker Compose
//! with natscli (to run `compose/` against podman), sigstore's RFC 3161 timestamp authority (its REST API
//! server run by our few lines: `timestamp-authority/main.go` says why not its `serve` command), from the Go module proxy, into a per-machine
//! cache outside the repository. The container runtime (containerd, runc, the CNI plugins) comes from
//! Debian's packages instead: see [`runtime`].
//!
//! The versions are pinned in one place: the `go.mod` of each small Go module under `tests/peers/`.
//! This crate reads them, keys the cache directory by module, version and a hash of `go.mod`, `go.sum`
//! and our own `.go` files, and runs `go build` only when that directory is missing. A file lock
//! serialises builds, so parallel test runs on one machine never build the same peer twice or see a
//! half-written binary.

pub mod runtime;

use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The oldest Go toolchain that builds every pinned module (Docker Compose v5.6.0 declares `go 1.26.8`).
pub const MINIMUM_GO: GoVersion = GoVersion {
    major: 1,
    minor: 26,
    patch: 8,
};

/// The one table of peers: each row names the [`Peer`], its field in [`Peers`], its binary's
/// file name, the [`GoModule`] that pins it and the Go package built. A new peer is one row,
/// plus its name in its module's `peers` (a test checks the two agree), and, for a new module,
/// one `GoModule` in [`MODULES`].
macro_rules! peer_table {
    ($(
        $(#[$doc:meta])*
        $variant:ident => $field:ident, $binary:literal, $module:ident, $package:literal;
    )*) => {
        /// One program built from a Go module.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Peer {
            $($(#[$doc])* $variant,)*
        }

        impl Peer {
            /// Every peer, in the table's order.
            pub const ALL: [Peer; [$(Peer::$variant),*].len()] = [$(Peer::$variant),*];

            /// The binary's file name.
            pub fn binary_name(self) -> &'static str {
                match self {
                    $(Peer::$variant => $binary,)*
                }
            }

            fn module(self) -> &'static GoModule {
                match self {
                    $(Peer::$variant => &$module,)*
                }
            }

            fn package(self) -> &'static str {
                match self {
                    $(Peer::$variant => $package,)*
                }
            }
        }

        /// Every peer, built.
        #[derive(Debug, Clone)]
        pub struct Peers {
            $(pub $field: PeerBinary,)*
        }

        impl Peers {
            pub fn get(&self, peer: Peer) -> &PeerBinary {
                match peer {
                    $(Peer::$variant => &self.$field,)*
                }
            }

            /// Every peer's binary, each made by `binary`.
            fn try_from_fn(
                mut binary: impl FnMut(Peer) -> Result<PeerBinary, EnsureError>,
            ) -> Result<Peers, EnsureError> {
                Ok(Peers {
                    $($field: binary(Peer::$variant)?,)*
                })
            }
        }
    };
}

peer_table! {
    NatsServer => nats_server, "nats-server", NATS, "github.com/nats-io/nats-server/v2";
    SpireServer => spire_server, "spire-server", SPIRE, "github.com/spiffe/spire/cmd/spire-server";
    SpireAgent => spire_agent, "spire-agent", SPIRE, "github.com/spiffe/spire/cmd/spire-agent";
    Etcd => etcd, "etcd", ETCD, "go.etcd.io/etcd/server/v3";
    KubeApiserver => kube_apiserver, "kube-apiserver", KUBE, "k8s.io/kubernetes/cmd/kube-apiserver";
    /// Not a peer but a build tool: renders `k8s/` for the manifest tests.
    Kustomize => kustomize, "kustomize", KUSTOMIZE, "sigs.k8s.io/kustomize/kustomize/v5";
    Kubelet => kubelet, "kubelet", KUBE, "k8s.io/kubernetes/cmd/kubelet";
    KubeScheduler => kube_scheduler, "kube-scheduler", KUBE, "k8s.io/kubernetes/cmd/kube-scheduler";
    KubeControllerManager => kube_controller_manager, "kube-controller-manager", KUBE, "k8s.io/kubernetes/cmd/kube-controller-manager";
    /// Tekton Pipelines' controller (TaskRun and PipelineRun reconcilers).
    TektonController => tekton_controller, "tekton-controller", TEKTON, "github.com/tektoncd/pipeline/cmd/controller";
    /// The entrypointer Tekton injects into every step (it signs results with SPIRE).
    TektonEntrypoint => tekton_entrypoint, "tekton-entrypoint", TEKTON, "github.com/tektoncd/pipeline/cmd/entrypoint";
    /// Tekton's nop image binary (stops sidecars).
    TektonNop => tekton_nop, "tekton-nop", TEKTON, "github.com/tektoncd/pipeline/cmd/nop";
    /// Tekton's events controller (sends the CloudEvents to `config-events`' sink).
    TektonEvents => tekton_events, "tekton-events", TEKTON, "github.com/tektoncd/pipeline/cmd/events";
    // --- Attestation verifiers (issue 16): independent consumers of our attestation formats.
    /// Our own small program around go-securesystemslib's DSSE envelope verifier.
    DsseVerify => dsse_verify, "dsse-verify", DSSE_VERIFY, "countersign.dev/tests/peers/dsse-verify";
    /// sigstore's `cosign` (reads Sigstore bundles).
    Cosign => cosign, "cosign", COSIGN, "github.com/sigstore/cosign/v3/cmd/cosign";
    /// sigstore policy-controller's `policy-tester` (its admission verification of a ClusterImagePolicy, on one image).
    PolicyTester => policy_tester, "policy-tester", POLICY_CONTROLLER, "github.com/sigstore/policy-controller/cmd/tester";
    /// `slsa-verifier` (reads SLSA VSAs).
    SlsaVerifier => slsa_verifier, "slsa-verifier", SLSA_VERIFIER, "github.com/slsa-framework/slsa-verifier/v2/cli/slsa-verifier";
    /// Our SPIRE server CredentialComposer plugin that adds code signing to the attestor's SVID.
    SpireCodeSigning => spire_code_signing, "spire-code-signing", SPIRE_CODE_SIGNING, "countersign.dev/tests/peers/spire-code-signing";
    // --- Trace store (issue 19): where the services' OTLP spans are read back from.
    /// Jaeger v2 (an OpenTelemetry Collector distribution with a query API).
    Jaeger => jaeger, "jaeger", JAEGER, "github.com/jaegertracing/jaeger/cmd/jaeger";
    // --- The SPIFFE CSI driver on the real node (issue 14).
    /// The SPIFFE CSI driver (`csi.spiffe.io`): mounts the agent's socket directory into pods.
    SpiffeCsiDriver => spiffe_csi_driver, "spiffe-csi-driver", SPIFFE_CSI, "github.com/spiffe/spiffe-csi/cmd/spiffe-csi-driver";
    /// Our own small program serving the kubelet's plugin-registration protocol for that driver.
    KubeletPluginRegistrar => kubelet_plugin_registrar, "kubelet-plugin-registrar", SPIFFE_CSI, "countersign.dev/tests/peers/spiffe-csi";

    // --- Compose (issue 19): runs compose/compose.yaml against podman's Docker API.
    /// Docker Compose v5 (the `docker compose` plugin, run standalone).
    DockerCompose => docker_compose, "docker-compose", COMPOSE, "github.com/docker/compose/v5/cmd";
    /// natscli's `nats`, for the nats-box image the Compose file names.
    NatsCli => nats_cli, "nats", COMPOSE, "github.com/nats-io/natscli/nats";

    // --- OCI registries (issue 16): where the exporter attaches bundles as referrers.
    /// The CNCF Distribution registry (no Referrers API: the tag-schema fallback).
    Registry => registry, "registry", REGISTRY, "github.com/distribution/distribution/v3/cmd/registry";
    /// Our own few lines printing a bcrypt htpasswd line for the registry's auth.
    RegistryHtpasswd => registry_htpasswd, "registry-htpasswd", REGISTRY, "countersign.dev/tests/peers/registry/htpasswd";
    /// go-containerregistry's registry with its OCI 1.1 Referrers API on (our few lines: see its `main.go`).
    ReferrersRegistry => referrers_registry, "referrers-registry", REFERRERS_REGISTRY, "countersign.dev/tests/peers/referrers-registry";
    /// `oras` (reads referrers: `oras discover`).
    Oras => oras, "oras", ORAS, "oras.land/oras/cmd/oras";

    // --- Timestamp authority (issue 17): RFC 3161 timestamps over attestation signatures.
    /// sigstore's timestamp authority (its REST API server, run by our few lines: see its `main.go`).
    TimestampAuthority => timestamp_authority, "timestamp-authority", TIMESTAMP_AUTHORITY, "countersign.dev/tests/peers/timestamp-authority";
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.binary_name())
    }
}

/// A Go module of ours under `tests/peers/` that pins one upstream module.
#[derive(Debug)]
struct GoModule {
    /// Directory under `tests/peers/`.
    dir: &'static str,
    /// The upstream module whose version names the cache entry.
    upstream: &'static str,
    /// The programs built from it.
    peers: &'static [Peer],
    /// cgo is needed by SPIRE's sqlite datastore; everything else is built static.
    cgo: bool,
    /// A rough figure for the progress message on a cold machine with 2 cores (measured on
    /// 2026-12-07, a cold `.ci/run` on this machine class).
    cold_build_estimate: &'static str,
}

const NATS: GoModule = GoModule {
    dir: "nats",
    upstream: "github.com/nats-io/nats-server/v2",
    peers: &[Peer::NatsServer],
    cgo: false,
    cold_build_estimate: "about 1 minute",
};
const SPIRE: GoModule = GoModule {
    dir: "spire",
    upstream: "github.com/spiffe/spire",
    peers: &[Peer::SpireServer, Peer::SpireAgent],
    cgo: true,
    cold_build_estimate: "about 8 minutes",
};
const ETCD: GoModule = GoModule {
    dir: "etcd",
    upstream: "go.etcd.io/etcd/server/v3",
    peers: &[Peer::Etcd],
    cgo: false,
    cold_build_estimate: "about 2 minutes",
};
const KUBE: GoModule = GoModule {
    dir: "kube",
    upstream: "k8s.io/kubernetes",
    peers: &[
        Peer::KubeApiserver,
        Peer::Kubelet,
        Peer::KubeScheduler,
        Peer::KubeControllerManager,
    ],
    cgo: false,
    cold_build_estimate: "about 11 minutes",
};
const KUSTOMIZE: GoModule = GoModule {
    dir: "kustomize",
    upstream: "sigs.k8s.io/kustomize/kustomize/v5",
    peers: &[Peer::Kustomize],
    cgo: false,
    cold_build_estimate: "about 1 minute",
};
const TEKTON: GoModule = GoModule {
    dir: "tekton",
    upstream: "github.com/tektoncd/pipeline",
    peers: &[
        Peer::TektonController,
        Peer::TektonEntrypoint,
        Peer::TektonNop,
        Peer::TektonEvents,
    ],
    cgo: false,
    cold_build_estimate: "about 4 minutes",
};
// --- Attestation verifiers (issue 16).
const DSSE_VERIFY: GoModule = GoModule {
    dir: "dsse-verify",
    upstream: "github.com/secure-systems-lab/go-securesystemslib",
    peers: &[Peer::DsseVerify],
    cgo: false,
    cold_build_estimate: "about 20 seconds",
};
const COSIGN: GoModule = GoModule {
    dir: "cosign",
    upstream: "github.com/sigstore/cosign/v3",
    peers: &[Peer::Cosign],
    cgo: false,
    cold_build_estimate: "about 5 minutes",
};
const POLICY_CONTROLLER: GoModule = GoModule {
    dir: "policy-controller",
    upstream: "github.com/sigstore/policy-controller",
    peers: &[Peer::PolicyTester],
    cgo: false,
    cold_build_estimate: "about 5 minutes",
};
const SLSA_VERIFIER: GoModule = GoModule {
    dir: "slsa-verifier",
    upstream: "github.com/slsa-framework/slsa-verifier/v2",
    peers: &[Peer::SlsaVerifier],
    cgo: false,
    cold_build_estimate: "about 2 minutes",
};
const SPIRE_CODE_SIGNING: GoModule = GoModule {
    dir: "spire-code-signing",
    upstream: "github.com/spiffe/spire-plugin-sdk",
    peers: &[Peer::SpireCodeSigning],
    cgo: false,
    cold_build_estimate: "about 30 seconds",
};
// --- Trace store (issue 19).
const JAEGER: GoModule = GoModule {
    dir: "jaeger",
    upstream: "github.com/jaegertracing/jaeger",
    peers: &[Peer::Jaeger],
    cgo: false,
    cold_build_estimate: "about 7 minutes",
};
// --- The SPIFFE CSI driver on the real node (issue 14).
const SPIFFE_CSI: GoModule = GoModule {
    dir: "spiffe-csi",
    upstream: "github.com/spiffe/spiffe-csi",
    peers: &[Peer::SpiffeCsiDriver, Peer::KubeletPluginRegistrar],
    cgo: false,
    cold_build_estimate: "about 2 minutes",
};

// --- Compose (issue 19).
const COMPOSE: GoModule = GoModule {
    dir: "compose",
    upstream: "github.com/docker/compose/v5",
    peers: &[Peer::DockerCompose, Peer::NatsCli],
    cgo: false,
    cold_build_estimate: "about 3 minutes",
};

// --- OCI registries (issue 16).
const REGISTRY: GoModule = GoModule {
    dir: "registry",
    upstream: "github.com/distribution/distribution/v3",
    peers: &[Peer::Registry, Peer::RegistryHtpasswd],
    cgo: false,
    cold_build_estimate: "about 3 minutes",
};
const REFERRERS_REGISTRY: GoModule = GoModule {
    dir: "referrers-registry",
    upstream: "github.com/google/go-containerregistry",
    peers: &[Peer::ReferrersRegistry],
    cgo: false,
    cold_build_estimate: "about 30 seconds",
};
const ORAS: GoModule = GoModule {
    dir: "oras",
    upstream: "oras.land/oras",
    peers: &[Peer::Oras],
    cgo: false,
    cold_build_estimate: "about 1 minute",
};

// --- Timestamp authority (issue 17).
const TIMESTAMP_AUTHORITY: GoModule = GoModule {
    dir: "timestamp-authority",
    upstream: "github.com/sigstore/timestamp-authority/v2",
    peers: &[Peer::TimestampAuthority],
    cgo: false,
    cold_build_estimate: "about 1 minute",
};

const MODULES: [&GoModule; 18] = [
    &NATS,
    &SPIRE,
    &ETCD,
    &KUBE,
    &KUSTOMIZE,
    &TEKTON,
    // Attestation verifiers.
    &DSSE_VERIFY,
    &COSIGN,
    &POLICY_CONTROLLER,
    &SLSA_VERIFIER,
    &SPIRE_CODE_SIGNING,
    // Trace store.
    &JAEGER,
    // SPIFFE CSI driver.
    &SPIFFE_CSI,
    // Compose.
    &COMPOSE,
    // OCI registries.
    &REGISTRY,
    &REFERRERS_REGISTRY,
    &ORAS,
    // Timestamp authority.
    &TIMESTAMP_AUTHORITY,
];

/// Where a built peer is, and what it is.
#[derive(Debug, Clone)]
pub struct PeerBinary {
    pub peer: Peer,
    /// The pinned upstream version, e.g. `v2.15.2`.
    pub version: String,
    pub path: PathBuf,
}

impl Peers {
    pub fn iter(&self) -> impl Iterator<Item = &PeerBinary> {
        Peer::ALL.into_iter().map(|peer| self.get(peer))
    }
}

/// What [`ensure`] reports while it works.
#[derive(Debug)]
pub enum Progress<'a> {
    /// A module's binaries are missing and are being built.
    Building {
        module: &'a str,
        version: &'a str,
        estimate: &'a str,
    },
    /// Still building, after this long.
    StillBuilding { module: &'a str, elapsed: Duration },
    /// Built, in this long.
    Built { module: &'a str, elapsed: Duration },
    /// Another process holds the build lock; waiting for it.
    WaitingForLock { path: &'a Path },
}

impl fmt::Display for Progress<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Progress::Building {
                module,
                version,
                estimate,
            } => write!(
                f,
                "building {module} {version} from the Go module proxy (once per machine; {estimate} on 2 cores)"
            ),
            Progress::StillBuilding { module, elapsed } => {
                write!(f, "still building {module} ({}s)", elapsed.as_secs())
            }
            Progress::Built { module, elapsed } => {
                write!(f, "built {module} in {}s", elapsed.as_secs())
            }
            Progress::WaitingForLock { path } => write!(
                f,
                "another process is building the peers; waiting for the lock {}",
                path.display()
            ),
        }
    }
}

/// Why the peers could not be located or built. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum EnsureError {
    #[error(
        "`go` was not found on PATH. Countersign's tests and demo run against real nats-server, SPIRE and \
         kube-apiserver, built from the Go module proxy: install Go {MINIMUM_GO} or newer (https://go.dev/dl/) \
         and gcc (for SPIRE's sqlite datastore), then run again"
    )]
    GoMissing,
    #[error(
        "Go {found} is too old: the pinned peers need Go {MINIMUM_GO} or newer (https://go.dev/dl/). \
         `go version` printed: {printed}"
    )]
    GoTooOld { found: GoVersion, printed: String },
    #[error(
        "no C compiler (`cc` or `gcc`) on PATH: spire-server is built with cgo for its sqlite datastore; \
         install gcc (Debian: apt-get install gcc) and run again"
    )]
    CCompilerMissing,
    #[error(
        "the Go module proxy refused or could not serve a module while building {module} \
         (GOPROXY={goproxy}). Check network access to the proxy, or set GOPROXY to a mirror that serves \
         the pinned versions in tests/peers/{module}/go.mod. go said:\n{stderr}"
    )]
    ProxyRefused {
        module: &'static str,
        goproxy: String,
        stderr: String,
    },
    #[error("`go build` failed for {module}:\n{stderr}")]
    BuildFailed {
        module: &'static str,
        stderr: String,
    },
    #[error("could not read the pin of {upstream} in {go_mod}")]
    PinMissing {
        upstream: &'static str,
        go_mod: PathBuf,
    },
    #[error("{peer} has not been built yet (expected at {path}); run `cargo xtask peers`")]
    NotBuilt { peer: Peer, path: PathBuf },
    #[error("no cache directory: set COUNTERSIGN_PEERS_CACHE, XDG_CACHE_HOME or HOME")]
    NoCacheDir,
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> EnsureError {
    move |source| EnsureError::Io {
        context: context.into(),
        source,
    }
}

/// A Go toolchain version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct GoVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl GoVersion {
    /// Parses `go1.26.8` or `1.26` (as in `go version` output and `go` directives).
    pub fn parse(text: &str) -> Option<GoVersion> {
        let text = text.strip_prefix("go").unwrap_or(text);
        // Release candidates (`go1.27rc1`) count as their release.
        let numeric: String = text
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let mut parts = numeric.split('.').map(|p| p.parse::<u32>());
        let major = parts.next()?.ok()?;
        let minor = parts.next()?.ok()?;
        let patch = match parts.next() {
            Some(p) => p.ok()?,
            None => 0,
        };
        Some(GoVersion {
            major,
            minor,
            patch,
        })
    }
}

impl fmt::Display for GoVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The directory holding the Go modules (this crate's own directory).
pub fn modules_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The per-machine cache root.
pub fn cache_root() -> Result<PathBuf, EnsureError> {
    if let Some(dir) = std::env::var_os("COUNTERSIGN_PEERS_CACHE").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
            Some(home) => PathBuf::from(home).join(".cache"),
            None => return Err(EnsureError::NoCacheDir),
        },
    };
    Ok(base.join("countersign").join("peers"))
}

/// A module's resolved pin and cache location.
#[derive(Debug)]
struct Pinned {
    module: &'static GoModule,
    version: String,
    /// `<cache>/<dir>-<version>-<hash>`
    entry: PathBuf,
}

impl Pinned {
    fn resolve(module: &'static GoModule, cache: &Path) -> Result<Pinned, EnsureError> {
        let dir = modules_dir().join(module.dir);
        let go_mod_path = dir.join("go.mod");
        let go_mod = fs::read_to_string(&go_mod_path)
            .map_err(io_error(format!("reading {}", go_mod_path.display())))?;
        let go_sum = fs::read(dir.join("go.sum")).unwrap_or_default();
        let go_sources = go_sources(&dir)?;
        let version = pinned_version(&go_mod, module.upstream).ok_or(EnsureError::PinMissing {
            upstream: module.upstream,
            go_mod: go_mod_path,
        })?;
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        context.update(go_mod.as_bytes());
        context.update(&go_sum);
        for (name, text) in &go_sources {
            context.update(name.as_bytes());
            context.update(text);
        }
        let hash = hex::encode(&context.finish().as_ref()[..6]);
        let entry = cache.join(format!("{}-{}-{}", module.dir, version, hash));
        Ok(Pinned {
            module,
            version,
            entry,
        })
    }

    fn binary(&self, peer: Peer) -> PathBuf {
        self.entry.join("bin").join(peer.binary_name())
    }

    fn is_built(&self) -> bool {
        self.module
            .peers
            .iter()
            .all(|peer| self.binary(*peer).is_file())
    }
}

/// The `.go` files of a module directory (our own programs, e.g. `dsse-verify`), sorted by name,
/// so that changing one rebuilds it. Modules that only pin an upstream program have none.
fn go_sources(dir: &Path) -> Result<Vec<(String, Vec<u8>)>, EnsureError> {
    let entries = fs::read_dir(dir).map_err(io_error(format!("listing {}", dir.display())))?;
    let mut sources = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(io_error(format!("listing {}", dir.display())))?
            .path();
        if path.extension().is_some_and(|extension| extension == "go") {
            let text = fs::read(&path).map_err(io_error(format!("reading {}", path.display())))?;
            let name = path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default();
            sources.push((name, text));
        }
    }
    sources.sort();
    Ok(sources)
}

/// Finds `<upstream> vX.Y.Z` in a go.mod `require` block or line.
fn pinned_version(go_mod: &str, upstream: &str) -> Option<String> {
    go_mod.lines().find_map(|line| {
        let line = line.trim().trim_start_matches("require").trim();
        let mut words = line.split_whitespace();
        (words.next()? == upstream)
            .then(|| words.next().map(str::to_owned))
            .flatten()
            .filter(|version| version.starts_with('v'))
    })
}

/// Finds the built peers without building anything.
pub fn locate() -> Result<Peers, EnsureError> {
    let cache = cache_root()?;
    let pinned = MODULES
        .iter()
        .map(|module| Pinned::resolve(module, &cache))
        .collect::<Result<Vec<_>, _>>()?;
    assemble(&pinned, |pinned, peer| {
        let path = pinned.binary(peer);
        if path.is_file() {
            Ok(path)
        } else {
            Err(EnsureError::NotBuilt { peer, path })
        }
    })
}

/// Builds whatever peer is missing from the cache, then returns them all.
pub fn ensure(progress: &mut dyn FnMut(Progress<'_>)) -> Result<Peers, EnsureError> {
    let cache = cache_root()?;
    let pinned = MODULES
        .iter()
        .map(|module| Pinned::resolve(module, &cache))
        .collect::<Result<Vec<_>, _>>()?;
    if pinned.iter().any(|p| !p.is_built()) {
        fs::create_dir_all(&cache).map_err(io_error(format!("creating {}", cache.display())))?;
        let lock_path = cache.join(".build.lock");
        let lock = fs::File::create(&lock_path)
            .map_err(io_error(format!("opening {}", lock_path.display())))?;
        if lock.try_lock().is_err() {
            progress(Progress::WaitingForLock { path: &lock_path });
            lock.lock()
                .map_err(io_error(format!("locking {}", lock_path.display())))?;
        }
        // Checked again under the lock: another process may have built it meanwhile.
        let missing: Vec<&Pinned> = pinned.iter().filter(|p| !p.is_built()).collect();
        if !missing.is_empty() {
            check_toolchain(missing.iter().any(|p| p.module.cgo))?;
        }
        for pinned in missing {
            build(pinned, progress)?;
        }
        // The lock is released when `lock` is dropped.
    }
    assemble(&pinned, |pinned, peer| Ok(pinned.binary(peer)))
}

fn assemble(
    pinned: &[Pinned],
    mut path_of: impl FnMut(&Pinned, Peer) -> Result<PathBuf, EnsureError>,
) -> Result<Peers, EnsureError> {
    Peers::try_from_fn(|peer| {
        let module = peer.module();
        let pinned = pinned
            .iter()
            .find(|p| p.module.dir == module.dir)
            .expect("every peer's module is in MODULES");
        Ok(PeerBinary {
            peer,
            version: pinned.version.clone(),
            path: path_of(pinned, peer)?,
        })
    })
}

/// The installed Go, checked against [`MINIMUM_GO`].
pub fn go_version() -> Result<GoVersion, EnsureError> {
    let output = match Command::new("go")
        .arg("version")
        .env("GOTOOLCHAIN", "local")
        .output()
    {
        Ok(output) => output,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Err(EnsureError::GoMissing);
        }
        Err(error) => return Err(io_error("running `go version`")(error)),
    };
    let printed = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    // `go version go1.26.8 linux/amd64`
    let found = printed
        .split_whitespace()
        .find_map(|word| {
            word.starts_with("go1")
                .then(|| GoVersion::parse(word))
                .flatten()
        })
        .ok_or_else(|| EnsureError::GoTooOld {
            found: GoVersion {
                major: 0,
                minor: 0,
                patch: 0,
            },
            printed: printed.clone(),
        })?;
    if found < MINIMUM_GO {
        return Err(EnsureError::GoTooOld { found, printed });
    }
    Ok(found)
}

fn check_toolchain(needs_cgo: bool) -> Result<(), EnsureError> {
    go_version()?;
    if needs_cgo {
        let has_cc = ["cc", "gcc"].iter().any(|compiler| {
            Command::new(compiler)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        });
        if !has_cc {
            return Err(EnsureError::CCompilerMissing);
        }
    }
    Ok(())
}

fn build(pinned: &Pinned, progress: &mut dyn FnMut(Progress<'_>)) -> Result<(), EnsureError> {
    let module = pinned.module;
    progress(Progress::Building {
        module: module.dir,
        version: &pinned.version,
        estimate: module.cold_build_estimate,
    });
    let started = Instant::now();
    // Built into a staging directory and renamed, so a half-built entry is never visible.
    let staging = pinned
        .entry
        .with_extension(format!("tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    let bin = staging.join("bin");
    fs::create_dir_all(&bin).map_err(io_error(format!("creating {}", bin.display())))?;

    for peer in module.peers {
        let mut command = Command::new("go");
        command
            .current_dir(modules_dir().join(module.dir))
            .env("GOTOOLCHAIN", "local")
            .env("GOFLAGS", "-mod=readonly")
            .env("CGO_ENABLED", if module.cgo { "1" } else { "0" })
            .args(["build", "-trimpath", "-pgo=off"])
            .arg("-ldflags")
            .arg(ldflags(*peer, &pinned.version))
            .arg("-o")
            .arg(bin.join(peer.binary_name()))
            .arg(peer.package())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().map_err(|error| match error.kind() {
            io::ErrorKind::NotFound => EnsureError::GoMissing,
            _ => io_error("running `go build`")(error),
        })?;
        let mut stderr_pipe = child.stderr.take().expect("stderr is piped");
        let (done_tx, done_rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr_pipe.read_to_string(&mut text);
            let _ = done_tx.send(text);
        });
        let stderr = loop {
            match done_rx.recv_timeout(Duration::from_secs(60)) {
                Ok(text) => break text,
                Err(mpsc::RecvTimeoutError::Timeout) => progress(Progress::StillBuilding {
                    module: module.dir,
                    elapsed: started.elapsed(),
                }),
                Err(mpsc::RecvTimeoutError::Disconnected) => break String::new(),
            }
        };
        let _ = reader.join();
        let status = child.wait().map_err(io_error("waiting for `go build`"))?;
        if !status.success() {
            let _ = fs::remove_dir_all(&staging);
            return Err(classify_build_failure(module.dir, stderr));
        }
    }
    let _ = fs::remove_dir_all(&pinned.entry);
    fs::rename(&staging, &pinned.entry)
        .map_err(io_error(format!("moving {} into place", staging.display())))?;
    progress(Progress::Built {
        module: module.dir,
        elapsed: started.elapsed(),
    });
    Ok(())
}

fn ldflags(peer: Peer, version: &str) -> String {
    let mut flags = String::from("-s -w");
    if peer == Peer::DockerCompose {
        // Else `docker compose version` says `dev`.
        flags.push_str(&format!(
            " -X github.com/docker/compose/v5/internal.Version={version}"
        ));
    }
    if peer.module().dir == KUBE.dir {
        // Without these, /version and `--version` say v0.0.0-master; they make them report the
        // pinned release.
        if let Some(rest) = version.strip_prefix('v') {
            let mut parts = rest.split('.');
            let major = parts.next().unwrap_or("1");
            let minor = parts.next().unwrap_or("0");
            for (key, value) in [
                ("gitVersion", version),
                ("gitMajor", major),
                ("gitMinor", minor),
            ] {
                flags.push_str(&format!(" -X k8s.io/component-base/version.{key}={value}"));
            }
        }
    }
    flags
}

fn classify_build_failure(module: &'static str, stderr: String) -> EnsureError {
    const PROXY_SIGNS: [&str; 6] = [
        "proxy.golang.org",
        "410 Gone",
        "404 Not Found",
        "unknown revision",
        "dial tcp",
        "verifying module",
    ];
    if PROXY_SIGNS.iter().any(|sign| stderr.contains(sign)) {
        let goproxy = Command::new("go")
            .args(["env", "GOPROXY"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        EnsureError::ProxyRefused {
            module,
            goproxy,
            stderr,
        }
    } else {
        EnsureError::BuildFailed { module, stderr }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_peer_is_built_by_its_module_and_every_module_is_known() {
        for peer in Peer::ALL {
            assert!(
                peer.module().peers.contains(&peer),
                "{peer} is missing from the `peers` of its module {}",
                peer.module().dir
            );
        }
        for module in MODULES {
            for peer in module.peers {
                assert_eq!(peer.module().dir, module.dir, "{peer} is in two modules");
            }
        }
    }

    #[test]
    fn parses_go_versions() {
        assert_eq!(
            GoVersion::parse("go1.26.8"),
            Some(GoVersion {
                major: 1,
                minor: 26,
                patch: 8
            })
        );
        assert_eq!(
            GoVersion::parse("1.25"),
            Some(GoVersion {
                major: 1,
                minor: 25,
                patch: 0
            })
        );
        assert_eq!(
            GoVersion::parse("go1.27rc1"),
            Some(GoVersion {
                major: 1,
                minor: 27,
                patch: 0
            })
        );
        assert_eq!(GoVersion::parse("devel"), None);
        assert!(GoVersion::parse("go1.25.9").unwrap() < MINIMUM_GO);
    }

    #[test]
    fn reads_pins_from_require_blocks_and_lines() {
        let go_mod = "module x\n\ngo 1.26.0\n\nrequire k8s.io/kubernetes v1.37.2\n\nrequire (\n\tgithub.com/spiffe/spire v1.13.3 // indirect\n)\n";
        assert_eq!(
            pinned_version(go_mod, "k8s.io/kubernetes").as_deref(),
            Some("v1.37.2")
        );
        assert_eq!(
            pinned_version(go_mod, "github.com/spiffe/spire").as_deref(),
            Some("v1.13.3")
        );
        assert_eq!(pinned_version(go_mod, "github.com/spiffe"), None);
    }

    #[test]
    fn every_module_pins_its_upstream() {
        let cache = tempfile::tempdir().unwrap();
        for module in MODULES {
            let pinned = Pinned::resolve(module, cache.path()).unwrap();
            assert!(
                pinned.version.starts_with('v'),
                "{}: {}",
                module.dir,
                pinned.version
            );
            assert!(!pinned.is_built());
        }
    }

    #[test]
    fn proxy_failures_are_told_apart_from_build_failures() {
        let refused = classify_build_failure(
            "kube",
            "go: k8s.io/api@v0.0.0: reading https://proxy.golang.org/k8s.io/api/@v/v0.0.0.mod: 410 Gone".into(),
        );
        assert!(matches!(
            refused,
            EnsureError::ProxyRefused { module: "kube", .. }
        ));
        let broken = classify_build_failure("nats", "main.go:3:1: syntax error".into());
        assert!(matches!(
            broken,
            EnsureError::BuildFailed { module: "nats", .. }
        ));
    }

    #[test]
    fn kube_apiserver_reports_its_release() {
        let flags = ldflags(Peer::KubeApiserver, "v1.37.2");
        assert!(flags.contains("gitVersion=v1.37.2"));
        assert!(flags.contains("gitMinor=37"));
        assert_eq!(ldflags(Peer::Kubelet, "v1.37.2"), flags);
        assert_eq!(ldflags(Peer::Etcd, "v3.6.16"), "-s -w");
    }
}
