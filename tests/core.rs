//! End-to-end tests of the core shim, through a private containerd and the
//! real `ctr`: output, args and env, mounts, exit codes, traps, kills,
//! concurrency, bad input, and that nothing is left behind.
//!
//! Run with `scripts/test.sh`, which builds what they need and runs them once
//! per containerd version.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use harness::{bind_mount, image_name, Containerd, RUNTIME};

fn containerd() -> Containerd {
    match Containerd::start() {
        Ok(cd) => cd,
        Err(err) => panic!("cannot start containerd: {err:#}"),
    }
}

#[test]
fn hello_runs_and_leaves_nothing_behind() -> Result<()> {
    let cd = containerd();
    let image = cd.import("hello")?;
    let out = cd.run_rm(&image, "hello1", &[])?.ok()?;
    assert_eq!(out.stdout, "Hello from WebAssembly!\n");
    cd.assert_clean()
}

#[test]
fn guest_gets_args_and_exactly_the_spec_env() -> Result<()> {
    let cd = containerd();
    let image = cd.import("args-env")?;
    let out = cd
        .ctr(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--env",
            "GREETING=hi there",
            &image,
            "ae1",
            "/args-env.wasm",
            "one",
            "two words",
            "",
        ])?
        .ok()?;
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        &lines[..4],
        &[
            "arg[0]=/args-env.wasm",
            "arg[1]=one",
            "arg[2]=two words",
            "arg[3]="
        ],
        "{}",
        out.stdout
    );
    let env: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("env:"))
        .collect();
    // ctr's spec env: the image's PATH, then --env. Nothing of the shim's own.
    assert!(env.contains(&"GREETING=hi there"), "{env:?}");
    assert!(env.contains(&"PATH=/"), "{env:?}");
    assert_eq!(
        env.len(),
        2,
        "the guest must see only the spec's env: {env:?}"
    );
    cd.assert_clean()
}

#[test]
fn exit_codes_pass_through() -> Result<()> {
    let cd = containerd();
    let image = cd.import("exit-code")?;
    for (args, want) in [
        (vec!["/exit-code.wasm", "0"], 0),
        (vec!["/exit-code.wasm", "7"], 7),
        (vec!["/exit-code.wasm", "42", "proc_exit"], 42),
        (vec!["/exit-code.wasm", "200", "proc_exit"], 200),
        (vec!["/exit-code.wasm", "201"], 201),
    ] {
        let id = format!("exit{want}");
        let out = cd.run_rm(&image, &id, &args)?;
        assert_eq!(out.code, Some(want), "{args:?}: {out:?}");
    }
    cd.assert_clean()
}

#[test]
fn a_trap_exits_134_with_message_and_backtrace() -> Result<()> {
    let cd = containerd();
    let image = cd.import("trap")?;
    let out = cd.run_rm(&image, "trap1", &[])?;
    assert_eq!(out.code, Some(134), "{out:?}");
    assert!(out.stdout.contains("about to trap"), "{out:?}");
    assert!(out.stderr.contains("unreachable"), "{}", out.stderr);
    assert!(out.stderr.contains("wasm backtrace"), "{}", out.stderr);

    let out = cd.run_rm(&image, "trap2", &["/trap.wasm", "div0"])?;
    assert_eq!(
        out.code,
        Some(136),
        "division by zero maps to SIGFPE: {out:?}"
    );
    assert!(out.stderr.contains("divide by zero"), "{}", out.stderr);

    let out = cd.run_rm(&image, "trap3", &["/trap.wasm", "stack"])?;
    assert_eq!(
        out.code,
        Some(139),
        "stack overflow maps to SIGSEGV: {out:?}"
    );
    assert!(
        out.stderr.contains("call stack exhausted"),
        "{}",
        out.stderr
    );
    cd.assert_clean()
}

