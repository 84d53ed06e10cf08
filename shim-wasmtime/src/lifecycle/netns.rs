//! Network namespaces: where a guest's sockets live.
//!
//! A guest runs inside the shim process, and `setns(2)` moves only the
//! calling thread, so the shim never moves itself. Instead, each network
//! namespace that guests use gets a tokio runtime of its own whose threads,
//! workers and blocking pool alike, enter the namespace as they start. A
//! guest placed on that runtime (instantiated there too) creates every
//! socket there: its own, the background ones its WASI implementation
//! makes, and the name lookups it asks for. A socket stays in the namespace
//! it was created in, whichever thread uses it later.
//!
//! What the spec asks for, as runc reads it:
//!
//! | spec `linux.namespaces` | namespace | runtime |
//! |---|---|---|
//! | no `network` entry (`ctr run --net-host`, host-network pods) | the shim's | the shim's own: no cost |
//! | `network` with a `path` (under CRI, the pod's) | that one, shared by the pod's guests | one per namespace |
//! | `network` without a path (plain `ctr run`) | a new one with only loopback, up | one per task |
//!
//! Only guests that can open sockets are placed at all (see the engine);
//! the rest stay on the shim's runtime whatever the spec says.

use std::collections::HashMap;
use std::ffi::CString;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use anyhow::{bail, Context, Result};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

/// What the spec asks of the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// The shim's own namespace.
    Host,
    /// The namespace at this path.
    Join(PathBuf),
    /// A new namespace with only loopback.
    New,
}

impl Network {
    pub fn of(spec: &Spec) -> Self {
        let entry = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .and_then(|nss| {
                nss.iter()
                    .find(|ns| ns.typ() == LinuxNamespaceType::Network)
            });
        match entry {
            None => Network::Host,
            Some(ns) => match ns.path() {
                Some(path) if !path.as_os_str().is_empty() => Network::Join(path.clone()),
                _ => Network::New,
            },
        }
    }
}

/// A namespace's identity: the device and inode of its nsfs file.
type NsId = (u64, u64);

/// A network namespace guests run in, with the runtime whose threads
/// entered it. Dropping the last reference stops the runtime's threads
/// and lets the namespace go (a new one disappears with them).
pub struct Namespace {
    id: NsId,
    /// Taken only by `drop`.
    runtime: ManuallyDrop<tokio::runtime::Runtime>,
}

impl Namespace {
    /// The runtime to spawn the guest on.
    pub fn handle(&self) -> tokio::runtime::Handle {
        self.runtime.handle().clone()
    }

    /// The namespace's inode, for logs.
    pub fn inode(&self) -> u64 {
        self.id.1
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Never blocks, so it is safe from async code: the threads exit as
        // they finish what they are doing.
        // SAFETY: the runtime is taken once, here, and never used again.
        let runtime = unsafe { ManuallyDrop::take(&mut self.runtime) };
        runtime.shutdown_background();
    }
}

/// The namespaces in use, so that the guests of one pod share one runtime.
pub struct Namespaces {
    shim: NsId,
    joined: Mutex<HashMap<NsId, Weak<Namespace>>>,
}

impl Namespaces {
    pub fn new() -> Self {
        let shim = open_ns(Path::new("/proc/self/ns/net"))
            .and_then(|fd| ns_id(&fd))
            .unwrap_or_else(|err| {
                // Then a task given the shim's own namespace by path gets a
                // runtime of its own: slower, never wrong.
                tracing::warn!("cannot read the shim's network namespace: {err:#}");
                (0, 0)
            });
        Self {
            shim,
            joined: Mutex::default(),
        }
    }

    /// The namespace a task's guest runs in: `None` for the shim's own.
    /// Blocking (opens files, may create a namespace and start threads):
    /// call on a blocking thread.
    pub fn place(&self, network: &Network, task: &str) -> Result<Option<Arc<Namespace>>> {
        match network {
            Network::Host => Ok(None),
            Network::New => {
                let fd = create_with_loopback().context("create a network namespace")?;
                let id = ns_id(&fd).context("stat the new network namespace")?;
                Ok(Some(Arc::new(start(fd, id, task)?)))
            }
            Network::Join(path) => {
                let fd = open_ns(path)
                    .with_context(|| format!("open network namespace {}", path.display()))?;
                check_type(&fd).with_context(|| format!("network namespace {}", path.display()))?;
                let id = ns_id(&fd)
                    .with_context(|| format!("stat network namespace {}", path.display()))?;
                if id == self.shim {
                    return Ok(None);
                }
                let mut joined = self.joined.lock().unwrap_or_else(|e| e.into_inner());
                joined.retain(|_, ns| ns.strong_count() > 0);
                if let Some(ns) = joined.get(&id).and_then(Weak::upgrade) {
                    return Ok(Some(ns));
                }
                let ns = Arc::new(start(fd, id, task)?);
                joined.insert(id, Arc::downgrade(&ns));
                Ok(Some(ns))
            }
        }
    }
}

/// Worker threads per namespace: a pod's guests share them, and a plain
/// `ctr run` container gets a namespace (and threads) of its own, so few.
const MAX_WORKERS: usize = 2;
/// Threads for the guests' blocking calls (files), per namespace.
const MAX_BLOCKING_THREADS: usize = 32;

