//! A small client for the OCI distribution API: push a [`Layout`], pull a
//! manifest and its blobs.
//!
//! - Plain HTTP is used for loopback registries (`127.0.0.0/8`, `localhost`,
//!   `[::1]`) or with `insecure`; HTTPS otherwise.
//! - Credentials come from the docker config file (`$DOCKER_CONFIG/config.json`
//!   or `~/.docker/config.json`, `auths.<host>.auth`), sent as Basic auth or
//!   traded for a Bearer token when the registry asks for one.
//! - Transfers of large blobs show a progress line on stderr.

use std::io::Read;

use anyhow::{bail, ensure, Context, Result};
use base64::Engine as _;

use crate::parse::Descriptor;
use crate::{Blob, Layout, MEDIA_INDEX, MEDIA_MANIFEST};

/// Blobs above this size get a progress line.
const PROGRESS_FROM: usize = 1 << 20;

/// A parsed `host[:port]/repository[:tag|@digest]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub host: String,
    pub repository: String,
    /// A tag or a `sha256:` digest.
    pub reference: String,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Self> {
        let (host, rest) = match s.split_once('/') {
            Some((h, r)) if h.contains('.') || h.contains(':') || h == "localhost" => {
                (h.to_string(), r)
            }
            _ => ("registry-1.docker.io".to_string(), s),
        };
        let (repository, reference) = if let Some((r, d)) = rest.split_once('@') {
            (r.to_string(), d.to_string())
        } else {
            match rest.rsplit_once(':') {
                Some((r, t)) if !t.contains('/') => (r.to_string(), t.to_string()),
                _ => (rest.to_string(), "latest".to_string()),
            }
        };
        ensure!(!repository.is_empty(), "no repository in {s:?}");
        let repository = if host == "registry-1.docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        Ok(Self {
            host,
            repository,
            reference,
        })
    }

    fn is_loopback(&self) -> bool {
        let host = self
            .host
            .rsplit_once(':')
            .map_or(self.host.as_str(), |(h, _)| h);
        host == "localhost" || host.starts_with("127.") || host == "[::1]"
    }
}

pub struct Client {
    agent: ureq::Agent,
    base: String,
    reference: Reference,
    /// The `Authorization` header to send, once known.
    auth: Option<String>,
    basic: Option<String>,
    pub progress: bool,
}

