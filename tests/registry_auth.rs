//! Credentials and registry auth of the `oci-artifact` CLI, against real
//! servers on loopback: Debian's `docker-registry` with an htpasswd file
//! (Basic auth), and the same registry in token mode (`auth: token`) with the
//! harness's token service (`crates/harness/src/token_service.py`), so that
//! the `WWW-Authenticate: Bearer` flow Docker Hub, GHCR and Quay use runs end
//! to end. skopeo, given the same credentials, is the independent reference.
//!
//! Every failure must be one line on stderr and exit code 1.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use base64::Engine as _;
use harness::{oci_artifact_with, skopeo, Auth, Output, Place, Registry, TestCa, TestNetns};
use serde_json::{json, Value};

const USER: &str = "alice";
const PASSWORD: &str = "s3cret pass";

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The token service's users: alice, and `late`, whose tokens expired five
/// minutes before they were issued. Anyone may pull `public/…`; users may
/// only pull `locked/…`.
fn token_policy() -> Value {
    json!({
        "users": {
            USER: {"password": PASSWORD},
            "late": {"password": PASSWORD, "expired": true},
        },
        "anonymous_pull": ["public/"],
        "read_only": ["locked/"],
    })
}

/// A registry in token mode, with [`token_policy`].
fn token_registry() -> Result<Registry> {
    Registry::start_with(Auth::Token {
        policy: token_policy(),
    })
}

