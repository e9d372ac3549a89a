//! The OCI runtime spec of one container of a pod, as containerd's CRI plugin builds it:
//! the command and environment from the pod and the image, the user and capabilities from
//! the security context, the pod's shared namespaces, cgroup limits from requests and
//! limits, the default mounts, masked paths and seccomp profile.

use std::path::Path;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use libcontainer::oci_spec::runtime::Spec;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::sandbox::Sandbox;

/// The parts of an OCI image config a container starts from.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct ImageConfig {
    /// `Env`: `NAME=value` entries.
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    /// `Entrypoint`.
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    /// `WorkingDir`.
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    /// `User`: `uid`, `uid:gid`, `name` or `name:group`.
    #[serde(rename = "User", default)]
    pub user: Option<String>,
}

/// Why a container can't be specified.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum SpecError {
    /// Neither the pod nor the image says what to run.
    #[error("no command specified")]
    NoCommand,
    /// The image's user names an account its /etc/passwd lacks.
    #[error("unable to find user {0}: no matching entries in passwd file")]
    UnknownUser(String),
    /// A quantity doesn't parse.
    #[error("invalid quantity {0:?}")]
    Quantity(String),
    /// The built spec is not a valid OCI spec (a bug).
    #[error("invalid runtime spec: {0}")]
    Invalid(String),
}

/// Everything one container's spec is made from.
#[derive(Debug)]
pub struct Inputs<'a> {
    /// The pod.
    pub pod: &'a Pod,
    /// The container (app or init).
    pub container: &'a Container,
    /// Its image's config.
    pub image: &'a ImageConfig,
    /// The container's resolved `env` and `envFrom`, in order (later entries win).
    pub env: Vec<(String, String)>,
    /// The prepared root filesystem.
    pub rootfs: &'a Path,
    /// The pod's shared namespaces.
    pub sandbox: &'a Sandbox,
    /// The pod's `hosts`, `hostname` and `resolv.conf`, bind-mounted into /etc.
    pub etc: &'a Path,
    /// The container's cgroup path.
    pub cgroup: String,
}

/// containerd's default capabilities for a container.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
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

/// Every capability, for privileged containers.
const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The default seccomp profile refuses (EPERM) what a container has no business doing:
/// loading kernel code, changing the clock, rebooting, mounting and namespace tricks,
/// keyrings, reading other processes' memory. Everything else is allowed. (Docker's
/// default is an allow-list with the same effect on these calls.)
pub const DENIED_SYSCALLS: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "move_mount",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "sysfs",
    "_sysctl",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
];

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The argv of a container: Kubernetes' rules for `command`/`args` against the image's
/// `Entrypoint`/`Cmd`.
pub fn argv(container: &Container, image: &ImageConfig) -> Result<Vec<String>, SpecError> {
    let argv: Vec<String> = match (&container.command, &container.args) {
        (Some(command), args) if !command.is_empty() => command
            .iter()
            .chain(args.iter().flatten())
            .cloned()
            .collect(),
        (_, Some(args)) if !args.is_empty() => image
            .entrypoint
            .iter()
            .flatten()
            .chain(args)
            .cloned()
            .collect(),
        _ => image
            .entrypoint
            .iter()
            .flatten()
            .chain(image.cmd.iter().flatten())
            .cloned()
            .collect(),
    };
    if argv.is_empty() {
        return Err(SpecError::NoCommand);
    }
    Ok(argv)
}

fn parse(q: &Quantity) -> Result<skiff_core::quantity::Quantity, SpecError> {
    skiff_core::quantity::Quantity::parse(&q.0).ok_or_else(|| SpecError::Quantity(q.0.clone()))
}

/// CPU millicores of a quantity ("500m", "2", "0.5"), rounded up.
pub fn millicores(q: &Quantity) -> Result<i64, SpecError> {
    parse(q).map(|q| q.milli_value())
}

/// Bytes of a quantity ("64Mi", "1G", "1e3", "500"), rounded up.
pub fn bytes(q: &Quantity) -> Result<i64, SpecError> {
    parse(q).map(|q| q.value())
}

/// The CFS period of CPU limits, in microseconds (the kubelet's).
pub const CPU_PERIOD: i64 = 100_000;

/// What a container asks of its cgroup: CPU millicores requested (defaulting to the limit,
/// as the API server defaults requests) and limited, and its memory limit in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Demands {
    cpu_request: Option<i64>,
    cpu_limit: Option<i64>,
    memory_limit: Option<i64>,
}

