//! A real etcd and kube-apiserver for tests, run the way controller-runtime's envtest runs them.
//!
//! [`KubeApiserver::start`] generates its certificates at test time (ECDSA P-256, with `rcgen`): a
//! serving CA and a serving certificate for `localhost`/`127.0.0.1`, a client CA and an admin client
//! certificate (CN `admin`, O `system:masters`), and a service-account signing key pair. It then
//! starts etcd (its own 0700 data directory, free loopback ports, no fsync) and kube-apiserver (RBAC
//! as the only authorizer, client-certificate and service-account token authentication, bound to
//! 127.0.0.1 on a free port), waits until `/readyz` answers 200 to the admin and namespace `default`
//! exists, and installs Tekton's TaskRun CRD from the fixtures, waiting until it is established and
//! served by discovery.
//!
//! There is no controller-manager: nothing garbage-collects, ServiceAccounts are not created for
//! you, and a deleted namespace stays `Terminating` for ever. Tests therefore work in namespaces of
//! their own ([`KubeApiserver::unique_namespace`]).
//!
//! [`KubeApiserver::restart`] kills both with SIGKILL and starts them again on etcd's data, the same
//! ports and the same certificates, as a crash of the control plane would (the chaos run uses it).
//!
//! [`KubeApiserver::shared`] gives one apiserver per test process, started on first use; a private
//! one ([`KubeApiserver::start`]) is stopped when its handle drops. Either way the process guard
//! (see [`crate::process`]) stops both peers and removes their directories when the test process
//! ends.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::wait::{await_condition, conditions};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use serde_json::{Value, json};

use crate::process::{PeerFailed, PeerProcess};
use crate::wait::{self, WaitError};
use crate::{error_lines, fixtures_dir, peers, ports, short_tempdir, unique_name};

/// How long etcd may take to report itself healthy.
const ETCD_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long kube-apiserver may take to become ready. It needs a few seconds on a laptop; a 2-core
/// machine that is also compiling needs far more.
const APISERVER_START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a CRD may take to be established and then served by discovery.
const CRD_TIMEOUT: Duration = Duration::from_secs(60);
/// How many times a peer is started on fresh ports when it exits before it is ready (another
/// process may take a free port between our probe and the peer's bind).
const START_ATTEMPTS: usize = 3;
/// The field manager of everything this harness applies.
const FIELD_MANAGER: &str = "countersign-test-support";
/// The name of the cluster, user and context in the kubeconfig.
const KUBECONFIG_NAME: &str = "countersign-test";
/// The ServiceAccount token lifetime asked for by [`KubeApiserver::client_as_service_account`].
const SERVICE_ACCOUNT_TOKEN_SECONDS: i64 = 3600;

