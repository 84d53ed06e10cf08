//! `wasi:sockets` in the container's network namespace, through `ctr` and
//! CRI, with `examples/sockets/net.c` (a component that imports
//! `wasi:sockets` directly):
//!
//! - `ctr run --net-host`: the guest reaches a server on the host's loopback,
//!   by address and by a name from the container's `/etc/hosts` (which ctr
//!   mounts from the host);
//! - plain `ctr run`: a new namespace with only loopback, up; the host's
//!   loopback server is out of reach; names come from a mounted hosts file;
//! - a pod with its own namespace (CNI `ptp`): the guest reaches a server the
//!   test runs inside the pod's namespace, not the host's; the pod's
//!   `/etc/hosts` mount names it; nothing stays behind in the shim.
//!
//! Traffic stays on loopback, in the host's namespace or the pod's.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use harness::cri::{attempt_log_lines, wait_log_line, Cri};
use harness::{bind_mount, in_netns, Containerd, CriOptions, RUNTIME};

/// A one-line TCP server: answers each connection's first line with
/// `pong: <line>` and closes it. Reports each line it got.
/// Or, `silent`, holds each connection open without reading or answering,
/// and reports it as an empty line.
struct Server {
    addr: SocketAddr,
    lines: mpsc::Receiver<String>,
    _thread: JoinHandle<()>,
}

impl Server {
    fn on(listener: TcpListener) -> Result<Self> {
        Self::start(listener, false)
    }

    fn start(listener: TcpListener, silent: bool) -> Result<Self> {
        let addr = listener.local_addr()?;
        let (tx, lines) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                if silent {
                    held.push(conn);
                    if tx.send(String::new()).is_err() {
                        return;
                    }
                    continue;
                }
                let mut line = String::new();
                let _ = BufReader::new(&conn).read_line(&mut line);
                let line = line.trim_end().to_string();
                let _ = writeln!(conn, "pong: {line}");
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Self {
            addr,
            lines,
            _thread: thread,
        })
    }

    /// A server on the host's loopback.
    fn host() -> Result<Self> {
        Self::on(TcpListener::bind("127.0.0.1:0")?)
    }

    /// A server on the loopback of the network namespace at `netns`: the
    /// listening socket is made by a thread that entered it, and stays
    /// there.
    fn in_namespace(netns: &Path) -> Result<Self> {
        Self::start(Self::listen_in(netns)?, false)
    }

    fn listen_in(netns: &Path) -> Result<TcpListener> {
        Ok(in_netns(netns, || TcpListener::bind("127.0.0.1:0"))??)
    }

    fn port(&self) -> String {
        self.addr.port().to_string()
    }

    /// The lines received so far.
    fn received(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }
}

/// A hosts file that names 127.0.0.1 `server.test`.
fn hosts_file(dir: &Path) -> Result<std::path::PathBuf> {
    let path = dir.join("hosts");
    std::fs::write(
        &path,
        "# the container's own\n127.0.0.1 server.test server\n",
    )?;
    Ok(path)
}

fn net_image(cd: &Containerd) -> Result<String> {
    cd.import("net-p2")
}

#[test]
fn net_host_guests_reach_the_hosts_loopback_by_address_and_by_name() -> Result<()> {
    let cd = Containerd::start()?;
    let net = net_image(&cd)?;
    let server = Server::host()?;
    let port = server.port();

    let run = |id: &str, args: &[&str]| {
        let args: Vec<&str> = std::iter::once("/net.wasm")
            .chain(args.iter().copied())
            .collect();
        cd.run_rm_with(&["--net-host"], &net, id, &args)
    };
    let out = run("net-addr", &["connect", "127.0.0.1", &port, "by address"])?.ok()?;
    assert_eq!(out.stdout, "pong: by address\n", "{out:?}");

    // Names come from the container's /etc/hosts: with --net-host, ctr
    // bind-mounts the host's there.
    let out = run("net-lookup", &["lookup", "localhost"])?.ok()?;
    assert!(out.stdout.lines().any(|l| l == "127.0.0.1"), "{out:?}");
    let out = run("net-name", &["connect", "localhost", &port, "by name"])?.ok()?;
    assert_eq!(out.stdout, "pong: by name\n", "{out:?}");

    assert_eq!(server.received(), vec!["by address", "by name"]);
    cd.assert_clean()
}