impl Client {
    pub fn new(reference: Reference, insecure: bool) -> Result<Self> {
        let scheme = if insecure || reference.is_loopback() {
            "http"
        } else {
            "https"
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let basic = docker_credentials(&reference.host)?;
        Ok(Self {
            agent,
            base: format!("{scheme}://{}/v2/{}", reference.host, reference.repository),
            auth: basic.as_ref().map(|b| format!("Basic {b}")),
            basic,
            reference,
            progress: true,
        })
    }

    /// Sends a request, answering one `401` with the auth the registry asks for.
    fn send(
        &mut self,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        body: Option<&[u8]>,
    ) -> Result<ureq::http::Response<ureq::Body>> {
        for attempt in 0..2 {
            let mut req = ureq::http::Request::builder().method(method).uri(url);
            for (k, v) in headers {
                req = req.header(*k, v);
            }
            if let Some(a) = &self.auth {
                req = req.header("Authorization", a);
            }
            let resp = match body {
                Some(b) if b.len() >= PROGRESS_FROM && self.progress => {
                    let mut reader = Progress::new(b, "push", b.len() as u64);
                    let req = req
                        .header("Content-Length", b.len().to_string())
                        .body(ureq::SendBody::from_reader(&mut reader))?;
                    self.agent.run(req)
                }
                Some(b) => self.agent.run(req.body(b)?),
                None => self.agent.run(req.body(ureq::SendBody::none())?),
            }
            .with_context(|| format!("{method} {url}"))?;
            if resp.status() == 401 && attempt == 0 {
                let challenge = resp
                    .headers()
                    .get("WWW-Authenticate")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                self.authenticate(&challenge)?;
                continue;
            }
            return Ok(resp);
        }
        bail!("{method} {url}: unauthorized")
    }

    /// Handles a `WWW-Authenticate` challenge: Basic, or a Bearer token fetched from its realm.
    fn authenticate(&mut self, challenge: &str) -> Result<()> {
        if let Some(params) = challenge.strip_prefix("Bearer ") {
            let get = |key: &str| {
                params.split(',').find_map(|p| {
                    let (k, v) = p.trim().split_once('=')?;
                    (k == key).then(|| v.trim_matches('"').to_string())
                })
            };
            let realm = get("realm").context("the Bearer challenge has no realm")?;
            let mut url = format!("{realm}?");
            if let Some(service) = get("service") {
                url.push_str(&format!("service={service}&"));
            }
            url.push_str(&format!(
                "scope=repository:{}:pull,push",
                self.reference.repository
            ));
            let mut req = self.agent.get(&url);
            if let Some(b) = &self.basic {
                req = req.header("Authorization", &format!("Basic {b}"));
            }
            let mut resp = req.call().with_context(|| format!("GET {realm}"))?;
            ensure!(
                resp.status() == 200,
                "token request to {realm} answered {}",
                resp.status()
            );
            let body: serde_json::Value = serde_json::from_slice(&resp.body_mut().read_to_vec()?)?;
            let token = body
                .get("token")
                .or_else(|| body.get("access_token"))
                .and_then(|t| t.as_str())
                .context("the token answer has no token")?;
            self.auth = Some(format!("Bearer {token}"));
            return Ok(());
        }
        match &self.basic {
            Some(b) => {
                self.auth = Some(format!("Basic {b}"));
                Ok(())
            }
            None => bail!(
                "the registry wants credentials, and the docker config has none for {}",
                self.reference.host
            ),
        }
    }

    fn blob_exists(&mut self, digest: &str) -> Result<bool> {
        let url = format!("{}/blobs/{digest}", self.base);
        Ok(self.send("HEAD", &url, &[], None)?.status() == 200)
    }

    fn push_blob(&mut self, blob: &Blob) -> Result<()> {
        let digest = blob.digest();
        if self.blob_exists(&digest)? {
            return Ok(());
        }
        let url = format!("{}/blobs/uploads/", self.base);
        let resp = self.send("POST", &url, &[], None)?;
        ensure!(
            resp.status() == 202,
            "starting an upload answered {}",
            resp.status()
        );
        let location = resp
            .headers()
            .get("Location")
            .and_then(|v| v.to_str().ok())
            .context("the upload answer has no Location")?
            .to_string();
        let location = if location.starts_with('/') {
            let origin = self.base.split("/v2/").next().unwrap_or_default();
            format!("{origin}{location}")
        } else {
            location
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{sep}digest={digest}");
        let resp = self.send(
            "PUT",
            &url,
            &[("Content-Type", "application/octet-stream".into())],
            Some(&blob.bytes),
        )?;
        ensure!(
            resp.status() == 201,
            "uploading {digest} answered {}",
            resp.status()
        );
        Ok(())
    }

    /// Pushes every blob, then the manifest under the reference's tag.
    pub fn push(&mut self, layout: &Layout) -> Result<String> {
        for blob in &layout.blobs {
            self.push_blob(blob)?;
        }
        let url = format!("{}/manifests/{}", self.base, self.reference.reference);
        let resp = self.send(
            "PUT",
            &url,
            &[("Content-Type", layout.manifest.media_type.clone())],
            Some(&layout.manifest.bytes),
        )?;
        ensure!(
            resp.status() == 201,
            "pushing the manifest answered {}",
            resp.status()
        );
        Ok(layout.manifest.digest())
    }

    /// Fetches the manifest (following an index to its first wasm manifest).
    pub fn manifest(&mut self) -> Result<Vec<u8>> {
        let accept = format!(
            "{MEDIA_MANIFEST}, {MEDIA_INDEX}, application/vnd.docker.distribution.manifest.v2+json"
        );
        let mut reference = self.reference.reference.clone();
        for _ in 0..2 {
            let url = format!("{}/manifests/{reference}", self.base);
            let mut resp = self.send("GET", &url, &[("Accept", accept.clone())], None)?;
            ensure!(resp.status() == 200, "{url} answered {}", resp.status());
            let bytes = resp.body_mut().with_config().limit(4 << 20).read_to_vec()?;
            let value: serde_json::Value =
                serde_json::from_slice(&bytes).context("the manifest is not JSON")?;
            match crate::parse::manifest_of_index(&value)? {
                None => return Ok(bytes),
                Some(desc) => reference = desc.digest,
            }
        }
        bail!("nested indexes are not supported")
    }

    /// Fetches a blob; the caller verifies it against its descriptor.
    pub fn blob(&mut self, desc: &Descriptor) -> Result<Vec<u8>> {
        ensure!(
            desc.size <= crate::parse::MAX_BLOB_BYTES,
            "blob {} is too large",
            desc.digest
        );
        let url = format!("{}/blobs/{}", self.base, desc.digest);
        let resp = self.send("GET", &url, &[], None)?;
        ensure!(resp.status() == 200, "{url} answered {}", resp.status());
        let mut out = Vec::with_capacity(desc.size as usize);
        let mut body = resp.into_body();
        let mut reader = body.with_config().limit(desc.size + 1).reader();
        if desc.size as usize >= PROGRESS_FROM && self.progress {
            Progress::new(&mut reader, "pull", desc.size).read_to_end(&mut out)?;
        } else {
            reader.read_to_end(&mut out)?;
        }
        Ok(out)
    }
}

/// `user:password`, base64, from the docker config file, if it has the host.
fn docker_credentials(host: &str) -> Result<Option<String>> {
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".docker")));
    let Some(path) = dir.map(|d| d.join("config.json")) else {
        return Ok(None);
    };
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let config: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    let auths = config.get("auths").and_then(|a| a.as_object());
    let entry = auths.and_then(|a| {
        a.iter()
            .find(|(k, _)| {
                k.trim_start_matches("https://")
                    .trim_start_matches("http://")
                    .trim_end_matches('/')
                    == host
            })
            .map(|(_, v)| v)
    });
    let Some(entry) = entry else { return Ok(None) };
    if let Some(auth) = entry.get("auth").and_then(|a| a.as_str()) {
        return Ok(Some(auth.to_string()));
    }
    match (
        entry.get("username").and_then(|u| u.as_str()),
        entry.get("password").and_then(|p| p.as_str()),
    ) {
        (Some(u), Some(p)) => Ok(Some(
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}")),
        )),
        _ => Ok(None),
    }
}

