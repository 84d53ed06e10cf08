//! Task events (create, start, exit, delete) sent to containerd, in order.
//!
//! Publishing goes through one queue and one forwarding task, so a request
//! never waits on containerd and an exit is never published before its start.

use containerd_shim::event::Event;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::Events as _;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use tokio::sync::mpsc;

/// The protobuf package of every task event.
const PACKAGE: &str = "containerd.events";

#[derive(Clone)]
pub struct Events {
    tx: mpsc::UnboundedSender<(String, Any)>,
}

impl Events {
    /// Starts the forwarder. It ends when the last `Events` is dropped.
    pub fn spawn(publisher: RemotePublisher, namespace: String) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<(String, Any)>();
        tokio::spawn(async move {
            while let Some((topic, event)) = rx.recv().await {
                let mut envelope = Envelope::new();
                envelope.set_topic(topic.clone());
                envelope.set_namespace(namespace.clone());
                match containerd_shim::util::timestamp() {
                    Ok(ts) => envelope.set_timestamp(ts),
                    Err(err) => tracing::warn!(%topic, %err, "event without a timestamp"),
                }
                envelope.set_event(event);
                let mut req = ForwardRequest::new();
                req.set_envelope(envelope);
                // The publisher's queue (with its retries) takes the event;
                // `forward` reads nothing from the context.
                let ctx = TtrpcContext {
                    mh: Default::default(),
                    metadata: Default::default(),
                    timeout_nano: 0,
                };
                if let Err(err) = publisher.forward(&ctx, req).await {
                    tracing::warn!(%topic, %err, "failed to publish event");
                }
            }
        });
        Self { tx }
    }

    /// Queues `event`. Its `Any` is packed here with the type URL spelled
    /// out (`containerd.events.TaskCreate`, …): the shim library's
    /// `publish` asks the message's descriptor for it, which makes protobuf
    /// build the descriptors of the events' files and of everything they
    /// import (`descriptor.proto` among them), hundreds of KiB the shim
    /// then keeps for its whole life.
    pub fn send<E: Event + Message + 'static>(&self, event: E) {
        let topic = event.topic();
        tracing::debug!(%topic, "event");
        let value = match event.write_to_bytes() {
            Ok(value) => value,
            Err(err) => {
                tracing::warn!(%topic, %err, "cannot encode event");
                return;
            }
        };
        let any = Any {
            type_url: format!("{PACKAGE}.{}", E::NAME),
            value,
            ..Default::default()
        };
        // The receiver lives as long as the shim; a send after that is moot.
        let _ = self.tx.send((topic, any));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::events::task::{TaskCreate, TaskDelete, TaskExit, TaskStart};
    use containerd_shim_protos::protobuf::MessageFull;

    /// The spelled-out type URLs are the descriptors' full names.
    #[test]
    fn type_urls_are_the_full_names() {
        fn check<E: MessageFull>() {
            assert_eq!(
                format!("{PACKAGE}.{}", E::NAME),
                E::descriptor().full_name()
            );
        }
        check::<TaskCreate>();
        check::<TaskStart>();
        check::<TaskExit>();
        check::<TaskDelete>();
    }
}
