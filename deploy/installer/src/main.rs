//! `wasmtime-node-installer`: puts the wasmtime shim on a node and tells
//! containerd's CRI about it. The DaemonSet in `deploy/kubernetes/` runs it
//! with the host's root mounted at `/host`.
//!
//! `install`, in this order, each step idempotent:
//! 1. copy the shim into the host's bin folder (atomically: temp file, rename);
//! 2. add the runtime to containerd's config (see [`config`]);
//! 3. restart containerd through systemd, if anything changed: containerd
//!    exits on SIGHUP, it does not reload;
//! 4. label the node, which the RuntimeClass's nodeSelector waits for. Only
//!    a node where every step succeeded gets the label.
//!
//! `uninstall` runs the same steps backwards: label off first, so that no new
//! pod lands on the node, then config, restart, and the binary.

mod config;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use toml_edit::DocumentMut;

const SHIM_NAME: &str = "containerd-shim-wasmtime-v1";

/// The label the RuntimeClass's nodeSelector matches.
const NODE_LABEL: &str = "io.containerd.wasmtime/installed=true";

#[derive(Parser)]
#[command(
    version,
    about = "Install the wasmtime containerd shim on a Kubernetes node"
)]
struct Cli {
    #[command(subcommand)]
    command: Action,
    #[command(flatten)]
    opts: Opts,
}

#[derive(Subcommand, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Install the shim, register it with containerd, restart it, label the node.
    Install,
    /// Undo all of it.
    Uninstall,
}

#[derive(clap::Args)]
struct Opts {
    /// Where the host's root filesystem is mounted. Every other path is as
    /// the host sees it.
    #[arg(long, global = true, default_value = "/")]
    host_root: PathBuf,
    /// containerd's config file.
    #[arg(long, global = true, default_value = "/etc/containerd/config.toml")]
    config: PathBuf,
    /// Config version for a node that has no config file yet (2 for
    /// containerd 1.x, 3 for 2.x).
    #[arg(long, global = true)]
    config_version: Option<i64>,
    /// Folder the shim is installed into.
    #[arg(long, global = true, default_value = "/usr/local/bin")]
    bin_dir: PathBuf,
    /// The shim binary to install. Default: the one beside this installer.
    #[arg(long, global = true)]
    shim: Option<PathBuf>,
    /// The CRI runtime handler, which the RuntimeClass names.
    #[arg(long, global = true, default_value = "wasmtime")]
    handler: String,
    /// How to restart containerd after a change.
    #[arg(long, global = true, value_enum, default_value_t = Restart::Systemd)]
    restart: Restart,
    /// The node to label (the DaemonSet passes its NODE_NAME). Without it no
    /// label is set.
    #[arg(long, global = true, env = "NODE_NAME")]
    node: Option<String>,
    /// The label set on success, KEY=VALUE.
    #[arg(long, global = true, default_value = NODE_LABEL)]
    label: String,
}

#[derive(ValueEnum, Clone, Copy, PartialEq, Eq)]
enum Restart {
    /// `systemctl restart containerd`, in the host's namespaces when the host
    /// root is mounted elsewhere.
    Systemd,
    /// Leave containerd alone (the caller restarts it).
    None,
}

impl Opts {
    /// A host path, as this process reaches it.
    fn on_host(&self, path: &Path) -> PathBuf {
        self.host_root.join(path.strip_prefix("/").unwrap_or(path))
    }

    /// The shim's path as the host (and containerd's runtime_type) sees it.
    fn shim_on_host(&self) -> PathBuf {
        self.bin_dir.join(SHIM_NAME)
    }
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Action::Install => install(&cli.opts),
        Action::Uninstall => uninstall(&cli.opts),
    };
    if let Err(err) = result {
        eprintln!("wasmtime-node-installer: error: {err:#}");
        std::process::exit(1);
    }
}

fn install(opts: &Opts) -> Result<()> {
    let shim_changed = copy_shim(opts)?;
    let config_changed = edit_config(opts, "added", |doc| {
        let runtime_type = opts.shim_on_host();
        let runtime_type = runtime_type
            .to_str()
            .context("the shim's path is not UTF-8")?;
        config::add_runtime(doc, &opts.handler, runtime_type)
    })?;
    if shim_changed || config_changed {
        restart_containerd(opts)?;
    } else {
        println!("containerd: already set up, not restarted");
    }
    if let Some(node) = &opts.node {
        kubectl(&["label", "node", node, &opts.label, "--overwrite"])?;
        println!("node {node}: labelled {}", opts.label);
    }
    Ok(())
}

fn uninstall(opts: &Opts) -> Result<()> {
    if let Some(node) = &opts.node {
        let key = opts.label.split('=').next().unwrap_or(&opts.label);
        kubectl(&["label", "node", node, &format!("{key}-")])?;
        println!("node {node}: label {key} removed");
    }
    let config_changed = edit_config(opts, "removed", |doc| {
        config::remove_runtime(doc, &opts.handler)
    })?;
    if config_changed {
        restart_containerd(opts)?;
    }
    let shim = opts.on_host(&opts.shim_on_host());
    match std::fs::remove_file(&shim) {
        Ok(()) => println!("{}: removed", opts.shim_on_host().display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("remove {}", shim.display())),
    }
    Ok(())
}

