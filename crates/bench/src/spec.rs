//! The OCI runtime spec the benchmark gives containerd for every container:
//! a minimal spec that runc accepts, shaped like `ctr run`'s default (same
//! mounts, namespaces, capabilities and masked paths, no terminal), so that
//! wasm and runc get the same request and only the runtime differs.

use anyhow::{Context, Result};
use serde_json::{json, Value};

/// The `Any` type URL containerd stores container specs under.
pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// The `PATH` used when the image's config sets none.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// containerd's default capability set for unprivileged containers.
const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// What runs in the container.
#[derive(Debug, Clone)]
pub struct Process {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
}

/// The spec of container `id` in `namespace`; its cgroup is
/// `/<namespace>/<id>`, as containerd's default gives it.
pub fn runtime_spec(namespace: &str, id: &str, process: &Process) -> Value {
    let env: Vec<&str> = if process.env.is_empty() {
        vec![DEFAULT_PATH]
    } else {
        process.env.iter().map(String::as_str).collect()
    };
    let cwd = if process.cwd.is_empty() {
        "/"
    } else {
        process.cwd.as_str()
    };
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": process.args,
            "env": env,
            "cwd": cwd,
            "capabilities": {
                "bounding": CAPABILITIES,
                "effective": CAPABILITIES,
                "permitted": CAPABILITIES,
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true,
        },
        "root": {"path": "rootfs"},
        "mounts": [
            {
                "destination": "/proc",
                "type": "proc",
                "source": "proc",
                "options": ["nosuid", "noexec", "nodev"],
            },
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            {
                "destination": "/dev/mqueue",
                "type": "mqueue",
                "source": "mqueue",
                "options": ["nosuid", "noexec", "nodev"],
            },
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"],
            },
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                {"type": "network"},
            ],
            "cgroupsPath": format!("/{namespace}/{id}"),
            "resources": {
                "devices": [{"allow": false, "access": "rwm"}],
            },
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
        },
    })
}

/// The spec as the `Any` that a container record carries: its JSON bytes
/// under containerd's type URL.
pub fn to_any(spec: &Value) -> Result<prost_types::Any> {
    Ok(prost_types::Any {
        type_url: SPEC_TYPE_URL.to_string(),
        value: serde_json::to_vec(spec).context("serialize the OCI spec")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process() -> Process {
        Process {
            args: vec!["/busybox".into(), "sleep".into(), "3600".into()],
            env: vec![],
            cwd: String::new(),
        }
    }

    #[test]
    fn spec_names_the_process_and_cgroup() {
        let s = runtime_spec("ns1", "c1", &process());
        assert_eq!(s["process"]["args"], json!(["/busybox", "sleep", "3600"]));
        assert_eq!(s["process"]["env"], json!([DEFAULT_PATH]));
        assert_eq!(s["process"]["cwd"], "/");
        assert_eq!(s["process"]["terminal"], false);
        assert_eq!(s["root"]["path"], "rootfs");
        assert_eq!(s["linux"]["cgroupsPath"], "/ns1/c1");
        let dests: Vec<&str> = s["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        assert_eq!(
            dests,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys"
            ]
        );
        let ns: Vec<&str> = s["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns, ["pid", "ipc", "uts", "mount", "network"]);
    }

    #[test]
    fn image_env_and_cwd_win() {
        let mut p = process();
        p.env = vec!["PATH=/".into()];
        p.cwd = "/work".into();
        let s = runtime_spec("n", "c", &p);
        assert_eq!(s["process"]["env"], json!(["PATH=/"]));
        assert_eq!(s["process"]["cwd"], "/work");
    }

    #[test]
    fn any_carries_the_json() {
        let s = runtime_spec("n", "c", &process());
        let any = to_any(&s).unwrap();
        assert_eq!(any.type_url, SPEC_TYPE_URL);
        let back: Value = serde_json::from_slice(&any.value).unwrap();
        assert_eq!(back, s);
    }
}
