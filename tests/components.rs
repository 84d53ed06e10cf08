//! WASI preview 2 command components, through `ctr` and CRI: the example C
//! programs made components with the preview 1 command adapter
//! (`oci-artifact componentize`), and tiny components written in WAT for
//! what C cannot show (the initial cwd, exit-with-code) and for bad input.
//! A component gets exactly what a module gets: args, env, mounts, stdio,
//! limits, kill, exit codes (an adapter-built program's non-zero exit is 1).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use harness::cri::{wait_log_line, Cri};
use harness::{bind_mount, image_name, Containerd, CriOptions, RUNTIME};

/// Imports the component form of an example (`<name>-p2`).
fn import_p2(cd: &Containerd, example: &str) -> Result<String> {
    cd.import(&format!("{example}-p2"))
}

/// Builds an image of a component written in WAT, and imports it.
fn wat_image(cd: &Containerd, dir: &Path, name: &str, wat: &str) -> Result<String> {
    let bytes = wat::parse_str(wat).with_context(|| format!("assemble {name}"))?;
    cd.import_wasm(dir, name, &bytes)
}

/// A command component that compares its `initial-cwd` with its first
/// argument: `run` returns ok when they are equal; `exit-with-code(1)` when
/// they differ, 2 when it has no cwd, 3 when it has no argument.
const CWD_WAT: &str = r#"
(component
  (import "wasi:cli/environment@0.2.0" (instance $env
    (export "get-arguments" (func (result (list string))))
    (export "initial-cwd" (func (result (option string))))))
  (import "wasi:cli/exit@0.2.12" (instance $exit
    (export "exit-with-code" (func (param "status-code" u8)))))
  (core module $mem
    (memory (export "memory") 1)
    (global $next (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (i32.and
        (i32.add (global.get $next) (i32.sub (local.get 2) (i32.const 1)))
        (i32.xor (i32.sub (local.get 2) (i32.const 1)) (i32.const -1))))
      (global.set $next (i32.add (local.get $p) (local.get 3)))
      (local.get $p)))
  (core instance $m (instantiate $mem))
  (alias export $env "get-arguments" (func $get-arguments))
  (alias export $env "initial-cwd" (func $initial-cwd))
  (alias export $exit "exit-with-code" (func $exit-with-code))
  (alias core export $m "memory" (core memory $memory))
  (alias core export $m "realloc" (core func $realloc))
  (core func $args (canon lower (func $get-arguments) (memory $memory) (realloc $realloc)))
  (core func $cwd (canon lower (func $initial-cwd) (memory $memory) (realloc $realloc)))
  (core func $exit (canon lower (func $exit-with-code)))
  (core module $main
    (import "m" "memory" (memory 1))
    (import "host" "args" (func $args (param i32)))
    (import "host" "cwd" (func $cwd (param i32)))
    (import "host" "exit" (func $exit (param i32)))
    (func (export "run") (result i32)
      (local $ap i32) (local $al i32) (local $cp i32) (local $cl i32) (local $k i32)
      (call $args (i32.const 0))
      (call $cwd (i32.const 16))
      (if (i32.eqz (i32.load8_u (i32.const 16))) (then (call $exit (i32.const 2))))
      (if (i32.lt_u (i32.load (i32.const 4)) (i32.const 2)) (then (call $exit (i32.const 3))))
      (local.set $ap (i32.load (i32.add (i32.load (i32.const 0)) (i32.const 8))))
      (local.set $al (i32.load (i32.add (i32.load (i32.const 0)) (i32.const 12))))
      (local.set $cp (i32.load (i32.const 20)))
      (local.set $cl (i32.load (i32.const 24)))
      (if (i32.ne (local.get $al) (local.get $cl)) (then (call $exit (i32.const 1))))
      (block $done
        (loop $next
          (br_if $done (i32.ge_u (local.get $k) (local.get $al)))
          (if (i32.ne (i32.load8_u (i32.add (local.get $ap) (local.get $k)))
                      (i32.load8_u (i32.add (local.get $cp) (local.get $k))))
            (then (call $exit (i32.const 1))))
          (local.set $k (i32.add (local.get $k) (i32.const 1)))
          (br $next)))
      (i32.const 0)))
  (core instance $host
    (export "args" (func $args)) (export "cwd" (func $cwd)) (export "exit" (func $exit)))
  (core instance $i (instantiate $main (with "m" (instance $m)) (with "host" (instance $host))))
  (func $run (result (result)) (canon lift (core func $i "run")))
  (instance $run-instance (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $run-instance)))
"#;