/// A docker config folder holding `config`.
fn docker_config(dir: &Path, config: Value) -> Result<PathBuf> {
    let path = dir.join(format!("docker-{}", rand_suffix()));
    std::fs::create_dir_all(&path)?;
    std::fs::write(path.join("config.json"), serde_json::to_vec(&config)?)?;
    Ok(path)
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A scratch folder, and an empty docker config in it (so the user's own
/// never leaks into a test).
fn scratch() -> Result<(tempfile::TempDir, PathBuf)> {
    let tmp = tempfile::tempdir()?;
    let empty = docker_config(tmp.path(), json!({}))?;
    Ok((tmp, empty))
}

/// `auths` entry value for `user:password`.
fn basic(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

/// The CLI with `DOCKER_CONFIG` set (an empty folder when `None`, so the
/// user's own config never leaks in), extra env, and optional stdin.
struct Cli<'a> {
    docker_config: &'a Path,
    env: Vec<(&'a str, String)>,
    /// Run inside this namespace (for registries at `TestNetns::ADDR`).
    netns: Option<&'a TestNetns>,
}

impl<'a> Cli<'a> {
    fn new(docker_config: &'a Path) -> Self {
        Self {
            docker_config,
            env: Vec::new(),
            netns: None,
        }
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        let config = s(self.docker_config);
        let mut env: Vec<(&str, &str)> = vec![("DOCKER_CONFIG", config.as_str())];
        env.extend(self.env.iter().map(|(k, v)| (*k, v.as_str())));
        oci_artifact_with(args, &env, stdin, self.netns)
    }

    fn ok(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        self.run(args, stdin)?
            .ok()
            .with_context(|| format!("oci-artifact {}", args.join(" ")))
    }

    /// Runs a command that must fail: exit 1, one line on stderr holding
    /// every piece of `want`. Returns that line.
    fn fails(&self, args: &[&str], stdin: Option<&str>, want: &[&str]) -> Result<String> {
        let out = self.run(args, stdin)?;
        let line = out.stderr.trim();
        ensure!(
            out.code == Some(1) && line.lines().count() == 1,
            "oci-artifact {}: want exit 1 and one line on stderr, got {:?}:\n{}",
            args.join(" "),
            out.code,
            out.stderr
        );
        for piece in want {
            ensure!(line.contains(piece), "{line:?} does not say {piece:?}");
        }
        Ok(line.to_string())
    }
}

/// `args` with `--username USER --password-stdin` added.
fn login<'a>(args: &[&'a str], user: &'a str) -> Vec<&'a str> {
    let mut args = args.to_vec();
    args.extend(["--username", user, "--password-stdin"]);
    args
}

/// Builds `wasm` as `form` into a layout tar; returns (tar, manifest digest).
fn build(cli: &Cli, tmp: &Path, wasm: &Path, form: &str) -> Result<(PathBuf, String)> {
    let tar = tmp.join(format!("{form}-{}.tar", rand_suffix()));
    let out = cli.ok(
        &[
            "build",
            &s(wasm),
            "--name",
            "example.com/app:1",
            "--form",
            form,
            "--module-name",
            "app.wasm",
            "-o",
            &s(&tar),
        ],
        None,
    )?;
    let digest = out
        .stdout
        .split_whitespace()
        .nth(1)
        .context("build printed no digest")?
        .to_string();
    Ok((tar, digest))
}

/// The digest a `push` or `pull` printed after the reference.
fn printed_digest(out: &Output) -> Result<String> {
    out.stdout
        .split_whitespace()
        .nth(1)
        .map(str::to_string)
        .with_context(|| format!("no digest in {:?}", out.stdout))
}

fn hello() -> PathBuf {
    harness::examples_dir().join("hello.wasm")
}

#[test]
fn basic_auth_from_the_flags_and_the_docker_config() -> Result<()> {
    let reg = Registry::start_with(Auth::Htpasswd {
        user: USER.into(),
        password: PASSWORD.into(),
    })?;
    let (tmp, empty) = scratch()?;
    let cli = Cli::new(&empty);
    let (tar, built) = build(&cli, tmp.path(), &hello(), "image")?;
    let reference = reg.reference("team/hello:1");
    let stdin = format!("{PASSWORD}\n");

    // No credentials: refused, and the line says what to do.
    cli.fails(
        &["push", &s(&tar), &reference],
        None,
        &[&reference, "push denied", "--username"],
    )?;
    // A wrong password.
    cli.fails(
        &login(&["push", &s(&tar), &reference], USER),
        Some("wrong\n"),
        &[
            "registry rejected the credentials from --username",
            "wrong user or password",
        ],
    )?;
    // --username without --password-stdin is a usage error.
    let out = cli.run(&["push", &s(&tar), &reference, "--username", USER], None)?;
    ensure!(out.code == Some(2), "{out:?}");

    // The flags, which win over a docker config with a wrong password.
    let wrong = docker_config(
        tmp.path(),
        json!({"auths": {reg.addr.clone(): {"auth": basic(USER, "wrong")}}}),
    )?;
    let out = Cli::new(&wrong).ok(&login(&["push", &s(&tar), &reference], USER), Some(&stdin))?;
    assert_eq!(printed_digest(&out)?, built);
    // That wrong password alone: the registry (Basic) rejects it.
    Cli::new(&wrong).fails(
        &["pull", &reference],
        None,
        &[
            "registry rejected the credentials in",
            "wrong user or password",
        ],
    )?;

    // The docker config's auths, by host, as `docker login` writes it.
    let config = docker_config(
        tmp.path(),
        json!({"auths": {reg.addr.clone(): {"auth": basic(USER, PASSWORD)}}}),
    )?;
    let module = tmp.path().join("pulled.wasm");
    let out = Cli::new(&config).ok(&["pull", &reference, "--module", &s(&module)], None)?;
    assert_eq!(printed_digest(&out)?, built);
    assert_eq!(std::fs::read(&module)?, std::fs::read(hello())?);

    // skopeo, with the same credentials, sees the same manifest.
    let inspected = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        &format!("{USER}:{PASSWORD}"),
        &format!("docker://{reference}"),
    ])?
    .ok()?;
    let digest = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
            inspected.stdout.as_bytes()
        ))
    );
    assert_eq!(digest, built);
    Ok(())
}

