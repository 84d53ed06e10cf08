//! Pushing and pulling OCI layouts: blobs and manifest pushes through
//! `oci-client`, the oras project's registry client; permission from
//! `crate::auth`, which settles what to present before oci-client makes a
//! request. What this module adds:
//!
//! - **Plain HTTP** only for a registry on loopback (`127.0.0.0/8`,
//!   `localhost`) or with `--insecure`; HTTPS otherwise, with the
//!   system's trust store (or `SSL_CERT_FILE`).
//! - **Size limits**: a manifest is read up to 4 MiB, a blob up to its
//!   descriptor's size, and no further. oci-client reads manifests whole, so
//!   manifests are fetched here.
//! - **One clear line per failure**: wrong credentials, an expired token, a
//!   refused scope, an unreachable registry (see `Asking::explain`).
//! - **Progress** per blob (`crate::progress`).
//!
//! Redirects carry no credentials: reqwest drops `Authorization` when scheme,
//! host or port change, and oci-client sends none to a URL outside the
//! registry. The image format (what a manifest must hold, digests of what
//! was read) is checked by the `oci-artifact` library on top of what this
//! returns.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use oci_artifact::parse::Descriptor;
use oci_artifact::{Layout, MEDIA_INDEX, MEDIA_MANIFEST};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::token_cache::RegistryTokenType;
use oci_client::{Reference, RegistryOperation};
use sha2::Digest as _;

use crate::auth::{self, Presented};
use crate::credentials::{self, one_line, Login, Source};
use crate::progress::Progress;

/// Manifests are small: docker and containerd cap them at 4 MiB.
const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Pushed blobs go up in pieces of this size (what the progress counts).
const PUSH_PIECE: usize = 256 << 10;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// No byte for this long ends a transfer.
const READ_TIMEOUT: Duration = Duration::from_secs(120);
const USER_AGENT: &str = concat!("oci-artifact/", env!("CARGO_PKG_VERSION"));

/// A connection to one repository, with permission for one operation.
pub struct Registry {
    runtime: tokio::runtime::Runtime,
    client: oci_client::Client,
    /// For what oci-client does not do within limits: manifests.
    http: reqwest::Client,
    /// `scheme://host[:port]`.
    base: String,
    image: Reference,
    presented: Presented,
    asking: Asking,
    progress: Progress,
}

/// What failure messages name: the reference as typed, the operation,
/// and where the credentials came from.
pub struct Asking {
    pub reference: String,
    pub repository: String,
    pub op: RegistryOperation,
    pub source: Source,
    /// The registry takes Basic auth, so a 401 means wrong credentials.
    pub basic: bool,
}

/// A failure to move bytes (network, registry, auth), as opposed to an
/// image that is wrong: `main` exits 1 for these, 3 for invalid images.
#[derive(Debug)]
pub struct Transfer(pub anyhow::Error);

impl std::fmt::Display for Transfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for Transfer {}