/// A reader that prints how far a transfer has come, every 10%.
struct Progress<R> {
    inner: R,
    what: &'static str,
    done: u64,
    total: u64,
    shown: u64,
}

impl<R: Read> Progress<R> {
    fn new(inner: R, what: &'static str, total: u64) -> Self {
        Progress {
            inner,
            what,
            done: 0,
            total,
            shown: 0,
        }
    }
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        if let Some(tenth) = (self.done * 10).checked_div(self.total) {
            if tenth > self.shown || (n == 0 && self.shown < 10) {
                self.shown = tenth.max(self.shown);
                eprintln!(
                    "{}: {:>3}% of {:.1} MiB",
                    self.what,
                    (tenth * 10).min(100),
                    self.total as f64 / (1 << 20) as f64
                );
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        let r = Reference::parse("127.0.0.1:5000/wasm/hello:1").unwrap();
        assert_eq!(
            (r.host.as_str(), r.repository.as_str(), r.reference.as_str()),
            ("127.0.0.1:5000", "wasm/hello", "1")
        );
        assert!(r.is_loopback());
        let r = Reference::parse("localhost:5000/hello").unwrap();
        assert_eq!(r.reference, "latest");
        let r = Reference::parse("hello").unwrap();
        assert_eq!(
            (r.host.as_str(), r.repository.as_str()),
            ("registry-1.docker.io", "library/hello")
        );
        assert!(!r.is_loopback());
        let r = Reference::parse("example.com/a/b@sha256:abc").unwrap();
        assert_eq!(r.reference, "sha256:abc");
    }
}