#[test]
fn the_bearer_token_flow_pushes_and_pulls_every_image_form() -> Result<()> {
    let reg = token_registry()?;
    let (tmp, empty) = scratch()?;
    let cli = Cli::new(&empty);
    let config = docker_config(
        tmp.path(),
        json!({"auths": {reg.addr.clone(): {"auth": basic(USER, PASSWORD)}}}),
    )?;
    let logged_in = Cli::new(&config);
    let stdin = format!("{PASSWORD}\n");
    let component = harness::examples_dir().join("p2/hello.wasm");
    let forms: [(&Path, &str); 5] = [
        (&hello(), "image"),
        (&hello(), "artifact"),
        (&hello(), "artifact-stream-processor"),
        (&component, "image"),
        (&component, "artifact"),
    ];
    for (n, (wasm, form)) in forms.iter().enumerate() {
        let (tar, built) = build(&cli, tmp.path(), wasm, form)?;
        let reference = reg.reference(&format!("team/app{n}:{form}"));
        // Push with the flags, pull with the docker config.
        let out = cli.ok(&login(&["push", &s(&tar), &reference], USER), Some(&stdin))?;
        assert_eq!(printed_digest(&out)?, built, "{form}");
        let module = tmp.path().join(format!("app{n}.wasm"));
        let layout = tmp.path().join(format!("app{n}-layout"));
        let out = logged_in.ok(
            &[
                "pull",
                &reference,
                "--module",
                &s(&module),
                "--layout",
                &s(&layout),
            ],
            None,
        )?;
        assert_eq!(printed_digest(&out)?, built, "{form}");
        assert_eq!(std::fs::read(&module)?, std::fs::read(wasm)?, "{form}");
        let shown = logged_in.ok(&["inspect", &reference], None)?;
        assert!(shown.stdout.contains(&built), "{}", shown.stdout);
    }

    // The token service saw alice's credentials once per command, and only
    // the CLI's own request: oci-client never asked for a token itself. The
    // registry never saw them (it takes only tokens).
    let requests = reg.token_requests()?;
    // build 0, then push, pull and inspect per form.
    ensure!(
        requests.len() == 3 * forms.len(),
        "{} token requests for {} commands: {requests:?}",
        requests.len(),
        3 * forms.len()
    );
    let alice: Vec<&Value> = requests.iter().filter(|r| r["user"] == USER).collect();
    ensure!(
        alice
            .iter()
            .any(|r| r["scope"].to_string().contains("pull,push")),
        "no push token requested: {requests:?}"
    );
    ensure!(
        alice
            .iter()
            .all(|r| r["auth"] == "Basic" && r["status"] == 200),
        "{requests:?}"
    );

    // skopeo with the same credentials copies what the CLI pushed.
    let copy = tmp.path().join("skopeo-copy");
    skopeo(&[
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        "--src-creds",
        &format!("{USER}:{PASSWORD}"),
        &format!("docker://{}", reg.reference("team/app0:image")),
        &format!("oci:{}:1", copy.display()),
    ])?
    .ok()?;

    // Anonymous pull of a public repository: a token without credentials.
    let (tar, built) = build(&cli, tmp.path(), &hello(), "image")?;
    let public = reg.reference("public/hello:1");
    logged_in.ok(&["push", &s(&tar), &public], None)?;
    let before = reg.token_requests()?.len();
    let out = cli.ok(&["pull", &public], None)?;
    assert_eq!(printed_digest(&out)?, built);
    let anonymous = reg.token_requests()?;
    ensure!(
        anonymous[before..]
            .iter()
            .any(|r| r.get("auth").is_none() && r["status"] == 200),
        "no anonymous token request: {anonymous:?}"
    );
    // …and anonymous push is refused.
    cli.fails(
        &["push", &s(&tar), &reg.reference("public/hello:2")],
        None,
        &["push denied", "anonymous", "--username"],
    )?;
    // A private repository is not for anonymous pulls.
    cli.fails(
        &["pull", &reg.reference("team/app0:image")],
        None,
        &["pull denied", "anonymous"],
    )?;
    Ok(())
}