impl Demands {
    fn of(container: &Container) -> Result<Demands, SpecError> {
        let res = container.resources.as_ref();
        let request = |name: &str| res.and_then(|r| r.requests.as_ref()?.get(name));
        let limit = |name: &str| res.and_then(|r| r.limits.as_ref()?.get(name));
        Ok(Demands {
            cpu_request: request("cpu")
                .or_else(|| limit("cpu"))
                .map(millicores)
                .transpose()?,
            cpu_limit: limit("cpu").map(millicores).transpose()?,
            memory_limit: limit("memory").map(bytes).transpose()?,
        })
    }
}

/// cpu.shares for a CPU request (2, the least, without one).
fn shares(millicores: Option<i64>) -> i64 {
    millicores.map_or(2, |m| (m * 1024 / 1000).max(2))
}

/// The CFS quota of a CPU limit (at least 1 ms a period, as the kubelet's).
fn quota(millicores: i64) -> i64 {
    (millicores * CPU_PERIOD / 1000).max(1000)
}

/// The pod's own cgroup limits, as the kubelet sets them on the pod's cgroup: CPU shares
/// for the pod's effective request, and a CPU quota and a memory limit only when every
/// container has one. The effective figure is the larger of the app containers' sum and
/// the largest init container's (init containers run alone, before the apps).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PodLimits {
    /// cpu.shares (cgroup v1; cpu.weight is derived from it on v2).
    pub cpu_shares: u64,
    /// The CFS quota per [`CPU_PERIOD`], if the pod is CPU-limited.
    pub cpu_quota: Option<i64>,
    /// The memory limit in bytes, if the pod is memory-limited.
    pub memory_limit: Option<i64>,
}

/// The pod's cgroup limits (see [`PodLimits`]).
pub fn pod_limits(pod: &Pod) -> Result<PodLimits, SpecError> {
    let spec = pod.spec.clone().unwrap_or_default();
    let apps = spec
        .containers
        .iter()
        .map(Demands::of)
        .collect::<Result<Vec<_>, _>>()?;
    let inits = spec
        .init_containers
        .iter()
        .flatten()
        .map(Demands::of)
        .collect::<Result<Vec<_>, _>>()?;
    // Some(total) only when every container has the figure.
    let all = |list: &[Demands], f: fn(&Demands) -> Option<i64>| -> Option<Vec<i64>> {
        list.iter().map(f).collect()
    };
    let effective = |f: fn(&Demands) -> Option<i64>, needs_all: bool| -> Option<i64> {
        let (sum, max) = if needs_all {
            (
                all(&apps, f)?.into_iter().sum::<i64>(),
                all(&inits, f)?.into_iter().max().unwrap_or(0),
            )
        } else {
            (
                apps.iter().filter_map(f).sum::<i64>(),
                inits.iter().filter_map(f).max().unwrap_or(0),
            )
        };
        Some(sum.max(max)).filter(|v| *v > 0)
    };
    Ok(PodLimits {
        cpu_shares: shares(effective(|d| d.cpu_request, false)) as u64,
        cpu_quota: effective(|d| d.cpu_limit, true).map(quota),
        memory_limit: effective(|d| d.memory_limit, true),
    })
}

/// The uid and gid the container runs as, and its supplementary groups.
fn user(inputs: &Inputs<'_>) -> Result<(u32, u32, Vec<u32>), SpecError> {
    let pod_sc = inputs
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref());
    let sc = inputs.container.security_context.as_ref();
    let run_as_user = sc
        .and_then(|s| s.run_as_user)
        .or_else(|| pod_sc.and_then(|s| s.run_as_user));
    let run_as_group = sc
        .and_then(|s| s.run_as_group)
        .or_else(|| pod_sc.and_then(|s| s.run_as_group));
    let image_user = inputs.image.user.as_deref().unwrap_or("").trim();
    let (image_uid, image_gid) = if image_user.is_empty() {
        (0, None)
    } else {
        let (u, g) = match image_user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (image_user, None),
        };
        let passwd = std::fs::read_to_string(inputs.rootfs.join("etc/passwd")).unwrap_or_default();
        let (uid, primary) = match u.parse::<u32>() {
            Ok(uid) => (uid, lookup_passwd(&passwd, |f| f[2] == u).map(|e| e.1)),
            Err(_) => lookup_passwd(&passwd, |f| f[0] == u)
                .map(|(uid, gid)| (uid, Some(gid)))
                .ok_or_else(|| SpecError::UnknownUser(u.to_owned()))?,
        };
        let gid = match g {
            Some(g) => Some(
                g.parse::<u32>()
                    .ok()
                    .or_else(|| {
                        let groups = std::fs::read_to_string(inputs.rootfs.join("etc/group"))
                            .unwrap_or_default();
                        groups.lines().find_map(|l| {
                            let f: Vec<&str> = l.split(':').collect();
                            (f.len() >= 3 && f[0] == g)
                                .then(|| f[2].parse().ok())
                                .flatten()
                        })
                    })
                    .ok_or_else(|| SpecError::UnknownUser(image_user.to_owned()))?,
            ),
            None => primary,
        };
        (uid, gid)
    };
    let uid = run_as_user.map(|u| u as u32).unwrap_or(image_uid);
    let gid = run_as_group.map(|g| g as u32).or(image_gid).unwrap_or(0);
    let mut extra: Vec<u32> = pod_sc
        .and_then(|s| s.supplemental_groups.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|g| g as u32)
        .collect();
    if let Some(fs_group) = pod_sc.and_then(|s| s.fs_group) {
        extra.push(fs_group as u32);
    }
    Ok((uid, gid, extra))
}