#[test]
fn a_container_without_a_namespace_path_gets_only_loopback() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let cd = Containerd::start()?;
    let net = net_image(&cd)?;
    let server = Server::host()?;

    // Its own loopback is up: listen, connect, accept, echo.
    let out = cd
        .run_rm(&net, "net-lo", &["/net.wasm", "loopback"])?
        .ok()?;
    assert_eq!(out.stdout, "loopback ok\n", "{out:?}");

    // The host's loopback is another namespace's: nothing listens there.
    let out = cd.run_rm(
        &net,
        "net-out",
        &[
            "/net.wasm",
            "connect",
            "127.0.0.1",
            &server.port(),
            "escape",
        ],
    )?;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("connection-refused"), "{out:?}");
    assert!(server.received().is_empty());

    // Name lookup reads the container's /etc/hosts (a file bind mount, as
    // CRI gives it); without one, the name is unknown: the DNS server it
    // then asks, 127.0.0.1 in its namespace, is not there (one try of a
    // second, as its resolv.conf says).
    let hosts = bind_mount(&hosts_file(tmp.path())?, "/etc/hosts", true);
    let resolv = tmp.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
    )?;
    let resolv = bind_mount(&resolv, "/etc/resolv.conf", true);
    let lookup = |id: &str, mounts: &[&str]| {
        let options: Vec<&str> = mounts.iter().flat_map(|m| ["--mount", m]).collect();
        cd.run_rm_with(&options, &net, id, &["/net.wasm", "lookup", "server.test"])
    };
    let out = lookup("net-hosts", &[&hosts, &resolv])?.ok()?;
    assert_eq!(out.stdout, "127.0.0.1\n", "{out:?}");
    let out = lookup("net-nohosts", &[&resolv])?;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr
            .contains("resolve-next-address: temporary-resolver-failure"),
        "{out:?}"
    );

    // A preview 1 module is unchanged: no sockets, no namespace of its own.
    let hello = cd.import("hello")?;
    let out = cd.run_rm(&hello, "net-p1", &[])?.ok()?;
    assert_eq!(out.stdout, "Hello from WebAssembly!\n");
    cd.assert_clean()
}

/// The process that holds a test's namespace, killed when the test ends.
struct Holder(std::process::Child);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_namespace_given_by_path_is_joined_and_its_guests_can_be_killed() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let cd = Containerd::start()?;
    let net = net_image(&cd)?;
    // A namespace the test made (as CNI makes a pod's), held by a process
    // in it, with its loopback brought up.
    let mut holder = Holder(
        std::process::Command::new("unshare")
            .args([
                "--net",
                "sh",
                "-c",
                "busybox ip link set lo up && echo ready && exec sleep 600",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("unshare --net (util-linux)")?,
    );
    let mut ready = String::new();
    BufReader::new(holder.0.stdout.take().context("holder stdout")?).read_line(&mut ready)?;
    assert_eq!(ready, "ready\n", "the namespace holder failed");
    let netns = std::path::PathBuf::from(format!("/proc/{}/ns/net", holder.0.id()));
    let silent = Server::start(Server::listen_in(&netns)?, true)?;
    let with_ns = format!("network:{}", netns.display());

    // A guest blocked reading from a server that never answers, in that
    // namespace: a kill stops it there.
    let mut run = cd
        .ctr_command(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--with-ns",
            &with_ns,
            &net,
            "net-kill",
            "/net.wasm",
            "connect",
            "127.0.0.1",
            &silent.port(),
            "hello?",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(tmp.path().join("kill.err"))?)
        .spawn()?;
    silent
        .lines
        .recv_timeout(Duration::from_secs(20))
        .with_context(|| {
            format!(
                "the guest never connected: {}",
                std::fs::read_to_string(tmp.path().join("kill.err")).unwrap_or_default()
            )
        })?;
    cd.ctr(&["tasks", "kill", "-s", "SIGKILL", "net-kill"])?
        .ok()?;
    let status = harness::wait_exit(&mut run, Duration::from_secs(20))?;
    assert_eq!(status, Some(137));

    // DNS with the container's resolv.conf, from inside its namespace: a
    // name server the test runs on that namespace's 127.0.0.1:53 answers.
    let dns = dns_server(&netns, [10, 9, 8, 7])?;
    let resolv = tmp.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.1\noptions timeout:2 attempts:1\n",
    )?;
    let mount = bind_mount(&resolv, "/etc/resolv.conf", true);
    let out = cd
        .run_rm_with(
            &["--with-ns", &with_ns, "--mount", &mount],
            &net,
            "net-dns",
            &["/net.wasm", "lookup", "db.dns.test"],
        )?
        .ok()?;
    assert_eq!(out.stdout, "10.9.8.7\n", "{out:?}");
    let asked = dns.recv_timeout(Duration::from_secs(1))?;
    assert_eq!(asked, "db.dns.test", "the server saw the query");

    // A path that is not a network namespace fails Create, saying so.
    let not_ns = tmp.path().join("not-a-namespace");
    std::fs::write(&not_ns, "")?;
    let bad_ns = format!("network:{}", not_ns.display());
    let out = cd.run_rm_with(
        &["--with-ns", &bad_ns],
        &net,
        "net-bad",
        &["/net.wasm", "loopback"],
    )?;
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("not a namespace"), "{}", out.stderr);

    drop(holder);
    cd.assert_clean()
}