/// Why [`KubeApiserver::start`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("generating the test certificates and keys")]
    Certificates(#[source] rcgen::Error),
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("building an HTTP client for the etcd health probe")]
    HttpClient(#[source] reqwest::Error),
    #[error("etcd did not become healthy")]
    Etcd(#[source] PeerFailed),
    #[error("kube-apiserver did not become ready")]
    Apiserver(#[source] PeerFailed),
    #[error("building the admin client")]
    AdminClient(#[source] ClientError),
    #[error("installing Tekton's TaskRun CRD")]
    TaskRunCrd(#[source] CrdError),
}

/// Why a [`kube::Client`] (or its [`kube::Config`]) could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("reading the kubeconfig")]
    Kubeconfig(#[source] KubeconfigError),
    #[error("building the client")]
    Build(#[source] kube::Error),
    #[error("requesting a token for ServiceAccount {namespace}/{name}")]
    TokenRequest {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("the TokenRequest for ServiceAccount {namespace}/{name} came back without a token")]
    TokenMissing { namespace: String, name: String },
}

/// Why [`KubeApiserver::install_crds`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing the YAML documents of {}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    #[error("document {index} of {} is not an apiextensions.k8s.io/v1 CustomResourceDefinition with a name, group and plural", path.display())]
    NotACrd { path: PathBuf, index: usize },
    #[error("applying CRD {name}")]
    Apply {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("watching CRD {name} for its Established condition")]
    Watch {
        name: String,
        #[source]
        source: kube::runtime::wait::Error,
    },
    #[error("CRD {name} was not established within {timeout:?}")]
    NotEstablished { name: String, timeout: Duration },
    #[error("discovery did not serve CRD {name}")]
    NotDiscovered {
        name: String,
        #[source]
        source: WaitError,
    },
}

/// Why reading a fixture ([`taskrun_fixture`], [`signed_termination_message`]) failed.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{} has no {what}", path.display())]
    Missing { path: PathBuf, what: String },
}

/// What [`KubeApiserver::start_with`] changes.
#[derive(Debug, Clone, Default)]
pub struct ApiserverOptions {
    /// `--authorization-mode` (default `RBAC`); a list flag, so it cannot be overridden by
    /// `extra_args`.
    pub authorization_mode: Option<String>,
    /// Flags appended after the defaults; a flag given twice takes its last value.
    pub extra_args: Vec<String>,
}

/// The files of a running apiserver: certificates, keys, kubeconfig and logs.
#[derive(Debug, Clone)]
struct Files {
    serving_ca_cert: PathBuf,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    client_ca_cert: PathBuf,
    admin_cert: PathBuf,
    admin_key: PathBuf,
    service_account_public_key: PathBuf,
    service_account_signing_key: PathBuf,
    kubeconfig: PathBuf,
    apiserver_log: PathBuf,
    etcd_data: PathBuf,
    etcd_log: PathBuf,
}

/// A running etcd and kube-apiserver with Tekton's TaskRun CRD installed.
///
/// Dropping it stops kube-apiserver, then etcd, and removes their directories.
#[derive(Debug)]
pub struct KubeApiserver {
    // Field order is drop order: the apiserver stops before its etcd.
    apiserver: PeerProcess,
    etcd: PeerProcess,
    port: u16,
    etcd_client_port: u16,
    etcd_peer_port: u16,
    options: ApiserverOptions,
    files: Files,
    started_in: Duration,
    /// The processes [`KubeApiserver::restart`] killed. Their guards remove the directories
    /// when they stop, so they stop with this handle, after the live processes.
    retired: Vec<PeerProcess>,
    kube_dir: tempfile::TempDir,
    etcd_dir: tempfile::TempDir,
}

// === impl KubeApiserver ===

impl KubeApiserver {
    /// Starts a private etcd and kube-apiserver and installs Tekton's TaskRun CRD.
    ///
    /// Prefer [`KubeApiserver::shared`] with a namespace per test: a start costs seconds and
    /// hundreds of MiB.
    pub async fn start() -> Result<KubeApiserver, StartError> {
        KubeApiserver::start_with(ApiserverOptions::default()).await
    }

    /// [`KubeApiserver::start`] with `options` (a real node's apiserver needs a few more flags).
    pub async fn start_with(options: ApiserverOptions) -> Result<KubeApiserver, StartError> {
        let began = Instant::now();
        let kube_dir = short_tempdir("cs-kube-");
        let etcd_dir = short_tempdir("cs-etcd-");
        let files = Files::new(kube_dir.path(), etcd_dir.path());

        let (etcd, etcd_client_port, etcd_peer_port) = start_etcd(&files, etcd_dir.path()).await?;
        let (apiserver, port) =
            start_apiserver(&files, kube_dir.path(), etcd_client_port, &options).await?;
        let mut kube = KubeApiserver {
            apiserver,
            etcd,
            port,
            etcd_client_port,
            etcd_peer_port,
            options,
            files,
            started_in: Duration::ZERO,
            retired: Vec::new(),
            kube_dir,
            etcd_dir,
        };
        kube.install_crds(&[taskrun_crd_path()])
            .await
            .map_err(StartError::TaskRunCrd)?;
        kube.started_in = began.elapsed();
        tracing::info!(
            url = %kube.url(),
            started_in = ?kube.started_in,
            "kube-apiserver is ready with the TaskRun CRD"
        );
        Ok(kube)
    }

    /// Kills kube-apiserver and etcd with SIGKILL, as a crash of the control plane would, then
    /// starts them again on etcd's data, the same ports and the same certificates: every object
    /// and resource version survives, and existing clients (kubeconfig, CA, admin certificate)
    /// reconnect to the same URL. Returns once the apiserver is ready and serves the TaskRun CRD
    /// again, with how long that took from the kill.
    ///
    /// Not for the [`KubeApiserver::shared`] apiserver (other tests use it at the same time).
    pub async fn restart(&mut self) -> Result<Duration, StartError> {
        let began = Instant::now();
        self.apiserver.signal(nix::sys::signal::Signal::SIGKILL);
        self.etcd.signal(nix::sys::signal::Signal::SIGKILL);
        for (name, process) in [("kube-apiserver", &self.apiserver), ("etcd", &self.etcd)] {
            wait::until_true(
                &format!("{name} to be gone after SIGKILL"),
                Duration::from_secs(10),
                || async { !process.is_running() },
            )
            .await
            .map_err(|error| {
                let failure = PeerFailed::from_wait(process, error);
                if name == "etcd" {
                    StartError::Etcd(failure)
                } else {
                    StartError::Apiserver(failure)
                }
            })?;
        }
        let etcd_dir = self.etcd_dir.path().to_owned();
        let etcd_ports = [self.etcd_client_port, self.etcd_peer_port];
        let etcd = spawn_etcd(
            &self.files,
            &etcd_dir,
            self.etcd_client_port,
            self.etcd_peer_port,
        )
        .await?;
        let etcd = match wait_until_healthy(&etcd, self.etcd_client_port).await? {
            EtcdStart::Healthy => etcd,
            EtcdStart::Exited => {
                return Err(StartError::Etcd(PeerFailed::new(
                    &etcd,
                    format!(
                        "etcd exited before it was healthy again on its data\n\
                         sockets on its ports (ss -tanp):\n{}",
                        sockets_on(&etcd_ports)
                    ),
                )));
            }
        };
        // The killed peers' guards wait for their stdin to close before they clean up; the
        // new peers wrote their pid files, so the old handles are kept until this one drops.
        let old_etcd = std::mem::replace(&mut self.etcd, etcd);
        self.retired.push(old_etcd);

        let kube_dir = self.kube_dir.path().to_owned();
        let args = apiserver_command_args(
            &self.files,
            &kube_dir,
            self.port,
            self.etcd_client_port,
            &self.options,
        );
        let apiserver = spawn_apiserver(&self.files, &kube_dir, &args).await?;
        let client = admin_client(&self.files.kubeconfig).map_err(StartError::AdminClient)?;
        match wait_until_ready(&apiserver, &client).await {
            Ok(ApiserverStart::Ready) => {}
            Ok(ApiserverStart::Exited) => {
                return Err(StartError::Apiserver(PeerFailed::new(
                    &apiserver,
                    "kube-apiserver exited before it was ready again on the same port",
                )));
            }
            Err(error) => {
                return Err(StartError::Apiserver(PeerFailed::from_wait(
                    &apiserver, error,
                )));
            }
        }
        let old_apiserver = std::mem::replace(&mut self.apiserver, apiserver);
        self.retired.push(old_apiserver);
        self.install_crds(&[taskrun_crd_path()])
            .await
            .map_err(StartError::TaskRunCrd)?;
        tracing::info!(url = %self.url(), took = ?began.elapsed(), "kube-apiserver restarted on etcd's data");
        Ok(began.elapsed())
    }

    /// The apiserver shared by every test in this process, started on first use.
    ///
    /// Safe to call from many tests (and their runtimes) at once: one caller starts it and the others
    /// wait. It is never dropped; the process guard stops it and removes its directories when the
    /// test process exits. Give each test its own namespace ([`KubeApiserver::unique_namespace`]).
    ///
    /// # Panics
    /// When the apiserver cannot start, with the reason and the peer's log tail: a test that needs a
    /// real apiserver cannot run without one, and must not pass. The next caller tries again.
    pub async fn shared() -> &'static KubeApiserver {
        match KubeApiserver::try_shared().await {
            Ok(kube) => kube,
            Err(error) => panic!(
                "the shared kube-apiserver did not start: {}",
                error_lines(&error)
            ),
        }
    }

    /// [`KubeApiserver::shared`], returning the error instead of panicking.
    pub async fn try_shared() -> Result<&'static KubeApiserver, StartError> {
        static SHARED: tokio::sync::OnceCell<KubeApiserver> = tokio::sync::OnceCell::const_new();
        SHARED.get_or_try_init(KubeApiserver::start).await
    }

    /// `https://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The apiserver's secure port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`, etcd's client URL.
    pub fn etcd_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.etcd_client_port)
    }

    /// A kubeconfig file for the admin user (client certificate, `system:masters`), with the
    /// certificates referenced by path: `kubectl --kubeconfig <path>` works against it.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.files.kubeconfig
    }

    /// The PEM file of the CA that signed the apiserver's serving certificate.
    pub fn ca_cert_path(&self) -> &Path {
        &self.files.serving_ca_cert
    }

    /// The PEM file of the CA the apiserver trusts for client certificates.
    pub fn client_ca_cert_path(&self) -> &Path {
        &self.files.client_ca_cert
    }

    /// The admin's client certificate and key (PEM files), e.g. for `--kubelet-client-certificate`.
    pub fn admin_cert_and_key_paths(&self) -> (&Path, &Path) {
        (&self.files.admin_cert, &self.files.admin_key)
    }

    /// kube-apiserver's log file.
    pub fn apiserver_log_path(&self) -> &Path {
        self.apiserver.log_path()
    }

    /// etcd's log file.
    pub fn etcd_log_path(&self) -> &Path {
        self.etcd.log_path()
    }

    /// The pids of kube-apiserver and etcd, in that order.
    pub fn pids(&self) -> (Option<u32>, Option<u32>) {
        (self.apiserver.pid(), self.etcd.pid())
    }

    /// How long [`KubeApiserver::start`] took, from nothing to the TaskRun CRD being served.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The last few KiB of kube-apiserver's log, for a failing test's message.
    pub fn apiserver_log_tail(&self) -> String {
        self.apiserver.log_tail()
    }

    /// The admin's client configuration, read from the kubeconfig (default namespace `default`).
    pub fn config(&self) -> Result<kube::Config, ClientError> {
        let kubeconfig =
            Kubeconfig::read_from(&self.files.kubeconfig).map_err(ClientError::Kubeconfig)?;
        kube::Config::try_from(kubeconfig).map_err(ClientError::Kubeconfig)
    }

    /// A new admin client (`system:masters`). Call it in each test: a client belongs to the tokio
    /// runtime it was made on.
    ///
    /// # Panics
    /// When the kubeconfig cannot be read back. The same files served the readiness probe, so this
    /// only happens if something deleted them.
    pub fn client(&self) -> kube::Client {
        match self
            .config()
            .and_then(|config| kube::Client::try_from(config).map_err(ClientError::Build))
        {
            Ok(client) => client,
            Err(error) => panic!("building the admin client: {}", error_lines(&error)),
        }
    }

    /// A new client that impersonates `user` in `groups` (the admin may impersonate anyone), so
    /// every request is authorized as that user.
    pub fn client_impersonating(
        &self,
        user: &str,
        groups: &[String],
    ) -> Result<kube::Client, ClientError> {
        let mut config = self.config()?;
        config.auth_info.impersonate = Some(user.to_owned());
        config.auth_info.impersonate_groups = Some(groups.to_vec());
        kube::Client::try_from(config).map_err(ClientError::Build)
    }

    /// A new client that authenticates as ServiceAccount `namespace/name` with a real token from the
    /// TokenRequest API (signed with the apiserver's service-account key). The ServiceAccount must
    /// exist ([`KubeApiserver::create_service_account`]).
    pub async fn client_as_service_account(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<kube::Client, ClientError> {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client(), namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: Vec::new(),
                expiration_seconds: Some(SERVICE_ACCOUNT_TOKEN_SECONDS),
                ..TokenRequestSpec::default()
            },
            ..TokenRequest::default()
        };
        let token_request_error = |source| ClientError::TokenRequest {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source,
        };
        let issued = accounts
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .map_err(token_request_error)?;
        let token = issued
            .status
            .map(|status| status.token)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| ClientError::TokenMissing {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })?;
        let user = json!({ "token": token });
        let kubeconfig =
            kubeconfig_document(&self.url(), &self.files.serving_ca_cert, namespace, user);
        let kubeconfig =
            Kubeconfig::from_yaml(&kubeconfig.to_string()).map_err(ClientError::Kubeconfig)?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(ClientError::Kubeconfig)?;
        kube::Client::try_from(config).map_err(ClientError::Build)
    }

    /// Creates namespace `name`.
    pub async fn create_namespace(&self, name: &str) -> Result<Namespace, kube::Error> {
        let namespaces: Api<Namespace> = Api::all(self.client());
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        namespaces.create(&PostParams::default(), &namespace).await
    }

    /// Creates a namespace named `<prefix>-<random>` and returns its name.
    pub async fn unique_namespace(&self, prefix: &str) -> Result<String, kube::Error> {
        let name = unique_name(prefix);
        self.create_namespace(&name).await?;
        Ok(name)
    }

    /// Creates ServiceAccount `namespace/name` (no controller-manager creates any for us).
    pub async fn create_service_account(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<ServiceAccount, kube::Error> {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client(), namespace);
        let account = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        accounts.create(&PostParams::default(), &account).await
    }

    /// Asks the apiserver's authorizer (RBAC) whether `user` in `groups` may do what `attributes`
    /// describe. RBAC sees new Roles and bindings a moment after they are created: poll for the
    /// answer you expect (see [`crate::wait::until`]).
    pub async fn subject_access_review(
        &self,
        user: &str,
        groups: &[String],
        attributes: ResourceAttributes,
    ) -> Result<bool, kube::Error> {
        let reviews: Api<SubjectAccessReview> = Api::all(self.client());
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.to_owned()),
                groups: Some(groups.to_vec()),
                resource_attributes: Some(attributes),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let answer = reviews.create(&PostParams::default(), &review).await?;
        Ok(answer.status.is_some_and(|status| status.allowed))
    }

    /// Applies every CustomResourceDefinition in `paths` (each file may hold several YAML
    /// documents), then waits until each is established and discovery serves each of its served
    /// versions. Applying is idempotent (server-side apply), so tests may install the same CRDs
    /// concurrently. Returns the CRDs' names in file order.
    pub async fn install_crds(&self, paths: &[impl AsRef<Path>]) -> Result<Vec<String>, CrdError> {
        let mut crds = Vec::new();
        for path in paths {
            crds.extend(read_crds(path.as_ref())?);
        }
        let client = self.client();
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        let apply = PatchParams::apply(FIELD_MANAGER).force();
        for crd in &crds {
            api.patch(&crd.name, &apply, &Patch::Apply(&crd.document))
                .await
                .map_err(|source| CrdError::Apply {
                    name: crd.name.clone(),
                    source,
                })?;
        }
        for crd in &crds {
            wait_until_established(&api, &crd.name).await?;
            wait_until_discovered(&client, crd).await?;
        }
        Ok(crds.into_iter().map(|crd| crd.name).collect())
    }
}