/// (uid, gid) of the first passwd entry whose fields match.
fn lookup_passwd(passwd: &str, matches: impl Fn(&[&str]) -> bool) -> Option<(u32, u32)> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() >= 4 && matches(&f) {
            Some((f[2].parse().ok()?, f[3].parse().ok()?))
        } else {
            None
        }
    })
}

fn capabilities(container: &Container, privileged: bool) -> Vec<String> {
    if privileged {
        return ALL_CAPABILITIES.iter().map(|c| (*c).to_owned()).collect();
    }
    let norm = |c: &String| {
        let c = c.to_ascii_uppercase();
        if c.starts_with("CAP_") {
            c
        } else {
            format!("CAP_{c}")
        }
    };
    let caps = container
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref());
    let drop: Vec<String> = caps
        .and_then(|c| c.drop.clone())
        .unwrap_or_default()
        .iter()
        .map(norm)
        .collect();
    let add: Vec<String> = caps
        .and_then(|c| c.add.clone())
        .unwrap_or_default()
        .iter()
        .map(norm)
        .collect();
    let mut set: Vec<String> = if add.iter().any(|c| c == "CAP_ALL") {
        ALL_CAPABILITIES.iter().map(|c| (*c).to_owned()).collect()
    } else {
        DEFAULT_CAPABILITIES
            .iter()
            .map(|c| (*c).to_owned())
            .collect()
    };
    if drop.iter().any(|c| c == "CAP_ALL") {
        set.clear();
    }
    set.retain(|c| !drop.contains(c));
    for c in add {
        if c != "CAP_ALL" && !set.contains(&c) {
            set.push(c);
        }
    }
    set
}

fn namespace(kind: &str, path: &Option<std::path::PathBuf>) -> Option<Value> {
    path.as_ref().map(|p| json!({"type": kind, "path": p}))
}