#[test]
fn token_failures_are_one_clear_line() -> Result<()> {
    let reg = token_registry()?;
    let (tmp, empty) = scratch()?;
    let cli = Cli::new(&empty);
    let (tar, _) = build(&cli, tmp.path(), &hello(), "image")?;
    let stdin = format!("{PASSWORD}\n");

    // A wrong password: the token service's own words.
    cli.fails(
        &login(&["push", &s(&tar), &reg.reference("team/a:1")], USER),
        Some("not the password\n"),
        &[
            "token service refused",
            "--username",
            "incorrect username or password",
        ],
    )?;
    // A token that expired minutes ago.
    cli.fails(
        &login(&["push", &s(&tar), &reg.reference("team/a:1")], "late"),
        Some(&stdin),
        &["token that expired 30", " s ago", "clocks"],
    )?;
    // A refused scope: alice may only pull locked/…; the token she gets
    // grants no push, and the registry says no.
    cli.fails(
        &login(&["push", &s(&tar), &reg.reference("locked/a:1")], USER),
        Some(&stdin),
        &["push denied", "do not allow push on locked/a"],
    )?;
    let requests = reg.token_requests()?;
    ensure!(
        requests
            .iter()
            .any(|r| r["scope"].to_string().contains("locked/a:pull,push")
                && r["granted"].to_string().contains(r#""actions":["pull"]"#)),
        "{requests:?}"
    );
    // Nothing was stored under the refused name.
    let stored = reg
        .dir
        .join("storage/docker/registry/v2/repositories/locked");
    ensure!(!stored.exists(), "{} exists", stored.display());
    // No registry at all.
    cli.fails(
        &["pull", "127.0.0.1:1/team/a:1"],
        None,
        &["127.0.0.1:1/team/a:1", "cannot reach", "refused"],
    )?;
    Ok(())
}

#[test]
fn credential_helpers_and_stores_are_asked_in_dockers_order() -> Result<()> {
    let reg = token_registry()?;
    let tmp = tempfile::tempdir()?;
    // A credential helper, as docker runs them: `get`, the server on stdin,
    // JSON on stdout. It knows this registry only, and logs who asked.
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin)?;
    let asked = tmp.path().join("helper-asked.log");
    let helper = bin.join("docker-credential-wttest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\n\
             [ \"$1\" = get ] || exit 2\n\
             read server\n\
             echo \"$server\" >> {asked}\n\
             if [ \"$server\" = \"{addr}\" ]; then\n\
             \x20 printf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}' \"$server\"\n\
             else\n\
             \x20 echo 'credentials not found in native keychain'; exit 1\n\
             fi\n",
            asked = asked.display(),
            addr = reg.addr,
        ),
    )?;
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let empty = docker_config(tmp.path(), json!({}))?;
    let (tar, built) = build(&Cli::new(&empty), tmp.path(), &hello(), "image")?;
    let wrong = basic(USER, "wrong");
    let with = |config: Value| -> Result<(PathBuf, String)> {
        Ok((docker_config(tmp.path(), config)?, path.clone()))
    };

    // credHelpers for this registry wins over a wrong auths entry.
    let (dir, path_env) = with(json!({
        "credHelpers": {reg.addr.clone(): "wttest"},
        "auths": {reg.addr.clone(): {"auth": wrong}},
    }))?;
    let mut cli = Cli::new(&dir);
    cli.env.push(("PATH", path_env));
    let out = cli.ok(&["push", &s(&tar), &reg.reference("team/helper:1")], None)?;
    assert_eq!(printed_digest(&out)?, built);
    assert_eq!(std::fs::read_to_string(&asked)?.trim(), reg.addr);

    // credHelpers for this registry wins over credsStore too (here a
    // store that is not installed, so asking it would fail).
    let (dir, path_env) = with(json!({
        "credHelpers": {reg.addr.clone(): "wttest"},
        "credsStore": "not-installed",
    }))?;
    let mut cli = Cli::new(&dir);
    cli.env.push(("PATH", path_env));
    cli.ok(&["pull", &reg.reference("team/helper:1")], None)?;

    // credsStore wins over auths, as in docker (auths then holds only
    // placeholders).
    let (dir, path_env) = with(json!({
        "credsStore": "wttest",
        "auths": {reg.addr.clone(): {"auth": wrong}},
    }))?;
    let mut cli = Cli::new(&dir);
    cli.env.push(("PATH", path_env));
    cli.ok(&["push", &s(&tar), &reg.reference("team/store:1")], None)?;

    // A store with nothing for the registry: anonymous, as in docker. (The
    // helper knows the registry as 127.0.0.1:PORT only; ask for it as
    // localhost:PORT.)
    let (dir, path_env) = with(json!({"credsStore": "wttest"}))?;
    let mut cli = Cli::new(&dir);
    cli.env.push(("PATH", path_env));
    let port = reg.addr.rsplit(':').next().context("port")?;
    cli.fails(
        &["pull", &format!("localhost:{port}/team/helper:1")],
        None,
        &["pull denied", "anonymous"],
    )?;
    let asked_for = std::fs::read_to_string(&asked)?;
    ensure!(
        asked_for.lines().any(|l| l == format!("localhost:{port}")),
        "{asked_for}"
    );

    // Plain auths, when nothing else is configured, with the wrong password.
    let dir = docker_config(
        tmp.path(),
        json!({"auths": {reg.addr.clone(): {"auth": wrong}}}),
    )?;
    Cli::new(&dir).fails(
        &["pull", &reg.reference("team/helper:1")],
        None,
        &[
            "token service refused",
            "config.json",
            "incorrect username or password",
        ],
    )?;

    // A helper that is not installed.
    let dir = docker_config(tmp.path(), json!({"credsStore": "not-installed"}))?;
    Cli::new(&dir).fails(
        &["pull", &reg.reference("team/helper:1")],
        None,
        &["docker-credential-not-installed", "PATH"],
    )?;
    Ok(())
}