// === impl Files ===

impl Files {
    fn new(kube_dir: &Path, etcd_dir: &Path) -> Files {
        Files {
            serving_ca_cert: kube_dir.join("serving-ca.crt"),
            serving_cert: kube_dir.join("apiserver.crt"),
            serving_key: kube_dir.join("apiserver.key"),
            client_ca_cert: kube_dir.join("client-ca.crt"),
            admin_cert: kube_dir.join("admin.crt"),
            admin_key: kube_dir.join("admin.key"),
            service_account_public_key: kube_dir.join("sa-signer.pub"),
            service_account_signing_key: kube_dir.join("sa-signer.key"),
            kubeconfig: kube_dir.join("kubeconfig"),
            apiserver_log: kube_dir.join("kube-apiserver.log"),
            etcd_data: etcd_dir.join("data"),
            etcd_log: etcd_dir.join("etcd.log"),
        }
    }
}

/// Tekton's TaskRun CRD in the fixtures (v1 stored, v1beta1 served).
pub fn taskrun_crd_path() -> PathBuf {
    fixtures_dir().join("tekton/crds/300-taskrun.yaml")
}

/// `tekton.dev/v1` `TaskRun`, for `Api::<DynamicObject>::namespaced_with(client, ns, &taskrun_resource())`.
pub fn taskrun_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("tekton.dev", "v1", "TaskRun"),
        "taskruns",
    )
}

