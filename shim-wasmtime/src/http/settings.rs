//! How a task serves HTTP, from its container's environment.
//!
//! The address and backlog use runwasi's names, so manifests written for it
//! carry over. Every variable named here is the shim's: it is read at
//! Create and removed from the guest's environment ([`is_shim_variable`]).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `WASMTIME_HTTP_PROXY_SOCKET_ADDR` | `0.0.0.0:8080` | where to listen, in the task's network namespace |
//! | `WASMTIME_HTTP_PROXY_BACKLOG` | `1024` | the listen backlog |
//! | `WASMTIME_HTTP_MAX_CONCURRENCY` | `100` | requests served at once; more are answered 503 |
//! | `WASMTIME_HTTP_REQUEST_TIMEOUT` | `60s` | wall time from a request's arrival to the end of its response; then 504 (or a cut-off body) |
//! | `WASMTIME_HTTP_EXECUTION_TIMEOUT` | `10s` | time one request's instance may spend running wasm, checked at each 10 ms epoch tick; then 504 |
//! | `WASMTIME_HTTP_DRAIN_TIMEOUT` | `20s` | after SIGTERM or SIGINT, how long requests in flight may take to finish |
//! | `WASMTIME_HTTP_MAX_BODY_BYTES` | `16777216` | largest request body (at most 1 GiB); a larger `Content-Length` is answered 413 |
//! | `WASMTIME_HTTP_HEADER_READ_TIMEOUT` | `10s` | time a client has to send a request's head, and longest a kept-alive connection may sit idle |
//! | `WASMTIME_HTTP_OUTGOING_CONNECT_TIMEOUT` | `10s` | upper bound on an outgoing request's connect timeout |
//! | `WASMTIME_HTTP_OUTGOING_TIMEOUT` | `60s` | upper bound on an outgoing request's first-byte and between-bytes timeouts |
//!
//! Durations are written as `humantime` reads them: `500ms`, `10s`, `2m`
//! (more than zero, at most `24h`).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};

pub const ADDR: &str = "WASMTIME_HTTP_PROXY_SOCKET_ADDR";
pub const BACKLOG: &str = "WASMTIME_HTTP_PROXY_BACKLOG";
pub const MAX_CONCURRENCY: &str = "WASMTIME_HTTP_MAX_CONCURRENCY";
pub const REQUEST_TIMEOUT: &str = "WASMTIME_HTTP_REQUEST_TIMEOUT";
pub const EXECUTION_TIMEOUT: &str = "WASMTIME_HTTP_EXECUTION_TIMEOUT";
pub const DRAIN_TIMEOUT: &str = "WASMTIME_HTTP_DRAIN_TIMEOUT";
pub const MAX_BODY_BYTES: &str = "WASMTIME_HTTP_MAX_BODY_BYTES";
pub const HEADER_READ_TIMEOUT: &str = "WASMTIME_HTTP_HEADER_READ_TIMEOUT";
pub const OUTGOING_CONNECT_TIMEOUT: &str = "WASMTIME_HTTP_OUTGOING_CONNECT_TIMEOUT";
pub const OUTGOING_TIMEOUT: &str = "WASMTIME_HTTP_OUTGOING_TIMEOUT";
/// Set to `1` to serve a preview 1 module the WAGI way.
pub const WAGI: &str = "WASMTIME_WAGI";

const KNOWN: [&str; 11] = [
    ADDR,
    BACKLOG,
    MAX_CONCURRENCY,
    REQUEST_TIMEOUT,
    EXECUTION_TIMEOUT,
    DRAIN_TIMEOUT,
    MAX_BODY_BYTES,
    HEADER_READ_TIMEOUT,
    OUTGOING_CONNECT_TIMEOUT,
    OUTGOING_TIMEOUT,
    WAGI,
];

/// Whether the shim reads this variable; such variables are never passed to
/// the guest. Any `WASMTIME_HTTP_` name counts, so that a misspelt one is
/// refused rather than silently handed to the guest.
pub fn is_shim_variable(name: &str) -> bool {
    name.starts_with("WASMTIME_HTTP_") || name == WAGI
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub addr: SocketAddr,
    pub backlog: u32,
    pub max_concurrency: usize,
    pub request_timeout: Duration,
    pub execution_timeout: Duration,
    pub drain_timeout: Duration,
    pub max_body_bytes: u64,
    pub header_read_timeout: Duration,
    pub outgoing: Outgoing,
    pub wagi: bool,
}

/// Bounds on a guest's outgoing requests (`wasi:http/outgoing-handler`):
/// the library's own default is 600 s for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outgoing {
    pub connect_timeout: Duration,
    pub timeout: Duration,
}

