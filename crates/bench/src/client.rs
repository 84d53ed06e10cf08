//! containerd's gRPC API, one method per call the benchmark makes. Every
//! request carries the namespace header, every error says which call failed
//! on which container, so the measures above read as the sequence they time.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::version_client::VersionClient;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteTaskRequest, GetRequest, KillRequest, ListContainersRequest, StartRequest, WaitRequest,
};
use containerd_client::types::v1::Status as TaskStatus;
use containerd_client::types::Mount;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request};

/// The header containerd reads the namespace of a request from.
const NAMESPACE_HEADER: &str = "containerd-namespace";

/// The longest any one call may take (sent as the gRPC deadline).
const CALL_LIMIT: Duration = Duration::from_secs(120);

/// A connection to containerd, bound to one namespace and snapshotter.
/// Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct Api {
    channel: Channel,
    namespace: String,
    header: AsciiMetadataValue,
    snapshotter: String,
}

/// A new container record.
pub struct NewContainer<'a> {
    pub id: &'a str,
    pub image: &'a str,
    pub runtime: &'a str,
    pub spec: prost_types::Any,
    pub labels: HashMap<String, String>,
}

impl Api {
    /// Connects to containerd's socket.
    pub async fn connect(socket: &Path, namespace: &str, snapshotter: &str) -> Result<Self> {
        let channel = containerd_client::connect(socket)
            .await
            .with_context(|| format!("connect to containerd at {}", socket.display()))?;
        let header: AsciiMetadataValue = namespace
            .parse()
            .map_err(|_| anyhow!("namespace {namespace:?} is not a valid header value"))?;
        Ok(Self {
            channel,
            namespace: namespace.to_string(),
            header,
            snapshotter: snapshotter.to_string(),
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn snapshotter(&self) -> &str {
        &self.snapshotter
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert(NAMESPACE_HEADER, self.header.clone());
        // A hung call fails the measure instead of hanging the benchmark.
        request.set_timeout(CALL_LIMIT);
        request
    }

    /// containerd's version and revision.
    pub async fn version(&self) -> Result<(String, String)> {
        let v = VersionClient::new(self.channel.clone())
            .version(())
            .await
            .context("Version")?
            .into_inner();
        Ok((v.version, v.revision))
    }

    /// Whether the snapshot `key` exists (e.g. an unpacked image's chain id).
    pub async fn snapshot_exists(&self, key: &str) -> Result<bool> {
        let req = self.request(StatSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_string(),
        });
        match SnapshotsClient::new(self.channel.clone()).stat(req).await {
            Ok(_) => Ok(true),
            Err(status) if status.code() == Code::NotFound => Ok(false),
            Err(status) => Err(status).with_context(|| format!("Snapshots.Stat {key}")),
        }
    }

    /// Containers.Create, with the container's snapshot key set to its id.
    pub async fn create_container(&self, c: NewContainer<'_>) -> Result<()> {
        let container = Container {
            id: c.id.to_string(),
            labels: c.labels,
            image: c.image.to_string(),
            runtime: Some(Runtime {
                name: c.runtime.to_string(),
                options: None,
            }),
            spec: Some(c.spec),
            snapshotter: self.snapshotter.clone(),
            snapshot_key: c.id.to_string(),
            ..Default::default()
        };
        let req = self.request(CreateContainerRequest {
            container: Some(container),
        });
        ContainersClient::new(self.channel.clone())
            .create(req)
            .await
            .with_context(|| format!("Containers.Create {}", c.id))?;
        Ok(())
    }

    /// Ids and labels of the namespace's containers.
    pub async fn list_containers(&self) -> Result<Vec<(String, HashMap<String, String>)>> {
        let req = self.request(ListContainersRequest { filters: vec![] });
        let list = ContainersClient::new(self.channel.clone())
            .list(req)
            .await
            .context("Containers.List")?
            .into_inner();
        Ok(list
            .containers
            .into_iter()
            .map(|c| (c.id, c.labels))
            .collect())
    }

    pub async fn delete_container(&self, id: &str) -> Result<()> {
        let req = self.request(DeleteContainerRequest { id: id.to_string() });
        ContainersClient::new(self.channel.clone())
            .delete(req)
            .await
            .with_context(|| format!("Containers.Delete {id}"))?;
        Ok(())
    }

    /// Snapshots.Prepare: an active snapshot `key` on top of `parent`; returns
    /// the mounts that make up the container's rootfs.
    pub async fn prepare_snapshot(&self, key: &str, parent: &str) -> Result<Vec<Mount>> {
        let req = self.request(PrepareSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_string(),
            parent: parent.to_string(),
            labels: HashMap::new(),
        });
        let resp = SnapshotsClient::new(self.channel.clone())
            .prepare(req)
            .await
            .with_context(|| format!("Snapshots.Prepare {key} (parent {parent})"))?
            .into_inner();
        Ok(resp.mounts)
    }

    pub async fn remove_snapshot(&self, key: &str) -> Result<()> {
        let req = self.request(RemoveSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_string(),
        });
        SnapshotsClient::new(self.channel.clone())
            .remove(req)
            .await
            .with_context(|| format!("Snapshots.Remove {key}"))?;
        Ok(())
    }