/// Creates `object` (a `resource` in `namespace`, `None` for cluster-scoped) with
/// `fieldValidation=Strict`: an unknown or duplicate field is refused with 400 Bad Request, where a
/// plain create would prune it with a warning. (Server-side apply with `validation_strict()` of an
/// object with an unknown field fails too, but with 500 "failed to create typed patch object ...
/// field not declared in schema" from kube-apiserver 1.37, so tests that check a manifest's fields
/// are better served by this.)
pub async fn create_strict(
    client: &kube::Client,
    resource: &ApiResource,
    namespace: Option<&str>,
    object: &impl serde::Serialize,
) -> Result<DynamicObject, kube::Error> {
    post_strict(client, resource, namespace, object, "").await
}

/// [`create_strict`] as a server-side dry run (`dryRun=All`): authentication, authorization,
/// defaulting, schema validation and admission all run, and nothing is stored.
pub async fn create_strict_dry_run(
    client: &kube::Client,
    resource: &ApiResource,
    namespace: Option<&str>,
    object: &impl serde::Serialize,
) -> Result<DynamicObject, kube::Error> {
    post_strict(client, resource, namespace, object, "&dryRun=All").await
}

async fn post_strict(
    client: &kube::Client,
    resource: &ApiResource,
    namespace: Option<&str>,
    object: &impl serde::Serialize,
    extra_query: &str,
) -> Result<DynamicObject, kube::Error> {
    use kube::Resource as _;
    let path = DynamicObject::url_path(resource, namespace);
    let body = serde_json::to_vec(object).map_err(kube::Error::SerdeError)?;
    let request = http::Request::post(format!(
        "{path}?fieldValidation=Strict&fieldManager={FIELD_MANAGER}{extra_query}"
    ))
    .header(http::header::CONTENT_TYPE, "application/json")
    .body(body)
    .map_err(kube::Error::HttpError)?;
    client.request(request).await
}