/// Registries that are not on loopback: HTTPS with a CA the client must
/// trust, and the rule that credentials never travel in the clear, in a
/// network namespace of the test's own (see `harness::TestNetns`).
#[test]
fn https_registries_and_credentials_never_in_the_clear() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let netns = TestNetns::new()?;
    let ca = TestCa::new(tmp.path())?;
    let empty = docker_config(tmp.path(), json!({}))?;
    let (tar, built) = build(&Cli::new(&empty), tmp.path(), &hello(), "image")?;
    let stdin = format!("{PASSWORD}\n");
    let mut cli = Cli::new(&empty);
    cli.netns = Some(&netns);
    let mut trusting = Cli::new(&empty);
    trusting.netns = Some(&netns);
    trusting.env.push(("SSL_CERT_FILE", s(&ca.ca)));
    let at = |name: &str| format!("{}:5000/{name}", TestNetns::ADDR);

    // HTTPS: the CA untrusted, then trusted.
    {
        let _reg = Registry::start_at(
            Auth::Open,
            Place::Netns {
                netns: &netns,
                tls: Some(&ca),
            },
        )?;
        cli.fails(
            &["push", &s(&tar), &at("tls/hello:1")],
            None,
            &[
                "cannot reach https://10.99.0.1:5000/v2/",
                "certificate",
                "SSL_CERT_FILE",
            ],
        )?;
        let out = trusting.ok(&["push", &s(&tar), &at("tls/hello:1")], None)?;
        assert_eq!(printed_digest(&out)?, built);
        let module = tmp.path().join("tls.wasm");
        trusting.ok(&["pull", &at("tls/hello:1"), "--module", &s(&module)], None)?;
        assert_eq!(std::fs::read(&module)?, std::fs::read(hello())?);
    }

    // An HTTPS registry whose token realm is plain HTTP on another address
    // than loopback: the credentials are not sent, and the token service
    // never hears from the CLI.
    {
        let reg = Registry::start_at(
            Auth::Token {
                policy: token_policy(),
            },
            Place::Netns {
                netns: &netns,
                tls: Some(&ca),
            },
        )?;
        trusting.fails(
            &login(&["push", &s(&tar), &at("team/hello:1")], USER),
            Some(&stdin),
            &[
                "token realm http://10.99.0.1:",
                "in the clear",
                "--insecure",
            ],
        )?;
        ensure!(
            reg.token_requests()?.is_empty(),
            "{:?}",
            reg.token_requests()?
        );
        // Without credentials there is nothing to leak: an anonymous token.
        trusting.fails(
            &["pull", &at("team/hello:1")],
            None,
            &["pull denied", "anonymous"],
        )?;
        let requests = reg.token_requests()?;
        ensure!(
            !requests.is_empty() && requests.iter().all(|r| r.get("auth").is_none()),
            "{requests:?}"
        );
    }

    // A plain-HTTP registry elsewhere: HTTPS is tried and fails unless
    // --insecure is given, which also allows its plain-HTTP token realm.
    {
        let _reg = Registry::start_at(
            Auth::Token {
                policy: token_policy(),
            },
            Place::Netns {
                netns: &netns,
                tls: None,
            },
        )?;
        let (tar, reference) = (s(&tar), at("team/hello:1"));
        let args = login(&["push", &tar, &reference], USER);
        cli.fails(
            &args,
            Some(&stdin),
            &["cannot reach https://10.99.0.1:5000/v2/"],
        )?;
        let mut insecure = args.to_vec();
        insecure.push("--insecure");
        let out = cli.ok(&insecure, Some(&stdin))?;
        assert_eq!(printed_digest(&out)?, built);
    }
    Ok(())
}