impl Registry {
    /// Resolves credentials for `reference`'s registry and gets permission
    /// for `op`.
    pub fn connect(
        reference: &str,
        login: &Login,
        insecure: bool,
        op: RegistryOperation,
    ) -> Result<Self> {
        let image: Reference = reference
            .parse()
            .map_err(|err| anyhow!("{reference:?} is not an image reference: {err}"))?;
        if op == RegistryOperation::Push && image.digest().is_some() {
            bail!("{reference}: push takes a tag, not a digest");
        }
        let registry = image.resolve_registry().to_string();
        let plain_ok = insecure || auth::is_loopback(&registry);
        let (protocol, scheme) = if plain_ok {
            (ClientProtocol::HttpsExcept(vec![registry.clone()]), "http")
        } else {
            (ClientProtocol::Https, "https")
        };
        let config = ClientConfig {
            protocol,
            // One PUT per blob: what every registry accepts, and the body is
            // streamed, so progress is real.
            use_monolithic_push: true,
            platform_resolver: None,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            user_agent: USER_AGENT,
            ..Default::default()
        };
        let client = oci_client::Client::try_from(config).context("set up the HTTP client")?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(USER_AGENT)
            .build()
            .context("set up the HTTP client")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("start the async runtime")?;
        let (auth, source) = credentials::resolve(login, &registry)?;
        let base = format!("{scheme}://{registry}");
        let mut asking = Asking {
            reference: reference.to_string(),
            repository: image.repository().to_string(),
            op,
            source,
            basic: false,
        };
        let presented =
            runtime.block_on(auth::negotiate(&http, &base, &auth, plain_ok, &asking))?;
        asking.basic = matches!(presented, Presented::Basic(..));
        // oci-client is handed the result, so that it never asks for a token
        // itself (see `crate::auth`).
        runtime.block_on(async {
            match &presented {
                Presented::Anonymous => {
                    client
                        .store_auth_if_needed(&registry, &RegistryAuth::Anonymous)
                        .await
                }
                Presented::Bearer(token) => {
                    client
                        .store_auth_if_needed(&registry, &RegistryAuth::Bearer(token.clone()))
                        .await
                }
                Presented::Basic(user, password) => {
                    let basic = RegistryAuth::Basic(user.clone(), password.clone());
                    client.store_auth_if_needed(&registry, &basic).await;
                    for op in [RegistryOperation::Pull, RegistryOperation::Push] {
                        let token = RegistryTokenType::Basic(user.clone(), password.clone());
                        client.tokens.insert(&image, op, token).await;
                    }
                }
            }
        });
        Ok(Self {
            runtime,
            client,
            http,
            base,
            image,
            presented,
            asking,
            progress: Progress::new(),
        })
    }

    /// Pushes every blob the registry lacks, then the manifest under the
    /// reference's tag or digest. Returns the manifest's digest.
    pub fn push(&self, layout: Layout) -> Result<String> {
        self.runtime.block_on(async {
            let manifest_digest = layout.manifest.digest();
            for blob in layout.blobs {
                let digest = blob.digest();
                let mut tracker = self
                    .progress
                    .track("push", &digest, blob.bytes.len() as u64);
                if self
                    .client
                    .blob_exists(&self.image, &digest)
                    .await
                    .map_err(|err| self.explain(err))?
                {
                    tracker.finish("exists");
                    continue;
                }
                let bytes = bytes::Bytes::from(blob.bytes);
                let size = bytes.len() as u64;
                if size == 0 {
                    tracker.finish("empty");
                }
                let pieces: Vec<bytes::Bytes> = (0..bytes.len())
                    .step_by(PUSH_PIECE)
                    .map(|at| bytes.slice(at..(at + PUSH_PIECE).min(bytes.len())))
                    .collect();
                let stream = futures_util::stream::iter(pieces).map(move |piece| {
                    tracker.advance(piece.len() as u64);
                    Ok(piece)
                });
                self.client
                    .push_blob_stream(&self.image, stream, &digest, Some(size))
                    .await
                    .map_err(|err| self.explain(err))?;
            }
            let content_type = reqwest::header::HeaderValue::from_str(&layout.manifest.media_type)
                .context("the manifest's media type is not a header value")?;
            self.client
                .push_manifest_raw(&self.image, layout.manifest.bytes, content_type)
                .await
                .map_err(|err| self.explain(err))?;
            Ok(manifest_digest)
        })
    }

    /// The manifest, following an index to the manifest it picks (see
    /// `oci_artifact::parse::manifest_of_index`).
    pub fn manifest(&self) -> Result<Vec<u8>> {
        self.runtime
            .block_on(async {
                let mut reference = self
                    .image
                    .digest()
                    .or(self.image.tag())
                    .unwrap_or("latest")
                    .to_string();
                for _ in 0..2 {
                    let bytes = self.get_manifest(&reference).await?;
                    let value: serde_json::Value =
                        serde_json::from_slice(&bytes).context("the manifest is not JSON")?;
                    match oci_artifact::parse::manifest_of_index(&value)? {
                        None => return Ok(bytes),
                        Some(desc) => reference = desc.digest,
                    }
                }
                bail!("nested indexes are not supported")
            })
            .map_err(|err| anyhow::Error::new(Transfer(err)))
    }