/// A name server on 127.0.0.1:53 in the namespace at `netns`, answering
/// every A query with `addr` (and any other with no records). Reports each
/// name asked.
fn dns_server(netns: &Path, addr: [u8; 4]) -> Result<mpsc::Receiver<String>> {
    let socket = in_netns(netns, || std::net::UdpSocket::bind("127.0.0.1:53"))?
        .with_context(|| format!("serve DNS in {}", netns.display()))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, peer)) = socket.recv_from(&mut buf) {
            let Some((name, qtype, end)) = question(&buf[..n]) else {
                continue;
            };
            let _ = tx.send(name);
            // Header: same id, a response (QR, RD, RA), one question, an
            // answer when it is an A query; then the question as asked.
            let mut reply = buf[..2].to_vec();
            reply.extend([0x81, 0x80, 0, 1, 0, (qtype == 1) as u8, 0, 0, 0, 0]);
            reply.extend(&buf[12..end]);
            if qtype == 1 {
                // The name (a pointer to the question's), A, IN, TTL 60,
                // four bytes of address.
                reply.extend([0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                reply.extend(addr);
            }
            let _ = socket.send_to(&reply, peer);
        }
    });
    Ok(rx)
}

/// A DNS query's first question: its name, type, and where it ends.
fn question(msg: &[u8]) -> Option<(String, u16, usize)> {
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *msg.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(msg.get(at..at + len)?).into_owned());
        at += len;
    }
    let qtype = u16::from_be_bytes([*msg.get(at)?, *msg.get(at + 1)?]);
    Some((labels.join("."), qtype, at + 4))
}

