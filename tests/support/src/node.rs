//! A real Kubernetes node for tests: containerd + runc + the kubelet (node `worker-1`) registered with
//! a real kube-apiserver, with kube-scheduler and kube-controller-manager, all on this machine and
//! without touching its global state.
//!
//! Everything runs in a mount + network namespace of the node's own, held by an `unshare`d `sleep`:
//!
//! - inside it, tmpfs covers `/run`, `/var/lib` and `/var/log` (containerd, libcni and the kubelet
//!   hard-code paths there), and files holding the values the kubelet wants are bind-mounted over the
//!   sysctls it would otherwise rewrite (`vm.overcommit_memory`, `kernel.panic`, …): the host's
//!   values are never changed;
//! - its loopback carries the node IP `10.77.0.1` (the kubelet refuses a loopback node IP), and
//!   the pods' bridge, veths and the kubelet's iptables chains stay in it;
//! - [`Node::start`] moves the calling thread into the namespace's network (so call it on a
//!   current-thread runtime, see [`Node::start`]): etcd, kube-apiserver, the scheduler and the
//!   controller-manager, and every process the test starts afterwards, listen on its loopback;
//!   containerd and the kubelet are also in its mount namespace (`nsenter`).
//!
//! The kubelet's pod cgroups live under a cgroup root of this node's own (`/countersign-<id>` in
//! every hierarchy), removed when the node stops, after every process left in it is killed.
//! Images come from [`crate::images`], imported with `ctr`: no registry is involved
//! (`imagePullPolicy: Never`). The configuration is the one `../shared/reference/node.md` found to
//! work on cgroup v1 without CAP_SYS_RESOURCE (`restrict_oom_score_adj = true`).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node as NodeObject;
use kube::api::Api;
use serde_json::json;

use crate::images::{self, ImageEntry, ImageSpec, WrittenImage};
use crate::kube::{ApiserverOptions, KubeApiserver};
use crate::process::{PeerFailed, PeerProcess, SpawnError};
use crate::wait;
use crate::{peers, ports, short_tempdir, unique_name};

/// The node's name, as the kubelet registers it.
pub const NODE_NAME: &str = "worker-1";
/// The node IP, on the namespace's loopback.
pub const NODE_IP: &str = "10.77.0.1";
/// The pods' subnet on the node's bridge.
const POD_SUBNET: &str = "10.88.0.0/24";
/// The pause image every pod sandbox runs.
pub const PAUSE_IMAGE: &str = "localhost/countersign/pause:1";
/// An image with Debian's static busybox as `/bin/sh` and the usual applets.
pub const BUSYBOX_IMAGE: &str = "localhost/countersign/busybox:1";
/// The containerd namespace the kubelet's CRI uses.
pub const CONTAINERD_NAMESPACE: &str = "k8s.io";

/// How long the namespace, containerd or the kubelet's registration may take.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a stopped process gets before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The sysctls the kubelet sets at start (`setupKernelTunables`) and the values it wants.
const KUBELET_SYSCTLS: [(&str, &str); 6] = [
    ("vm/overcommit_memory", "1"),
    ("vm/panic_on_oom", "0"),
    ("kernel/panic", "10"),
    ("kernel/panic_on_oops", "1"),
    ("kernel/keys/root_maxkeys", "1000000"),
    ("kernel/keys/root_maxbytes", "25000000"),
];

/// The busybox applets linked in [`BUSYBOX_IMAGE`] (Tekton's script init container needs
/// `sh`, `cat`, `touch`, `chmod`).
const BUSYBOX_APPLETS: [&str; 20] = [
    "sh",
    "cat",
    "touch",
    "chmod",
    "echo",
    "printf",
    "ls",
    "mkdir",
    "cp",
    "mv",
    "rm",
    "tee",
    "sleep",
    "env",
    "true",
    "false",
    "test",
    "base64",
    "sha256sum",
    "id",
];

