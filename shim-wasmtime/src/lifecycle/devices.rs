//! The container's `/dev`, as runc gives one, inside the rootfs the shim
//! mounted:
//! - a small tmpfs over the image's `/dev` (`nosuid`, `nodev`, `noexec`);
//! - in it, bind mounts of the host's `null`, `zero`, `full`, `random` and
//!   `urandom` nodes. A bind mount keeps its source's device access while the
//!   rootfs and this tmpfs stay `nodev`, so a node shipped in an image stays
//!   unusable. Nothing else of the host's `/dev`: no `tty`, no `ptmx`;
//! - the task's standard streams at `fd/0`, `fd/1` and `fd/2`, with `stdin`,
//!   `stdout` and `stderr` linking to them (relative links, so `readlink`
//!   and `stat` agree whatever resolves them).
//!
//! `fd/1` and `fd/2` are FIFOs whose read ends the shim holds: `stdio` copies
//! what a guest writes into them to the task's stdout and stderr, whatever
//! those are (a FIFO, a `file://` log, nothing). `fd/0` is the task's stdin
//! FIFO itself, bound there (`null` without stdin): the shim reads stdin for
//! the guest's fd 0 only once the guest reads fd 0, so a guest that reads
//! `/dev/stdin` gets all of it.
//!
//! The tmpfs is made read-only by [`super::binds::mount_all`] once the
//! spec's mounts below it (`/dev/termination-log`, `/dev/shm`) have their
//! mountpoints, so a guest cannot create files in `/dev`.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rustix::fs::{FileType, Mode, OFlags};
use rustix::mount::MountFlags;
use tokio::net::unix::pipe;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::binds::{mountpoint, open_in_root, proc_fd};
use super::stdio::copy_fifo;
use super::Writer;

/// The read ends of the guest's `/dev/stdout` and `/dev/stderr`.
#[derive(Debug)]
pub struct DevOutput {
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// The host's nodes a container gets, and their minor numbers: Linux's
/// memory devices, major 1 (`Documentation/admin-guide/devices.txt`).
const NODES: [(&str, u32); 5] = [
    ("null", 3),
    ("zero", 5),
    ("full", 7),
    ("random", 8),
    ("urandom", 9),
];
const MEMORY_DEVICES: u32 = 1;

/// Mounts the container's `/dev` in `root` (the folder `rootfs`), with
/// `stdin` (containerd's stdin FIFO, if the task has one) at `fd/0`.
/// Returns the tmpfs's root, for making it read-only later, and the read
/// ends of `fd/1` and `fd/2`. Blocking. On an error some mounts may be in
/// place: the caller unmounts the rootfs recursively.
pub(super) fn mount(
    root: &OwnedFd,
    rootfs: &Path,
    stdin: Option<&Path>,
) -> Result<(OwnedFd, DevOutput)> {
    let dev = Path::new("dev");
    let at = mountpoint(root, rootfs, dev, true)?;
    // An image's `/dev -> /` would put the tmpfs over the whole tree.
    let (a, r) = (rustix::fs::fstat(&at)?, rustix::fs::fstat(root)?);
    if (a.st_dev, a.st_ino) == (r.st_dev, r.st_ino) {
        bail!("the image's /dev leads to its root");
    }
    rustix::mount::mount(
        "tmpfs",
        proc_fd(at.as_fd()),
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        c"mode=755,size=64k,nr_inodes=64",
    )
    .context("mount a tmpfs at /dev")?;
    // The path now leads to the tmpfs.
    let dev = open_in_root(root, dev, true).context("open /dev")?;
    for (name, minor) in NODES {
        let host = Path::new("/dev").join(name);
        let st = rustix::fs::stat(&host).with_context(|| format!("{}", host.display()))?;
        let file_type = FileType::from_raw_mode(st.st_mode);
        if file_type != FileType::CharacterDevice
            || rustix::fs::major(st.st_rdev) != MEMORY_DEVICES
            || rustix::fs::minor(st.st_rdev) != minor
        {
            bail!(
                "the host's {} is not the character device {MEMORY_DEVICES}:{minor}",
                host.display()
            );
        }
        bind_file(&dev, name, &host)?;
    }
    rustix::fs::mkdirat(&dev, "fd", Mode::from_raw_mode(0o755)).context("make /dev/fd")?;
    let fd = rustix::fs::openat(
        &dev,
        "fd",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .context("open /dev/fd")?;
    let stdin = match stdin {
        Some(fifo) if is_fifo(fifo) => fifo,
        _ => Path::new("/dev/null"),
    };
    bind_file(&fd, "0", stdin)?;
    let stdout = fifo(&fd, "1")?;
    let stderr = fifo(&fd, "2")?;
    for (link, target) in [("stdin", "fd/0"), ("stdout", "fd/1"), ("stderr", "fd/2")] {
        rustix::fs::symlinkat(target, &dev, link).with_context(|| format!("make /dev/{link}"))?;
    }
    Ok((dev, DevOutput { stdout, stderr }))
}

/// Makes the empty file `name` in `dir` and bind-mounts `source` on it.
fn bind_file(dir: &OwnedFd, name: &str, source: &Path) -> Result<()> {
    let on = rustix::fs::openat(
        dir,
        name,
        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o666),
    )
    .with_context(|| format!("make /dev/…/{name}"))?;
    rustix::mount::mount_bind(source, proc_fd(on.as_fd()))
        .with_context(|| format!("bind mount {} at /dev/…/{name}", source.display()))
}

/// Makes the FIFO `name` in `dir` and opens it for reading. Opened
/// read-write, the shim also holds a write end, so a guest's open for
/// writing never waits and the shim never reads end-of-file from it.
fn fifo(dir: &OwnedFd, name: &str) -> Result<OwnedFd> {
    rustix::fs::mknodat(dir, name, FileType::Fifo, Mode::from_raw_mode(0o600), 0)
        .with_context(|| format!("make the FIFO /dev/fd/{name}"))?;
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDWR | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("open /dev/fd/{name}"))
}