/// The OCI runtime spec of one container.
pub fn build(inputs: &Inputs<'_>) -> Result<Spec, SpecError> {
    let container = inputs.container;
    let sc = container.security_context.as_ref();
    let privileged = sc.and_then(|s| s.privileged).unwrap_or(false);
    let args = argv(container, inputs.image)?;
    let mut env: Vec<(String, String)> = inputs
        .image
        .env
        .iter()
        .flatten()
        .filter_map(|e| e.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    for (k, v) in &inputs.env {
        env.retain(|(name, _)| name != k);
        env.push((k.clone(), v.clone()));
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.insert(0, ("PATH".into(), DEFAULT_PATH.into()));
    }
    let hostname = inputs
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .or_else(|| inputs.pod.metadata.name.clone())
        .unwrap_or_default();
    if !env.iter().any(|(k, _)| k == "HOSTNAME") {
        env.push(("HOSTNAME".into(), hostname.clone()));
    }
    let cwd = container
        .working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .or_else(|| inputs.image.working_dir.clone().filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".into());
    let (uid, gid, additional_gids) = user(inputs)?;
    let caps = capabilities(container, privileged);
    let no_new_privileges = sc
        .and_then(|s| s.allow_privilege_escalation)
        .map(|allow| !allow)
        .unwrap_or(false);

    let mut resources = json!({
        "devices": [{"allow": privileged, "access": "rwm"}],
    });
    let demands = Demands::of(container)?;
    let mut cpu = json!({"shares": shares(demands.cpu_request)});
    if let Some(limit) = demands.cpu_limit {
        cpu["quota"] = json!(quota(limit));
        cpu["period"] = json!(CPU_PERIOD);
    }
    resources["cpu"] = cpu;
    if let Some(limit) = demands.memory_limit {
        resources["memory"] = json!({"limit": limit});
    }

    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", if privileged { "rw" } else { "ro" }]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", if privileged { "rw" } else { "ro" }]}),
    ];
    for file in ["hosts", "hostname", "resolv.conf"] {
        mounts.push(json!({
            "destination": format!("/etc/{file}"),
            "type": "bind",
            "source": inputs.etc.join(file),
            "options": ["rbind", "rprivate", "rw"],
        }));
    }

    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "mount"}),
        json!({"type": "cgroup"}),
    ];
    namespaces.extend(namespace("network", &inputs.sandbox.net));
    namespaces.extend(namespace("ipc", &inputs.sandbox.ipc));
    namespaces.extend(namespace("uts", &inputs.sandbox.uts));

    let mut linux = json!({
        "namespaces": namespaces,
        "cgroupsPath": inputs.cgroup,
        "resources": resources,
    });
    if !privileged {
        linux["maskedPaths"] = json!([
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
            "/sys/devices/virtual/powercap"
        ]);
        linux["readonlyPaths"] = json!([
            "/proc/bus",
            "/proc/fs",
            "/proc/irq",
            "/proc/sys",
            "/proc/sysrq-trigger"
        ]);
        linux["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": DENIED_SYSCALLS, "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
        });
    }
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": inputs.container.tty.unwrap_or(false),
            "user": {"uid": uid, "gid": gid, "additionalGids": additional_gids},
            "args": args,
            "env": env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            "cwd": cwd,
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps,
                // Inheritable and ambient stay empty, as in containerd: a non-root user
                // doesn't gain them across exec.
            },
            "oomScoreAdj": oom_score_adj(inputs.pod),
        },
        "root": {
            "path": inputs.rootfs,
            "readonly": sc.and_then(|s| s.read_only_root_filesystem).unwrap_or(false),
        },
        "hostname": if inputs.sandbox.uts.is_some() { Value::from(hostname) } else { Value::Null },
        "mounts": mounts,
        "linux": linux,
    });
    // Only when true: libcontainer 0.7 takes any value (even false) as "no new privileges
    // is set" and then loads the seccomp filter after dropping CAP_SYS_ADMIN, which fails.
    if no_new_privileges {
        spec["process"]["noNewPrivileges"] = json!(true);
    }
    serde_json::from_value(spec).map_err(|e| SpecError::Invalid(e.to_string()))
}

