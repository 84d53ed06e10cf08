//! Getting permission from a registry, with credentials going only where
//! they may.
//!
//! oci-client can do the `WWW-Authenticate` dance itself, but it sends Basic
//! credentials to whatever token realm the registry names on *its* request to
//! `/v2/`, with no check of the realm, and asks again whenever its token
//! cache misses (every new operation, every minute for tokens without an
//! expiry). So the exchange happens here, once per command, and oci-client
//! is handed its result: a Bearer token (its own auth then makes no network
//! call), or Basic credentials already in its token cache for both
//! operations (which never expire there). Either way it never sees a
//! challenge of its own.
//!
//! The rule: credentials go to the registry, or to the token realm it names,
//! and never over plain HTTP unless the registry is on loopback or
//! `--insecure` was given. Every realm the registry names is checked, not
//! only the one used.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use oci_client::RegistryOperation;

use crate::credentials::{one_line, Source};
use crate::registry::Asking;

/// A token service's answer is a few KiB; more is not a token.
const MAX_TOKEN_ANSWER: usize = 1 << 20;

/// What every request to the registry presents.
#[derive(Debug, Clone)]
pub enum Presented {
    Anonymous,
    Basic(String, String),
    Bearer(String),
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

/// May credentials be sent to `realm`, a token service the registry named?
/// `plain_ok`: the registry is on loopback, or `--insecure` was given.
pub fn check_realm(realm: &str, plain_ok: bool) -> Result<()> {
    let url = reqwest::Url::parse(realm).map_err(|err| {
        anyhow!("the registry names a token realm that is not a URL ({realm:?}: {err})")
    })?;
    match url.scheme() {
        "https" => Ok(()),
        "http" if plain_ok => Ok(()),
        "http" => bail!(
            "the registry's token realm {realm} is plain HTTP: refusing to send credentials \
             there in the clear (--insecure allows it)"
        ),
        other => bail!("the registry names a token realm with scheme {other:?}: {realm}"),
    }
}

/// A `Bearer` challenge's realm and service.
#[derive(Debug, PartialEq, Eq)]
struct Bearer {
    realm: String,
    service: Option<String>,
}

/// What `WWW-Authenticate` headers ask for: the Bearer challenges that name a
/// realm, and whether Basic is offered.
fn challenges<'a>(headers: impl Iterator<Item = &'a str>) -> (Vec<Bearer>, bool) {
    let (mut bearers, mut basic) = (Vec::new(), false);
    for header in headers {
        for challenge in http_auth::ChallengeParser::new(header).flatten() {
            let param = |name: &str| {
                challenge
                    .params
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.to_unescaped())
            };
            if challenge.scheme.eq_ignore_ascii_case("bearer") {
                if let Some(realm) = param("realm") {
                    bearers.push(Bearer {
                        realm,
                        service: param("service"),
                    });
                }
            } else if challenge.scheme.eq_ignore_ascii_case("basic") {
                basic = true;
            }
        }
    }
    (bearers, basic)
}

