//! Pushing and pulling OCI layouts through `oci-client`, the oras project's
//! registry client: it speaks the distribution API and its auth (Basic, and
//! the `WWW-Authenticate: Bearer` token flow). What this module adds:
//!
//! - **Plain HTTP** only for a registry on loopback (`127.0.0.0/8`,
//!   `localhost`, `[::1]`) or with `--insecure`; HTTPS otherwise.
//! - **Where credentials may go.** Credentials go to the registry, or to the
//!   token realm the registry names, and never in the clear: a realm on plain
//!   HTTP is refused unless the registry or the realm is on loopback, or
//!   `--insecure` is given. Redirects never carry them: reqwest drops the
//!   `Authorization` header when scheme, host or port change, and oci-client
//!   sends none to a URL outside the registry.
//! - **One clear line per failure**: wrong credentials, an expired token, a
//!   refused scope, an unreachable registry (see `Asking::explain`).
//! - **Progress** per blob (`crate::progress`), and size limits: a blob is
//!   read up to its descriptor's size and no further.
//!
//! The image format (what a manifest must hold, digests of what was read)
//! is checked by the `oci-artifact` library on top of what this returns.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use futures_util::StreamExt;
use oci_artifact::parse::Descriptor;
use oci_artifact::{Layout, MEDIA_INDEX, MEDIA_MANIFEST};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};

use crate::credentials::{self, one_line, Login, Source};
use crate::progress::Progress;

/// Manifests are small: docker and containerd cap them at 4 MiB.
const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Pushed blobs go up in pieces of this size (what the progress counts).
const PUSH_PIECE: usize = 256 << 10;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// No byte for this long ends a transfer.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// A connection to one repository, authenticated for one operation.
pub struct Registry {
    runtime: tokio::runtime::Runtime,
    client: oci_client::Client,
    image: Reference,
    auth: RegistryAuth,
    /// What failure messages name.
    asking: Asking,
    progress: Progress,
}

/// What a failure message names: the reference as typed, the operation,
/// and where the credentials came from.
struct Asking {
    reference: String,
    repository: String,
    op: RegistryOperation,
    source: Source,
}

