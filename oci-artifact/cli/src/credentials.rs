//! Which credentials to present to a registry, found the way the docker CLI
//! finds them:
//!
//! 1. `--username` with `--password-stdin`;
//! 2. the docker config (`$DOCKER_CONFIG/config.json`, else
//!    `~/.docker/config.json`): the `credHelpers` entry for the registry, else
//!    the `credsStore`, else the `auths` entry;
//! 3. none: anonymous.
//!
//! The `docker_credential` crate reads the file and runs the
//! `docker-credential-<name> get` helpers. It looks at `auths` before
//! `credsStore`; docker does not (with a store, `auths` only holds empty
//! placeholders), so a config with a store and no helper for the registry is
//! handed over without its `auths`.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use docker_credential::{CredentialRetrievalError, DockerCredential};
use oci_client::secrets::RegistryAuth;
use serde_json::Value;

/// The credentials given on the command line.
#[derive(Debug, Default, Clone)]
pub struct Login {
    pub username: Option<String>,
    /// Read the password from stdin (with `username`).
    pub password_stdin: bool,
}

/// Where the credentials came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Anonymous,
    CommandLine,
    Helper(String),
    ConfigFile(PathBuf),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Anonymous => write!(f, "no credentials"),
            Source::CommandLine => write!(f, "the credentials from --username"),
            Source::Helper(name) => write!(f, "the credentials from docker-credential-{name}"),
            Source::ConfigFile(path) => write!(f, "the credentials in {}", path.display()),
        }
    }
}

/// The key docker files a registry's credentials under: Docker Hub's is its
/// historical v1 URL, every other registry's is its `host[:port]`.
pub fn server_key(registry: &str) -> &str {
    match registry {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => "https://index.docker.io/v1/",
        other => other,
    }
}

/// The credentials for `registry` (as `host[:port]`).
pub fn resolve(login: &Login, registry: &str) -> Result<(RegistryAuth, Source)> {
    if let Some(user) = &login.username {
        if !login.password_stdin {
            bail!("--username needs --password-stdin (the password is never taken as an argument)");
        }
        let mut password = String::new();
        std::io::stdin()
            .read_to_string(&mut password)
            .context("read the password from stdin")?;
        let password = password.trim_end_matches(['\n', '\r']);
        if password.is_empty() {
            bail!("--password-stdin: stdin held no password");
        }
        return Ok((
            RegistryAuth::Basic(user.clone(), password.to_string()),
            Source::CommandLine,
        ));
    }
    if login.password_stdin {
        bail!("--password-stdin needs --username");
    }
    from_docker_config(registry)
}

/// A helper's name from the config; an empty one means none, as in docker.
fn named(value: Option<&Value>) -> Option<&str> {
    value.and_then(Value::as_str).filter(|n| !n.is_empty())
}

fn docker_config_path() -> Option<PathBuf> {
    std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))
        .map(|dir| dir.join("config.json"))
}

fn from_docker_config(registry: &str) -> Result<(RegistryAuth, Source)> {
    let Some(path) = docker_config_path() else {
        return Ok((RegistryAuth::Anonymous, Source::Anonymous));
    };
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Ok((RegistryAuth::Anonymous, Source::Anonymous))
        }
        Err(err) => return Err(err).with_context(|| format!("read {}", path.display())),
    };
    let mut config: Value =
        serde_json::from_slice(&text).with_context(|| format!("parse {}", path.display()))?;
    let key = server_key(registry);
    // An empty name means none, as in docker.
    let helper = named(config.pointer("/credHelpers").and_then(|h| h.get(key)))
        .or_else(|| named(config.get("credsStore")))
        .map(str::to_string);
    if helper.is_some() {
        if let Some(object) = config.as_object_mut() {
            object.remove("auths");
        }
    }
    let source = match &helper {
        Some(name) => Source::Helper(name.clone()),
        None => Source::ConfigFile(path.clone()),
    };
    let bytes = serde_json::to_vec(&config)?;
    match docker_credential::get_credential_from_reader(bytes.as_slice(), key) {
        Ok(DockerCredential::UsernamePassword(user, password)) => {
            Ok((RegistryAuth::Basic(user, password), source))
        }
        Ok(DockerCredential::IdentityToken(_)) => bail!(
            "{source} for {registry} is an identity token (an OAuth refresh token), which \
             oci-artifact cannot use; give --username and --password-stdin"
        ),
        Err(CredentialRetrievalError::NoCredentialConfigured) => {
            Ok((RegistryAuth::Anonymous, Source::Anonymous))
        }
        // A helper that has nothing for this registry: docker goes on
        // anonymously, and so do we.
        Err(CredentialRetrievalError::HelperFailure { stdout, .. })
            if stdout.contains("credentials not found") =>
        {
            Ok((RegistryAuth::Anonymous, Source::Anonymous))
        }
        Err(CredentialRetrievalError::HelperFailure {
            helper,
            stdout,
            stderr,
        }) => bail!(
            "{helper} get failed for {key}: {}",
            one_line(if stderr.trim().is_empty() {
                &stdout
            } else {
                &stderr
            })
        ),
        Err(CredentialRetrievalError::HelperCommunicationError) => bail!(
            "cannot run docker-credential-{} (named in {}): is it on the PATH?",
            helper.as_deref().unwrap_or("?"),
            path.display()
        ),
        Err(err) => bail!("{}: {err} (for {key})", path.display()),
    }
}

/// The first line of a message, trimmed, for one-line errors.
pub fn one_line(text: &str) -> String {
    let line = text.trim().lines().next().unwrap_or_default().trim();
    let mut line: String = line.chars().take(300).collect();
    if line.is_empty() {
        line.push_str("(no message)");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_has_its_historical_key() {
        assert_eq!(server_key("index.docker.io"), "https://index.docker.io/v1/");
        assert_eq!(server_key("docker.io"), "https://index.docker.io/v1/");
        assert_eq!(server_key("127.0.0.1:5000"), "127.0.0.1:5000");
    }

    #[test]
    fn one_line_keeps_the_first_line() {
        assert_eq!(one_line("\n  bad password\nmore"), "bad password");
        assert_eq!(one_line(""), "(no message)");
    }
}
