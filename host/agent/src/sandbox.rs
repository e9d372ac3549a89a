//! Pod sandboxes: the network, IPC and UTS namespaces a pod's containers share, held for
//! the pod's life by bind mounts of their nsfs files (as `ip netns add` does).
//!
//! libcontainer leaves `lo` down in a network namespace it makes (youki-notes O2), so the
//! agent makes the pod's namespaces itself and the containers join them by path. Unlike a
//! mount or user namespace, these three can be unshared by one thread of a multi-threaded
//! process, so a short-lived thread does it and no process is spawned.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use crate::runtime::RuntimeError;

/// What a pod's sandbox is made of.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The directory the namespace files are bind-mounted in.
    pub dir: PathBuf,
    /// The pod's hostname (its name, or spec.hostname).
    pub hostname: String,
    /// `hostNetwork: true`: the host's network and UTS namespaces.
    pub host_network: bool,
    /// `hostIPC: true`: the host's IPC namespace.
    pub host_ipc: bool,
}

/// The namespaces a sandbox holds; `None` means the host's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sandbox {
    /// The network namespace.
    pub net: Option<PathBuf>,
    /// The IPC namespace.
    pub ipc: Option<PathBuf>,
    /// The UTS namespace (hostname).
    pub uts: Option<PathBuf>,
}

const KINDS: [(&str, CloneFlags); 3] = [
    ("net", CloneFlags::CLONE_NEWNET),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
];

/// The sandbox whose namespace files are in `config.dir`, made if missing. Making it again
/// after an agent restart finds the held namespaces and keeps them.
pub fn ensure(config: &SandboxConfig) -> Result<Sandbox, RuntimeError> {
    let wanted: Vec<(&str, CloneFlags)> = KINDS
        .iter()
        .copied()
        .filter(|(kind, _)| match *kind {
            "net" | "uts" => !config.host_network,
            _ => !config.host_ipc,
        })
        .collect();
    let sandbox = Sandbox {
        net: held(config, "net", &wanted),
        ipc: held(config, "ipc", &wanted),
        uts: held(config, "uts", &wanted),
    };
    if wanted.is_empty() || wanted.iter().all(|(k, _)| is_held(&config.dir.join(k))) {
        return Ok(sandbox);
    }
    std::fs::create_dir_all(&config.dir).map_err(RuntimeError::io(format!(
        "creating {}",
        config.dir.display()
    )))?;
    let dir = config.dir.clone();
    let hostname = config.hostname.clone();
    std::thread::Builder::new()
        .name("sandbox".into())
        .spawn(move || make(&dir, &hostname, &wanted))
        .map_err(RuntimeError::io("starting the sandbox thread"))?
        .join()
        .map_err(|_| RuntimeError::Start("the sandbox thread panicked".into()))??;
    Ok(sandbox)
}

fn held(config: &SandboxConfig, kind: &str, wanted: &[(&str, CloneFlags)]) -> Option<PathBuf> {
    wanted
        .iter()
        .any(|(k, _)| *k == kind)
        .then(|| config.dir.join(kind))
}

/// Whether `path` is a bind mount of a namespace (an nsfs file), not the empty file under it.
fn is_held(path: &Path) -> bool {
    rustix::fs::statfs(path).is_ok_and(|s| s.f_type == NSFS_MAGIC)
}

const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Runs on a thread of its own, which the new namespaces die with (the bind mounts keep
/// them).
fn make(dir: &Path, hostname: &str, kinds: &[(&str, CloneFlags)]) -> Result<(), RuntimeError> {
    let flags = kinds
        .iter()
        .fold(CloneFlags::empty(), |acc, (_, f)| acc | *f);
    nix::sched::unshare(flags).map_err(|e| RuntimeError::Start(format!("unshare: {e}")))?;
    if flags.contains(CloneFlags::CLONE_NEWUTS) {
        nix::unistd::sethostname(hostname)
            .map_err(|e| RuntimeError::Start(format!("sethostname {hostname}: {e}")))?;
    }
    if flags.contains(CloneFlags::CLONE_NEWNET) {
        loopback_up().map_err(RuntimeError::io("bringing lo up in the pod's netns"))?;
    }
    for (kind, _) in kinds {
        let target = dir.join(kind);
        std::fs::File::create(&target)
            .map_err(RuntimeError::io(format!("creating {}", target.display())))?;
        let source = format!("/proc/thread-self/ns/{kind}");
        nix::mount::mount(
            Some(source.as_str()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| RuntimeError::Start(format!("bind-mounting {source}: {e}")))?;
    }
    Ok(())
}

/// Sets `lo` (always index 1 in a new network namespace) up, by one RTM_NEWLINK message
/// over rtnetlink.
fn loopback_up() -> std::io::Result<()> {
    use rustix::net::{AddressFamily, SendFlags, SocketType, netlink};
    // Protocol 0 (None) is NETLINK_ROUTE.
    let fd = rustix::net::socket(AddressFamily::NETLINK, SocketType::RAW, None)?;
    const RTM_NEWLINK: u16 = 16;
    const NLM_F_REQUEST: u16 = 1;
    const NLM_F_ACK: u16 = 4;
    const IFF_UP: u32 = 1;
    let mut msg = Vec::with_capacity(32);
    msg.extend_from_slice(&32u32.to_ne_bytes()); // nlmsg_len
    msg.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
    msg.extend_from_slice(&[0, 0]); // ifi_family AF_UNSPEC, pad
    msg.extend_from_slice(&0u16.to_ne_bytes()); // ifi_type
    msg.extend_from_slice(&1i32.to_ne_bytes()); // ifi_index: lo
    msg.extend_from_slice(&IFF_UP.to_ne_bytes()); // ifi_flags
    msg.extend_from_slice(&IFF_UP.to_ne_bytes()); // ifi_change
    let kernel = netlink::SocketAddrNetlink::new(0, 0);
    rustix::net::sendto(&fd, &msg, SendFlags::empty(), &kernel)?;
    let mut buf = [0u8; 256];
    let (n, _) = rustix::net::recv(&fd, &mut buf, rustix::net::RecvFlags::empty())?;
    // An NLMSG_ERROR (type 2) whose error field is 0 is the ack.
    if n >= 20 && u16::from_ne_bytes([buf[4], buf[5]]) == 2 {
        let errno = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
        if errno != 0 {
            return Err(std::io::Error::from_raw_os_error(-errno));
        }
    }
    Ok(())
}

/// Releases the sandbox's namespaces and removes its directory.
pub fn remove(dir: &Path) -> Result<(), RuntimeError> {
    for (kind, _) in KINDS {
        let path = dir.join(kind);
        if is_held(&path) {
            nix::mount::umount2(&path, MntFlags::MNT_DETACH)
                .map_err(|e| RuntimeError::Start(format!("unmounting {}: {e}", path.display())))?;
        }
    }
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(RuntimeError::io(format!("removing {}", dir.display()))(e))
        }
        _ => Ok(()),
    }
}

/// Runs `f` on a thread of its own that has joined the network namespace `netns` (the
/// thread's alone: setns of a network namespace is per thread), or the host's.
pub async fn in_netns<T: Send + 'static>(
    netns: Option<PathBuf>,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            let result = (|| {
                if let Some(path) = &netns {
                    let file = std::fs::File::open(path)
                        .map_err(|e| format!("opening {}: {e}", path.display()))?;
                    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| format!("entering the pod's network namespace: {e}"))?;
                }
                f()
            })();
            let _ = tx.send(result);
        })
        .map_err(|e| e.to_string())?;
    rx.await.map_err(|_| "the probe thread died".to_owned())?
}