    /// `GET /v2/REPOSITORY/manifests/REFERENCE`, read up to 4 MiB, checked
    /// against the digest when the reference is one.
    async fn get_manifest(&self, reference: &str) -> Result<Vec<u8>> {
        let accept = [
            MEDIA_MANIFEST,
            MEDIA_INDEX,
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
        ]
        .join(", ");
        let url = format!(
            "{}/v2/{}/manifests/{reference}",
            self.base, self.asking.repository
        );
        let mut request = self.http.get(&url).header(reqwest::header::ACCEPT, accept);
        request = match &self.presented {
            Presented::Anonymous => request,
            Presented::Basic(user, password) => request.basic_auth(user, Some(password)),
            Presented::Bearer(token) => request.bearer_auth(token),
        };
        let answer = request
            .send()
            .await
            .map_err(|err| self.asking.unreachable(&url, &err))?;
        let status = answer.status().as_u16();
        if status != 200 {
            let body = auth::read_limited(answer, 64 << 10)
                .await
                .unwrap_or_default();
            let said = auth::error_message(&String::from_utf8_lossy(&body));
            return Err(match status {
                401 | 403 => self.asking.denied(status, &said),
                404 => anyhow!(
                    "{}: manifest {reference} not found ({})",
                    self.asking.reference,
                    one_line(&said)
                ),
                _ => anyhow!(
                    "{}: GET {url} answered HTTP {status}: {}",
                    self.asking.reference,
                    one_line(&said)
                ),
            });
        }
        let bytes = auth::read_limited(answer, MAX_MANIFEST_BYTES)
            .await
            .with_context(|| format!("{}: the manifest", self.asking.reference))?;
        if reference.starts_with("sha256:") {
            let got = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)));
            if got != reference {
                bail!(
                    "{}: the registry sent a manifest whose digest is {got}, not {reference}",
                    self.asking.reference
                );
            }
        }
        Ok(bytes)
    }

    /// A blob's bytes, read up to its descriptor's size. oci-client checks
    /// them against the digest; the caller checks them again with the rest
    /// of the image.
    pub fn blob(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        self.fetch_blob(desc)
            .map_err(|err| anyhow::Error::new(Transfer(err)))
    }

    fn fetch_blob(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        if desc.size > oci_artifact::parse::MAX_BLOB_BYTES {
            bail!("blob {} is too large ({} bytes)", desc.digest, desc.size);
        }
        let wanted = OciDescriptor {
            media_type: desc.media_type.clone(),
            digest: desc.digest.clone(),
            size: desc.size as i64,
            ..Default::default()
        };
        self.runtime.block_on(async {
            let mut stream = self
                .client
                .pull_blob_stream(&self.image, &wanted)
                .await
                .map_err(|err| self.explain(err))?;
            let mut tracker = self.progress.track("pull", &desc.digest, desc.size);
            if desc.size == 0 {
                tracker.finish("empty");
            }
            // The descriptor's word is not enough to reserve it all up front.
            let mut out = Vec::with_capacity((desc.size as usize).min(1 << 20));
            while let Some(piece) = stream.stream.next().await {
                let piece = piece
                    .map_err(|err| anyhow!("pull blob {}: {}", desc.digest, innermost(&err)))?;
                if out.len() + piece.len() > desc.size as usize {
                    bail!(
                        "blob {} is larger than its descriptor's {} bytes",
                        desc.digest,
                        desc.size
                    );
                }
                out.extend_from_slice(&piece);
                tracker.advance(piece.len() as u64);
            }
            Ok(out)
        })
    }

    fn explain(&self, err: OciDistributionError) -> anyhow::Error {
        self.asking.explain(err)
    }
}

