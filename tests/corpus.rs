//! The bad-input corpus (`tests/corpus/`, listed in `tests/corpus/EXPECT`)
//! plus bad specs, run through containerd while a healthy guest runs in the
//! same shim. Each input must get its clear error (or its exit code), leave
//! nothing behind, and leave the shim serving the healthy guest.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use harness::{Containerd, RUNTIME};

/// All these containers share one shim, through runc's grouping annotation.
const GROUP: &str = "io.containerd.runc.v2.group=corpus";

struct Case {
    name: String,
    options: Vec<String>,
    /// `None`: fails before the guest runs. `Some(n)`: the guest exits with n.
    exit: Option<i32>,
    text: String,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

fn cases() -> Result<Vec<Case>> {
    let expect = std::fs::read_to_string(corpus_dir().join("EXPECT"))?;
    let mut cases = Vec::new();
    for line in expect
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let mut parts = line.split_whitespace();
        let (Some(name), Some(options), Some(outcome)) = (parts.next(), parts.next(), parts.next())
        else {
            bail!("malformed EXPECT line: {line}");
        };
        let text = parts.collect::<Vec<_>>().join(" ");
        let exit = match outcome {
            "fail" => None,
            o => Some(o.strip_prefix("exit:").context("outcome")?.parse()?),
        };
        let options = match options {
            "-" => Vec::new(),
            o => o.split(',').map(|s| s.replace('=', " ")).collect(),
        };
        cases.push(Case {
            name: name.to_string(),
            options,
            exit,
            text,
        });
    }
    Ok(cases)
}

/// The module bytes of a corpus entry: WAT is assembled, `.bin` taken as is.
fn module_bytes(name: &str) -> Result<Vec<u8>> {
    let dir = corpus_dir();
    let wat = dir.join(format!("{name}.wat"));
    if wat.exists() {
        return wat::parse_file(&wat).with_context(|| format!("assemble {}", wat.display()));
    }
    std::fs::read(dir.join(format!("{name}.bin"))).with_context(|| format!("corpus entry {name}"))
}

fn run(
    cd: &Containerd,
    image: &str,
    id: &str,
    options: &[String],
    args: &[&str],
) -> Result<harness::Output> {
    let mut a: Vec<&str> = vec!["run", "--rm", "--runtime", RUNTIME, "--annotation", GROUP];
    let split: Vec<String> = options
        .iter()
        .flat_map(|o| o.split(' ').map(str::to_string))
        .collect();
    a.extend(split.iter().map(String::as_str));
    a.extend([image, id]);
    a.extend_from_slice(args);
    cd.ctr(&a)
}

#[test]
fn every_bad_input_gets_a_clear_error_and_the_shim_carries_on() -> Result<()> {
    let cd = Containerd::start()?;
    let sleep = cd.import("sleep")?;
    let hello = cd.import("hello")?;
    let args_env = cd.import("args-env")?;

    // A healthy guest in the shim that will serve every bad input below.
    let shim = cd.run_detached(
        "healthy",
        &[
            "--runtime",
            RUNTIME,
            "--annotation",
            GROUP,
            &sleep,
            "healthy",
        ],
    )?;

    let cases = cases()?;
    assert!(
        cases.len() >= 30,
        "the corpus should hold at least 30 inputs"
    );
    let tmp = tempfile::tempdir()?;
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let bytes = module_bytes(&case.name)?;
        let file = tmp.path().join(format!("{}.in", case.name));
        std::fs::write(&file, bytes)?;
        let image = format!("docker.io/corpus/{}:1", case.name);
        let tar = tmp.path().join(format!("{}.tar", case.name));
        harness::build_image(&file, "app.wasm", &image, &tar)?;
        cd.import_tar(&tar)?;
        let id = format!("bad{i}-{}", case.name);
        let out = run(&cd, &image, &id, &case.options, &[])?;
        let all = format!("{}{}", out.stdout, out.stderr);
        let ok = match case.exit {
            None => out.code != Some(0) && all.contains(&id) && all.contains(&case.text),
            Some(code) => out.code == Some(code) && all.contains(&case.text),
        };
        if !ok {
            failures.push(format!("{}: code {:?}, output: {all}", case.name, out.code));
        }
    }

    // Bad specs: an empty args[0], an entrypoint that is a folder, one that
    // does not exist.
    for (id, args, text) in [
        ("spec-empty-arg0", vec![""], "empty"),
        ("spec-dir-entry", vec!["/"], "not a regular file"),
        ("spec-no-entry", vec!["/no/such/module.wasm"], "not found"),
    ] {
        let out = run(&cd, &hello, id, &[], &args)?;
        let all = format!("{}{}", out.stdout, out.stderr);
        if out.code == Some(0) || !all.contains(id) || !all.contains(text) {
            failures.push(format!("{id}: code {:?}, output: {all}", out.code));
        }
    }

    // Unusual but valid: a 64 KiB argument and a 64 KiB environment value.
    let long = "x".repeat(64 * 1024);
    let env = format!("LONG={long}");
    let out = run(
        &cd,
        &args_env,
        "spec-long",
        &["--env".into(), env.clone()],
        &["/args-env.wasm", &long],
    )?;
    if !(out.success()
        && out.stdout.contains(&format!("arg[1]={long}"))
        && out.stdout.contains(&env))
    {
        failures.push(format!(
            "spec-long: code {:?}, stderr {}",
            out.code, out.stderr
        ));
    }

    assert!(
        failures.is_empty(),
        "{} of the corpus failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // The shim that served all of the above is the same, and its healthy task runs on.
    assert_eq!(cd.task_pid("healthy")?, shim);
    cd.wait_status("healthy", "RUNNING")?;
    cd.kill_and_remove("healthy")?;
    cd.assert_clean()
}
