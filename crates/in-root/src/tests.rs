//! The resolver against the kernel's: for random trees of folders, files
//! and links (absolute, relative, `..` chains, pointing anywhere, the host
//! outside the root included) and random paths from random folders, what
//! [`retry`] reaches through cap-std is what `openat2(RESOLVE_IN_ROOT)` on
//! the root reaches, or both fail; and nothing outside the root is ever
//! reached, also while another thread swaps links.

use std::fs::File;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};

use cap_primitives::fs::{FollowSymlinks, OpenOptions};
use proptest::prelude::*;

use super::*;

/// Folders of the tree, relative to the root; the bases calls start from.
const FOLDERS: [&str; 4] = ["", "a", "a/b", "c"];
/// Files of the tree.
const FILES: [&str; 3] = ["f", "a/f", "a/b/g"];
/// Where links may be.
const LINK_AT: [&str; 6] = ["l1", "l2", "a/l3", "a/b/l4", "c/l5", "c/l6"];
/// What links may point at. `OUTSIDE` is replaced by the host path of a
/// file outside the root.
const TARGETS: [&str; 16] = [
    "/a",
    "/a/b/g",
    "/f",
    "/",
    "/..",
    "/c/../a/f",
    "/missing",
    "OUTSIDE",
    "../f",
    "../../..",
    "..",
    ".",
    "b",
    "l1",
    "../l2",
    "/l1/b",
];
/// Parts of paths a guest may use. No `.`: `Path` drops a trailing one,
/// and cap-std then reaches `f` for `f/.`, where the kernel says ENOTDIR.
const PARTS: [&str; 11] = ["a", "b", "c", "f", "g", "l1", "l2", "l3", "l4", "l5", ".."];

/// The swapping test renames all the time, and the kernel answers a lookup
/// with `..` by EAGAIN while any rename races it: the resolver tries 16
/// times, then reports it. The comparison runs alone, so it compares
/// resolutions.
static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Tree {
    _tmp: tempfile::TempDir,
    root: File,
    root_path: PathBuf,
    outside: (u64, u64),
}

fn tree(links: &[(usize, usize)]) -> Tree {
    let tmp = tempfile::tempdir().unwrap();
    let root_path = tmp.path().join("root");
    std::fs::create_dir(&root_path).unwrap();
    for d in FOLDERS.iter().filter(|d| !d.is_empty()) {
        std::fs::create_dir_all(root_path.join(d)).unwrap();
    }
    for f in FILES {
        std::fs::write(root_path.join(f), f).unwrap();
    }
    let secret = tmp.path().join("secret");
    std::fs::write(&secret, "the host's").unwrap();
    let m = std::fs::metadata(&secret).unwrap();
    for &(at, target) in links {
        let target = match TARGETS[target] {
            "OUTSIDE" => secret.to_string_lossy().into_owned(),
            t => t.to_owned(),
        };
        // A second link at the same place is left out.
        let _ = symlink(&target, root_path.join(LINK_AT[at]));
    }
    let root = File::open(&root_path).unwrap();
    Tree {
        _tmp: tmp,
        root,
        root_path,
        outside: (m.dev(), m.ino()),
    }
}

fn identity(m: &std::fs::Metadata) -> (u64, u64) {
    (m.dev(), m.ino())
}

/// What the kernel reaches for `path` from the folder `base` of the root.
fn kernel(t: &Tree, base: &str, path: &Path, follow: Follow) -> Option<(u64, u64)> {
    let mut flags = OFlags::PATH | OFlags::CLOEXEC;
    if follow == Follow::No {
        flags |= OFlags::NOFOLLOW;
    }
    let full = Path::new(base).join(path);
    let full = if full.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        full
    };
    // EAGAIN: a rename anywhere (the swapping test runs beside this one)
    // raced a lookup with `..`; the kernel asks to try again.
    let fd = loop {
        match rustix::fs::openat2(
            &t.root,
            &full,
            flags,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        ) {
            Err(Errno::AGAIN) => continue,
            other => break other.ok()?,
        }
    };
    let st = rustix::fs::fstat(&fd).ok()?;
    Some((st.st_dev, st.st_ino))
}