/// The user name of ServiceAccount `namespace/name`: `system:serviceaccount:<namespace>:<name>`.
pub fn service_account_user(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// The groups every ServiceAccount token of `namespace` carries.
pub fn service_account_groups(namespace: &str) -> Vec<String> {
    vec![
        "system:serviceaccounts".to_owned(),
        format!("system:serviceaccounts:{namespace}"),
        "system:authenticated".to_owned(),
    ]
}

/// A TaskRun fixture, ready to create in a namespace of a test's own.
#[derive(Debug, Clone)]
pub struct TaskRunFixture {
    /// The TaskRun without `status` and without the fields the server sets (`uid`,
    /// `resourceVersion`, `generation`, `creationTimestamp`, `managedFields`), in the namespace given.
    pub object: DynamicObject,
    /// The fixture's `status`, for a patch of the status subresource (`Value::Null` if it has none).
    pub status: Value,
}

/// Reads `fixtures/tekton/taskrun/<file_name>` and adapts it to `namespace` (see [`TaskRunFixture`]).
pub fn taskrun_fixture(file_name: &str, namespace: &str) -> Result<TaskRunFixture, FixtureError> {
    let path = fixtures_dir().join("tekton/taskrun").join(file_name);
    let text = std::fs::read_to_string(&path).map_err(|source| FixtureError::Read {
        path: path.clone(),
        source,
    })?;
    let mut object: DynamicObject =
        serde_json::from_str(&text).map_err(|source| FixtureError::Parse {
            path: path.clone(),
            source,
        })?;
    let status = match &mut object.data {
        Value::Object(fields) => fields.remove("status").unwrap_or(Value::Null),
        _ => Value::Null,
    };
    let metadata = &mut object.metadata;
    metadata.namespace = Some(namespace.to_owned());
    metadata.uid = None;
    metadata.resource_version = None;
    metadata.generation = None;
    metadata.creation_timestamp = None;
    metadata.managed_fields = None;
    Ok(TaskRunFixture { object, status })
}

/// Reads and parses the JSON fixture at `path`.
fn read_json(path: PathBuf) -> Result<Value, FixtureError> {
    let text = std::fs::read_to_string(&path).map_err(|source| FixtureError::Read {
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| FixtureError::Parse { path, source })
}

/// The raw termination message the entrypointer writes for `step` (`step-clone`, `step-build`),
/// signed with a real SVID: `rawTerminationMessage` of the SPIRE fixtures' signed-results vector.
pub fn signed_termination_message(step: &str) -> Result<String, FixtureError> {
    let path = fixtures_dir().join("tekton/spire/generated/signed-results.json");
    let vector = read_json(path.clone())?;
    vector["steps"][step]["rawTerminationMessage"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| FixtureError::Missing {
            path,
            what: format!("signed termination message of {step}"),
        })
}

/// A pod's container status as the kubelet reports it: container `name` of `image` in `state`
/// (`{"running": ...}` or [`terminated_state`]).
pub fn container_status(name: &str, image: &str, state: Value) -> Value {
    json!({
        "name": name,
        "image": image,
        "imageID": format!("{image}@sha256:{}", "0".repeat(64)),
        "ready": false,
        "restartCount": 0,
        "started": false,
        "state": state,
    })
}

/// The state of container `name` that exited with code 0, with `message` as its termination
/// message when given.
pub fn terminated_state(name: &str, message: Option<&str>) -> Value {
    let mut terminated = json!({
        "exitCode": 0,
        "reason": "Completed",
        "startedAt": "2026-08-20T10:00:05Z",
        "finishedAt": "2026-08-20T10:00:09Z",
        "containerID": format!("containerd://{name}"),
    });
    if let Some(message) = message {
        terminated["message"] = Value::from(message);
    }
    json!({ "terminated": terminated })
}

// === certificates ===

/// Generates every certificate and key and writes them, and the admin kubeconfig, to `files`.
fn write_certificates(files: &Files) -> Result<(), StartError> {
    let generated = generate_certificates().map_err(StartError::Certificates)?;
    for (path, contents) in [
        (&files.serving_ca_cert, &generated.serving_ca_cert),
        (&files.serving_cert, &generated.serving_cert),
        (&files.serving_key, &generated.serving_key),
        (&files.client_ca_cert, &generated.client_ca_cert),
        (&files.admin_cert, &generated.admin_cert),
        (&files.admin_key, &generated.admin_key),
        (
            &files.service_account_public_key,
            &generated.service_account_public_key,
        ),
        (
            &files.service_account_signing_key,
            &generated.service_account_signing_key,
        ),
    ] {
        write_file(path, contents)?;
    }
    Ok(())
}

/// Creates `path` (mode 0700, as a temporary directory is) if it is missing.
fn create_dir(path: &Path) -> Result<(), StartError> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| StartError::Write {
            path: path.to_owned(),
            source,
        })
}

fn write_file(path: &Path, contents: &str) -> Result<(), StartError> {
    std::fs::write(path, contents).map_err(|source| StartError::Write {
        path: path.to_owned(),
        source,
    })
}

/// PEM texts of everything kube-apiserver and its admin need.
struct GeneratedCertificates {
    serving_ca_cert: String,
    serving_cert: String,
    serving_key: String,
    client_ca_cert: String,
    admin_cert: String,
    admin_key: String,
    service_account_public_key: String,
    service_account_signing_key: String,
}