/// Starts the runtime whose threads enter the namespace `fd`.
fn start(fd: OwnedFd, id: NsId, task: &str) -> Result<Namespace> {
    let fd = Arc::new(fd);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_WORKERS));
    let enter_fd = fd.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .thread_name(format!("netns-{}", id.1))
        .enable_all()
        .on_thread_start(move || enter(&enter_fd))
        .build()
        .context("start the threads for the network namespace")?;
    tracing::debug!(
        task,
        netns = id.1,
        workers,
        "network namespace runtime started"
    );
    Ok(Namespace {
        id,
        runtime: ManuallyDrop::new(runtime),
    })
}

/// Moves the calling thread into the namespace. It cannot fail for a valid
/// nsfs descriptor held by a privileged process, and the descriptor was
/// checked first; should it fail anyway, the thread goes into a new, empty
/// namespace instead, so that a guest's sockets can never land in the
/// shim's. Only if that fails as well does the shim stop.
fn enter(fd: &OwnedFd) {
    // SAFETY: setns(2) on a descriptor we own; affects only this thread.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
        return;
    }
    let err = std::io::Error::last_os_error();
    tracing::error!(
        "setns into a task's network namespace failed ({err}); this thread gets an empty namespace"
    );
    // SAFETY: unshare(2) of this thread's network namespace only.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        tracing::error!(
            "unshare(CLONE_NEWNET) failed too ({}): stopping rather than letting a guest use the shim's network",
            std::io::Error::last_os_error()
        );
        std::process::abort();
    }
}

fn open_ns(path: &Path) -> Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes()).context("path holds a NUL byte")?;
    // SAFETY: open(2) of a NUL-terminated path; the result is checked.
    // O_NONBLOCK: a FIFO at the path must not hang Create.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ns_id(fd: &OwnedFd) -> Result<NsId> {
    let meta = std::fs::File::from(fd.try_clone()?).metadata()?;
    use std::os::unix::fs::MetadataExt;
    Ok((meta.dev(), meta.ino()))
}

/// Checks that `fd` is a network namespace, not some other file the spec
/// names.
fn check_type(fd: &OwnedFd) -> Result<()> {
    // SAFETY: an ioctl that only reads the descriptor's namespace type.
    let kind = unsafe { libc::ioctl(fd.as_raw_fd(), libc::NS_GET_NSTYPE) };
    if kind < 0 {
        bail!("not a namespace: {}", std::io::Error::last_os_error());
    }
    if kind != libc::CLONE_NEWNET {
        bail!("a namespace, but not a network namespace");
    }
    Ok(())
}

/// Runs `f` on a short-lived thread that entered the network namespace at
/// `path` (checked to be one): what `f` opens under `/proc/sys/net`, or any
/// socket it makes, is that namespace's. Blocking.
pub fn run_in<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    let fd = open_ns(path).with_context(|| format!("open {}", path.display()))?;
    check_type(&fd).with_context(|| format!("network namespace {}", path.display()))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<T> {
                // SAFETY: setns(2) on a descriptor we own; only this
                // short-lived thread moves.
                if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error())
                        .with_context(|| format!("enter {}", path.display()));
                }
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the thread in {} panicked", path.display()))?
    })
}

/// Creates a network namespace, as runc does for a container that asks for
/// one without a path: only loopback, brought up.
fn create_with_loopback() -> Result<OwnedFd> {
    // On a thread of its own, which ends once the namespace is made: the
    // descriptor keeps the namespace alive.
    std::thread::spawn(|| -> Result<OwnedFd> {
        // SAFETY: unshare(2) of this short-lived thread's network namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).context("unshare(CLONE_NEWNET)");
        }
        loopback_up().context("bring loopback up")?;
        open_ns(Path::new("/proc/thread-self/ns/net"))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread creating the namespace panicked"))?
}

fn loopback_up() -> std::io::Result<()> {
    // SAFETY: a datagram socket, used only for the interface ioctls below
    // and closed by OwnedFd.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write `req`, which lives
    // across both calls.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_names_the_network() {
        let spec = |json: &str| -> Spec { serde_json::from_str(json).unwrap() };
        let base = r#""ociVersion":"1.0.2","root":{"path":"rootfs"}"#;
        assert_eq!(Network::of(&spec(&format!("{{{base}}}"))), Network::Host);
        let ns = |entries: &str| {
            spec(&format!(
                r#"{{{base},"linux":{{"namespaces":[{{"type":"mount"}}{entries}]}}}}"#
            ))
        };
        assert_eq!(Network::of(&ns("")), Network::Host);
        assert_eq!(Network::of(&ns(r#",{"type":"network"}"#)), Network::New);
        assert_eq!(
            Network::of(&ns(r#",{"type":"network","path":"/proc/7/ns/net"}"#)),
            Network::Join("/proc/7/ns/net".into())
        );
    }

    #[test]
    fn only_network_namespaces_are_joined() {
        let namespaces = Namespaces::new();
        let err = namespaces
            .place(&Network::Join("/proc/self/ns/uts".into()), "t")
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains("not a network namespace"),
            "{err:#}"
        );
        let err = namespaces
            .place(&Network::Join("/proc/self/status".into()), "t")
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("not a namespace"), "{err:#}");
        // The shim's own namespace is the host's: no runtime of its own.
        assert!(namespaces
            .place(&Network::Join("/proc/self/ns/net".into()), "t")
            .unwrap()
            .is_none());
    }
}