/// Copies the shim onto the host unless an identical copy is there. The
/// copy is written beside its destination and renamed over it, so that
/// containerd never starts a half-written shim.
fn copy_shim(opts: &Opts) -> Result<bool> {
    let source = match &opts.shim {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("find this installer")?
            .with_file_name(SHIM_NAME),
    };
    let bytes =
        std::fs::read(&source).with_context(|| format!("read the shim {}", source.display()))?;
    let dest = opts.on_host(&opts.shim_on_host());
    if std::fs::read(&dest).is_ok_and(|b| b == bytes) {
        println!("{}: up to date", opts.shim_on_host().display());
        return Ok(false);
    }
    let dir = dest.parent().context("the shim's folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let tmp = dir.join(format!(".{SHIM_NAME}.{}", std::process::id()));
    let write = || -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&tmp, &bytes)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&tmp, &dest)?;
        Ok(())
    };
    if let Err(err) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(err).with_context(|| format!("install {}", dest.display()));
    }
    println!("{}: installed", opts.shim_on_host().display());
    Ok(true)
}

/// Parses containerd's config, applies `edit`, and writes it back (through a
/// temp file and a rename) if anything changed. The first change keeps a
/// copy of the original beside it.
fn edit_config(
    opts: &Opts,
    done: &str,
    edit: impl FnOnce(&mut DocumentMut) -> Result<bool>,
) -> Result<bool> {
    let path = opts.on_host(&opts.config);
    // A symlinked config is edited where it points, and stays a link.
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    let shown = opts.config.display();
    let mut doc = match std::fs::read_to_string(&path) {
        Ok(text) => text
            .parse::<DocumentMut>()
            .with_context(|| format!("parse {shown}"))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let Some(version) = opts.config_version else {
                bail!("{shown} does not exist: pass --config-version (2 for containerd 1.x, 3 for 2.x) to create it");
            };
            config::empty(version)?
        }
        Err(e) => return Err(e).with_context(|| format!("read {shown}")),
    };
    if !edit(&mut doc).with_context(|| format!("edit {shown}"))? {
        println!("{shown}: unchanged");
        return Ok(false);
    }
    let text = doc.to_string();
    let backup = path.with_extension("toml.before-wasmtime");
    if std::fs::read_to_string(&backup).is_ok_and(|b| b == text) {
        // Back to what it was before the first install: the copy is no longer needed.
        let _ = std::fs::remove_file(&backup);
    } else if path.exists() && !backup.exists() {
        std::fs::copy(&path, &backup).with_context(|| format!("back up {shown}"))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let tmp = path.with_extension("toml.wasmtime-tmp");
    if let Err(err) = write_like(&tmp, text.as_bytes(), &path).and_then(|()| {
        std::fs::rename(&tmp, &path)?;
        // The rename itself, durable.
        std::fs::File::open(path.parent().unwrap_or(Path::new("/")))?.sync_all()
    }) {
        let _ = std::fs::remove_file(&tmp);
        return Err(err).with_context(|| format!("write {shown}"));
    }
    println!("{shown}: runtime {} {done}", opts.handler);
    Ok(true)
}

/// Writes `bytes` to `tmp`, durably, with the mode and owner of `like` (the
/// file it replaces: a config may hold registry credentials and be 0600).
fn write_like(tmp: &Path, bytes: &[u8], like: &Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let old = std::fs::metadata(like).ok();
    let mode = old.as_ref().map_or(0o644, |m| m.mode() & 0o7777);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(tmp)?;
    f.write_all(bytes)?;
    if let Some(m) = &old {
        std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()))?;
    }
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.sync_all()
}

/// Runs a command on the host: directly when this process sees the host's
/// root as its own, else in the namespaces of the host's init (the
/// DaemonSet runs with hostPID and privileges for this).
fn host_command(opts: &Opts, argv: &[&str]) -> Command {
    if opts.host_root == Path::new("/") {
        let mut c = Command::new(argv[0]);
        c.args(&argv[1..]);
        c
    } else {
        let mut c = Command::new("nsenter");
        c.args([
            "--target", "1", "--mount", "--uts", "--ipc", "--net", "--pid", "--",
        ])
        .args(argv);
        c
    }
}

fn restart_containerd(opts: &Opts) -> Result<()> {
    if opts.restart == Restart::None {
        println!("containerd: restart it to pick up the change");
        return Ok(());
    }
    let status = host_command(opts, &["systemctl", "restart", "containerd"])
        .status()
        .context("run systemctl restart containerd")?;
    if !status.success() {
        bail!("systemctl restart containerd failed: {status}");
    }
    println!("containerd: restarted");
    Ok(())
}

/// kubectl from the installer's image, with the pod's service account.
fn kubectl(args: &[&str]) -> Result<()> {
    let status = Command::new("kubectl")
        .args(args)
        .status()
        .with_context(|| format!("run kubectl {}", args.join(" ")))?;
    if !status.success() {
        bail!("kubectl {} failed: {status}", args.join(" "));
    }
    Ok(())
}