/// Asks the registry at `base` (`scheme://host[:port]`) what it wants and
/// settles what to present, fetching a token when it uses them.
pub async fn negotiate(
    http: &reqwest::Client,
    base: &str,
    auth: &RegistryAuth,
    plain_ok: bool,
    asker: &Asking,
) -> Result<Presented> {
    let url = format!("{base}/v2/");
    let answer = http
        .get(&url)
        .send()
        .await
        .map_err(|err| asker.unreachable(&url, &err))?;
    let status = answer.status().as_u16();
    if (200..300).contains(&status) {
        // No auth wanted: credentials, if any, stay home.
        return Ok(Presented::Anonymous);
    }
    if status != 401 {
        bail!(
            "{}: GET {url} answered HTTP {status}, not a registry's 200 or 401",
            asker.reference
        );
    }
    let headers = answer
        .headers()
        .get_all(reqwest::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let (bearers, basic) = challenges(headers);
    let credentials = match auth {
        RegistryAuth::Basic(user, password) => Some((user.as_str(), password.as_str())),
        _ => None,
    };
    if let Some(first) = bearers.first() {
        if credentials.is_some() {
            for bearer in &bearers {
                check_realm(&bearer.realm, plain_ok).with_context(|| asker.reference.clone())?;
            }
        }
        let token = fetch_token(http, first, credentials, asker).await?;
        return Ok(Presented::Bearer(token));
    }
    match (basic, credentials) {
        (true, Some((user, password))) => Ok(Presented::Basic(user.into(), password.into())),
        (true, None) => Err(asker.denied(401, "")),
        (false, _) => bail!(
            "{}: the registry asks for an auth scheme oci-artifact does not speak (neither \
             Basic nor Bearer)",
            asker.reference
        ),
    }
}

/// `GET realm?service=…&scope=repository:NAME:ACTIONS`, with the Basic
/// credentials if any, as the distribution token spec says.
async fn fetch_token(
    http: &reqwest::Client,
    bearer: &Bearer,
    credentials: Option<(&str, &str)>,
    asker: &Asking,
) -> Result<String> {
    let actions = match asker.op {
        RegistryOperation::Pull => "pull",
        RegistryOperation::Push => "pull,push",
    };
    let scope = format!("repository:{}:{actions}", asker.repository);
    let mut query = vec![("scope", scope.as_str())];
    if let Some(service) = &bearer.service {
        query.push(("service", service.as_str()));
    }
    let mut request = http.get(&bearer.realm).query(&query);
    if let Some((user, password)) = credentials {
        request = request.basic_auth(user, Some(password));
    }
    let answer = request
        .send()
        .await
        .map_err(|err| asker.unreachable(&bearer.realm, &err))?;
    let status = answer.status().as_u16();
    let body = read_limited(answer, MAX_TOKEN_ANSWER)
        .await
        .with_context(|| format!("{}: read the token service's answer", asker.reference))?;
    let body = String::from_utf8_lossy(&body);
    if status != 200 {
        let who = match &asker.source {
            Source::Anonymous => "an anonymous token".to_string(),
            source => source.to_string(),
        };
        bail!(
            "{}: the token service refused {who} (HTTP {status}): {}",
            asker.reference,
            one_line(&error_message(&body))
        );
    }
    let value: serde_json::Value = serde_json::from_str(&body).map_err(|_| {
        anyhow!(
            "{}: the token service's answer is not JSON: {}",
            asker.reference,
            one_line(&body)
        )
    })?;
    let token = value
        .get("token")
        .or_else(|| value.get("access_token"))
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .with_context(|| {
            format!(
                "{}: the token service's answer has no token",
                asker.reference
            )
        })?;
    // It goes into a header: no control characters (oci-client would panic).
    if reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).is_err() {
        bail!(
            "{}: the token service issued a token that cannot be sent in a header",
            asker.reference
        );
    }
    check_token_time(token).with_context(|| asker.reference.clone())?;
    Ok(token.to_string())
}

/// An answer's body, refused beyond `limit` bytes.
pub async fn read_limited(mut answer: reqwest::Response, limit: usize) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = answer.chunk().await? {
        if body.len() + chunk.len() > limit {
            bail!("the answer is over {limit} bytes");
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The message in an error answer: distribution's
/// `{"errors":[{"message":…}]}`, `{"details":…}` (Docker Hub), OAuth's
/// `error_description`, or the text.
pub fn error_message(body: &str) -> String {
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
    fn credentials_never_go_to_a_plain_http_realm_unless_allowed() {
        assert!(check_realm("https://auth.example.com/token", false).is_ok());
        assert!(check_realm("http://auth.example.com/token", true).is_ok());
        let err = check_realm("http://auth.example.com/token", false).unwrap_err();
        assert!(err.to_string().contains("in the clear"), "{err}");
        // A remote registry may not point credentials at a local port either.
        assert!(check_realm("http://127.0.0.1:5001/token", false).is_err());
        assert!(check_realm("ftp://auth.example.com/", true).is_err());
        assert!(check_realm("not a url", true).is_err());
    }

    #[test]
    fn reads_every_challenge() {
        let (bearers, basic) = challenges(
            [r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io""#]
                .into_iter(),
        );
        assert_eq!(
            bearers,
            vec![Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into())
            }]
        );
        assert!(!basic);
        // A Bearer challenge without a realm is skipped, not taken as "none":
        // the one after it is the one a client would use, and it is checked.
        let (bearers, basic) = challenges(
            [
                r#"Bearer service="x", Bearer realm="http://evil.example/token""#,
                r#"Basic realm="Registry Realm""#,
            ]
            .into_iter(),
        );
        assert_eq!(bearers.len(), 1);
        assert_eq!(bearers[0].realm, "http://evil.example/token");
        assert!(basic);
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