/// Is `host` (a name, an address, or either with `:port`) on loopback?
pub fn is_loopback(host: &str) -> bool {
    let host = match host.rsplit_once(':') {
        // `[::1]:5000`, `127.0.0.1:5000`, `localhost:5000`; not a bare `::1`.
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => host,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// May credentials be sent to `realm`, the token service a registry named?
/// `plain_ok`: the registry is on loopback, or `--insecure` was given.
pub fn check_realm(realm: &str, plain_ok: bool) -> Result<()> {
    let url = reqwest::Url::parse(realm).map_err(|err| {
        anyhow!("the registry names a token realm that is not a URL ({realm:?}: {err})")
    })?;
    match url.scheme() {
        "https" => Ok(()),
        "http" if plain_ok || url.host_str().is_some_and(is_loopback) => Ok(()),
        "http" => bail!(
            "the registry's token realm {realm} is plain HTTP: refusing to send credentials \
             there in the clear (--insecure allows it)"
        ),
        other => bail!("the registry names a token realm with scheme {other:?}: {realm}"),
    }
}

/// The `realm` of a `WWW-Authenticate: Bearer …` challenge, if it is one.
fn bearer_realm(header: &str) -> Option<String> {
    let parser = http_auth::ChallengeParser::new(header);
    for challenge in parser.flatten() {
        if challenge.scheme.eq_ignore_ascii_case("bearer") {
            return challenge
                .params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("realm"))
                .map(|(_, v)| v.to_unescaped());
        }
    }
    None
}

impl Registry {
    /// Resolves credentials for `reference`'s registry and authenticates
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
        let registry = image.resolve_registry().to_string();
        let plain_ok = insecure || is_loopback(&registry);
        let protocol = if plain_ok {
            ClientProtocol::HttpsExcept(vec![registry.clone()])
        } else {
            ClientProtocol::Https
        };
        let config = ClientConfig {
            protocol,
            // One PUT per blob: what every registry accepts, and the body is
            // streamed, so progress is real.
            use_monolithic_push: true,
            platform_resolver: None,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            user_agent: concat!("oci-artifact/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        };
        let client = oci_client::Client::try_from(config).context("set up the HTTP client")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("start the async runtime")?;
        let (auth, source) = credentials::resolve(login, &registry)?;
        let asking = Asking {
            reference: reference.to_string(),
            repository: image.repository().to_string(),
            op,
            source,
        };
        let this = Self {
            runtime,
            client,
            image,
            auth,
            asking,
            progress: Progress::new(),
        };
        this.authenticate(plain_ok)?;
        Ok(this)
    }

    /// Asks the registry what auth it wants, checks where credentials would
    /// go, and gets a token if it uses them.
    fn authenticate(&self, plain_ok: bool) -> Result<()> {
        let registry = self.image.resolve_registry();
        let scheme = if plain_ok { "http" } else { "https" };
        let url = format!("{scheme}://{registry}/v2/");
        self.runtime.block_on(async {
            if !matches!(self.auth, RegistryAuth::Anonymous) {
                // oci-client sends the credentials to whatever realm the
                // registry names; look at it first.
                let probe = reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .connect_timeout(CONNECT_TIMEOUT)
                    .timeout(READ_TIMEOUT)
                    .build()
                    .context("set up the HTTP client")?;
                let answer = probe
                    .get(&url)
                    .send()
                    .await
                    .map_err(|err| self.asking.unreachable(&url, &err))?;
                let challenge = answer
                    .headers()
                    .get(reqwest::header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok());
                if let Some(realm) = challenge.and_then(bearer_realm) {
                    check_realm(&realm, plain_ok)?;
                }
            }
            let token = self
                .client
                .auth(&self.image, &self.auth, self.asking.op)
                .await
                .map_err(|err| self.explain(err))?;
            if let Some(token) = token {
                check_token_time(&token)?;
            }
            Ok(())
        })
    }

    /// Pushes every blob the registry lacks, then the manifest under the
    /// reference's tag or digest. Returns the manifest's digest.
    pub fn push(&self, layout: &Layout) -> Result<String> {
        self.runtime.block_on(async {
            for blob in &layout.blobs {
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
                let bytes = bytes::Bytes::from(blob.bytes.clone());
                let size = bytes.len() as u64;
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
                .push_manifest_raw(&self.image, layout.manifest.bytes.clone(), content_type)
                .await
                .map_err(|err| self.explain(err))?;
            Ok(layout.manifest.digest())
        })
    }

    /// The manifest, following an index to the manifest it picks (see
    /// `oci_artifact::parse::manifest_of_index`).
    pub fn manifest(&self) -> Result<Vec<u8>> {
        let accept = [
            MEDIA_MANIFEST,
            MEDIA_INDEX,
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
        ];
        self.runtime.block_on(async {
            let mut image = self.image.clone();
            for _ in 0..2 {
                let (bytes, _digest) = self
                    .client
                    .pull_manifest_raw(&image, &self.auth, &accept)
                    .await
                    .map_err(|err| self.explain(err))?;
                if bytes.len() > MAX_MANIFEST_BYTES {
                    bail!(
                        "the manifest of {} is {} bytes, over the {MAX_MANIFEST_BYTES}-byte limit",
                        self.asking.reference,
                        bytes.len()
                    );
                }
                let value: serde_json::Value =
                    serde_json::from_slice(&bytes).context("the manifest is not JSON")?;
                match oci_artifact::parse::manifest_of_index(&value)? {
                    None => return Ok(bytes.to_vec()),
                    Some(desc) => image = image.clone_with_digest(desc.digest),
                }
            }
            bail!("nested indexes are not supported")
        })
    }

    /// A blob's bytes, read up to its descriptor's size. oci-client checks
    /// them against the digest; the caller checks them again with the rest
    /// of the image.
    pub fn blob(&self, desc: &Descriptor) -> Result<Vec<u8>> {
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
            let mut out = Vec::with_capacity(desc.size as usize);
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
            OciDistributionError::AuthenticationFailure(body) => anyhow!(
                "{what}: the token service refused {}: {}",
                self.source,
                one_line(&error_message(&body))
            ),
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
                    anyhow!("{what}: the registry answered {} ({url})", said.join("; "))
                }
            }
            OciDistributionError::ServerError { code, url, message } => match code {
                401 | 403 => self.denied(code, &error_message(&message)),
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
    fn unreachable(&self, url: &str, err: &reqwest::Error) -> anyhow::Error {
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
    fn denied(&self, code: u16, said: &str) -> anyhow::Error {
        let said = if said.is_empty() {
            String::new()
        } else {
            format!(": {}", one_line(said))
        };
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

/// The message in a token service's error answer: distribution's
/// `{"errors":[{"message":…}]}`, `{"details":…}` (Docker Hub), or the text.
fn error_message(body: &str) -> String {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(body) else {
        return body.to_string();
    };
    value
        .pointer("/errors/0/message")
        .or_else(|| value.get("details"))
        .or_else(|| value.get("error_description"))
        .or_else(|| value.get("error"))
        .and_then(|m| m.as_str())
        .map_or_else(|| body.to_string(), str::to_string)
}

/// A JWT's `exp` claim, if the token is a JWT that has one. Registries may
/// issue opaque tokens; those are not looked into.
fn token_expiry(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()?
        .get("exp")?
        .as_u64()
}

/// Refuses a token that has already expired: the registry would only
/// answer 401, and the cause is a clock or the token service.
fn check_token_time(token: &str) -> Result<()> {
    let Some(exp) = token_expiry(token) else {
        return Ok(());
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    if exp <= now {
        bail!(
            "the token service issued a token that expired {} s ago; check the clocks of this \
             machine and of the token service",
            now - exp
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for host in [
            "127.0.0.1:5000",
            "127.3.2.1",
            "localhost",
            "LOCALHOST:80",
            "[::1]:5000",
            "::1",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "10.0.0.1:5000",
            "example.com",
            "ghcr.io",
            "[::2]:5000",
            "localhost.example.com",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }

    #[test]
    fn credentials_never_go_to_a_plain_http_realm_elsewhere() {
        assert!(check_realm("https://auth.example.com/token", false).is_ok());
        assert!(check_realm("http://127.0.0.1:5001/token", false).is_ok());
        assert!(check_realm("http://auth.example.com/token", true).is_ok());
        let err = check_realm("http://auth.example.com/token", false).unwrap_err();
        assert!(err.to_string().contains("in the clear"), "{err}");
        assert!(check_realm("ftp://auth.example.com/", true).is_err());
        assert!(check_realm("not a url", true).is_err());
    }

    #[test]
    fn reads_the_realm_of_a_bearer_challenge() {
        assert_eq!(
            bearer_realm(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io""#
            )
            .as_deref(),
            Some("https://auth.docker.io/token")
        );
        assert_eq!(bearer_realm(r#"Basic realm="Registry Realm""#), None);
    }

    #[test]
    fn expired_jwts_are_refused_and_opaque_tokens_pass() {
        let jwt = |exp: u64| {
            let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(format!(r#"{{"exp":{exp}}}"#));
            format!("eyJhbGciOiJSUzI1NiJ9.{claims}.c2ln")
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(check_token_time(&jwt(now + 300)).is_ok());
        let err = check_token_time(&jwt(now - 300)).unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
        assert!(check_token_time("opaque-token").is_ok());
    }

    #[test]
    fn token_service_messages() {
        assert_eq!(
            error_message(r#"{"errors":[{"code":"UNAUTHORIZED","message":"wrong password"}]}"#),
            "wrong password"
        );
        assert_eq!(
            error_message(r#"{"details":"incorrect username"}"#),
            "incorrect username"
        );
        assert_eq!(error_message("plain text"), "plain text");
    }
}