#[test]
fn transfers_show_bars_on_a_terminal_and_lines_in_logs() -> Result<()> {
    let reg = Registry::start()?;
    let (tmp, empty) = scratch()?;
    let cli = Cli::new(&empty);
    // 3 MiB, over the 1 MiB from which logs get progress lines: an empty
    // module with a custom section of padding, so it stays valid.
    let big = tmp.path().join("big.wasm");
    let mut padded = wat::parse_str("(module)")?;
    let mut section = vec![3u8];
    section.extend_from_slice(b"pad");
    section.extend(std::iter::repeat_n(7u8, 3 << 20));
    padded.push(0);
    leb128(&mut padded, section.len() as u64);
    padded.extend_from_slice(&section);
    std::fs::write(&big, &padded)?;
    let (tar, built) = build(&cli, tmp.path(), &big, "image")?;

    // Not a terminal (CI logs): plain lines, every tenth.
    let reference = reg.reference("big/app:1");
    let out = cli.ok(&["push", &s(&tar), &reference], None)?;
    assert_eq!(printed_digest(&out)?, built);
    for tenth in ["10% of 3.0 MiB", "100% of 3.0 MiB"] {
        ensure!(out.stderr.contains(tenth), "{}", out.stderr);
    }

    // A terminal (util-linux `script` gives the CLI one): an indicatif bar
    // with bytes and rate, and none of the plain lines.
    let cmd = format!(
        "{} pull {reference} --module {}",
        harness::oci_artifact_path().display(),
        tmp.path().join("pulled.wasm").display()
    );
    let out = harness::cmd::run(
        {
            let mut c = std::process::Command::new("script");
            c.args(["-qec", &cmd, "/dev/null"])
                .env("DOCKER_CONFIG", &empty)
                // What a terminal has; indicatif draws nothing without it.
                .env("TERM", "xterm")
                .stdin(std::process::Stdio::null());
            c
        },
        std::time::Duration::from_secs(60),
    )?
    .ok()?;
    ensure!(
        out.stdout.contains("pull ") && out.stdout.contains("3.00 MiB/3.00 MiB"),
        "no progress bar on the terminal: {:?}",
        out.stdout
    );
    ensure!(!out.stdout.contains("% of"), "{:?}", out.stdout);
    assert_eq!(std::fs::read(tmp.path().join("pulled.wasm"))?, padded);
    Ok(())
}

fn leb128(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}