/// A command component that grows its memory 1 MiB at a time, up to 64 MiB,
/// and exits with `exit-with-code(MiB it got)`.
const GROW_WAT: &str = r#"
(component
  (import "wasi:cli/exit@0.2.12" (instance $exit
    (export "exit-with-code" (func (param "status-code" u8)))))
  (alias export $exit "exit-with-code" (func $exit-with-code))
  (core func $exit (canon lower (func $exit-with-code)))
  (core module $main
    (import "host" "exit" (func $exit (param i32)))
    (memory 1)
    (func (export "run") (result i32)
      (local $mib i32)
      (block $done
        (loop $grow
          (br_if $done (i32.ge_u (local.get $mib) (i32.const 64)))
          (br_if $done (i32.eq (memory.grow (i32.const 16)) (i32.const -1)))
          (local.set $mib (i32.add (local.get $mib) (i32.const 1)))
          (br $grow)))
      (call $exit (local.get $mib))
      (i32.const 0)))
  (core instance $host (export "exit" (func $exit)))
  (core instance $i (instantiate $main (with "host" (instance $host))))
  (func $run (result (result)) (canon lift (core func $i "run")))
  (instance $r (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $r)))
"#;

/// A component exporting `run` from instance `export`, of type `ty`, and
/// importing `import` (a WIT instance name) when given.
fn run_component(export: &str, ty: &str, import: Option<&str>) -> String {
    let import = import
        .map(|name| format!(r#"(import "{name}" (instance (export "f" (func))))"#))
        .unwrap_or_default();
    let (core_ty, body) = if ty.contains("result") {
        ("(result i32)", "i32.const 0")
    } else {
        ("", "")
    };
    format!(
        r#"(component {import}
             (core module $m (func (export "run") {core_ty} {body}))
             (core instance $i (instantiate $m))
             (func $run {ty} (canon lift (core func $i "run")))
             (instance $e (export "run" (func $run)))
             (export "{export}" (instance $e)))"#
    )
}

#[test]
fn c_programs_run_as_components_like_modules() -> Result<()> {
    let cd = Containerd::start()?;
    let hello = import_p2(&cd, "hello")?;
    let out = cd.run_rm(&hello, "c-hello", &[])?.ok()?;
    assert_eq!(out.stdout, "Hello from WebAssembly!\n");

    // args (args[0] included) and exactly the spec's env.
    let args_env = import_p2(&cd, "args-env")?;
    let out = cd
        .ctr(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--env",
            "GREETING=hi there",
            &args_env,
            "c-ae",
            "/args-env.wasm",
            "one",
            "two words",
        ])?
        .ok()?;
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        &lines[..3],
        &["arg[0]=/args-env.wasm", "arg[1]=one", "arg[2]=two words"],
        "{}",
        out.stdout
    );
    let env: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("env:"))
        .collect();
    assert_eq!(env.len(), 2, "only the spec's env: {env:?}");
    assert!(env.contains(&"GREETING=hi there"), "{env:?}");

    // Exit codes: the adapter turns exit(n != 0) into wasi:cli/exit err: 1.
    let exit = import_p2(&cd, "exit-code")?;
    for (arg, want) in [("0", 0), ("3", 1), ("255", 1)] {
        let out = cd.run_rm(&exit, &format!("c-exit{arg}"), &["/exit-code.wasm", arg])?;
        assert_eq!(out.code, Some(want), "exit({arg}): {out:?}");
    }

    // A trap: 134, with the trap and its backtrace on stderr.
    let trap = import_p2(&cd, "trap")?;
    let out = cd.run_rm(&trap, "c-trap", &[])?;
    assert_eq!(out.code, Some(134), "{out:?}");
    assert!(out.stdout.contains("about to trap"), "{out:?}");
    assert!(out.stderr.contains("unreachable"), "{}", out.stderr);
    assert!(out.stderr.contains("wasm backtrace"), "{}", out.stderr);

    // stdin reaches the guest and ends with EOF.
    let cat = import_p2(&cd, "cat")?;
    let mut child = cd
        .ctr_command(&["run", "--rm", "--runtime", RUNTIME, &cat, "c-cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().context("stdin")?;
        stdin.write_all(b"through the component\n")?;
    }
    let out = child.wait_with_output()?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "through the component\n"
    );
    assert!(out.status.success());
    cd.assert_clean()
}