/// A component whose core start function, run while it is instantiated,
/// creates a TCP socket, binds it to 127.0.0.1:`port` and listens
/// (trapping if any step fails); its `run` then spins until it is killed. Written by hand,
/// with its memory in a module instantiated first, which is what lets a
/// start function call the host (wit-component's output cannot).
fn bind_at_start(port: u16) -> Result<Vec<u8>> {
    let net = "wasi:sockets/network@0.2.12";
    let errors = "\"unknown\" \"access-denied\" \"not-supported\" \"invalid-argument\" \
        \"out-of-memory\" \"timeout\" \"concurrency-conflict\" \"not-in-progress\" \
        \"would-block\" \"invalid-state\" \"new-socket-limit\" \"address-not-bindable\" \
        \"address-in-use\" \"remote-unreachable\" \"connection-refused\" \
        \"connection-reset\" \"connection-aborted\" \"datagram-too-large\" \
        \"name-unresolvable\" \"temporary-resolver-failure\" \"permanent-resolver-failure\"";
    let wat = format!(
        r#"(component $C
  (import "{net}" (instance $network
    (export "network" (type (sub resource)))
    (type $ec' (enum {errors}))
    (export "error-code" (type (eq $ec')))
    (type $fam' (enum "ipv4" "ipv6"))
    (export "ip-address-family" (type (eq $fam')))
    (type $v4 (record (field "port" u16) (field "address" (tuple u8 u8 u8 u8))))
    (export "ipv4-socket-address" (type $v4e (eq $v4)))
    (type $v6 (record (field "port" u16) (field "flow-info" u32)
      (field "address" (tuple u16 u16 u16 u16 u16 u16 u16 u16)) (field "scope-id" u32)))
    (export "ipv6-socket-address" (type $v6e (eq $v6)))
    (type $sa' (variant (case "ipv4" $v4e) (case "ipv6" $v6e)))
    (export "ip-socket-address" (type (eq $sa')))))
  (alias export $network "network" (type $net))
  (alias export $network "error-code" (type $ec))
  (alias export $network "ip-address-family" (type $fam))
  (alias export $network "ip-socket-address" (type $sa))
  (import "wasi:sockets/instance-network@0.2.12" (instance $instance-network
    (alias outer $C $net (type $n))
    (export "network" (type $ne (eq $n)))
    (export "instance-network" (func (result (own $ne))))))
  (import "wasi:sockets/tcp@0.2.12" (instance $tcp
    (alias outer $C $net (type $n))
    (alias outer $C $ec (type $e))
    (alias outer $C $sa (type $a))
    (export "network" (type $ne (eq $n)))
    (export "error-code" (type $ee (eq $e)))
    (export "ip-socket-address" (type $ae (eq $a)))
    (export "tcp-socket" (type $s (sub resource)))
    (export "[method]tcp-socket.start-bind"
      (func (param "self" (borrow $s)) (param "network" (borrow $ne)) (param "local-address" $ae)
        (result (result (error $ee)))))
    (export "[method]tcp-socket.finish-bind"
      (func (param "self" (borrow $s)) (result (result (error $ee)))))
    (export "[method]tcp-socket.start-listen"
      (func (param "self" (borrow $s)) (result (result (error $ee)))))
    (export "[method]tcp-socket.finish-listen"
      (func (param "self" (borrow $s)) (result (result (error $ee)))))))
  (alias export $tcp "tcp-socket" (type $socket))
  (import "wasi:sockets/tcp-create-socket@0.2.12" (instance $create
    (alias outer $C $ec (type $e))
    (alias outer $C $fam (type $f))
    (alias outer $C $socket (type $s))
    (export "error-code" (type $ee (eq $e)))
    (export "ip-address-family" (type $fe (eq $f)))
    (export "tcp-socket" (type $se (eq $s)))
    (export "create-tcp-socket" (func (param "address-family" $fe) (result (result (own $se) (error $ee)))))))
  (core module $mem (memory (export "memory") 1))
  (core instance $m (instantiate $mem))
  (alias core export $m "memory" (core memory $memory))
  (alias export $instance-network "instance-network" (func $instance-network))
  (alias export $create "create-tcp-socket" (func $create-tcp-socket))
  (alias export $tcp "[method]tcp-socket.start-bind" (func $start-bind))
  (alias export $tcp "[method]tcp-socket.finish-bind" (func $finish-bind))
  (alias export $tcp "[method]tcp-socket.start-listen" (func $start-listen))
  (alias export $tcp "[method]tcp-socket.finish-listen" (func $finish-listen))
  (core func $network (canon lower (func $instance-network)))
  (core func $create (canon lower (func $create-tcp-socket) (memory $memory)))
  (core func $bind (canon lower (func $start-bind) (memory $memory)))
  (core func $finish (canon lower (func $finish-bind) (memory $memory)))
  (core func $listen (canon lower (func $start-listen) (memory $memory)))
  (core func $listening (canon lower (func $finish-listen) (memory $memory)))
  (core module $main
    (import "m" "memory" (memory 1))
    (import "host" "network" (func $network (result i32)))
    (import "host" "create" (func $create (param i32 i32)))
    (import "host" "bind" (func $bind (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32)))
    (import "host" "finish" (func $finish (param i32 i32)))
    (import "host" "listen" (func $listen (param i32 i32)))
    (import "host" "listening" (func $listening (param i32 i32)))
    (func $ok (if (i32.load8_u (i32.const 64)) (then unreachable)))
    (func $start
      (local $net i32) (local $socket i32)
      (local.set $net (call $network))
      (call $create (i32.const 0) (i32.const 64))
      (call $ok)
      (local.set $socket (i32.load (i32.const 68)))
      (call $bind (local.get $socket) (local.get $net)
        (i32.const 0) (i32.const {port}) (i32.const 127) (i32.const 0) (i32.const 0) (i32.const 1)
        (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
        (i32.const 64))
      (call $ok)
      (call $finish (local.get $socket) (i32.const 64))
      (call $ok)
      (call $listen (local.get $socket) (i32.const 64))
      (call $ok)
      (call $listening (local.get $socket) (i32.const 64))
      (call $ok))
    (start $start)
    (func (export "run") (result i32) (loop $spin (br $spin)) (i32.const 0)))
  (core instance $host
    (export "network" (func $network)) (export "create" (func $create))
    (export "bind" (func $bind)) (export "finish" (func $finish))
    (export "listen" (func $listen)) (export "listening" (func $listening)))
  (core instance $i (instantiate $main (with "m" (instance $m)) (with "host" (instance $host))))
  (func $run (result (result)) (canon lift (core func $i "run")))
  (instance $r (export "run" (func $run)))
  (export "wasi:cli/run@0.2.12" (instance $r)))"#
    );
    Ok(wat::parse_str(wat)?)
}

/// Whether something listens on 127.0.0.1:`port` in the network namespace
/// at `netns` (`None`: the test's own).
fn listening(netns: Option<&Path>, port: u16) -> Result<bool> {
    let connect = move || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
    match netns {
        None => Ok(connect()),
        Some(path) => in_netns(path, connect),
    }
}

/// The network namespace of the shim's `netns-*` threads, if it has any.
fn shim_guest_namespace(shim: u32) -> Option<std::path::PathBuf> {
    std::fs::read_dir(format!("/proc/{shim}/task"))
        .ok()?
        .flatten()
        .find(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("netns-"))
        })
        .map(|t| t.path().join("ns/net"))
}

#[test]
fn sockets_made_while_instantiating_are_in_the_guests_namespace() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let cd = Containerd::start()?;
    // A port free on the host's loopback now.
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let image = cd.import_wasm(tmp.path(), "bind-at-start", &bind_at_start(port)?)?;
    cd.run_detached("net-start", &["--runtime", RUNTIME, &image, "net-start"])?;
    cd.wait_status("net-start", "RUNNING")?;
    // Instantiated, so its start function listens: not on the host's
    // loopback, but on that of the namespace the shim made for it.
    assert!(
        !listening(None, port)?,
        "the guest listens in the host's namespace"
    );
    let shim = cd.task_pid("net-start")?;
    let netns = shim_guest_namespace(shim).context("the shim has no namespace threads")?;
    assert!(
        listening(Some(&netns), port)?,
        "nothing listens in the guest's namespace"
    );
    cd.kill_and_remove("net-start")?;

    // Binding a port below 1024 takes CAP_NET_BIND_SERVICE, as for a
    // process: containerd's default set has it; without it, the bind in the
    // start function fails, and so does Start.
    let low = cd.import_wasm(tmp.path(), "bind-at-80", &bind_at_start(80)?)?;
    cd.run_detached("net-80", &["--runtime", RUNTIME, &low, "net-80"])?;
    cd.wait_status("net-80", "RUNNING")?;
    cd.kill_and_remove("net-80")?;
    let out = cd.run_rm_with(
        &["--cap-drop", "CAP_NET_BIND_SERVICE"],
        &low,
        "net-80b",
        &[],
    )?;
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("unreachable"), "{}", out.stderr);
    cd.assert_clean()
}

/// Network-namespace descriptors and `netns-*` threads the process holds.
fn namespace_traces(pid: u32) -> (usize, usize) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .map(|l| l.to_string_lossy().starts_with("net:"))
                        .unwrap_or(false)
                })
                .count()
        })
        .unwrap_or(0);
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.flatten()
                .filter(|e| {
                    std::fs::read_to_string(e.path().join("comm"))
                        .map(|c| c.starts_with("netns-"))
                        .unwrap_or(false)
                })
                .count()
        })
        .unwrap_or(0);
    (fds, threads)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_guest_uses_the_pods_network_namespace() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let cd = Containerd::start_cri(&CriOptions {
        pod_network: true,
        ..Default::default()
    })?;
    let net = cd.import("net-p2")?;
    let mut cri = Cri::connect(&cd.socket).await?;
    let pod = cri
        .run_pod_with_network("net-pod", &tmp.path().join("logs"), "wasmtime")
        .await?;
    // The pod's own namespace, as CRI pinned it; no pause holds it.
    let netns = cri.virtual_pod_netns(&pod, &cd.shim_pids()).await?;
    assert!(
        cd.runc_shim_pids().is_empty(),
        "no pause for a pod of wasm containers"
    );
    // The sandbox's net.* sysctls (containerd 2.x sets two on every such
    // pod) hold in the pod's namespace, with no pause to apply them.
    for (key, value) in cri.sandbox_sysctls(&pod).await? {
        if !key.starts_with("net.") {
            continue;
        }
        let file = std::path::Path::new("/proc/sys").join(key.replace('.', "/"));
        let got = in_netns(&netns, move || std::fs::read_to_string(file))??;
        // The kernel prints ranges with a tab.
        let words = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        assert_eq!(
            words(&got),
            words(&value),
            "sysctl {key} in the pod's namespace"
        );
    }
    let inside = Server::in_namespace(&netns)?;
    // On another port than the pod's server, or an escape would look like
    // a success.
    let outside = loop {
        let server = Server::host()?;
        if server.port() != inside.port() {
            break server;
        }
    };

    // The pod's server, by address, and by the name the pod's /etc/hosts
    // mount gives it.
    let id = cri
        .start_container(
            &pod,
            "reach",
            &net,
            &[
                "/net.wasm",
                "connect",
                "127.0.0.1",
                &inside.port(),
                "in the pod",
            ],
        )
        .await?;
    wait_log_line(&pod, "reach", 0, "pong: in the pod").await?;
    assert_eq!(cri.wait_exited(&id).await?.exit_code, 0);
    let hosts = hosts_file(tmp.path())?;
    let named = cri
        .start_with_mounts(
            &pod,
            "named",
            &net,
            &[
                "/net.wasm",
                "connect",
                "server.test",
                &inside.port(),
                "by name",
            ],
            &[(&hosts, "/etc/hosts", true)],
        )
        .await?;
    wait_log_line(&pod, "named", 0, "pong: by name").await?;
    assert_eq!(cri.wait_exited(&named).await?.exit_code, 0);

    // The host's loopback server is not in the pod's namespace.
    let escape = cri
        .start_container(
            &pod,
            "escape",
            &net,
            &[
                "/net.wasm",
                "connect",
                "127.0.0.1",
                &outside.port(),
                "escape",
            ],
        )
        .await?;
    let status = cri.wait_exited(&escape).await?;
    assert_eq!(
        status.exit_code,
        1,
        "{:?}",
        attempt_log_lines(&pod, "escape", 0)
    );
    wait_log_line(&pod, "escape", 0, "net: connect: connection-refused").await?;
    assert!(outside.received().is_empty());
    assert_eq!(inside.received(), vec!["in the pod", "by name"]);

    // Once the pod's guests are gone, so are the shim's namespace threads
    // and descriptors.
    for c in [&id, &named, &escape] {
        cri.remove_container(c).await?;
    }
    let shims = cd.shim_pids();
    harness::wait_until(Duration::from_secs(5), "namespace threads to end", || {
        shims.iter().all(|pid| namespace_traces(*pid) == (0, 0))
    })?;
    cri.remove_pod(&pod).await?;
    cd.assert_clean()
}