#[test]
fn a_trap_in_a_module_with_dwarf_names_file_and_line() -> Result<()> {
    let cd = containerd();
    // trap.c built with -g: __builtin_trap() is on line 36 of trap/trap.c.
    let image = cd.import("trap-debug")?;
    let out = cd.run_rm(&image, "dwarf1", &[])?;
    assert_eq!(out.code, Some(134), "{out:?}");
    assert!(out.stderr.contains("trap/trap.c:36"), "{}", out.stderr);
    assert!(out.stderr.contains("main"), "{}", out.stderr);
    // The stripped build names functions only, and neither build tells the
    // user to set a variable in the shim's environment.
    let stripped = cd.import("trap")?;
    let plain = cd.run_rm(&stripped, "dwarf2", &[])?;
    assert!(!plain.stderr.contains("trap.c:"), "{}", plain.stderr);
    for err in [&out.stderr, &plain.stderr] {
        assert!(!err.contains("WASMTIME_BACKTRACE_DETAILS"), "{err}");
    }
    cd.assert_clean()
}

/// Starts the spinning guest under a foreground `ctr run --rm`, once it
/// runs: ctr's process.
fn run_spinner(cd: &Containerd, id: &str) -> Result<std::process::Child> {
    let image = image_name("spin");
    let run = cd
        .ctr_command(&["run", "--rm", "--runtime", RUNTIME, &image, id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    cd.wait_status(id, "RUNNING")?;
    Ok(run)
}

/// Runs the spinning guest under a foreground `ctr run`, kills it with
/// `ctr task kill`, and returns ctr's exit code.
fn kill_spinner(cd: &Containerd, id: &str, signal: Option<&str>) -> Result<Option<i32>> {
    let mut run = run_spinner(cd, id)?;
    let mut args = vec!["tasks", "kill"];
    if let Some(s) = signal {
        args.extend(["-s", s]);
    }
    args.push(id);
    cd.ctr(&args)?.ok()?;
    harness::wait_exit(&mut run, Duration::from_secs(20))
}

#[test]
fn kill_stops_a_spinning_guest() -> Result<()> {
    let cd = containerd();
    cd.import("spin")?;
    assert_eq!(
        kill_spinner(&cd, "spin1", None)?,
        Some(143),
        "SIGTERM gives 128+15"
    );
    assert_eq!(
        kill_spinner(&cd, "spin2", Some("SIGKILL"))?,
        Some(137),
        "SIGKILL gives 128+9"
    );
    cd.assert_clean()
}

/// Signals whose default action is to be ignored, or to stop a process
/// until SIGCONT, leave a guest running; SIGKILL then ends it.
#[test]
fn ignored_and_stop_signals_leave_a_guest_running() -> Result<()> {
    let cd = containerd();
    cd.import("spin")?;
    let id = "spin3";
    let mut run = run_spinner(&cd, id)?;
    for signal in [
        "SIGWINCH", "SIGURG", "SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGCONT",
    ] {
        cd.ctr(&["tasks", "kill", "-s", signal, id])?.ok()?;
    }
    // A signal that ends a guest does so within a tick of the engine's
    // epoch (10 ms): had one of these, the task would be STOPPED (or gone,
    // with --rm) well within this wait.
    std::thread::sleep(Duration::from_millis(500));
    let tasks = cd.ctr(&["tasks", "ls"])?.stdout;
    assert!(
        tasks
            .lines()
            .any(|l| l.split_whitespace().next() == Some(id) && l.contains("RUNNING")),
        "{tasks}"
    );
    cd.ctr(&["tasks", "kill", "-s", "SIGKILL", id])?.ok()?;
    assert_eq!(
        harness::wait_exit(&mut run, Duration::from_secs(20))?,
        Some(137)
    );
    cd.assert_clean()
}

#[test]
fn twenty_tasks_at_once() -> Result<()> {
    let cd = containerd();
    let image = cd.import("hello")?;
    let results: Vec<Result<harness::Output>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let (cd, image) = (&cd, &image);
                s.spawn(move || cd.run_rm(image, &format!("many{i}"), &[]))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("thread panicked")))
            })
            .collect()
    });
    for (i, r) in results.into_iter().enumerate() {
        let out = r.with_context(|| format!("task many{i}"))?.ok()?;
        assert_eq!(out.stdout, "Hello from WebAssembly!\n", "task many{i}");
    }
    cd.assert_clean()
}