fn generate_certificates() -> Result<GeneratedCertificates, rcgen::Error> {
    let (serving_ca_params, serving_ca_key) = certificate_authority("countersign-test serving CA")?;
    let serving_ca_cert = serving_ca_params.self_signed(&serving_ca_key)?;
    let serving_issuer = Issuer::new(serving_ca_params, serving_ca_key);

    let serving_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut serving_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    serving_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    serving_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    serving_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_cert = serving_params.signed_by(&serving_key, &serving_issuer)?;

    let (client_ca_params, client_ca_key) = certificate_authority("countersign-test client CA")?;
    let client_ca_cert = client_ca_params.self_signed(&client_ca_key)?;
    let client_issuer = Issuer::new(client_ca_params, client_ca_key);

    let admin_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut admin_params = CertificateParams::new(Vec::<String>::new())?;
    admin_params.distinguished_name = rcgen::DistinguishedName::new();
    admin_params
        .distinguished_name
        .push(DnType::CommonName, "admin");
    admin_params
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    admin_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    admin_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let admin_cert = admin_params.signed_by(&admin_key, &client_issuer)?;

    let service_account_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;

    Ok(GeneratedCertificates {
        serving_ca_cert: serving_ca_cert.pem(),
        serving_cert: serving_cert.pem(),
        serving_key: serving_key.serialize_pem(),
        client_ca_cert: client_ca_cert.pem(),
        admin_cert: admin_cert.pem(),
        admin_key: admin_key.serialize_pem(),
        service_account_public_key: service_account_key.public_key_pem(),
        service_account_signing_key: service_account_key.serialize_pem(),
    })
}

/// The parameters and key of a self-signed CA named `common_name`.
fn certificate_authority(common_name: &str) -> Result<(CertificateParams, KeyPair), rcgen::Error> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok((params, key))
}

/// A kubeconfig document (JSON, which is YAML) for one user of the apiserver at `url`.
fn kubeconfig_document(url: &str, ca_cert: &Path, namespace: &str, user: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": KUBECONFIG_NAME,
            "cluster": { "server": url, "certificate-authority": ca_cert.display().to_string() },
        }],
        "users": [{ "name": KUBECONFIG_NAME, "user": user }],
        "contexts": [{
            "name": KUBECONFIG_NAME,
            "context": { "cluster": KUBECONFIG_NAME, "user": KUBECONFIG_NAME, "namespace": namespace },
        }],
        "current-context": KUBECONFIG_NAME,
    })
}

// === etcd ===

/// Starts etcd on free ports and waits until `/health` says healthy. Returns it and its client port.
async fn start_etcd(files: &Files, etcd_dir: &Path) -> Result<(PeerProcess, u16, u16), StartError> {
    let mut last_failure = None;
    for _ in 0..START_ATTEMPTS {
        // The guard of a failed attempt removed the directory when its etcd exited.
        create_dir(etcd_dir)?;
        let client_port = ports::free_port();
        let peer_port = ports::free_port();
        let process = spawn_etcd(files, etcd_dir, client_port, peer_port).await?;
        match wait_until_healthy(&process, client_port).await? {
            EtcdStart::Healthy => return Ok((process, client_port, peer_port)),
            EtcdStart::Exited => {
                last_failure = Some(PeerFailed::new(
                    &process,
                    "etcd exited before it was healthy",
                ));
            }
        }
        // Dropping the process waits for its guard, which removes the directory.
        drop(process);
    }
    Err(StartError::Etcd(last_failure.unwrap_or_else(|| {
        PeerFailed {
            name: "etcd".to_owned(),
            message: "no start was attempted".to_owned(),
            log_tail: String::new(),
        }
    })))
}

/// What `ss -tanp` shows on `ports`, for a failure message (empty if `ss` is missing).
fn sockets_on(ports: &[u16]) -> String {
    let output = std::process::Command::new("ss").arg("-tanp").output();
    let Ok(output) = output else {
        return String::new();
    };
    let needles: Vec<String> = ports.iter().map(|port| format!(":{port} ")).collect();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| needles.iter().any(|needle| line.contains(needle.as_str())))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Starts etcd on `files.etcd_data` (new or kept) with the given ports; its guard removes
/// `etcd_dir` when it is stopped.
async fn spawn_etcd(
    files: &Files,
    etcd_dir: &Path,
    client_port: u16,
    peer_port: u16,
) -> Result<PeerProcess, StartError> {
    let cleanup = [(
        "COUNTERSIGN_GUARD_CLEANUP".to_owned(),
        etcd_dir.display().to_string(),
    )];
    let client_url = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let args = vec![
        "--name=default".to_owned(),
        format!("--data-dir={}", files.etcd_data.display()),
        format!("--listen-client-urls={client_url}"),
        format!("--advertise-client-urls={client_url}"),
        format!("--listen-peer-urls={peer_url}"),
        format!("--initial-advertise-peer-urls={peer_url}"),
        format!("--initial-cluster=default={peer_url}"),
        "--unsafe-no-fsync=true".to_owned(),
        // etcd's largest quota, not its 2 GiB default: the watcher's benchmark at 100,000
        // TaskRuns and their pods (each written twice: created, then its status) needs more.
        "--quota-backend-bytes=8589934592".to_owned(),
        "--log-level=warn".to_owned(),
    ];
    PeerProcess::spawn("etcd", &peers().etcd.path, &args, &cleanup, &files.etcd_log)
        .await
        .map_err(|error| spawn_failed("etcd", &files.etcd_log, error))
        .map_err(StartError::Etcd)
}

enum EtcdStart {
    Healthy,
    Exited,
}