/// What the resolver reaches for `path` from `base`, through cap-std.
fn ours(t: &Tree, base: &File, path: &Path, follow: Follow) -> Option<(u64, u64)> {
    let found = retry(Some(&t.root), base, path, follow, |d, p| match follow {
        Follow::Yes => {
            let f = cap_primitives::fs::open(d, p, OpenOptions::new().read(true))?;
            f.metadata().map(|m| identity(&m))
        }
        Follow::No => cap_primitives::fs::stat(d, p, FollowSymlinks::No).map(|m| {
            (
                cap_primitives::fs::MetadataExt::dev(&m),
                cap_primitives::fs::MetadataExt::ino(&m),
            )
        }),
    });
    found.ok()
}

fn path_of(parts: &[usize], absolute: bool) -> PathBuf {
    let mut p = PathBuf::from(if absolute { "/" } else { "" });
    for &i in parts {
        p.push(PARTS[i]);
    }
    p
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn resolves_as_the_kernel_does_inside_the_root(
        links in proptest::collection::vec((0..LINK_AT.len(), 0..TARGETS.len()), 0..6),
        paths in proptest::collection::vec(
            (0..FOLDERS.len(), proptest::collection::vec(0..PARTS.len(), 1..6), any::<bool>(), any::<bool>()),
            1..12,
        ),
    ) {
        let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
        let t = tree(&links);
        for (base, parts, absolute, follow) in paths {
            let path = path_of(&parts, absolute);
            let follow = if follow { Follow::Yes } else { Follow::No };
            let base_dir = File::open(t.root_path.join(FOLDERS[base])).unwrap();
            let want = kernel(&t, FOLDERS[base], &path, follow);
            let got = ours(&t, &base_dir, &path, follow);
            prop_assert_eq!(
                got, want,
                "{:?} from /{} ({:?}), links {:?}", path, FOLDERS[base], follow, links
            );
            prop_assert_ne!(got, Some(t.outside));
        }
    }
}

#[test]
fn split_names_the_last_part() {
    let s = |p: &str| {
        let (a, b) = split(Path::new(p));
        (
            a.to_string_lossy().into_owned(),
            b.to_string_lossy().into_owned(),
        )
    };
    assert_eq!(s("a/b/c"), ("a/b".into(), "c".into()));
    assert_eq!(s("/c"), (".".into(), "c".into()));
    assert_eq!(s("a/.."), ("a/..".into(), ".".into()));
    assert_eq!(s("a/./b/"), ("a".into(), "b".into()));
    assert_eq!(s(""), (".".into(), ".".into()));
    assert_eq!(s("/"), (".".into(), ".".into()));
}

#[test]
fn without_a_root_an_escape_stays_refused() {
    let t = tree(&[(0, 2)]); // l1 -> /f
    let err = retry(None, &t.root, Path::new("l1"), Follow::Yes, |d, p| {
        cap_primitives::fs::open(d, p, OpenOptions::new().read(true))
    })
    .unwrap_err();
    assert!(is_escape(&err), "{err:?}");
}

/// Links swapped while calls resolve them: every call reaches a file of the
/// root or fails, never the host's.
#[test]
fn links_swapped_meanwhile_never_lead_outside() {
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    let t = tree(&[]);
    let secret = t._tmp.path().join("secret");
    let root_path = t.root_path.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let targets = [
                secret.to_string_lossy().into_owned(),
                "/f".to_owned(),
                "../../../../secret".to_owned(),
                "/a/b".to_owned(),
            ];
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let tmp = root_path.join("a/swap.tmp");
                let _ = std::fs::remove_file(&tmp);
                let _ = symlink(&targets[i % targets.len()], &tmp);
                let _ = std::fs::rename(&tmp, root_path.join("a/swap"));
                i += 1;
            }
        }
    });
    let a = File::open(t.root_path.join("a")).unwrap();
    let mut reached = 0;
    for _ in 0..5000 {
        for path in ["swap", "swap/g", "../a/swap", "/a/swap"] {
            if let Some(id) = ours(&t, &a, Path::new(path), Follow::Yes) {
                assert_ne!(id, t.outside, "{path} reached the host's file");
                reached += 1;
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    swapper.join().unwrap();
    assert!(reached > 0, "no call ever got through");
}
