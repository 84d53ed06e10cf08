//! Task events (create, start, exit, delete) sent to containerd, in order.
//!
//! Publishing goes through one queue and one forwarding task, so a request
//! never waits on containerd and an exit is never published before its start.

use containerd_shim::event::Event;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::ttrpc::context::Context;
use tokio::sync::mpsc;

#[derive(Clone)]
pub struct Events {
    tx: mpsc::UnboundedSender<(String, Box<dyn MessageDyn>)>,
}

impl Events {
    /// Starts the forwarder. It ends when the last `Events` is dropped.
    pub fn spawn(publisher: RemotePublisher, namespace: String) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<(String, Box<dyn MessageDyn>)>();
        tokio::spawn(async move {
            while let Some((topic, event)) = rx.recv().await {
                if let Err(err) = publisher
                    .publish(Context::default(), &topic, &namespace, event)
                    .await
                {
                    tracing::warn!(%topic, %err, "failed to publish event");
                }
            }
        });
        Self { tx }
    }

    pub fn send<E: Event + 'static>(&self, event: E) {
        let topic = event.topic();
        tracing::debug!(%topic, "event");
        // The receiver lives as long as the shim; a send after that is moot.
        let _ = self.tx.send((topic, Box::new(event)));
    }
}