/// Waits until etcd on `client_port` reports itself healthy, or exits.
async fn wait_until_healthy(
    process: &PeerProcess,
    client_port: u16,
) -> Result<EtcdStart, StartError> {
    let http = etcd_health_client()?;
    let health_url = format!("http://127.0.0.1:{client_port}/health");
    wait::until("etcd to report itself healthy", ETCD_START_TIMEOUT, || {
        let http = http.clone();
        let health_url = health_url.clone();
        let running = process.is_running();
        async move {
            if !running {
                return Some(EtcdStart::Exited);
            }
            etcd_is_healthy(&http, &health_url)
                .await
                .then_some(EtcdStart::Healthy)
        }
    })
    .await
    .map_err(|error| StartError::Etcd(PeerFailed::from_wait(process, error)))
}

/// A plain-HTTP client for etcd's `/health`. reqwest builds its TLS configuration even for plain
/// HTTP, and our rustls has no default provider installed, so it gets one (ring) that it never uses.
fn etcd_health_client() -> Result<reqwest::Client, StartError> {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|builder| {
        builder
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    });
    let tls = match tls {
        Ok(tls) => tls,
        // ring supports every safe default protocol version, so this cannot happen.
        Err(error) => unreachable!("ring supports rustls' default protocol versions: {error}"),
    };
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(StartError::HttpClient)
}

async fn etcd_is_healthy(http: &reqwest::Client, health_url: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Health {
        health: String,
    }
    let Ok(response) = http.get(health_url).send().await else {
        return false;
    };
    if !response.status().is_success() {
        return false;
    }
    response
        .json::<Health>()
        .await
        .is_ok_and(|health| health.health == "true")
}

// === kube-apiserver ===

/// Starts kube-apiserver against etcd and waits until `/readyz` answers the admin with 200 and
/// namespace `default` exists. Returns it and its port.
async fn start_apiserver(
    files: &Files,
    kube_dir: &Path,
    etcd_client_port: u16,
    options: &ApiserverOptions,
) -> Result<(PeerProcess, u16), StartError> {
    let mut last_failure = None;
    for _ in 0..START_ATTEMPTS {
        // The guard of a failed attempt removed the directory, certificates and all, when its
        // apiserver exited.
        create_dir(kube_dir)?;
        write_certificates(files)?;
        let port = ports::free_port();
        let url = format!("https://127.0.0.1:{port}");
        let admin = json!({
            "client-certificate": files.admin_cert.display().to_string(),
            "client-key": files.admin_key.display().to_string(),
        });
        let kubeconfig = kubeconfig_document(&url, &files.serving_ca_cert, "default", admin);
        write_file(&files.kubeconfig, &kubeconfig_yaml(&kubeconfig))?;
        let args = apiserver_command_args(files, kube_dir, port, etcd_client_port, options);
        let process = spawn_apiserver(files, kube_dir, &args).await?;
        let client = admin_client(&files.kubeconfig).map_err(StartError::AdminClient)?;
        match wait_until_ready(&process, &client).await {
            Ok(ApiserverStart::Ready) => return Ok((process, port)),
            Ok(ApiserverStart::Exited) => {
                last_failure = Some(PeerFailed::new(
                    &process,
                    "kube-apiserver exited before it was ready",
                ));
            }
            Err(error) => {
                return Err(StartError::Apiserver(PeerFailed::from_wait(
                    &process, error,
                )));
            }
        }
        // Dropping the process waits for its guard, which removes the directory.
        drop(process);
    }
    Err(StartError::Apiserver(last_failure.unwrap_or_else(|| {
        PeerFailed {
            name: "kube-apiserver".to_owned(),
            message: "no start was attempted".to_owned(),
            log_tail: String::new(),
        }
    })))
}

/// Starts kube-apiserver with `args`; its guard removes `kube_dir` when it is stopped.
async fn spawn_apiserver(
    files: &Files,
    kube_dir: &Path,
    args: &[String],
) -> Result<PeerProcess, StartError> {
    let cleanup = [(
        "COUNTERSIGN_GUARD_CLEANUP".to_owned(),
        kube_dir.display().to_string(),
    )];
    PeerProcess::spawn(
        "kube-apiserver",
        &peers().kube_apiserver.path,
        args,
        &cleanup,
        &files.apiserver_log,
    )
    .await
    .map_err(|error| spawn_failed("kube-apiserver", &files.apiserver_log, error))
    .map_err(StartError::Apiserver)
}

/// [`apiserver_args`] with `options` applied.
fn apiserver_command_args(
    files: &Files,
    kube_dir: &Path,
    port: u16,
    etcd_client_port: u16,
    options: &ApiserverOptions,
) -> Vec<String> {
    let mut args = apiserver_args(files, kube_dir, port, etcd_client_port);
    if let Some(mode) = &options.authorization_mode {
        args.retain(|arg| !arg.starts_with("--authorization-mode="));
        args.push(format!("--authorization-mode={mode}"));
    }
    args.extend(options.extra_args.iter().cloned());
    args
}

/// envtest's flags, plus an endpoint reconciler that does nothing (the apiserver would otherwise
/// publish 127.0.0.1 as the `kubernetes` Service's endpoint) and no priority-and-fairness machinery.
fn apiserver_args(files: &Files, kube_dir: &Path, port: u16, etcd_client_port: u16) -> Vec<String> {
    let path = |path: &Path| path.display().to_string();
    vec![
        format!("--etcd-servers=http://127.0.0.1:{etcd_client_port}"),
        format!("--cert-dir={}", kube_dir.display()),
        format!("--tls-cert-file={}", path(&files.serving_cert)),
        format!("--tls-private-key-file={}", path(&files.serving_key)),
        "--bind-address=127.0.0.1".to_owned(),
        "--advertise-address=127.0.0.1".to_owned(),
        format!("--secure-port={port}"),
        format!("--client-ca-file={}", path(&files.client_ca_cert)),
        "--authorization-mode=RBAC".to_owned(),
        format!("--service-account-issuer=https://127.0.0.1:{port}"),
        format!(
            "--service-account-key-file={}",
            path(&files.service_account_public_key)
        ),
        format!(
            "--service-account-signing-key-file={}",
            path(&files.service_account_signing_key)
        ),
        "--service-cluster-ip-range=10.0.0.0/24".to_owned(),
        "--disable-admission-plugins=ServiceAccount".to_owned(),
        "--allow-privileged=true".to_owned(),
        "--endpoint-reconciler-type=none".to_owned(),
        "--enable-priority-and-fairness=false".to_owned(),
        "--profiling=false".to_owned(),
    ]
}

