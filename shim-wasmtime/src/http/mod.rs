//! Serving HTTP for a task that answers requests (the `wasi:http/proxy`
//! kind, `wasm/guest/proxy.rs`): the listener and its connections
//! ([`server`]), the settings a container's environment gives
//! ([`settings`]), and its requests' output, gathered into the task's
//! streams as whole lines ([`output`]). Nothing in here knows about
//! Wasmtime: a kind that serves implements [`server::Handler`].

pub mod output;
pub mod server;
pub mod settings;