#[test]
fn components_see_mounts_read_only_where_asked() -> Result<()> {
    let cd = Containerd::start()?;
    let files = import_p2(&cd, "files")?;
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
            &files,
            id,
            "/files.wasm",
        ];
        a.extend_from_slice(args);
        cd.ctr(&a)
    };
    let out = run("c-f1", &["read", "/ro/in.txt"])?.ok()?;
    assert_eq!(out.stdout, "from the host");
    run(
        "c-f2",
        &["write", "/data/out.txt", "written by a component"],
    )?
    .ok()?;
    assert_eq!(
        std::fs::read_to_string(rw.path().join("out.txt"))?,
        "written by a component"
    );
    let out = run("c-f3", &["write", "/ro/in.txt", "overwrite"])?;
    assert_eq!(out.code, Some(1), "a read-only mount: {out:?}");
    assert_eq!(
        std::fs::read_to_string(ro.path().join("in.txt"))?,
        "from the host"
    );
    // Nothing outside the rootfs and mounts: a file beside the mount's
    // source on the host stays out of reach through `..`.
    let outside = rw.path().with_extension("outside");
    std::fs::write(&outside, "host secret")?;
    let name = outside
        .file_name()
        .context("file name")?
        .to_string_lossy()
        .into_owned();
    for path in [
        format!("/data/../{name}"),
        format!("/data/../../../../../{name}"),
    ] {
        let out = run("c-f4", &["read", &path])?;
        assert_eq!(out.code, Some(1), "{path}: {out:?}");
        assert!(!out.stdout.contains("host secret"), "{path}: {out:?}");
    }
    std::fs::remove_file(&outside)?;
    cd.assert_clean()
}

#[test]
fn the_spec_cwd_is_the_components_initial_cwd() -> Result<()> {
    let cd = Containerd::start()?;
    let tmp = tempfile::tempdir()?;
    let image = wat_image(&cd, tmp.path(), "cwd", CWD_WAT)?;
    let run = |id: &str, cwd: &str, args: &[&str]| {
        let mut a = vec![
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--cwd",
            cwd,
            &image,
            id,
            "/cwd.wasm",
        ];
        a.extend_from_slice(args);
        cd.ctr(&a)
    };
    assert_eq!(run("cwd1", "/srv/app", &["/srv/app"])?.code, Some(0));
    assert_eq!(run("cwd2", "/srv/app", &["/elsewhere"])?.code, Some(1));
    // exit-with-code(n) is n.
    assert_eq!(run("cwd3", "/srv/app", &[])?.code, Some(3));
    cd.assert_clean()
}