/// The kubeconfig as YAML for people and `kubectl`; JSON if the YAML serializer refuses it.
fn kubeconfig_yaml(document: &Value) -> String {
    serde_saphyr::to_string(document).unwrap_or_else(|_| document.to_string())
}

fn admin_client(kubeconfig: &Path) -> Result<kube::Client, ClientError> {
    let kubeconfig = Kubeconfig::read_from(kubeconfig).map_err(ClientError::Kubeconfig)?;
    let config = kube::Config::try_from(kubeconfig).map_err(ClientError::Kubeconfig)?;
    kube::Client::try_from(config).map_err(ClientError::Build)
}

enum ApiserverStart {
    Ready,
    Exited,
}

async fn wait_until_ready(
    process: &PeerProcess,
    client: &kube::Client,
) -> Result<ApiserverStart, WaitError> {
    let began = Instant::now();
    let readiness = wait::until(
        "kube-apiserver /readyz to answer ok",
        APISERVER_START_TIMEOUT,
        || {
            let client = client.clone();
            let running = process.is_running();
            async move {
                if !running {
                    return Some(ApiserverStart::Exited);
                }
                let request = http::Request::get("/readyz").body(Vec::new()).ok()?;
                client
                    .request_text(request)
                    .await
                    .ok()
                    .map(|_| ApiserverStart::Ready)
            }
        },
    )
    .await?;
    if let ApiserverStart::Exited = readiness {
        return Ok(readiness);
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let remaining = APISERVER_START_TIMEOUT
        .saturating_sub(began.elapsed())
        .max(Duration::from_secs(10));
    wait::until("namespace default to exist", remaining, || {
        let namespaces = namespaces.clone();
        async move {
            namespaces
                .get_opt("default")
                .await
                .ok()
                .flatten()
                .map(|_| ())
        }
    })
    .await?;
    Ok(ApiserverStart::Ready)
}

fn spawn_failed(name: &str, log: &Path, error: crate::process::SpawnError) -> PeerFailed {
    PeerFailed {
        name: name.to_owned(),
        message: error.to_string(),
        log_tail: crate::process::log_tail(log),
    }
}

// === CRDs ===

/// One CRD document, with what the waits need.
#[derive(Debug)]
struct CrdDocument {
    name: String,
    group: String,
    plural: String,
    served_versions: Vec<String>,
    document: Value,
}

fn read_crds(path: &Path) -> Result<Vec<CrdDocument>, CrdError> {
    let text = std::fs::read_to_string(path).map_err(|source| CrdError::Read {
        path: path.to_owned(),
        source,
    })?;
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(&text).map_err(|source| CrdError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
    documents
        .into_iter()
        .enumerate()
        .map(|(index, document)| {
            crd_document(document).ok_or_else(|| CrdError::NotACrd {
                path: path.to_owned(),
                index,
            })
        })
        .collect()
}

fn crd_document(document: Value) -> Option<CrdDocument> {
    let text = |pointer: &str| {
        document
            .pointer(pointer)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    if text("/apiVersion")? != "apiextensions.k8s.io/v1"
        || text("/kind")? != "CustomResourceDefinition"
    {
        return None;
    }
    let served_versions = document
        .pointer("/spec/versions")?
        .as_array()?
        .iter()
        .filter(|version| version.get("served").and_then(Value::as_bool) == Some(true))
        .filter_map(|version| {
            version
                .get("name")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect();
    Some(CrdDocument {
        name: text("/metadata/name")?,
        group: text("/spec/group")?,
        plural: text("/spec/names/plural")?,
        served_versions,
        document,
    })
}

async fn wait_until_established(
    api: &Api<CustomResourceDefinition>,
    name: &str,
) -> Result<(), CrdError> {
    let established = await_condition(api.clone(), name, conditions::is_crd_established());
    match tokio::time::timeout(CRD_TIMEOUT, established).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(source)) => Err(CrdError::Watch {
            name: name.to_owned(),
            source,
        }),
        Err(_elapsed) => Err(CrdError::NotEstablished {
            name: name.to_owned(),
            timeout: CRD_TIMEOUT,
        }),
    }
}

/// Waits until discovery lists the CRD's plural in every served version (as envtest does):
/// discovery lags behind `Established`.
async fn wait_until_discovered(client: &kube::Client, crd: &CrdDocument) -> Result<(), CrdError> {
    for version in &crd.served_versions {
        let group_version = format!("{}/{version}", crd.group);
        wait::until_true(
            &format!("discovery to serve {} in {group_version}", crd.plural),
            CRD_TIMEOUT,
            || {
                let client = client.clone();
                let group_version = group_version.clone();
                async move {
                    client
                        .list_api_group_resources(&group_version)
                        .await
                        .is_ok_and(|list| {
                            list.resources
                                .iter()
                                .any(|resource| resource.name == crd.plural)
                        })
                }
            },
        )
        .await
        .map_err(|source| CrdError::NotDiscovered {
            name: crd.name.clone(),
            source,
        })?;
    }
    Ok(())
}
