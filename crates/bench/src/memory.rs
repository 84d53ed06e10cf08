//! Memory that idle containers cost, read from `/proc`: finds the shim
//! processes serving given containers (by their `-namespace` and `-id`
//! arguments) and adds up RSS and PSS from `/proc/PID/smaps_rollup`. PSS
//! splits shared pages among their users, so N shims of one binary are not
//! charged N times for its code.

use std::collections::{BTreeSet, HashSet};

use anyhow::{Context, Result};
use serde::Serialize;

/// The memory of one process, in KiB.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcMem {
    pub pid: u32,
    pub command: String,
    pub rss_kib: u64,
    pub pss_kib: u64,
}

/// The memory of a set of processes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Total {
    pub rss_kib: u64,
    pub pss_kib: u64,
    pub processes: Vec<ProcMem>,
}

/// `(Rss, Pss)` in KiB from the text of `/proc/PID/smaps_rollup`.
pub fn parse_smaps_rollup(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            let mut parts = rest.split_whitespace();
            let value = parts.next()?.parse::<u64>().ok()?;
            match parts.next() {
                Some("kB") | None => Some(value),
                Some(_) => None,
            }
        })
    };
    Some((field("Rss")?, field("Pss")?))
}

/// Reads one process's memory.
pub fn read(pid: u32) -> Result<ProcMem> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    let (rss_kib, pss_kib) =
        parse_smaps_rollup(&text).with_context(|| format!("no Rss/Pss in {path}"))?;
    let command = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim_end().to_string())
        .unwrap_or_default();
    Ok(ProcMem {
        pid,
        command,
        rss_kib,
        pss_kib,
    })
}

/// Adds up the memory of `pids` (each counted once).
pub fn total(pids: impl IntoIterator<Item = u32>) -> Result<Total> {
    let pids: BTreeSet<u32> = pids.into_iter().filter(|&p| p != 0).collect();
    let mut t = Total::default();
    for pid in pids {
        let p = read(pid)?;
        t.rss_kib += p.rss_kib;
        t.pss_kib += p.pss_kib;
        t.processes.push(p);
    }
    Ok(t)
}

/// The value of a Go-style flag (`-name value` or `-name=value`, one or two
/// dashes) in an argument list.
fn flag<'a>(argv: &'a [String], name: &str) -> Option<&'a str> {
    let mut it = argv.iter();
    while let Some(arg) = it.next() {
        let Some(bare) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            continue;
        };
        if bare == name {
            return it.next().map(String::as_str);
        }
        if let Some(value) = bare.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            return Some(value);
        }
    }
    None
}

/// Whether `argv` is a long-running shim `binary` serving one of `ids` in
/// `namespace`. The short-lived `… start` and `… delete` invocations of the
/// same binary are not.
pub fn is_shim_of(argv: &[String], binary: &str, namespace: &str, ids: &HashSet<String>) -> bool {
    let Some(argv0) = argv.first() else {
        return false;
    };
    let name = argv0.rsplit('/').next().unwrap_or(argv0);
    if name != binary {
        return false;
    }
    if matches!(argv.last().map(String::as_str), Some("start" | "delete")) {
        return false;
    }
    flag(argv, "namespace") == Some(namespace)
        && flag(argv, "id").is_some_and(|id| ids.contains(id))
}

/// Whether process `pid` runs `binary` (by its argv[0]'s file name).
pub fn runs_binary(pid: u32, binary: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|raw| {
        let argv0 = raw.split(|&b| b == 0).next().unwrap_or_default();
        String::from_utf8_lossy(argv0).rsplit('/').next() == Some(binary)
    })
}

/// Pids of the shim processes serving `ids` in `namespace`.
pub fn shim_pids(binary: &str, namespace: &str, ids: &HashSet<String>) -> Result<Vec<u32>> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").context("read /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // Processes come and go: an unreadable one is not ours to count.
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let argv: Vec<String> = raw
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if is_shim_of(&argv, binary, namespace, ids) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    Ok(pids)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLLUP: &str = "\
00400000-7ffd1e5ff000 ---p 00000000 00:00 0                              [rollup]
Rss:               12345 kB
Pss:                6789 kB
Pss_Anon:           4000 kB
Shared_Clean:       5000 kB
";

    #[test]
    fn reads_rss_and_pss() {
        assert_eq!(parse_smaps_rollup(ROLLUP), Some((12345, 6789)));
        assert_eq!(parse_smaps_rollup("Rss: 1 kB\n"), None);
        assert_eq!(parse_smaps_rollup(""), None);
    }

    #[test]
    fn reads_this_process() {
        let me = read(std::process::id()).unwrap();
        assert!(me.rss_kib > 0);
        assert!(me.pss_kib > 0);
    }

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn matches_shims_by_namespace_and_id() {
        let ids: HashSet<String> = ["c1".to_string()].into();
        let shim = "containerd-shim-runc-v2";
        assert!(is_shim_of(
            &argv("/usr/bin/containerd-shim-runc-v2 -namespace ns -id c1 -address /run/c.sock"),
            shim,
            "ns",
            &ids
        ));
        assert!(is_shim_of(
            &argv("containerd-shim-runc-v2 --namespace=ns -id=c1"),
            shim,
            "ns",
            &ids
        ));
        // Another namespace, another container, another binary, or the start action.
        assert!(!is_shim_of(
            &argv("containerd-shim-runc-v2 -namespace ns2 -id c1"),
            shim,
            "ns",
            &ids
        ));
        assert!(!is_shim_of(
            &argv("containerd-shim-runc-v2 -namespace ns -id c2"),
            shim,
            "ns",
            &ids
        ));
        assert!(!is_shim_of(
            &argv("wasm-bench -namespace ns -id c1"),
            shim,
            "ns",
            &ids
        ));
        assert!(!is_shim_of(
            &argv("containerd-shim-runc-v2 -namespace ns -id c1 -address a start"),
            shim,
            "ns",
            &ids
        ));
        assert!(!is_shim_of(&[], shim, "ns", &ids));
    }
}