fn is_fifo(path: &Path) -> bool {
    rustix::fs::stat(path).is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Fifo)
}

/// Copies what guests write into `/dev/stdout` and `/dev/stderr` to the
/// task's output. Dropping it stops the copies.
pub struct DevPumps {
    stop: watch::Sender<bool>,
    copies: Vec<JoinHandle<()>>,
}

/// How long copying what is left in the FIFOs may take once the guests have
/// ended: as long as a client that reads nothing holds up an exit.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

impl DevOutput {
    /// Starts copying `/dev/stdout` into `stdout` and `/dev/stderr` into
    /// `stderr`. They join what the guest writes to its fd 1 and 2 in the
    /// order the shim reads them, so a guest that writes both ways may see
    /// the two interleaved differently than written.
    pub fn pump(self, stdout: &Writer, stderr: &Writer) -> std::io::Result<DevPumps> {
        let (stop, stopped) = watch::channel(false);
        let mut copies = Vec::new();
        for (fd, to) in [(self.stdout, stdout), (self.stderr, stderr)] {
            let fifo = pipe::Receiver::from_owned_fd(fd)?;
            let (mut to, mut stopped) = (to.clone(), stopped.clone());
            copies.push(tokio::spawn(async move {
                let stop = async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                };
                // Errors end the copy: the task's output is closed.
                let _ = copy_fifo(&fifo, &mut to, stop).await;
            }));
        }
        Ok(DevPumps { stop, copies })
    }
}

impl DevPumps {
    /// Copies what is left in the FIFOs, once no guest of the task can
    /// write any more, and stops.
    /// Past [`DRAIN_LIMIT`] the copies are stopped (when `self` drops).
    pub async fn finish(mut self) {
        self.stop.send_replace(true);
        let all = async {
            for copy in &mut self.copies {
                let _ = copy.await;
            }
        };
        if tokio::time::timeout(DRAIN_LIMIT, all).await.is_err() {
            tracing::debug!("the task's output did not take what was left in /dev/stdout");
        }
    }
}

impl Drop for DevPumps {
    fn drop(&mut self) {
        for copy in &self.copies {
            copy.abort();
        }
    }
}
