//! Serving HTTP for a task that answers requests (`wasi:http/proxy`
//! components, `wasm/guest/proxy.rs`; preview 1 modules the WAGI way,
//! `wasm/guest/wagi.rs`): the listener and its connections ([`server`]),
//! CGI variables and output ([`cgi`]), the settings a container's environment gives
//! ([`settings`]), and its requests' output, gathered into the task's
//! streams as whole lines ([`output`]). Nothing in here knows about
//! Wasmtime: a kind that serves implements [`server::Handler`].

pub mod cgi;
pub mod output;
pub mod server;
pub mod settings;