    /// Tasks.Create without stdio (empty paths); returns the task's pid.
    pub async fn create_task(&self, id: &str, rootfs: Vec<Mount>) -> Result<u32> {
        let req = self.request(CreateTaskRequest {
            container_id: id.to_string(),
            rootfs,
            ..Default::default()
        });
        let resp = TasksClient::new(self.channel.clone())
            .create(req)
            .await
            .with_context(|| format!("Tasks.Create {id}"))?
            .into_inner();
        Ok(resp.pid)
    }

    pub async fn start_task(&self, id: &str) -> Result<u32> {
        let req = self.request(StartRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        });
        let resp = TasksClient::new(self.channel.clone())
            .start(req)
            .await
            .with_context(|| format!("Tasks.Start {id}"))?
            .into_inner();
        Ok(resp.pid)
    }

    /// Tasks.Wait: returns the exit status once the task has exited.
    pub async fn wait_task(&self, id: &str) -> Result<u32> {
        let req = self.request(WaitRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        });
        let resp = TasksClient::new(self.channel.clone())
            .wait(req)
            .await
            .with_context(|| format!("Tasks.Wait {id}"))?
            .into_inner();
        Ok(resp.exit_status)
    }

    /// Whether the task is running, from Tasks.Get.
    pub async fn task_running(&self, id: &str) -> Result<bool> {
        let req = self.request(GetRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        });
        let resp = TasksClient::new(self.channel.clone())
            .get(req)
            .await
            .with_context(|| format!("Tasks.Get {id}"))?
            .into_inner();
        Ok(resp
            .process
            .is_some_and(|p| p.status == TaskStatus::Running as i32))
    }

    pub async fn kill_task(&self, id: &str, signal: u32) -> Result<()> {
        let req = self.request(KillRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
            signal,
            all: false,
        });
        TasksClient::new(self.channel.clone())
            .kill(req)
            .await
            .with_context(|| format!("Tasks.Kill {id}"))?;
        Ok(())
    }

    /// Tasks.Delete; returns the exit status.
    pub async fn delete_task(&self, id: &str) -> Result<u32> {
        let req = self.request(DeleteTaskRequest {
            container_id: id.to_string(),
        });
        let resp = TasksClient::new(self.channel.clone())
            .delete(req)
            .await
            .with_context(|| format!("Tasks.Delete {id}"))?
            .into_inner();
        Ok(resp.exit_status)
    }
}

/// Whether an error came from containerd answering NOT_FOUND.
pub fn is_not_found(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<tonic::Status>()
            .is_some_and(|s| s.code() == Code::NotFound)
    })
}