/// The kubelet's OOM score adjustment by QoS class: guaranteed pods are killed last.
fn oom_score_adj(pod: &Pod) -> i64 {
    match crate::status::qos_class(pod) {
        "Guaranteed" => -997,
        "BestEffort" => 1000,
        _ => 500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(value: Value) -> Container {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn command_and_args_follow_kubernetes_rules_against_the_image() {
        let image = ImageConfig {
            entrypoint: Some(vec!["/entry".into()]),
            cmd: Some(vec!["default".into()]),
            ..Default::default()
        };
        let argv_of = |c: Value| argv(&container(c), &image).unwrap();
        assert_eq!(argv_of(json!({"name": "c"})), ["/entry", "default"]);
        assert_eq!(
            argv_of(json!({"name": "c", "args": ["x"]})),
            ["/entry", "x"]
        );
        assert_eq!(
            argv_of(json!({"name": "c", "command": ["/bin/sh"]})),
            ["/bin/sh"]
        );
        assert_eq!(
            argv_of(json!({"name": "c", "command": ["/bin/sh"], "args": ["-c", "true"]})),
            ["/bin/sh", "-c", "true"]
        );
        assert_eq!(
            argv(&container(json!({"name": "c"})), &ImageConfig::default()),
            Err(SpecError::NoCommand)
        );
    }

    #[test]
    fn quantities_convert_to_millicores_and_bytes() {
        let q = |s: &str| Quantity(s.into());
        assert_eq!(millicores(&q("500m")).unwrap(), 500);
        assert_eq!(millicores(&q("2")).unwrap(), 2000);
        assert_eq!(millicores(&q("0.25")).unwrap(), 250);
        assert_eq!(bytes(&q("64Mi")).unwrap(), 64 << 20);
        assert_eq!(bytes(&q("1G")).unwrap(), 1_000_000_000);
        assert_eq!(bytes(&q("1000")).unwrap(), 1000);
        assert!(bytes(&q("lots")).is_err());
    }

    #[test]
    fn pod_limits_sum_the_apps_and_cover_the_largest_init_container() {
        let pod = |containers: Value, inits: Value| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": "p"},
                "spec": {"containers": containers, "initContainers": inits},
            }))
            .unwrap()
        };
        let limited = |cpu: &str, mem: &str| json!({"name": "c", "resources": {"limits": {"cpu": cpu, "memory": mem}}});
        let two = pod(
            json!([limited("500m", "64Mi"), limited("250m", "32Mi")]),
            json!([limited("1", "16Mi")]),
        );
        assert_eq!(
            pod_limits(&two).unwrap(),
            PodLimits {
                cpu_shares: 1024,
                cpu_quota: Some(100_000),
                memory_limit: Some(96 << 20),
            }
        );
        // One container without limits: the pod has none, only shares for its requests.
        let mixed = pod(
            json!([limited("500m", "64Mi"), {"name": "free", "resources": {"requests": {"cpu": "250m"}}}]),
            json!([]),
        );
        assert_eq!(
            pod_limits(&mixed).unwrap(),
            PodLimits {
                cpu_shares: 768,
                cpu_quota: None,
                memory_limit: None,
            }
        );
        let best_effort = pod(json!([{"name": "c"}]), json!([]));
        assert_eq!(pod_limits(&best_effort).unwrap().cpu_shares, 2);
    }

    #[test]
    fn capabilities_start_from_the_default_set() {
        let caps = |sc: Value| {
            capabilities(
                &container(json!({"name": "c", "securityContext": sc})),
                false,
            )
        };
        assert_eq!(caps(json!({})).len(), DEFAULT_CAPABILITIES.len());
        let c = caps(json!({"capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]}}));
        assert_eq!(c, ["CAP_NET_ADMIN"]);
        let c = caps(json!({"capabilities": {"drop": ["NET_RAW"]}}));
        assert!(!c.contains(&"CAP_NET_RAW".to_owned()) && c.contains(&"CAP_CHOWN".to_owned()));
        assert_eq!(
            capabilities(&container(json!({"name": "c"})), true).len(),
            ALL_CAPABILITIES.len()
        );
    }

    #[test]
    fn a_spec_has_the_pods_namespaces_limits_user_and_seccomp() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "securityContext": {"runAsUser": 1000},
                "containers": [{
                    "name": "app", "image": "busybox",
                    "command": ["sleep", "1"],
                    "env": [{"name": "A", "value": "1"}],
                    "securityContext": {"runAsGroup": 2000, "readOnlyRootFilesystem": true},
                    "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}},
                }],
            },
        }))
        .unwrap();
        let c = &pod.spec.as_ref().unwrap().containers[0];
        let sandbox = Sandbox {
            net: Some("/run/pod/net".into()),
            ipc: Some("/run/pod/ipc".into()),
            uts: Some("/run/pod/uts".into()),
        };
        let image = ImageConfig {
            env: Some(vec!["A=0".into(), "B=2".into()]),
            ..Default::default()
        };
        let spec = build(&Inputs {
            pod: &pod,
            container: c,
            image: &image,
            env: vec![("A".into(), "1".into())],
            rootfs: Path::new("/rootfs"),
            sandbox: &sandbox,
            etc: Path::new("/run/pod/etc"),
            cgroup: "/skiff/podx/c1".into(),
        })
        .unwrap();
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["process"]["args"], json!(["sleep", "1"]));
        assert_eq!(v["process"]["user"]["uid"], 1000);
        assert_eq!(v["process"]["user"]["gid"], 2000);
        let env = v["process"]["env"].as_array().unwrap();
        assert!(env.contains(&json!("A=1")) && env.contains(&json!("B=2")));
        assert!(!env.contains(&json!("A=0")));
        assert!(env.contains(&json!("HOSTNAME=web")));
        assert_eq!(v["hostname"], "web");
        assert_eq!(v["root"]["readonly"], true);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(v["linux"]["resources"]["cpu"]["shares"], 512);
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(v["linux"]["cgroupsPath"], "/skiff/podx/c1");
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        assert!(ns.contains(&json!({"type": "network", "path": "/run/pod/net"})));
        assert!(ns.contains(&json!({"type": "pid"})));
        assert_eq!(v["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
        // Guaranteed (limits only: requests default to them) pods are OOM-killed last.
        assert_eq!(v["process"]["oomScoreAdj"], -997);
    }
}