#[test]
fn mounts_are_visible_and_read_only_ones_stay_read_only() -> Result<()> {
    let cd = containerd();
    let image = cd.import("files")?;
    let rw = tempfile::tempdir()?;
    let ro = tempfile::tempdir()?;
    std::fs::write(ro.path().join("in.txt"), "from the host")?;
    let rw_mount = bind_mount(rw.path(), "/data", false);
    let ro_mount = bind_mount(ro.path(), "/ro", true);
    let run = |id: &str, args: &[&str]| {
        let mut a = vec![
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--mount",
            &rw_mount,
            "--mount",
            &ro_mount,
            &image,
            id,
        ];
        a.push("/files.wasm");
        a.extend_from_slice(args);
        cd.ctr(&a)
    };

    let out = run("f1", &["read", "/ro/in.txt"])?.ok()?;
    assert_eq!(out.stdout, "from the host");

    let out = run("f2", &["write", "/data/out.txt", "written by wasm"])?.ok()?;
    assert!(out.stderr.is_empty(), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(rw.path().join("out.txt"))?,
        "written by wasm"
    );

    let out = run("f3", &["write", "/ro/in.txt", "overwrite"])?;
    assert_eq!(
        out.code,
        Some(1),
        "writing a read-only mount must fail: {out:?}"
    );
    assert!(out.stderr.contains("error: open /ro/in.txt"), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(ro.path().join("in.txt"))?,
        "from the host"
    );

    let out = run("f4", &["write", "/ro/new.txt", "x"])?;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(!ro.path().join("new.txt").exists());

    let out = run("f5", &["ls", "/"])?.ok()?;
    assert!(
        out.stdout.lines().any(|l| l == "files.wasm"),
        "the rootfs is at /: {out:?}"
    );
    cd.assert_clean()
}

#[test]
fn guests_cannot_escape_their_filesystem() -> Result<()> {
    let cd = containerd();
    let image = cd.import("files")?;
    let rw = tempfile::tempdir()?;
    let secret = tempfile::tempdir()?;
    std::fs::write(secret.path().join("secret.txt"), "host secret")?;
    std::os::unix::fs::symlink(secret.path(), rw.path().join("abs"))?;
    std::os::unix::fs::symlink("../../../../../../../../..", rw.path().join("rel"))?;
    let mount = bind_mount(rw.path(), "/data", false);
    let secret_rel = format!("/data/rel{}/secret.txt", secret.path().display());
    let attempts: Vec<(&str, Vec<&str>)> = vec![
        ("e1", vec!["read", "/../../../../etc/hostname"]),
        ("e2", vec!["read", "/data/../../../../etc/hostname"]),
        ("e3", vec!["read", "/data/abs/secret.txt"]),
        ("e4", vec!["read", &secret_rel]),
        ("e5", vec!["read", "/proc/self/environ"]),
        ("e6", vec!["read", "/proc/1/cmdline"]),
        ("e7", vec!["ls", "/proc"]),
        ("e8", vec!["read", "/sys/kernel/hostname"]),
        ("e9", vec!["write", "/data/abs/planted.txt", "x"]),
    ];
    for (id, args) in attempts {
        let mut a = vec![
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--mount",
            &mount,
            &image,
            id,
            "/files.wasm",
        ];
        a.extend_from_slice(&args);
        let out = cd.ctr(&a)?;
        assert!(
            !out.stdout.contains("host secret"),
            "{args:?} read the secret: {out:?}"
        );
        assert!(
            !out.stdout.contains("containerd"),
            "{args:?} saw host processes: {out:?}"
        );
        assert_ne!(out.code, Some(0), "{args:?} should fail: {out:?}");
    }
    assert!(!secret.path().join("planted.txt").exists());
    cd.assert_clean()
}

#[test]
fn bad_modules_fail_with_a_clear_error() -> Result<()> {
    let cd = containerd();
    let hello = cd.import("hello")?;
    let cases: Vec<(&str, String, Vec<&str>, &str)> = vec![
        ("missing", hello.clone(), vec!["/nope.wasm"], "not found"),
        (
            "notwasm",
            cd.import("bad-not-wasm")?,
            vec![],
            "not WebAssembly",
        ),
        ("empty", cd.import("bad-empty")?, vec![], "empty"),
        (
            "truncated",
            cd.import("bad-truncated")?,
            vec![],
            "not valid WebAssembly",
        ),
        (
            "badcomp",
            cd.import("bad-component")?,
            vec![],
            "exports none",
        ),
        (
            "noimport",
            cd.import("bad-missing-import")?,
            vec![],
            "env::nope",
        ),
    ];
    for (id, image, args, cause) in cases {
        let out = cd.run_rm(&image, id, &args)?;
        assert_ne!(out.code, Some(0), "{id}: {out:?}");
        assert!(
            out.stderr.contains(cause),
            "{id}: ctr's output must name the cause {cause:?}: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains(id),
            "{id}: ctr's output must name the container: {}",
            out.stderr
        );
    }
    // The failures left nothing behind, and a good task still runs.
    cd.assert_clean()?;
    let out = cd.run_rm(&hello, "after", &[])?.ok()?;
    assert_eq!(out.stdout, "Hello from WebAssembly!\n");
    cd.assert_clean()
}

