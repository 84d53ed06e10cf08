//! A CRI client, standing in for the kubelet: it drives containerd's CRI
//! plugin over containerd's socket, with the `k8s-cri` crate's v1 API.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
pub use k8s_cri::v1::LinuxContainerResources;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatus, ContainerStatusRequest,
    CreateContainerRequest, ExecSyncRequest, ImageSpec, KeyValue, LinuxContainerConfig,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, Mount, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, PodSandboxState, PodSandboxStatusRequest,
    PodSandboxStatusResponse, PullImageRequest, RemoveContainerRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
    UpdateContainerResourcesRequest,
};
use tonic::transport::Channel;

#[derive(Clone)]
pub struct Cri {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

/// A pod the client started.
pub struct Pod {
    pub id: String,
    pub config: PodSandboxConfig,
    pub log_dir: PathBuf,
}

impl Cri {
    pub async fn connect(socket: &Path) -> Result<Self> {
        let channel = containerd_client::connect(socket)
            .await
            .with_context(|| format!("connect to {}", socket.display()))?;
        Ok(Self {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    /// As [`Self::connect`], once the CRI plugin has loaded its state (after
    /// a containerd restart it answers "server is not initialized yet" for
    /// a while): waits up to 20 s for `Status` to answer.
    pub async fn connect_ready(socket: &Path) -> Result<Self> {
        let mut cri = Self::connect(socket).await?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match cri
                .runtime
                .status(k8s_cri::v1::StatusRequest::default())
                .await
            {
                Ok(_) => return Ok(cri),
                Err(err) if Instant::now() > deadline => {
                    bail!("CRI not ready within 20 s: {}", err.message())
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    pub async fn pull(&mut self, image: &str) -> Result<String> {
        let r = self
            .images
            .pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: image.to_string(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .with_context(|| format!("PullImage {image}"))?;
        Ok(r.into_inner().image_ref)
    }

    /// RunPodSandbox with the `wasmtime` handler, on the host's network.
    pub async fn run_pod(&mut self, name: &str, log_dir: &Path, handler: &str) -> Result<Pod> {
        self.run_pod_on(name, log_dir, handler, NamespaceMode::Node)
            .await
    }

    /// RunPodSandbox with a network namespace of the pod's own, set up by
    /// the CNI config (`CriOptions::pod_network`).
    pub async fn run_pod_with_network(
        &mut self,
        name: &str,
        log_dir: &Path,
        handler: &str,
    ) -> Result<Pod> {
        self.run_pod_on(name, log_dir, handler, NamespaceMode::Pod)
            .await
    }

    async fn run_pod_on(
        &mut self,
        name: &str,
        log_dir: &Path,
        handler: &str,
        network: NamespaceMode,
    ) -> Result<Pod> {
        std::fs::create_dir_all(log_dir)?;
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_string(),
                uid: format!("{name}-uid"),
                namespace: "default".to_string(),
                attempt: 0,
            }),
            log_directory: log_dir.to_string_lossy().into_owned(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: network as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = self
            .runtime
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: handler.to_string(),
            })
            .await
            .with_context(|| format!("RunPodSandbox {name}"))?
            .into_inner()
            .pod_sandbox_id;
        Ok(Pod {
            id,
            config,
            log_dir: log_dir.to_path_buf(),
        })
    }

    /// CreateContainer and StartContainer; returns the container id.
    pub async fn start_container(
        &mut self,
        pod: &Pod,
        name: &str,
        image: &str,
        command: &[&str],
    ) -> Result<String> {
        self.start_attempt(pod, name, 0, image, command).await
    }

    /// As [`Self::start_container`], for a given restart attempt (as the
    /// kubelet restarts a container in the same pod).
    pub async fn start_attempt(
        &mut self,
        pod: &Pod,
        name: &str,
        attempt: u32,
        image: &str,
        command: &[&str],
    ) -> Result<String> {
        self.start_configured(pod, container_config(name, attempt, image, command))
            .await
    }

    /// As [`Self::start_container`], with resource limits, as a pod spec's
    /// `resources.limits` give them.
    pub async fn start_with_resources(
        &mut self,
        pod: &Pod,
        name: &str,
        image: &str,
        command: &[&str],
        resources: LinuxContainerResources,
    ) -> Result<String> {
        let mut config = container_config(name, 0, image, command);
        config.linux = Some(LinuxContainerConfig {
            resources: Some(resources),
            ..Default::default()
        });
        self.start_configured(pod, config).await
    }

    /// As [`Self::start_container`], with files or folders of the host
    /// mounted into the container, as the kubelet mounts volumes (and the
    /// pod's `/etc/hosts`): `(host path, container path, read-only)`.
    pub async fn start_with_mounts(
        &mut self,
        pod: &Pod,
        name: &str,
        image: &str,
        command: &[&str],
        mounts: &[(&Path, &str, bool)],
    ) -> Result<String> {
        self.start_with_env(pod, name, image, command, &[], mounts)
            .await
    }

    /// As [`Self::start_with_mounts`], with environment variables as a pod
    /// spec's `env` gives them.
    pub async fn start_with_env(
        &mut self,
        pod: &Pod,
        name: &str,
        image: &str,
        command: &[&str],
        env: &[(&str, &str)],
        mounts: &[(&Path, &str, bool)],
    ) -> Result<String> {
        let mut config = container_config(name, 0, image, command);
        config.envs = env
            .iter()
            .map(|(key, value)| KeyValue {
                key: key.to_string(),
                value: value.to_string(),
            })
            .collect();
        config.mounts = mounts
            .iter()
            .map(|(host, container, readonly)| Mount {
                host_path: host.to_string_lossy().into_owned(),
                container_path: container.to_string(),
                readonly: *readonly,
                ..Default::default()
            })
            .collect();
        self.start_configured(pod, config).await
    }

    /// The pod's network namespace, as CRI pinned it (`/var/run/netns/…`):
    /// the network path of the sandbox's spec. `None` for a pod on the
    /// host's network.
    pub async fn sandbox_netns(&mut self, pod: &Pod) -> Result<Option<PathBuf>> {
        let info = self.sandbox_info(pod).await?;
        let namespaces = info
            .pointer("/runtimeSpec/linux/namespaces")
            .and_then(|n| n.as_array())
            .with_context(|| format!("no runtimeSpec namespaces in {info}"))?;
        Ok(namespaces
            .iter()
            .find(|n| n["type"] == "network")
            .and_then(|n| n["path"].as_str())
            .map(PathBuf::from))
    }

    /// The pod's own network namespace, after checking that the wasm shim
    /// plays the pod's sandbox (no pause holds the namespace): the sandbox
    /// task's pid is one of `shims`, and that process stays out of the pod's
    /// namespace (in the host's).
    pub async fn virtual_pod_netns(&mut self, pod: &Pod, shims: &[u32]) -> Result<PathBuf> {
        let netns = self
            .sandbox_netns(pod)
            .await?
            .context("the pod has no network namespace of its own")?;
        let sandbox = self.sandbox_pid(pod).await?;
        if !shims.contains(&sandbox) {
            bail!("the sandbox task's pid {sandbox} is not the shim's ({shims:?})");
        }
        let inode =
            |p: &Path| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        let shim_ns = PathBuf::from(format!("/proc/{sandbox}/ns/net"));
        if inode(&shim_ns)? == inode(&netns)? {
            bail!("the shim (pid {sandbox}) is inside the pod's network namespace");
        }
        Ok(netns)
    }

    /// The sysctls of the pod's sandbox spec.
    pub async fn sandbox_sysctls(&mut self, pod: &Pod) -> Result<Vec<(String, String)>> {
        let info = self.sandbox_info(pod).await?;
        Ok(info
            .pointer("/runtimeSpec/linux/sysctl")
            .and_then(|s| s.as_object())
            .map(|all| {
                all.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The pid the pod's sandbox task reports.
    pub async fn sandbox_pid(&mut self, pod: &Pod) -> Result<u32> {
        let info = self.sandbox_info(pod).await?;
        info["pid"]
            .as_u64()
            .filter(|pid| *pid > 0)
            .map(|pid| pid as u32)
            .with_context(|| format!("no sandbox pid in {info}"))
    }

    /// Whether the pod's sandbox is SANDBOX_READY (PodSandboxStatus).
    pub async fn pod_ready(&mut self, pod: &Pod) -> Result<bool> {
        let status = self.pod_status(pod, false).await?;
        let state = status.status.map(|s| s.state).unwrap_or_default();
        Ok(state == PodSandboxState::SandboxReady as i32)
    }

    async fn pod_status(&mut self, pod: &Pod, verbose: bool) -> Result<PodSandboxStatusResponse> {
        Ok(self
            .runtime
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: pod.id.clone(),
                verbose,
            })
            .await
            .context("PodSandboxStatus")?
            .into_inner())
    }

    /// PodSandboxStatus's verbose `info`.
    async fn sandbox_info(&mut self, pod: &Pod) -> Result<serde_json::Value> {
        let status = self.pod_status(pod, true).await?;
        let info = status.info.get("info").context("no verbose info")?;
        Ok(serde_json::from_str(info)?)
    }

    /// UpdateContainerResources, as the kubelet resizes a pod in place.
    pub async fn update_resources(
        &mut self,
        id: &str,
        resources: LinuxContainerResources,
    ) -> std::result::Result<(), tonic::Status> {
        self.runtime
            .update_container_resources(UpdateContainerResourcesRequest {
                container_id: id.to_string(),
                linux: Some(resources),
                ..Default::default()
            })
            .await
            .map(|_| ())
    }

    async fn start_configured(&mut self, pod: &Pod, config: ContainerConfig) -> Result<String> {
        let name = config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let id = self
            .runtime
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.config.clone()),
            })
            .await
            .with_context(|| format!("CreateContainer {name}"))?
            .into_inner()
            .container_id;
        self.runtime
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .with_context(|| format!("StartContainer {name}"))?;
        Ok(id)
    }

    /// ExecSync, as an exec probe runs: returns the error status, if any.
    pub async fn exec_sync(
        &mut self,
        id: &str,
        cmd: &[&str],
    ) -> std::result::Result<(i32, String), tonic::Status> {
        self.runtime
            .exec_sync(ExecSyncRequest {
                container_id: id.to_string(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: 10,
            })
            .await
            .map(|r| {
                let r = r.into_inner();
                (r.exit_code, String::from_utf8_lossy(&r.stdout).into_owned())
            })
    }

    /// StopContainer, with a grace period of `timeout` seconds before SIGKILL.
    pub async fn stop_container(&mut self, id: &str, timeout: i64) -> Result<()> {
        self.runtime
            .stop_container(StopContainerRequest {
                container_id: id.to_string(),
                timeout,
            })
            .await
            .with_context(|| format!("StopContainer {id}"))?;
        Ok(())
    }

    pub async fn status(&mut self, id: &str) -> Result<ContainerStatus> {
        self.runtime
            .container_status(ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            })
            .await
            .with_context(|| format!("ContainerStatus {id}"))?
            .into_inner()
            .status
            .context("ContainerStatus without a status")
    }

    /// Waits until the container has exited, and returns its status.
    pub async fn wait_exited(&mut self, id: &str) -> Result<ContainerStatus> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.status(id).await?;
            if s.state == ContainerState::ContainerExited as i32 {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("container {id} did not exit: {s:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn remove_container(&mut self, id: &str) -> Result<()> {
        self.runtime
            .remove_container(RemoveContainerRequest {
                container_id: id.to_string(),
            })
            .await
            .with_context(|| format!("RemoveContainer {id}"))?;
        Ok(())
    }

    /// StopPodSandbox, then RemovePodSandbox.
    pub async fn remove_pod(&mut self, pod: &Pod) -> Result<()> {
        self.runtime
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            })
            .await
            .context("StopPodSandbox")?;
        self.runtime
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            })
            .await
            .context("RemovePodSandbox")?;
        Ok(())
    }
}

fn container_config(name: &str, attempt: u32, image: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.to_string(),
            attempt,
        }),
        image: Some(ImageSpec {
            image: image.to_string(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.{attempt}.log"),
        ..Default::default()
    }
}

/// The lines a container's first attempt wrote, from its CRI log file
/// (`<time> <stream> <tag> <line>` per line).
pub fn log_lines(pod: &Pod, name: &str) -> Result<Vec<String>> {
    attempt_log_lines(pod, name, 0)
}

/// Waits (up to 10 s) until an attempt's log holds `line`: containerd
/// copies output into the log file on its own time, also after the exit.
pub async fn wait_log_line(pod: &Pod, name: &str, attempt: u32, line: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = attempt_log_lines(pod, name, attempt).unwrap_or_default();
        if lines.iter().any(|l| l == line) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{name} (attempt {attempt}) never logged {line:?}; its log: {lines:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The lines one attempt of a container wrote.
pub fn attempt_log_lines(pod: &Pod, name: &str, attempt: u32) -> Result<Vec<String>> {
    let path = pod.log_dir.join(format!("{name}.{attempt}.log"));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3).map(str::to_string))
        .collect())
}