/// Why [`Node::start`] failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("the container runtime is not available")]
    Runtime(#[source] countersign_peers::runtime::RuntimeError),
    #[error("a real node needs root (namespaces, mounts, cgroups); this process runs as uid {uid}")]
    NotRoot { uid: u32 },
    #[error(
        "Node::start must run on a current-thread tokio runtime: it moves its thread into the node's network namespace, and a multi-thread runtime's other workers would stay outside"
    )]
    NotCurrentThread,
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("building the pause program with gcc -static")]
    Pause { output: String },
    #[error("starting {name}")]
    Spawn {
        name: &'static str,
        #[source]
        source: SpawnError,
    },
    #[error("the node's namespace did not come up")]
    Namespace(#[source] PeerFailed),
    #[error("entering the node's network namespace")]
    EnterNamespace(#[source] std::io::Error),
    #[error("kube-apiserver did not start")]
    Apiserver(#[source] crate::kube::StartError),
    #[error("containerd did not answer")]
    Containerd(#[source] PeerFailed),
    #[error("writing image {name}")]
    WriteImage {
        name: String,
        #[source]
        source: images::WriteError,
    },
    #[error("importing image {name}")]
    ImportImage {
        name: String,
        #[source]
        source: images::ImportError,
    },
    #[error("node {NODE_NAME} did not become Ready")]
    NotReady(#[source] PeerFailed),
    #[error("creating cgroup {}", path.display())]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A running node. Dropping it stops everything and removes its cgroups and directory.
#[derive(Debug)]
pub struct Node {
    scheduler: Option<PeerProcess>,
    controller_manager: Option<PeerProcess>,
    kubelet: Option<PeerProcess>,
    containerd: Option<PeerProcess>,
    kube: Option<KubeApiserver>,
    holder: Option<PeerProcess>,
    cgroup_root: String,
    ctr: PathBuf,
    busybox: PathBuf,
    dir: tempfile::TempDir,
}

impl Node {
    /// Starts the namespace, kube-apiserver, containerd (with the pause and busybox images), the
    /// kubelet, kube-scheduler and kube-controller-manager, and waits until node `worker-1` is
    /// Ready without the `not-ready` taint, so pods schedule onto it.
    ///
    /// It moves the calling thread into the node's network namespace, and it refuses to run
    /// elsewhere than on a current-thread tokio runtime (`#[tokio::test]`'s default), whose only
    /// thread is the one moved. From then on, everything the test connects to or starts is inside.
    pub async fn start() -> Result<Node, NodeError> {
        if tokio::runtime::Handle::current().runtime_flavor()
            != tokio::runtime::RuntimeFlavor::CurrentThread
        {
            return Err(NodeError::NotCurrentThread);
        }
        let uid = nix::unistd::geteuid();
        if !uid.is_root() {
            return Err(NodeError::NotRoot { uid: uid.as_raw() });
        }
        let runtime = countersign_peers::runtime::ensure(&mut |message| {
            eprintln!("node: {message}");
        })
        .map_err(NodeError::Runtime)?;
        let dir = short_tempdir("cs-node-");
        let mut node = Node {
            scheduler: None,
            controller_manager: None,
            kubelet: None,
            containerd: None,
            kube: None,
            holder: None,
            cgroup_root: format!("/{}", unique_name("countersign")),
            ctr: runtime.ctr.clone(),
            busybox: runtime.busybox.clone(),
            dir,
        };
        node.start_namespace().await?;
        node.enter_network()?;

        let token = uuid::Uuid::new_v4().simple().to_string();
        let token_file = node.path("node-token.csv");
        write(
            &token_file,
            &format!("{token},system:node:{NODE_NAME},node-{NODE_NAME},system:nodes\n"),
        )?;
        let options = ApiserverOptions {
            authorization_mode: Some("Node,RBAC".to_owned()),
            extra_args: vec![
                "--enable-admission-plugins=NodeRestriction".to_owned(),
                "--kubelet-preferred-address-types=InternalIP".to_owned(),
                format!("--token-auth-file={}", token_file.display()),
            ],
        };
        let kube = KubeApiserver::start_with(options)
            .await
            .map_err(NodeError::Apiserver)?;
        node.kube = Some(kube);

        node.create_cgroup_root()?;
        node.start_containerd(&runtime).await?;
        node.import_base_images().await?;
        node.start_kubelet(&token).await?;
        node.start_control_plane().await?;
        node.wait_until_schedulable().await?;
        Ok(node)
    }

    /// The node's apiserver.
    pub fn kube(&self) -> &KubeApiserver {
        self.kube
            .as_ref()
            .expect("the apiserver runs while the node does")
    }

    /// A new admin client.
    pub fn client(&self) -> kube::Client {
        self.kube().client()
    }

    /// The node's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// containerd's socket.
    pub fn containerd_socket(&self) -> PathBuf {
        self.path("ctd/containerd.sock")
    }

    /// The kubelet's root directory (`--root-dir`).
    pub fn kubelet_root_dir(&self) -> PathBuf {
        self.path("kubelet")
    }

    /// The static busybox the step image is made of.
    pub fn busybox_path(&self) -> &Path {
        &self.busybox
    }

    /// The pid of the process holding the namespaces (for `nsenter -t`).
    pub fn namespace_pid(&self) -> Option<u32> {
        self.holder.as_ref().and_then(PeerProcess::pid)
    }

    /// The kubelet's log tail, for a failing test.
    pub fn kubelet_log_tail(&self) -> String {
        self.kubelet
            .as_ref()
            .map(PeerProcess::log_tail)
            .unwrap_or_default()
    }

    /// containerd's log tail, for a failing test.
    pub fn containerd_log_tail(&self) -> String {
        self.containerd
            .as_ref()
            .map(PeerProcess::log_tail)
            .unwrap_or_default()
    }

    /// Writes `image` and imports it into the kubelet's containerd namespace.
    pub async fn import_image(&self, image: &ImageSpec) -> Result<WrittenImage, NodeError> {
        let file_name = image.name.replace(['/', ':'], "_");
        let archive = self.path(&format!("images/{file_name}.tar"));
        let written = image
            .write_archive(&archive)
            .map_err(|source| NodeError::WriteImage {
                name: image.name.clone(),
                source,
            })?;
        images::import(
            &self.ctr,
            &self.containerd_socket(),
            CONTAINERD_NAMESPACE,
            &archive,
        )
        .await
        .map_err(|source| NodeError::ImportImage {
            name: image.name.clone(),
            source,
        })?;
        let _ = fs::remove_file(&archive);
        Ok(written)
    }

    /// Starts `program args…` inside the node's mount and network namespaces (as containerd and
    /// the kubelet run), logging to `<dir>/<name>.log`.
    pub async fn spawn_inside(
        &self,
        name: &'static str,
        program: &Path,
        args: &[String],
        envs: &[(String, String)],
    ) -> Result<PeerProcess, NodeError> {
        let pid = self
            .namespace_pid()
            .ok_or_else(|| NodeError::Namespace(self.holder_failed("the namespace is gone")))?;
        let mut nsenter_args = vec![
            "-t".to_owned(),
            pid.to_string(),
            "-m".to_owned(),
            "-n".to_owned(),
            "--".to_owned(),
            program.display().to_string(),
        ];
        nsenter_args.extend(args.iter().cloned());
        PeerProcess::spawn(
            name,
            Path::new("/usr/bin/nsenter"),
            &nsenter_args,
            envs,
            &self.path(&format!("{name}.log")),
        )
        .await
        .map_err(|source| NodeError::Spawn { name, source })
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    fn holder_failed(&self, message: &str) -> PeerFailed {
        match &self.holder {
            Some(holder) => PeerFailed::new(holder, message),
            None => PeerFailed {
                name: "namespace".to_owned(),
                message: message.to_owned(),
                log_tail: String::new(),
            },
        }
    }

    // === namespace ===

    async fn start_namespace(&mut self) -> Result<(), NodeError> {
        for relative in [
            "sysctl",
            "ctd",
            "cni/net.d",
            "cni/ipam",
            "kubelet",
            "podlogs",
            "vplugins",
            "images",
        ] {
            create_dir(&self.path(relative))?;
        }
        let mut shadows = String::new();
        for (name, wanted) in KUBELET_SYSCTLS {
            let current = fs::read_to_string(format!("/proc/sys/{name}")).unwrap_or_default();
            if current.trim() == wanted {
                continue;
            }
            let shadow = self.path(&format!("sysctl/{}", name.replace('/', ".")));
            write(&shadow, &format!("{wanted}\n"))?;
            shadows.push_str(&format!(
                "mount -n --bind '{}' /proc/sys/{name}\n",
                shadow.display()
            ));
        }
        let ready = self.path("namespace-ready");
        let script = format!(
            "set -e\n\
             mount -n -t tmpfs tmpfs /run\n\
             mount -n -t tmpfs tmpfs /var/lib\n\
             mount -n -t tmpfs tmpfs /var/log\n\
             {shadows}\
             ip link set lo up\n\
             ip addr add {NODE_IP}/32 dev lo\n\
             touch '{ready}'\n\
             exec sleep infinity\n",
            ready = ready.display()
        );
        let args = vec![
            "--mount".to_owned(),
            "--net".to_owned(),
            "--propagation".to_owned(),
            "private".to_owned(),
            "sh".to_owned(),
            "-c".to_owned(),
            script,
        ];
        let holder = PeerProcess::spawn(
            "namespace",
            Path::new("/usr/bin/unshare"),
            &args,
            &[],
            &self.path("namespace.log"),
        )
        .await
        .map_err(|source| NodeError::Spawn {
            name: "namespace",
            source,
        })?;
        let outcome = wait::until("the node's namespace to be set up", START_TIMEOUT, || {
            let ready = ready.is_file();
            let running = holder.is_running();
            async move {
                if ready {
                    Some(Ok(()))
                } else if !running {
                    Some(Err(()))
                } else {
                    None
                }
            }
        })
        .await;
        let failure = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(())) => Some(PeerFailed::new(&holder, "the namespace setup failed")),
            Err(error) => Some(PeerFailed::from_wait(&holder, error)),
        };
        self.holder = Some(holder);
        match failure {
            None => Ok(()),
            Some(failure) => Err(NodeError::Namespace(failure)),
        }
    }

    fn enter_network(&self) -> Result<(), NodeError> {
        let pid = self
            .namespace_pid()
            .ok_or_else(|| NodeError::Namespace(self.holder_failed("the namespace is gone")))?;
        let namespace =
            fs::File::open(format!("/proc/{pid}/ns/net")).map_err(NodeError::EnterNamespace)?;
        nix::sched::setns(namespace, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|errno| NodeError::EnterNamespace(errno.into()))
    }

    // === cgroups ===

    /// The cgroup directories of this node's root, one per mounted hierarchy.
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir("/sys/fs/cgroup") else {
            return Vec::new();
        };
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.join("cgroup.procs").is_file())
            .map(|hierarchy| hierarchy.join(self.cgroup_root.trim_start_matches('/')))
            .collect();
        dirs.sort();
        dirs
    }

    fn create_cgroup_root(&self) -> Result<(), NodeError> {
        for dir in self.cgroup_dirs() {
            fs::create_dir(&dir).map_err(|source| NodeError::Cgroup {
                path: dir.clone(),
                source,
            })?;
            // A new cpuset cgroup starts with no CPUs and no memory nodes: give it its parent's.
            for file in ["cpuset.cpus", "cpuset.mems"] {
                if let Some(parent) = dir.parent()
                    && let Ok(value) = fs::read_to_string(parent.join(file))
                {
                    let _ = fs::write(dir.join(file), value.trim());
                }
            }
        }
        Ok(())
    }

    /// Kills every process left in the node's cgroups (pods' containers), then removes them,
    /// deepest first.
    fn remove_cgroups(&self) {
        let dirs = self.cgroup_dirs();
        let deadline = std::time::Instant::now() + STOP_GRACE;
        loop {
            let mut left = 0;
            for dir in &dirs {
                for cgroup in cgroup_tree(dir) {
                    for pid in fs::read_to_string(cgroup.join("cgroup.procs"))
                        .unwrap_or_default()
                        .lines()
                        .filter_map(|line| line.trim().parse::<i32>().ok())
                    {
                        left += 1;
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
            if left == 0 || std::time::Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for dir in &dirs {
            let mut tree = cgroup_tree(dir);
            // Deepest first.
            tree.sort_by_key(|path| std::cmp::Reverse(path.components().count()));
            for cgroup in tree {
                let _ = fs::remove_dir(&cgroup);
            }
        }
    }

    /// Kills the containerd shims of this node's containerd (they outlive it by design), found by
    /// the socket path in their command line.
    fn kill_shims(&self) {
        let socket = self.containerd_socket().display().to_string();
        let Ok(entries) = fs::read_dir("/proc") else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains("containerd-shim") && cmdline.contains(&socket) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    // === containerd ===

    async fn start_containerd(
        &mut self,
        runtime: &countersign_peers::runtime::ContainerRuntime,
    ) -> Result<(), NodeError> {
        let root = self.dir.path().to_owned();
        let p = |relative: &str| root.join(relative).display().to_string();
        // Before containerd starts: it does not pick up a config that appears later.
        let cni = json!({
            "cniVersion": "1.0.0",
            "name": "countersign",
            "plugins": [{
                "type": "bridge",
                "bridge": "csbr0",
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": POD_SUBNET }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": p("cni/ipam"),
                },
            }],
        });
        write(
            &self.path("cni/net.d/10-countersign.conflist"),
            &cni.to_string(),
        )?;
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{opt}"
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{PAUSE_IMAGE}"
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    disable_hugetlb_controller = true
    tolerate_missing_hugetlb_controller = true
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "{cni_bin}"
      conf_dir = "{cni_conf}"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          BinaryName = "{runc}"
          Root = "{runc_root}"
          SystemdCgroup = false
"#,
            root = p("ctd/root"),
            state = p("ctd/state"),
            socket = p("ctd/containerd.sock"),
            opt = p("ctd/opt"),
            cni_bin = runtime.cni_bin_dir.display(),
            cni_conf = p("cni/net.d"),
            runc = runtime.runc.display(),
            runc_root = p("ctd/runc"),
        );
        let config_path = self.path("ctd/config.toml");
        write(&config_path, &config)?;
        let containerd = self
            .spawn_inside(
                "containerd",
                &runtime.containerd,
                &["--config".to_owned(), config_path.display().to_string()],
                &[],
            )
            .await?;
        let ctr = runtime.ctr.clone();
        let socket = self.containerd_socket();
        let outcome = wait::until("containerd to answer", START_TIMEOUT, || {
            let running = containerd.is_running();
            let ctr = ctr.clone();
            let socket = socket.clone();
            async move {
                if !running {
                    return Some(false);
                }
                let answered = tokio::process::Command::new(&ctr)
                    .arg("--address")
                    .arg(&socket)
                    .arg("version")
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .await
                    .is_ok_and(|status| status.success());
                answered.then_some(true)
            }
        })
        .await;
        let failure = match outcome {
            Ok(true) => None,
            Ok(false) => Some(PeerFailed::new(&containerd, "containerd exited")),
            Err(error) => Some(PeerFailed::from_wait(&containerd, error)),
        };
        self.containerd = Some(containerd);
        match failure {
            None => Ok(()),
            Some(failure) => Err(NodeError::Containerd(failure)),
        }
    }

    async fn import_base_images(&self) -> Result<(), NodeError> {
        let pause = self.build_pause().await?;
        let pause_image = ImageSpec::new(
            PAUSE_IMAGE,
            vec![ImageEntry::File {
                path: "pause".into(),
                source: pause,
                mode: 0o755,
            }],
            &["/pause"],
        );
        self.import_image(&pause_image).await?;
        self.import_image(&busybox_image(BUSYBOX_IMAGE, &self.busybox, Vec::new()))
            .await?;
        Ok(())
    }

    /// A static `pause`: sleeps until signalled and reaps children, as a sandbox's init.
    async fn build_pause(&self) -> Result<PathBuf, NodeError> {
        const PAUSE_C: &str = "#include <signal.h>\n#include <stdlib.h>\n#include <sys/wait.h>\n\
            #include <unistd.h>\n\
            static void quit(int s) { (void)s; _exit(0); }\n\
            static void reap(int s) { (void)s; while (waitpid(-1, 0, WNOHANG) > 0) {} }\n\
            int main(void) { signal(SIGINT, quit); signal(SIGTERM, quit); signal(SIGCHLD, reap);\n\
            for (;;) pause(); }\n";
        let source = self.path("images/pause.c");
        let binary = self.path("images/pause");
        write(&source, PAUSE_C)?;
        let output = tokio::process::Command::new("gcc")
            .args(["-static", "-O2", "-o"])
            .arg(&binary)
            .arg(&source)
            .output()
            .await
            .map_err(|error| NodeError::Pause {
                output: error.to_string(),
            })?;
        if !output.status.success() {
            return Err(NodeError::Pause {
                output: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        Ok(binary)
    }

    // === kubelet ===

    async fn start_kubelet(&mut self, token: &str) -> Result<(), NodeError> {
        let kube = self.kube();
        let kubeconfig = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{ "name": "node", "cluster": {
                "server": kube.url(),
                "certificate-authority": kube.ca_cert_path().display().to_string(),
            }}],
            "users": [{ "name": "node", "user": { "token": token } }],
            "contexts": [{ "name": "node", "context": { "cluster": "node", "user": "node" } }],
            "current-context": "node",
        });
        let kubeconfig_path = self.path("node.kubeconfig");
        write(&kubeconfig_path, &kubeconfig.to_string())?;
        let p = |relative: &str| self.path(relative).display().to_string();
        let config = json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": false,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.cgroup_root,
            "failSwapOn": false,
            "containerRuntimeEndpoint": format!("unix://{}", p("ctd/containerd.sock")),
            "address": NODE_IP,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": ports::free_port(),
            "authentication": {
                "anonymous": { "enabled": false },
                "webhook": { "enabled": false },
                "x509": { "clientCAFile": kube.client_ca_cert_path().display().to_string() },
            },
            "authorization": { "mode": "AlwaysAllow" },
            "podLogsDir": p("podlogs"),
            "volumePluginDir": p("vplugins"),
            "protectKernelDefaults": false,
            "evictionHard": {
                "memory.available": "1Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "nodeStatusUpdateFrequency": "2s",
            "syncFrequency": "5s",
        });
        let config_path = self.path("kubelet-config.json");
        write(&config_path, &config.to_string())?;
        let args = vec![
            format!("--config={}", config_path.display()),
            format!("--kubeconfig={}", kubeconfig_path.display()),
            format!("--root-dir={}", p("kubelet")),
            format!("--hostname-override={NODE_NAME}"),
            format!("--node-ip={NODE_IP}"),
            "-v=2".to_owned(),
        ];
        let kubelet = self
            .spawn_inside("kubelet", &peers().kubelet.path, &args, &[])
            .await?;
        self.kubelet = Some(kubelet);
        Ok(())
    }

    async fn start_control_plane(&mut self) -> Result<(), NodeError> {
        let kubeconfig = self.kube().kubeconfig_path().display().to_string();
        let common = |port: u16| {
            vec![
                format!("--kubeconfig={kubeconfig}"),
                format!("--authentication-kubeconfig={kubeconfig}"),
                format!("--authorization-kubeconfig={kubeconfig}"),
                "--leader-elect=false".to_owned(),
                "--bind-address=127.0.0.1".to_owned(),
                format!("--secure-port={port}"),
            ]
        };
        let scheduler_args = common(ports::free_port());
        let scheduler = PeerProcess::spawn(
            "kube-scheduler",
            &peers().kube_scheduler.path,
            &scheduler_args,
            &[],
            &self.path("kube-scheduler.log"),
        )
        .await
        .map_err(|source| NodeError::Spawn {
            name: "kube-scheduler",
            source,
        })?;
        self.scheduler = Some(scheduler);
        let mut manager_args = common(ports::free_port());
        manager_args.extend([
            "--use-service-account-credentials=false".to_owned(),
            format!("--root-ca-file={}", self.kube().ca_cert_path().display()),
            "--node-monitor-period=2s".to_owned(),
            // Its default is under /usr/libexec, on the host: it runs outside the mount namespace.
            format!(
                "--flex-volume-plugin-dir={}",
                self.path("vplugins").display()
            ),
        ]);
        let manager = PeerProcess::spawn(
            "kube-controller-manager",
            &peers().kube_controller_manager.path,
            &manager_args,
            &[],
            &self.path("kube-controller-manager.log"),
        )
        .await
        .map_err(|source| NodeError::Spawn {
            name: "kube-controller-manager",
            source,
        })?;
        self.controller_manager = Some(manager);
        Ok(())
    }

    /// Waits until the node is Ready and the controller-manager has lifted the `not-ready`
    /// taint.
    async fn wait_until_schedulable(&self) -> Result<(), NodeError> {
        let nodes: Api<NodeObject> = Api::all(self.client());
        let kubelet = self.kubelet.as_ref().expect("the kubelet was started");
        let outcome = wait::until(
            "node worker-1 to be Ready and untainted",
            START_TIMEOUT,
            || {
                let nodes = nodes.clone();
                let running = kubelet.is_running();
                async move {
                    if !running {
                        return Some(false);
                    }
                    let node = nodes.get_opt(NODE_NAME).await.ok().flatten()?;
                    let ready = node
                        .status
                        .as_ref()
                        .and_then(|status| status.conditions.as_ref())
                        .is_some_and(|conditions| {
                            conditions
                                .iter()
                                .any(|c| c.type_ == "Ready" && c.status == "True")
                        });
                    let tainted = node
                        .spec
                        .as_ref()
                        .and_then(|spec| spec.taints.as_ref())
                        .is_some_and(|taints| !taints.is_empty());
                    (ready && !tainted).then_some(true)
                }
            },
        )
        .await;
        match outcome {
            Ok(true) => Ok(()),
            Ok(false) => Err(NodeError::NotReady(PeerFailed::new(
                kubelet,
                "the kubelet exited",
            ))),
            Err(error) => Err(NodeError::NotReady(PeerFailed::from_wait(kubelet, error))),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for process in [&self.kubelet, &self.containerd].into_iter().flatten() {
                eprintln!(
                    "---- {} log tail ({}) ----\n{}",
                    process.name(),
                    process.log_path().display(),
                    process.log_tail()
                );
            }
        }
        for process in [
            &mut self.scheduler,
            &mut self.controller_manager,
            &mut self.kubelet,
        ]
        .into_iter()
        .flatten()
        {
            process.stop(STOP_GRACE);
        }
        self.kill_shims();
        if let Some(containerd) = &mut self.containerd {
            containerd.stop(STOP_GRACE);
        }
        self.remove_cgroups();
        self.kube.take();
        if let Some(holder) = &mut self.holder {
            holder.stop(STOP_GRACE);
        }
    }
}

/// An image with Debian's static busybox at `/bin/busybox`, its applets linked in `/bin`, and
/// `extra` entries (e.g. a program to run).
pub fn busybox_image(name: &str, busybox: &Path, extra: Vec<ImageEntry>) -> ImageSpec {
    let mut entries = vec![
        ImageEntry::Directory {
            path: "bin".into(),
            mode: 0o755,
        },
        ImageEntry::Directory {
            path: "tmp".into(),
            mode: 0o1777,
        },
        ImageEntry::File {
            path: "bin/busybox".into(),
            source: busybox.to_owned(),
            mode: 0o755,
        },
    ];
    entries.extend(BUSYBOX_APPLETS.iter().map(|applet| ImageEntry::Symlink {
        path: format!("bin/{applet}"),
        target: "busybox".into(),
    }));
    entries.extend(extra);
    ImageSpec::new(name, entries, &["/bin/sh"])
}

/// `dir` and every cgroup below it.
fn cgroup_tree(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        if !current.is_dir() {
            continue;
        }
        if let Ok(entries) = fs::read_dir(&current) {
            pending.extend(
                entries
                    .filter_map(Result::ok)
                    .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
                    .map(|entry| entry.path()),
            );
        }
        found.push(current);
    }
    found
}

fn create_dir(path: &Path) -> Result<(), NodeError> {
    fs::create_dir_all(path).map_err(|source| NodeError::Write {
        path: path.to_owned(),
        source,
    })
}

fn write(path: &Path, contents: &str) -> Result<(), NodeError> {
    fs::write(path, contents).map_err(|source| NodeError::Write {
        path: path.to_owned(),
        source,
    })
}