impl Default for Outgoing {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(60),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            backlog: 1024,
            max_concurrency: 100,
            request_timeout: Duration::from_secs(60),
            execution_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(20),
            max_body_bytes: 16 << 20,
            header_read_timeout: Duration::from_secs(10),
            outgoing: Outgoing::default(),
            wagi: false,
        }
    }
}

impl Settings {
    /// Reads the shim's variables out of a container's environment. An
    /// unknown `WASMTIME_HTTP_` name, or a value that does not parse, is an
    /// error naming the variable.
    pub fn from_env(vars: &[(String, String)]) -> Result<Self> {
        let mut s = Self::default();
        for (name, value) in vars.iter().filter(|(n, _)| is_shim_variable(n)) {
            let value = value.trim();
            let what = || format!("environment variable {name}={value:?}");
            match name.as_str() {
                ADDR => {
                    s.addr = value.parse().with_context(|| {
                        format!(
                            "{}: not an IP address and port, such as 0.0.0.0:8080",
                            what()
                        )
                    })?
                }
                BACKLOG => s.backlog = number(value, 1, 65535).with_context(what)? as u32,
                MAX_CONCURRENCY => {
                    s.max_concurrency = number(value, 1, 100_000).with_context(what)? as usize
                }
                MAX_BODY_BYTES => {
                    s.max_body_bytes = number(value, 0, 1 << 30).with_context(what)?
                }
                REQUEST_TIMEOUT => s.request_timeout = duration(value).with_context(what)?,
                EXECUTION_TIMEOUT => s.execution_timeout = duration(value).with_context(what)?,
                DRAIN_TIMEOUT => s.drain_timeout = duration(value).with_context(what)?,
                HEADER_READ_TIMEOUT => {
                    s.header_read_timeout = duration(value).with_context(what)?
                }
                OUTGOING_CONNECT_TIMEOUT => {
                    s.outgoing.connect_timeout = duration(value).with_context(what)?
                }
                OUTGOING_TIMEOUT => s.outgoing.timeout = duration(value).with_context(what)?,
                WAGI => {
                    s.wagi = match value {
                        "1" | "true" => true,
                        "0" | "false" | "" => false,
                        _ => bail!("{}: expected 1 or 0", what()),
                    }
                }
                _ => bail!(
                    "environment variable {name} is not one the shim knows; it reads {}",
                    KNOWN.join(", ")
                ),
            }
        }
        Ok(s)
    }
}

fn number(value: &str, min: u64, max: u64) -> Result<u64> {
    let n: u64 = value.parse().context("not a whole number")?;
    if !(min..=max).contains(&n) {
        bail!("out of range [{min}, {max}]");
    }
    Ok(n)
}

/// The longest duration a setting takes: a day. (Far larger values would
/// overflow the clocks they are added to.)
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

fn duration(value: &str) -> Result<Duration> {
    let d = humantime::parse_duration(value).context("not a duration such as 500ms, 10s or 2m")?;
    if d.is_zero() || d > MAX_DURATION {
        bail!("must be more than zero and at most 24h");
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(Settings::from_env(&[]).unwrap(), Settings::default());
        let s = Settings::from_env(&env(&[
            (ADDR, "127.0.0.1:9000"),
            (BACKLOG, "16"),
            (MAX_CONCURRENCY, "3"),
            (REQUEST_TIMEOUT, "1500ms"),
            (WAGI, "1"),
            ("PATH", "/bin"),
        ]))
        .unwrap();
        assert_eq!(s.addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!((s.backlog, s.max_concurrency), (16, 3));
        assert_eq!(s.request_timeout, Duration::from_millis(1500));
        assert!(s.wagi);
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (name, value) in [
            (ADDR, "localhost:80"),
            (ADDR, "0.0.0.0"),
            (BACKLOG, "-1"),
            (MAX_CONCURRENCY, "0"),
            (REQUEST_TIMEOUT, "10"),
            (DRAIN_TIMEOUT, "0s"),
            (REQUEST_TIMEOUT, "1000000y"),
            (MAX_BODY_BYTES, "18446744073709551615"),
            (WAGI, "yes"),
            ("WASMTIME_HTTP_PROXY_ADDR", "0.0.0.0:80"),
        ] {
            let err = Settings::from_env(&env(&[(name, value)])).unwrap_err();
            assert!(format!("{err:#}").contains(name), "{name}: {err:#}");
        }
    }

    #[test]
    fn shim_variables_are_told_apart() {
        assert!(is_shim_variable(ADDR));
        assert!(is_shim_variable(WAGI));
        assert!(is_shim_variable("WASMTIME_HTTP_ANYTHING"));
        assert!(!is_shim_variable("WASMTIME_WAGIX"));
        assert!(!is_shim_variable("HTTP_PROXY"));
    }
}
