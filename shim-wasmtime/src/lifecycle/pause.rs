//! A task that runs nothing and waits, as Kubernetes' `pause` program does:
//! how the shim plays a pod's sandbox container itself (see `sandbox.rs`).
//!
//! Like `pause`, it exits 0 on SIGTERM or SIGINT, and dies on SIGKILL (137)
//! or any other signal whose default is to end a process. It holds no
//! namespace: CRI pins the pod's network namespace itself, and the shim's
//! wasm guests need no IPC or UTS namespace.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Exit, GuestIo, Prepared, Running, Runtime, TaskSpec, Usage};

/// The runtime of sandbox containers.
pub struct Pause;

#[async_trait]
impl Runtime for Pause {
    async fn prepare(
        &self,
        _task: &TaskSpec,
        _usage: Arc<Usage>,
    ) -> anyhow::Result<Box<dyn Prepared>> {
        Ok(Box::new(Sleeping))
    }
}

struct Sleeping;

#[async_trait]
impl Prepared for Sleeping {
    fn stops_gracefully(&self) -> bool {
        true
    }

    async fn start(self: Box<Self>, io: GuestIo) -> anyhow::Result<Running> {
        let mut stop = io.stop;
        Ok(Box::pin(async move {
            // A closed channel means no stop request can come any more:
            // sleep on until the task is killed (its future is dropped).
            if stop.wait_for(Option::is_some).await.is_err() {
                std::future::pending::<()>().await;
            }
            Exit::code(0)
        }))
    }
}