#[test]
fn limits_kill_and_stats_apply_to_components() -> Result<()> {
    let cd = Containerd::start()?;
    // A memory limit refuses growth inside the guest: a component that
    // grows its memory 1 MiB at a time, up to 64, exits with how many it got.
    let tmp = tempfile::tempdir()?;
    let grow = wat_image(&cd, tmp.path(), "grow", GROW_WAT)?;
    let out = cd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--memory-limit",
        "16777216",
        &grow,
        "c-m1",
        "/grow.wasm",
    ])?;
    assert_eq!(out.code, Some(15), "15 MiB beside the first page: {out:?}");
    assert_eq!(cd.run_rm(&grow, "c-m2", &["/grow.wasm"])?.code, Some(64));

    // A C program whose heap outgrows its initial memory. Built with
    // Debian's 2022 wasi-libc, its malloc overwrites the preview 1 adapter's
    // state and the adapter traps (the wasmtime CLI fails the same way);
    // with a newer libc it runs. Either way a clear end, and the shim
    // carries on (the runs below).
    let memhog = import_p2(&cd, "memhog")?;
    let out = cd.run_rm(&memhog, "c-m3", &["/memhog.wasm", "4"])?;
    let trapped_in_adapter = out.code == Some(134) && out.stderr.contains("adapter");
    let ran = out.code == Some(0) && out.stdout.trim() == "allocated 4 MiB";
    assert!(trapped_in_adapter || ran, "{out:?}");

    // Stats and Pids of a component blocked in a host call, then a kill
    // that stops it there: ctr run exits 128 + SIGKILL.
    let sleep = import_p2(&cd, "sleep")?;
    let mut run = cd
        .ctr_command(&["run", "--rm", "--runtime", RUNTIME, &sleep, "c-s1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    cd.wait_status("c-s1", "RUNNING")?;
    let shim = cd.task_pid("c-s1")?;
    assert!(cd.metric("c-s1", "memory.usage_in_bytes")? >= 65536);
    let ps = cd.ctr(&["tasks", "ps", "c-s1"])?.ok()?;
    assert!(ps.stdout.contains(&shim.to_string()), "{}", ps.stdout);
    cd.ctr(&["tasks", "kill", "-s", "SIGKILL", "c-s1"])?.ok()?;
    let status = harness::wait_exit(&mut run, Duration::from_secs(20))?;
    assert_eq!(status, Some(137));

    // A CPU quota throttles a spinning component: a share, not a timing.
    let spin = import_p2(&cd, "spin")?;
    cd.run_detached(
        "c-q1",
        &[
            "--runtime",
            RUNTIME,
            "--cpu-quota",
            "10000",
            "--cpu-period",
            "100000",
            &spin,
            "c-q1",
        ],
    )?;
    cd.run_detached("c-q2", &["--runtime", RUNTIME, &spin, "c-q2"])?;
    let (used1, used2) = cd.cpu_in_window("c-q1", "c-q2", Duration::from_secs(2))?;
    assert!(used1 * 3 < used2, "throttled {used1} ns vs free {used2} ns");
    for id in ["c-q1", "c-q2"] {
        cd.kill_and_remove(id)?;
    }
    cd.assert_clean()
}

#[test]
fn bad_components_fail_create_with_a_clear_error() -> Result<()> {
    let cd = Containerd::start()?;
    let tmp = tempfile::tempdir()?;
    let hello = std::fs::read(harness::examples_dir().join("p2/hello.wasm"))?;
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        (
            "no-export",
            wat::parse_str("(component)")?,
            &["exports none", "wasi:cli/run"],
        ),
        (
            "wrong-type",
            wat::parse_str(run_component("wasi:cli/run@0.2.0", "", None))?,
            &["wasi:cli/run", "not the interface"],
        ),
        (
            "unknown-import",
            wat::parse_str(run_component(
                "wasi:cli/run@0.2.0",
                "(result (result))",
                Some("example:nope/thing@1.0.0"),
            ))?,
            &["example:nope/thing@1.0.0"],
        ),
        (
            "http-service",
            wat::parse_str(run_component(
                "wasi:http/incoming-handler@0.2.0",
                "(result (result))",
                None,
            ))?,
            &["HTTP service", "wasi:http/incoming-handler"],
        ),
        (
            "wasi-0-3",
            wat::parse_str(run_component(
                "wasi:cli/run@0.3.0",
                "(result (result))",
                None,
            ))?,
            &["WASI 0.3"],
        ),
        (
            "truncated",
            hello[..hello.len() / 2].to_vec(),
            &["component"],
        ),
    ];
    let mut failures = Vec::new();
    for (name, bytes, want) in &cases {
        let image = cd.import_wasm(tmp.path(), name, bytes)?;
        let id = format!("bad-{name}");
        let out = cd.run_rm(&image, &id, &[&format!("/{name}.wasm")])?;
        let all = format!("{}{}", out.stdout, out.stderr);
        if out.code == Some(0) || !all.contains(&id) || want.iter().any(|w| !all.contains(w)) {
            failures.push(format!("{name}: code {:?}, output: {all}", out.code));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The shim kept serving: a good component still runs.
    let hello = import_p2(&cd, "hello")?;
    cd.run_rm(&hello, "after-bad", &[])?.ok()?;
    cd.assert_clean()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_runs_a_component() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let cd = Containerd::start_cri(&CriOptions::default())?;
    let hello = cd.import("hello-p2")?;
    let exit = cd.import("exit-code-p2")?;
    let mut cri = Cri::connect(&cd.socket).await?;
    let pod = cri
        .run_pod("component-pod", &tmp.path().join("logs"), "wasmtime")
        .await?;
    let id = cri.start_container(&pod, "hello", &hello, &[]).await?;
    wait_log_line(&pod, "hello", 0, "Hello from WebAssembly!").await?;
    let status = cri.wait_exited(&id).await?;
    assert_eq!(status.exit_code, 0);
    let failing = cri
        .start_container(&pod, "exit", &exit, &["/exit-code.wasm", "7"])
        .await?;
    assert_eq!(cri.wait_exited(&failing).await?.exit_code, 1);
    // Bad input through CRI: CreateContainer fails, saying why.
    let bad = cd.import("bad-component")?;
    let err = cri
        .start_container(&pod, "bad", &bad, &["/component.wasm"])
        .await
        .expect_err("a component that exports nothing must not start");
    assert!(format!("{err:#}").contains("exports none"), "{err:#}");
    for c in [&id, &failing] {
        cri.remove_container(c).await?;
    }
    cri.remove_pod(&pod).await?;
    assert_eq!(image_name("hello-p2"), hello);
    cd.assert_clean()
}