#[test]
fn a_terminal_request_gets_a_clear_error() -> Result<()> {
    let cd = containerd();
    let image = cd.import("hello")?;
    // ctr wants a real terminal for -t; `script` gives it one.
    let ctr_line = format!(
        "{} -a {} -n {} run --rm -t --runtime {RUNTIME} {image} tty1",
        harness::ctr_path().display(),
        cd.socket.display(),
        cd.namespace
    );
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-qec", &ctr_line, "/dev/null"])
        .stdin(Stdio::null());
    let out = harness::cmd::run(cmd, Duration::from_secs(60))?;
    let all = format!("{}{}", out.stdout, out.stderr);
    assert_ne!(out.code, Some(0), "{all}");
    assert!(all.contains("terminal"), "{all}");
    cd.assert_clean()
}

#[test]
fn task_api_on_a_running_guest() -> Result<()> {
    let cd = containerd();
    let image = cd.import("sleep")?;
    cd.run_detached("sl1", &["--runtime", RUNTIME, &image, "sl1"])?;

    let ps = cd.ctr(&["tasks", "ps", "sl1"])?.ok()?;
    assert!(ps.stdout.lines().count() >= 2, "{ps:?}");

    let metrics = cd.ctr(&["tasks", "metrics", "sl1"])?.ok()?;
    assert!(metrics.stdout.contains("memory"), "{metrics:?}");

    let pause = cd.ctr(&["tasks", "pause", "sl1"])?;
    assert!(!pause.success());
    assert!(
        pause.stderr.contains("Pause is not implemented"),
        "{pause:?}"
    );

    let exec = cd.ctr(&["tasks", "exec", "--exec-id", "x1", "sl1", "/sleep.wasm"])?;
    assert!(!exec.success());
    assert!(exec.stderr.contains("Exec is not implemented"), "{exec:?}");

    let del = cd.ctr(&["tasks", "delete", "sl1"])?;
    assert!(!del.success(), "deleting a running task must fail: {del:?}");

    cd.kill_and_remove("sl1")?;
    cd.assert_clean()
}

#[test]
fn detached_output_can_be_attached_to() -> Result<()> {
    let cd = containerd();
    let image = cd.import("sleep")?;
    // Sleeps 2 s, then prints "awake": attach while it sleeps, see the line.
    cd.run_detached(
        "att1",
        &["--runtime", RUNTIME, &image, "att1", "/sleep.wasm", "2"],
    )?;
    // `ctr task attach` returns when the task exits, and deletes it.
    let out = cd.ctr(&["tasks", "attach", "att1"])?.ok()?;
    assert!(out.stdout.contains("awake"), "{out:?}");
    cd.ctr(&["containers", "delete", "att1"])?.ok()?;
    cd.assert_clean()
}

#[test]
fn stdin_reaches_the_guest_and_ends_with_eof() -> Result<()> {
    use std::io::Write;
    let cd = containerd();
    let image = cd.import("cat")?;
    let mut child = cd
        .ctr_command(&["run", "--rm", "--runtime", RUNTIME, &image, "cat1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let input = "line one\nline two\n".repeat(1000);
    {
        let mut stdin = child.stdin.take().context("no stdin")?;
        stdin.write_all(input.as_bytes())?;
        // Dropping stdin closes it: the guest must see EOF and exit.
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            anyhow::bail!("the guest never saw the end of its stdin");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output()?;
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout) == input,
        "stdout: {} of {} bytes; stderr: {}",
        out.stdout.len(),
        input.len(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("copied {} bytes", input.len())));
    cd.assert_clean()
}
