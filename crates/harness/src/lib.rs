//! Test harness: a private containerd in a temporary folder, with its own
//! root, state, socket and namespace, and the freshly built shim first on its
//! PATH; plus helpers to import the example images and drive them with `ctr`.
//!
//! Which containerd: `CONTAINERD_BIN_DIR` names the folder holding
//! `containerd` and `ctr` (default `/usr/bin`); `scripts/test.sh` runs the
//! suite once per version. Which shim: `SHIM_BIN_DIR` (default
//! `<workspace>/target/release`).
//!
//! [`Registry`] is a private OCI registry on the loopback interface, for the
//! tests that push and pull images; [`oci_artifact`] and [`skopeo`] run the
//! CLIs that talk to it.

pub mod cmd;
pub mod cri;
pub mod registry;
pub mod testnet;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub use cmd::Output;
pub use registry::{
    oci_artifact, oci_artifact_path, oci_artifact_with, skopeo, Auth, Place, Registry,
};
pub use testnet::{TestCa, TestNetns};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Where the example guests and their image tars are built.
pub fn examples_dir() -> PathBuf {
    workspace().join("target/examples")
}

pub fn shim_bin_dir() -> PathBuf {
    std::env::var_os("SHIM_BIN_DIR")
        .map(absolute)
        .unwrap_or_else(|| workspace().join("target/release"))
}

pub fn containerd_bin_dir() -> PathBuf {
    std::env::var_os("CONTAINERD_BIN_DIR")
        .map(absolute)
        .unwrap_or_else(|| PathBuf::from("/usr/bin"))
}

/// A path from the environment, taken relative to the working folder as
/// given: containerd runs elsewhere, and the shim's link in its private
/// folder must not dangle.
fn absolute(path: std::ffi::OsString) -> PathBuf {
    let path = PathBuf::from(path);
    std::path::absolute(&path).unwrap_or(path)
}

/// The `ctr` binary of the containerd under test.
pub fn ctr_path() -> PathBuf {
    containerd_bin_dir().join("ctr")
}

pub const RUNTIME: &str = "io.containerd.wasmtime.v1";
pub const SHIM_BINARY: &str = "containerd-shim-wasmtime-v1";
pub const RUNC_SHIM_BINARY: &str = "containerd-shim-runc-v2";

/// A private containerd. Dropping it stops the daemon and removes its folder.
pub struct Containerd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub namespace: String,
    bin_dir: PathBuf,
    child: Child,
    /// `containerd --version` as reported, e.g. `1.6.20~ds1`.
    pub version: String,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// How a containerd is configured.
enum Setup<'a> {
    /// CRI off.
    Plain,
    /// CRI on, with the settings this machine needs.
    Cri(&'a CriOptions),
    /// CRI on, with a config the caller writes.
    CriConfig(WriteConfig<'a>),
}

/// Writes a containerd config, given containerd's private folder.
type WriteConfig<'a> = Box<dyn FnOnce(&Path) -> Result<String> + 'a>;

/// How to configure containerd's CRI plugin, for tests that drive CRI.
#[derive(Debug, Clone, Default)]
pub struct CriOptions {
    /// `host:port` of a loopback registry to pull from over plain HTTP.
    pub registry: Option<String>,
    /// Register `deploy/wasm-stream-processor` for `application/wasm`.
    pub stream_processor: bool,
    /// A CNI network for pods with their own network namespace: Debian's
    /// `ptp` plugin (a veth pair, the pod's end on `eth0` with an address
    /// from `host-local`), then `loopback`. Without it, only host-network
    /// pods start.
    pub pod_network: bool,
}

/// Where Debian's containernetworking-plugins puts the CNI plugins.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// Writes a CNI config for this containerd's pods: a /24 of 198.18.0.0/15
/// (reserved for benchmarks, never routed) picked per containerd, so that
/// concurrent tests never share addresses, with IPAM state in `dir`.
fn write_cni_config(dir: &Path) -> Result<PathBuf> {
    let conf_dir = dir.join("cni");
    std::fs::create_dir_all(&conf_dir)?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "wt".into());
    // The folder is `wt<pid>x<n>`: n counts this process's containerds.
    let n: usize = name
        .rsplit('x')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let slot = std::process::id() as usize * 31 + n;
    let subnet = format!("198.{}.{}.0/24", 18 + (slot / 256) % 2, slot % 256);
    let config = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": name,
        "plugins": [
            {
                "type": "ptp",
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "subnet": subnet,
                    "dataDir": dir.join("cni-ipam"),
                }
            },
            {"type": "loopback"}
        ]
    });
    std::fs::write(conf_dir.join("10-pods.conflist"), config.to_string())?;
    Ok(conf_dir)
}

