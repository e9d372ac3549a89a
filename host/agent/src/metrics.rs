//! Resource metrics, as the kubelet's `/metrics/resource` serves them (Prometheus text):
//! cumulative CPU time and memory working set of the node, each pod and each running
//! container, read from their cgroups (v1 or v2) when asked. The API server's metrics API
//! (`kubectl top`, the HorizontalPodAutoscaler) scrapes it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// What a cgroup (or the node) has used.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// CPU time, in core-seconds, since it started.
    pub cpu_seconds: f64,
    /// Memory in use less what the kernel can drop at once (inactive file pages).
    pub working_set: u64,
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// A `key value` line's value in a stat file.
fn stat(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Whether cgroups are the unified (v2) hierarchy.
fn unified(root: &Path) -> bool {
    root.join("cgroup.controllers").exists()
}

/// A cgroup's usage (`rel` as in a container spec: `/skiff/pod<uid>/<id>`), under `root`
/// (`/sys/fs/cgroup`).
pub fn cgroup_usage(root: &Path, rel: &str) -> Option<Usage> {
    let rel = rel.trim_start_matches('/');
    if unified(root) {
        let dir = root.join(rel);
        let cpu = stat(&read(&dir.join("cpu.stat"))?, "usage_usec")? as f64 / 1e6;
        let current: u64 = read(&dir.join("memory.current"))?.trim().parse().ok()?;
        let inactive = read(&dir.join("memory.stat"))
            .and_then(|s| stat(&s, "inactive_file"))
            .unwrap_or(0);
        return Some(Usage {
            cpu_seconds: cpu,
            working_set: current.saturating_sub(inactive),
        });
    }
    let cpu_ns: u64 = read(&root.join("cpuacct").join(rel).join("cpuacct.usage"))?
        .trim()
        .parse()
        .ok()?;
    let memory = root.join("memory").join(rel);
    let usage: u64 = read(&memory.join("memory.usage_in_bytes"))?
        .trim()
        .parse()
        .ok()?;
    let inactive = read(&memory.join("memory.stat"))
        .and_then(|s| stat(&s, "total_inactive_file"))
        .unwrap_or(0);
    Some(Usage {
        cpu_seconds: cpu_ns as f64 / 1e9,
        working_set: usage.saturating_sub(inactive),
    })
}

/// The node's usage: all CPUs' busy time from `/proc/stat`, and memory in use less what is
/// available at once from `/proc/meminfo`.
pub fn node_usage(proc: &Path) -> Option<Usage> {
    let stat = read(&proc.join("stat"))?;
    let cpu: Vec<u64> = stat
        .lines()
        .find_map(|l| l.strip_prefix("cpu "))?
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait are busy.
    let busy: u64 = cpu
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
        .map(|(_, v)| v)
        .sum();
    let ticks = 100.0; // USER_HZ on Linux
    let meminfo = read(&proc.join("meminfo"))?;
    let kb = |key: &str| {
        meminfo.lines().find_map(|l| {
            l.strip_prefix(key)?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    let total = kb("MemTotal:")?;
    let available = kb("MemAvailable:")?;
    Some(Usage {
        cpu_seconds: busy as f64 / ticks,
        working_set: total.saturating_sub(available) * 1024,
    })
}

/// A running container to measure: its pod's namespace and name, its name, its cgroup.
pub struct Measured {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The container's name.
    pub container: String,
    /// The container's cgroup (`/skiff/pod<uid>/<id>`).
    pub cgroup: String,
    /// The pod's cgroup (`/skiff/pod<uid>`).
    pub pod_cgroup: String,
}

/// The `/metrics/resource` text: the node, then pods and containers, each with the time
/// of the reading in milliseconds.
pub fn render(root: &Path, proc: &Path, containers: &[Measured], now_ms: i64) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} [STABLE] {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value} {now_ms}");
        }
    };
    let node = node_usage(proc);
    let node_cpu: Vec<(String, f64)> = node
        .iter()
        .map(|u| (String::new(), u.cpu_seconds))
        .collect();
    let node_mem: Vec<(String, f64)> = node
        .iter()
        .map(|u| (String::new(), u.working_set as f64))
        .collect();
    let (mut pod_cpu, mut pod_mem, mut ctr_cpu, mut ctr_mem) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut pods: BTreeMap<(&str, &str), &str> = BTreeMap::new();
    for c in containers {
        pods.insert((&c.namespace, &c.pod), &c.pod_cgroup);
        if let Some(u) = cgroup_usage(root, &c.cgroup) {
            let labels = format!(
                "{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}}",
                c.container, c.namespace, c.pod
            );
            ctr_cpu.push((labels.clone(), u.cpu_seconds));
            ctr_mem.push((labels, u.working_set as f64));
        }
    }
    for ((namespace, pod), cgroup) in pods {
        if let Some(u) = cgroup_usage(root, cgroup) {
            let labels = format!("{{namespace=\"{namespace}\",pod=\"{pod}\"}}");
            pod_cpu.push((labels.clone(), u.cpu_seconds));
            pod_mem.push((labels, u.working_set as f64));
        }
    }
    family(
        "container_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the container in core-seconds",
        &ctr_cpu,
    );
    family(
        "container_memory_working_set_bytes",
        "gauge",
        "Current working set of the container in bytes",
        &ctr_mem,
    );
    family(
        "node_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the node in core-seconds",
        &node_cpu,
    );
    family(
        "node_memory_working_set_bytes",
        "gauge",
        "Current working set of the node in bytes",
        &node_mem,
    );
    family(
        "pod_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the pod in core-seconds",
        &pod_cpu,
    );
    family(
        "pod_memory_working_set_bytes",
        "gauge",
        "Current working set of the pod in bytes",
        &pod_mem,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroups_v1_and_v2_and_the_node_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = dir.path().join("v1");
        let write = |p: std::path::PathBuf, text: &str| {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        write(
            v1.join("cpuacct/skiff/pod1/c/cpuacct.usage"),
            "2500000000\n",
        );
        write(
            v1.join("memory/skiff/pod1/c/memory.usage_in_bytes"),
            "10000\n",
        );
        write(
            v1.join("memory/skiff/pod1/c/memory.stat"),
            "inactive_file 1\ntotal_inactive_file 4000\n",
        );
        assert_eq!(
            cgroup_usage(&v1, "/skiff/pod1/c"),
            Some(Usage {
                cpu_seconds: 2.5,
                working_set: 6000
            })
        );
        let v2 = dir.path().join("v2");
        write(v2.join("cgroup.controllers"), "cpu memory\n");
        write(
            v2.join("skiff/pod1/c/cpu.stat"),
            "usage_usec 1500000\nuser_usec 1\n",
        );
        write(v2.join("skiff/pod1/c/memory.current"), "8192\n");
        write(
            v2.join("skiff/pod1/c/memory.stat"),
            "anon 1\ninactive_file 192\n",
        );
        assert_eq!(
            cgroup_usage(&v2, "/skiff/pod1/c"),
            Some(Usage {
                cpu_seconds: 1.5,
                working_set: 8000
            })
        );
        assert_eq!(cgroup_usage(&v2, "/skiff/gone"), None);
        let proc = dir.path().join("proc");
        write(
            proc.join("stat"),
            "cpu  100 50 50 1000 20 0 0 0 0 0\ncpu0 1 1 1 1\n",
        );
        write(
            proc.join("meminfo"),
            "MemTotal:       1000 kB\nMemFree: 10 kB\nMemAvailable:    400 kB\n",
        );
        assert_eq!(
            node_usage(&proc),
            Some(Usage {
                cpu_seconds: 2.0,
                working_set: 600 * 1024
            })
        );
        let text = render(
            &v1,
            &proc,
            &[Measured {
                namespace: "default".into(),
                pod: "p".into(),
                container: "c".into(),
                cgroup: "/skiff/pod1/c".into(),
                pod_cgroup: "/skiff/pod1".into(),
            }],
            7,
        );
        assert!(text.contains("container_cpu_usage_seconds_total{container=\"c\",namespace=\"default\",pod=\"p\"} 2.5 7\n"), "{text}");
        assert!(
            text.contains("node_memory_working_set_bytes 614400 7\n"),
            "{text}"
        );
        // The pod's own cgroup has no files here: no pod sample.
        assert!(!text.contains("pod_cpu_usage_seconds_total{"), "{text}");
    }
}