impl Asking {
    fn verb(&self) -> &'static str {
        match self.op {
            RegistryOperation::Pull => "pull",
            RegistryOperation::Push => "push",
        }
    }

    /// One line for a registry failure, with the remedy where there is one.
    fn explain(&self, err: OciDistributionError) -> anyhow::Error {
        let what = &self.reference;
        match err {
            OciDistributionError::UnauthorizedError { .. } => self.denied(401, ""),
            OciDistributionError::RegistryError { envelope, url } => {
                let unauthorized = envelope
                    .errors
                    .iter()
                    .any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied));
                let said: Vec<String> = envelope
                    .errors
                    .iter()
                    .map(|e| {
                        // The spec's spelling of the code, e.g. MANIFEST_UNKNOWN.
                        let code = serde_json::to_value(&e.code)
                            .ok()
                            .and_then(|c| c.as_str().map(str::to_string))
                            .unwrap_or_else(|| format!("{:?}", e.code));
                        format!("{code}: {}", e.message)
                    })
                    .collect();
                if unauthorized {
                    self.denied(401, &said.join("; "))
                } else {
                    anyhow!(
                        "{what}: the registry answered {} ({url})",
                        one_line(&said.join("; "))
                    )
                }
            }
            OciDistributionError::ServerError { code, url, message } => match code {
                401 | 403 => self.denied(code, &auth::error_message(&message)),
                404 => anyhow!("{what}: not found ({url})"),
                _ => anyhow!("{what}: HTTP {code} from {url}: {}", one_line(&message)),
            },
            OciDistributionError::RequestError(err) => match err.status().map(|s| s.as_u16()) {
                Some(code @ (401 | 403)) => self.denied(code, ""),
                Some(404) => anyhow!("{what}: not found"),
                _ if err.is_connect() || err.is_timeout() => self.unreachable(
                    &err.url()
                        .map_or("the registry".to_string(), |u| u.to_string()),
                    &err,
                ),
                _ => anyhow!("{what}: {}", innermost(&err)),
            },
            OciDistributionError::ImageManifestNotFoundError(detail) => {
                anyhow!("{what}: manifest not found ({})", one_line(&detail))
            }
            other => anyhow!("{what}: {}", innermost(&other)),
        }
    }

    /// No answer from `url`: refused, timed out, or TLS failed.
    pub fn unreachable(&self, url: &str, err: &reqwest::Error) -> anyhow::Error {
        let cause = innermost(err);
        let hint = if cause.contains("certificate") {
            " (for a registry with a private CA, add the CA to the system's trust store, or \
             point SSL_CERT_FILE at it)"
        } else {
            ""
        };
        anyhow!("{}: cannot reach {url}: {cause}{hint}", self.reference)
    }

    /// The registry refused the operation.
    pub fn denied(&self, code: u16, said: &str) -> anyhow::Error {
        let said = if said.is_empty() {
            String::new()
        } else {
            format!(": {}", one_line(said))
        };
        if self.basic && code == 401 {
            return anyhow!(
                "{}: the registry rejected {} (HTTP 401{said}): wrong user or password?",
                self.reference,
                self.source
            );
        }
        let remedy = match self.source {
            Source::Anonymous => "; give --username and --password-stdin, or log in with docker",
            _ => "",
        };
        anyhow!(
            "{}: {} denied (HTTP {code}{said}): {} do not allow {} on {}{remedy}",
            self.reference,
            self.verb(),
            match self.source {
                Source::Anonymous => "anonymous requests (no credentials)".to_string(),
                ref source => source.to_string(),
            },
            self.verb(),
            self.repository
        )
    }
}

/// The deepest cause of an error, which says what went wrong without the
/// wrappers around it: "Connection refused (os error 111)" rather than
/// reqwest's "error sending request for url (…)".
fn innermost(err: &dyn std::error::Error) -> String {
    let mut deepest = err;
    while let Some(cause) = deepest.source() {
        deepest = cause;
    }
    one_line(&deepest.to_string())
}