/// The namespace containerd's CRI plugin works in.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// The sandbox image CRI tests use: a static Linux pause program, which the
/// wasm shim hands to runc, as it would Kubernetes' own pause image.
pub const CRI_SANDBOX_IMAGE: &str = "docker.io/wasmtime-examples/pause:latest";

fn cri_config(v3: bool, dir: &Path, opts: &CriOptions) -> Result<String> {
    let certs = dir.join("certs.d");
    if let Some(reg) = &opts.registry {
        let host_dir = certs.join(reg);
        std::fs::create_dir_all(&host_dir)?;
        std::fs::write(
            host_dir.join("hosts.toml"),
            format!("server = \"http://{reg}\"\n[host.\"http://{reg}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
        )?;
    }
    let mut c = if v3 {
        format!(
            "version = 3\ndisabled_plugins = [\"io.containerd.nri.v1.nri\"]\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n\
             [plugins.\"io.containerd.cri.v1.images\".pinned_images]\n  sandbox = \"{CRI_SANDBOX_IMAGE}\"\n\
             [plugins.\"io.containerd.cri.v1.images\".registry]\n  config_path = \"{certs}\"\n\
             [plugins.\"io.containerd.cri.v1.runtime\"]\n  restrict_oom_score_adj = true\n\
             [plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.wasmtime]\n  runtime_type = \"{RUNTIME}\"\n",
            d = dir.display(),
            certs = certs.display()
        )
    } else {
        format!(
            "version = 2\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"{CRI_SANDBOX_IMAGE}\"\n  restrict_oom_score_adj = true\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmtime]\n  runtime_type = \"{RUNTIME}\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"{certs}\"\n",
            d = dir.display(),
            certs = certs.display()
        )
    };
    if opts.pod_network {
        let conf_dir = write_cni_config(dir)?;
        c.push_str(&if v3 {
            format!(
                "[plugins.\"io.containerd.cri.v1.runtime\".cni]\n  bin_dirs = [\"{CNI_BIN_DIR}\"]\n  conf_dir = \"{}\"\n",
                conf_dir.display()
            )
        } else {
            format!(
                "[plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"{CNI_BIN_DIR}\"\n  conf_dir = \"{}\"\n",
                conf_dir.display()
            )
        });
    }
    if opts.stream_processor {
        c.push_str(&format!(
            "[stream_processors]\n  [stream_processors.\"io.containerd.wasm.tar\"]\n    \
             accepts = [\"application/wasm\"]\n    returns = \"application/vnd.oci.image.layer.v1.tar\"\n    \
             path = \"{}\"\n",
            workspace().join("deploy/wasm-stream-processor").display()
        ));
    }
    Ok(c)
}

impl Containerd {
    /// Starts a containerd (CRI disabled) and waits until it answers.
    pub fn start() -> Result<Self> {
        Self::start_with(Setup::Plain)
    }

    /// Starts a containerd with its CRI plugin, working in namespace `k8s.io`,
    /// with the sandbox image imported.
    pub fn start_cri(opts: &CriOptions) -> Result<Self> {
        Self::start_cri_setup(Setup::Cri(opts))
    }

    /// Starts a containerd with CRI on a config the caller writes, given the
    /// containerd's private folder. `--root`, `--state` and `--address` are
    /// still the private ones.
    pub fn start_cri_with_config(config: impl FnOnce(&Path) -> Result<String>) -> Result<Self> {
        Self::start_cri_setup(Setup::CriConfig(Box::new(config)))
    }

    fn start_cri_setup(setup: Setup<'_>) -> Result<Self> {
        let cd = Self::start_with(setup)?;
        // The sandbox (a Linux binary, which the shim hands to runc), and a
        // wasm guest that sleeps.
        for image in ["pause", "sleep"] {
            cd.import(image)?;
        }
        Ok(cd)
    }

    fn start_with(setup: Setup<'_>) -> Result<Self> {
        let bin_dir = containerd_bin_dir();
        let containerd = bin_dir.join("containerd");
        let version_out = Command::new(&containerd)
            .arg("--version")
            .output()
            .with_context(|| format!("run {} --version", containerd.display()))?;
        let version = String::from_utf8_lossy(&version_out.stdout)
            .split_whitespace()
            .nth(2)
            .unwrap_or("unknown")
            .to_string();
        let major = version.chars().next().unwrap_or('1');

        let shim = shim_bin_dir().join(SHIM_BINARY);
        if !shim.exists() {
            bail!(
                "{} is missing: run `cargo build --release -p shim-wasmtime`",
                shim.display()
            );
        }
        // Short paths: unix socket paths are limited to 108 bytes.
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let namespace = format!("wt{}x{n}", std::process::id());
        let dir = PathBuf::from(format!("/tmp/{namespace}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bin"))?;
        std::os::unix::fs::symlink(&shim, dir.join("bin").join(SHIM_BINARY))?;

        let cri = !matches!(setup, Setup::Plain);
        let config = if let Setup::Cri(opts) = setup {
            cri_config(major >= '2', &dir, opts)?
        } else if let Setup::CriConfig(write) = setup {
            write(&dir)?
        } else if major >= '2' {
            format!(
                "version = 3\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.nri.v1.nri\"]\n\
                 [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{}/opt\"\n",
                dir.display()
            )
        } else {
            format!(
                "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{}/opt\"\n",
                dir.display()
            )
        };
        std::fs::write(dir.join("config.toml"), config)?;
        let socket = dir.join("c.sock");
        let child = spawn_containerd(&containerd, &dir, &socket, &bin_dir)?;
        let namespace = if cri {
            CRI_NAMESPACE.to_string()
        } else {
            namespace
        };
        let cd = Self {
            dir,
            socket,
            namespace,
            bin_dir,
            child,
            version,
        };
        cd.wait_ready()?;
        Ok(cd)
    }

    /// Stops containerd (SIGTERM) and starts it again on the same root,
    /// state and socket. Shims and their tasks keep running meanwhile.
    pub fn restart(&mut self) -> Result<()> {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait()?;
        let containerd = self.bin_dir.join("containerd");
        self.child = spawn_containerd(&containerd, &self.dir, &self.socket, &self.bin_dir)?;
        self.wait_ready()
    }

    /// `ctr run -d ARGS…` (ARGS: options, image, id, command), then waits
    /// for task `id` to run; returns its pid (the shim's).
    pub fn run_detached(&self, id: &str, args: &[&str]) -> Result<u32> {
        let mut a = vec!["run", "-d"];
        a.extend_from_slice(args);
        self.ctr(&a)?
            .ok()
            .with_context(|| format!("ctr run -d {id}"))?;
        self.wait_status(id, "RUNNING")?;
        self.task_pid(id)
    }

    /// Kills a task with SIGKILL, waits for it to stop, and deletes it and
    /// its container.
    pub fn kill_and_remove(&self, id: &str) -> Result<()> {
        self.ctr(&["tasks", "kill", "-s", "SIGKILL", id])?.ok()?;
        self.wait_status(id, "STOPPED")?;
        self.ctr(&["tasks", "delete", id])?.ok()?;
        self.ctr(&["containers", "delete", id])?.ok()?;
        Ok(())
    }

    /// A value from `ctr task metrics ID`, e.g. `memory.usage_in_bytes`.
    pub fn metric(&self, id: &str, name: &str) -> Result<u64> {
        let out = self.ctr(&["tasks", "metrics", id])?.ok()?;
        out.stdout
            .lines()
            .find_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some(name)).then(|| w.next()?.parse().ok())?
            })
            .with_context(|| format!("no {name} in:\n{}", out.stdout))
    }

    /// CPU time (ns, `cpuacct.usage`) tasks `a` and `b` use in the same
    /// window of `window`: for comparing shares, never durations.
    pub fn cpu_in_window(&self, a: &str, b: &str, window: Duration) -> Result<(u64, u64)> {
        let (a0, b0) = (
            self.metric(a, "cpuacct.usage")?,
            self.metric(b, "cpuacct.usage")?,
        );
        std::thread::sleep(window);
        Ok((
            self.metric(a, "cpuacct.usage")? - a0,
            self.metric(b, "cpuacct.usage")? - b0,
        ))
    }

    /// Task Update through containerd's API, with `resources` as the OCI
    /// `LinuxResources` JSON that containerd's own client sends (no `ctr`
    /// command sends an Update). Returns the gRPC status on failure.
    pub fn update_task(
        &self,
        id: &str,
        resources: serde_json::Value,
    ) -> Result<std::result::Result<(), tonic::Status>> {
        use containerd_client::services::v1::tasks_client::TasksClient;
        use containerd_client::services::v1::UpdateTaskRequest;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let channel = containerd_client::connect(&self.socket).await?;
            let mut request = tonic::Request::new(UpdateTaskRequest {
                container_id: id.to_string(),
                resources: Some(prost_types::Any {
                    type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"
                        .to_string(),
                    value: serde_json::to_vec(&resources)?,
                }),
                annotations: Default::default(),
            });
            request
                .metadata_mut()
                .insert("containerd-namespace", self.namespace.parse()?);
            Ok(TasksClient::new(channel).update(request).await.map(|_| ()))
        })
    }

    /// The pid `ctr task ls` shows for a task (for this shim: the shim's own).
    pub fn task_pid(&self, id: &str) -> Result<u32> {
        let out = self.ctr(&["tasks", "ls"])?.ok()?;
        out.stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .with_context(|| format!("no task {id} in:\n{}", out.stdout))
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.socket.exists() && self.ctr(&["version"]).is_ok_and(|o| o.success()) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        bail!("containerd did not come up; its log:\n{}", self.log())
    }

    /// containerd's own log, where the shim's log lines end up too.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Gives the wasm shims this containerd starts from now on `vars` in
    /// their environment (as an operator sets them in containerd's), by
    /// putting a wrapper in place of the shim on containerd's PATH.
    pub fn set_shim_env(&self, vars: &[(&str, &str)]) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let shim = shim_bin_dir().join(SHIM_BINARY);
        let assignments: Vec<String> = vars.iter().map(|(k, v)| format!("{k}='{v}'")).collect();
        let wrapper = self.dir.join("bin").join(SHIM_BINARY);
        std::fs::remove_file(&wrapper)?;
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec env {} {} \"$@\"\n",
                assignments.join(" "),
                shim.display()
            ),
        )?;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
        Ok(())
    }

    /// A `ctr` command aimed at this containerd and namespace.
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.bin_dir.join("ctr"));
        c.arg("-a")
            .arg(&self.socket)
            .arg("-n")
            .arg(&self.namespace)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Runs `ctr` with a 60 s limit.
    pub fn ctr(&self, args: &[&str]) -> Result<Output> {
        cmd::run(self.ctr_command(args), Duration::from_secs(60))
    }

    /// Imports an example image (built by `examples/images.sh`) and returns its name.
    pub fn import(&self, example: &str) -> Result<String> {
        let tar = examples_dir().join("images").join(format!("{example}.tar"));
        if !tar.exists() {
            bail!(
                "{} is missing: run examples/build.sh and examples/images.sh",
                tar.display()
            );
        }
        self.import_tar(&tar)?;
        Ok(image_name(example))
    }

    /// Builds an image holding one wasm file, `/<name>.wasm`, from `bytes`
    /// (in `dir`), imports it and returns its name.
    pub fn import_wasm(&self, dir: &Path, name: &str, bytes: &[u8]) -> Result<String> {
        let file = dir.join(format!("{name}.wasm"));
        std::fs::write(&file, bytes)?;
        let reference = format!("docker.io/wasmtime-tests/{name}:latest");
        let tar = dir.join(format!("{name}.tar"));
        build_image(&file, &format!("{name}.wasm"), &reference, &tar)?;
        self.import_tar(&tar)?;
        Ok(reference)
    }

    /// Imports any image tar.
    pub fn import_tar(&self, tar: &Path) -> Result<()> {
        let tar = tar.to_string_lossy();
        self.ctr(&["images", "import", "--all-platforms", &tar])?
            .ok()
            .with_context(|| format!("import {tar}"))?;
        Ok(())
    }

    /// `ctr run --rm --runtime io.containerd.wasmtime.v1 IMAGE ID ARGS…`
    pub fn run_rm(&self, image: &str, id: &str, args: &[&str]) -> Result<Output> {
        self.run_rm_with(&[], image, id, args)
    }

    /// `ctr run --rm --runtime io.containerd.wasmtime.v1 OPTIONS… IMAGE ID ARGS…`
    pub fn run_rm_with(
        &self,
        options: &[&str],
        image: &str,
        id: &str,
        args: &[&str],
    ) -> Result<Output> {
        let mut a = vec!["run", "--rm", "--runtime", RUNTIME];
        a.extend_from_slice(options);
        a.extend([image, id]);
        a.extend_from_slice(args);
        self.ctr(&a)
    }

    /// Waits until `ctr task ls` shows the task in `status` (e.g. RUNNING).
    pub fn wait_status(&self, id: &str, status: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = String::new();
        while Instant::now() < deadline {
            last = self.ctr(&["tasks", "ls"])?.stdout;
            if last.lines().any(|l| {
                l.split_whitespace().next() == Some(id)
                    && l.split_whitespace().nth(2) == Some(status)
            }) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("task {id} never reached {status}; tasks:\n{last}")
    }

    /// Shim processes serving this containerd's namespace.
    pub fn shim_pids(&self) -> Vec<u32> {
        processes_with_args(&[SHIM_BINARY, &self.socket.to_string_lossy()])
    }

    /// runc shim processes serving this containerd: ours starts them for
    /// Linux containers (pause, sidecars).
    pub fn runc_shim_pids(&self) -> Vec<u32> {
        processes_with_args(&[RUNC_SHIM_BINARY, &self.socket.to_string_lossy()])
    }

    /// Mounts below this containerd's folder.
    pub fn mounts(&self) -> Vec<String> {
        let prefix = self.dir.to_string_lossy().into_owned();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                l.split_whitespace()
                    .nth(4)
                    .is_some_and(|m| m.starts_with(&prefix))
            })
            .map(str::to_string)
            .collect()
    }

    /// Container cgroups (`/sys/fs/cgroup/<hierarchy>/<namespace>/<id>`) of
    /// this namespace that still exist.
    pub fn cgroups(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") else {
            return Vec::new();
        };
        rd.flatten()
            .filter(|h| !h.path().is_symlink())
            .flat_map(|h| {
                std::fs::read_dir(h.path().join(&self.namespace))
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .filter(|c| c.path().is_dir())
            .map(|c| c.path().display().to_string())
            .collect()
    }

    /// Where containerd keeps this namespace's task bundles.
    fn task_dir(&self) -> PathBuf {
        self.state_dir()
            .join("io.containerd.runtime.v2.task")
            .join(&self.namespace)
    }

    /// Task `id`'s bundle, as containerd hands it to the shim.
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.task_dir().join(id)
    }

    /// Task state folders left in containerd's state for this namespace.
    pub fn task_state_dirs(&self) -> Vec<String> {
        std::fs::read_dir(self.task_dir())
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Checks that nothing of this namespace is left: no task, no container,
    /// no mount, no state folder, no shim process. Shims exit asynchronously
    /// after their last delete, so this waits a little for them.
    pub fn assert_clean(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let tasks = self.ctr(&["tasks", "ls", "-q"])?.stdout;
            let containers = self.ctr(&["containers", "ls", "-q"])?.stdout;
            let mounts = self.mounts();
            let states = self.task_state_dirs();
            let mut shims = self.shim_pids();
            shims.extend(self.runc_shim_pids());
            let cgroups = self.cgroups();
            if tasks.trim().is_empty()
                && containers.trim().is_empty()
                && mounts.is_empty()
                && states.is_empty()
                && shims.is_empty()
                && cgroups.is_empty()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "left behind: tasks {tasks:?}, containers {containers:?}, mounts {mounts:?}, \
                     state folders {states:?}, shim pids {shims:?}, cgroups {cgroups:?}"
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Remove what is left, so a failed test does not leak into the next.
        if let Ok(out) = self.ctr(&["tasks", "ls", "-q"]) {
            for id in out.stdout.lines().filter(|l| !l.is_empty()) {
                let _ = self.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
                let _ = self.ctr(&["tasks", "delete", "-f", id]);
            }
        }
        if let Ok(out) = self.ctr(&["containers", "ls", "-q"]) {
            for id in out.stdout.lines().filter(|l| !l.is_empty()) {
                let _ = self.ctr(&["containers", "delete", id]);
            }
        }
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        for pid in self.shim_pids() {
            // SAFETY: kill(2) on a shim this test's containerd started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        for m in self.mounts().iter().rev() {
            if let Some(target) = m.split_whitespace().nth(4) {
                let _ = Command::new("umount").arg("-l").arg(target).status();
            }
        }
        remove_cgroups(&self.namespace);
        if std::env::var_os("KEEP_CONTAINERD").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn spawn_containerd(containerd: &Path, dir: &Path, socket: &Path, bin_dir: &Path) -> Result<Child> {
    let path = format!(
        "{}:{}:{}",
        dir.join("bin").display(),
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("containerd.log"))?;
    Command::new(containerd)
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--state")
        .arg(dir.join("state"))
        .arg("--address")
        .arg(socket)
        .arg("--config")
        .arg(dir.join("config.toml"))
        .arg("--log-level")
        .arg("debug")
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("start {}", containerd.display()))
}

/// runc puts containers in `/<namespace>/<id>` cgroups, shared by every
/// containerd on the machine; remove this namespace's empty ones.
fn remove_cgroups(namespace: &str) {
    let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for hierarchy in rd.flatten() {
        let ns = hierarchy.path().join(namespace);
        if let Ok(children) = std::fs::read_dir(&ns) {
            for c in children.flatten().filter(|c| c.path().is_dir()) {
                let _ = std::fs::remove_dir(c.path());
            }
        }
        let _ = std::fs::remove_dir(&ns);
    }
}

/// Packs any file as a one-layer wasm image tar, checked or not, with the
/// oci-artifact CLI (`--force-any`): for images of broken or hostile content.
pub fn build_image(file: &Path, file_name: &str, reference: &str, tar: &Path) -> Result<()> {
    let cli = workspace().join("target/release/oci-artifact");
    let mut c = Command::new(&cli);
    c.arg("build")
        .arg(file)
        .args([
            "--force-any",
            "--module-name",
            file_name,
            "--name",
            reference,
            "-o",
        ])
        .arg(tar);
    cmd::run(c, Duration::from_secs(60))?
        .ok()
        .with_context(|| format!("{} build", cli.display()))?;
    Ok(())
}

/// The name `examples/images.sh` gives an example's image.
pub fn image_name(example: &str) -> String {
    format!("docker.io/wasmtime-examples/{example}:latest")
}

/// Whether a process exists.
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Polls `done` every 20 ms until it holds; fails, saying `what`, once
/// `limit` has passed.
pub fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            bail!("{what} (waited {limit:?})");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Waits up to `limit` for a child process (a foreground `ctr run`) to
/// exit, and returns its exit code; kills it and fails after that.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Result<Option<i32>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status.code());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A `ctr run --mount` bind mount of `src` at `dst`, read-only or not.
pub fn bind_mount(src: &Path, dst: &str, read_only: bool) -> String {
    let mode = if read_only { "ro" } else { "rw" };
    format!(
        "type=bind,src={},dst={dst},options=rbind:{mode}",
        src.display()
    )
}

/// Pids of processes whose argv contains all of `needles`.
pub fn processes_with_args(needles: &[&str]) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            needles.iter().all(|n| text.contains(n))
        })
        .collect()
}

/// The child processes of `pid`, from every one of its threads
/// (`/proc/PID/task/TID/children`).
pub fn children(pid: u32) -> Result<Vec<u32>> {
    let dir = format!("/proc/{pid}/task");
    let mut all = Vec::new();
    for task in std::fs::read_dir(&dir).with_context(|| format!("read {dir}"))? {
        let path = task?.path().join("children");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            // A thread that ended meanwhile.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err).with_context(|| format!("read {}", path.display())),
        };
        all.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    all.sort_unstable();
    all.dedup();
    Ok(all)
}

/// Runs `f` on a thread that entered the network namespace at `netns`
/// (sockets it makes stay there).
pub fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    use std::os::fd::AsRawFd;
    let ns = std::fs::File::open(netns).with_context(|| format!("open {}", netns.display()))?;
    std::thread::spawn(move || -> Result<T> {
        // SAFETY: setns(2) on a namespace file we hold; only this
        // short-lived thread moves.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("setns thread panicked"))?
}

/// A TCP port free on the host's loopback now (the kernel's pick).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
