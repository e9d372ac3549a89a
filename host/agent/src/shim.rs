//! The per-container shim: `skiff shim run`, a single-threaded process that drives
//! libcontainer for one container, as containerd's shims do.
//!
//! libcontainer `clone3()`s the calling process and runs Rust code in the child before it
//! execs, and it changes process-wide state (dumpable, cwd); from the multi-threaded agent
//! that deadlocks (see shared/reference/youki-notes.md, O3/O4). So each container gets a
//! shim process of its own, forked by `skiff shim server` (see [`server`]), a
//! single-threaded process the agent starts once. The shim is the parent of the
//! container's init: it waits for it,
//! keeps its output in the CRI log format, records the exit (code, signal, OOM kill) in a
//! file, removes the container's cgroups and state, and exits. It runs in its own session,
//! so it outlives an agent restart and the exit code survives it.
//!
//! The agent learns the outcome of the start from one JSON line on the shim's stdout
//! (`{"pid":N}` or `{"error":"..."}`), and of the container from `state.json` and
//! `exit.json` in the container's directory. The shim's stdout ends once `exit.json` is
//! written, which the agent that started it waits for (an agent that re-adopted the shim
//! watches its process instead).

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::signal::{SigHandler, Signal};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// The arguments of `skiff shim run` (also sent as JSON to the shim server).
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
pub struct RunArgs {
    /// The container's ID (libcontainer's, and the directory name under `--root`).
    #[arg(long)]
    pub id: String,
    /// The OCI bundle: `config.json` and the root filesystem it names.
    #[arg(long)]
    pub bundle: PathBuf,
    /// libcontainer's state root.
    #[arg(long)]
    pub root: PathBuf,
    /// Where `state.json` and `exit.json` are written.
    #[arg(long)]
    pub dir: PathBuf,
    /// The container's log, appended in the CRI format.
    #[arg(long)]
    pub log: PathBuf,
    /// The cgroup path of the container (as in the spec), to read OOM kills from.
    #[arg(long)]
    pub cgroup: String,
    /// Hold the container's stdin open for `kubectl attach` (the container's `stdin`).
    #[arg(long)]
    #[serde(default)]
    pub stdin: bool,
    /// Close it when the first client that used it leaves (`stdinOnce`).
    #[arg(long)]
    #[serde(default)]
    pub stdin_once: bool,
    /// The container has a terminal (`tty`; the spec's `process.terminal` says the same).
    #[arg(long)]
    #[serde(default)]
    pub tty: bool,
}

/// What `state.json` holds once the container runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunningState {
    /// The shim's own PID (the agent watches it to learn of the exit).
    pub shim_pid: i32,
    /// The container's init, as seen from the host.
    pub pid: i32,
    /// When the container started.
    pub started_at: jiff::Timestamp,
    /// The shim's start time (clock ticks after boot, /proc/<pid>/stat field 22), so a
    /// reused PID is not taken for it.
    #[serde(default)]
    pub shim_start: Option<u64>,
}

/// A process's start time in clock ticks after boot (field 22 of /proc/<pid>/stat).
pub fn process_start(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it don't.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// `skiff shim server`: the fork server the agent makes its shims with. A container's
/// start then costs a fork of this small, single-threaded, already initialised process
/// rather than an exec of the whole skiff binary (its loading and relocations, several
/// milliseconds of CPU beside every container start).
///
/// Its stdin is a `SOCK_SEQPACKET` socket to the agent. Each request is one message: the
/// [`RunArgs`] as JSON, carrying one file descriptor, the pipe that becomes the shim's
/// stdout. The answer is a [`Ready`] with the shim's PID (or why there is none). The
/// server ends when the agent closes its side; the shims it forked live on, each in a
/// session of its own, and are reaped by the kernel (SIGCHLD is ignored here).
pub fn server() -> ! {
    use std::os::fd::AsFd as _;
    // Done once here and inherited by every shim forked after: libcontainer's procfs
    // handle (opened once per process and cached), and the v1 cgroup mounts libcgroups
    // reads (cached by our patch of it; the lookup fails harmlessly on a v2 host).
    let _ = pathrs::procfs::ProcfsHandle::new();
    let _ = libcgroups::v1::util::get_subsystem_mount_point(&libcgroups::v1::ControllerType::Cpu);
    // SAFETY: setting a signal's disposition to SIG_IGN runs no handler code.
    #[expect(unsafe_code, reason = "nix's signal() is unsafe because of handlers")]
    let _ = unsafe { nix::sys::signal::signal(Signal::SIGCHLD, SigHandler::SigIgn) };
    // Used where it is, as fd 0: a shim's dup of /dev/null over it closes it there.
    let stdin = std::io::stdin();
    let socket = stdin.as_fd();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let (len, pipe) = match receive(socket, &mut buf) {
            Ok((0, _)) | Err(_) => std::process::exit(0),
            Ok(received) => received,
        };
        let answer = match (serde_json::from_slice::<RunArgs>(&buf[..len]), pipe) {
            (Ok(args), Some(pipe)) => fork_shim(args, pipe),
            (Err(e), _) => Ready {
                pid: None,
                error: Some(format!("the shim server got bad arguments: {e}")),
            },
            (Ok(_), None) => Ready {
                pid: None,
                error: Some("the shim server got no stdout for the shim".into()),
            },
        };
        let answer = serde_json::to_vec(&answer).unwrap_or_default();
        if rustix::net::send(socket, &answer, rustix::net::SendFlags::empty()).is_err() {
            std::process::exit(0);
        }
    }
}

/// One request: its bytes in `buf`, and the descriptor it carried.
fn receive(
    socket: std::os::fd::BorrowedFd<'_>,
    buf: &mut [u8],
) -> std::io::Result<(usize, Option<OwnedFd>)> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut space = [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = loop {
        match rustix::net::recvmsg(
            socket,
            &mut [std::io::IoSliceMut::new(buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other?,
        }
    };
    let mut fd = None;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = message {
            fd = fd.or_else(|| fds.next());
        }
    }
    Ok((received.bytes, fd))
}

/// Forks the shim for `args`, its stdout `pipe`; the parent's answer.
fn fork_shim(args: RunArgs, pipe: OwnedFd) -> Ready {
    use std::os::fd::AsRawFd as _;
    // SAFETY: this process is single-threaded, so the child may run any code.
    #[expect(unsafe_code, reason = "fork has no safe wrapper")]
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            // SAFETY: as above; the shim waits for its container, so it needs SIGCHLD back.
            #[expect(unsafe_code, reason = "nix's signal() is unsafe because of handlers")]
            let _ = unsafe { nix::sys::signal::signal(Signal::SIGCHLD, SigHandler::SigDfl) };
            // The request socket is not the shim's; neither is a stderr nobody reads.
            if let Ok(null) = File::open("/dev/null") {
                let _ = nix::unistd::dup2(null.as_raw_fd(), 0);
            }
            if let Ok(log) = File::create(args.dir.join("shim.log")) {
                let _ = nix::unistd::dup2(log.as_raw_fd(), 2);
            }
            let _ = nix::unistd::dup2(pipe.as_raw_fd(), 1);
            drop(pipe);
            run(args)
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => Ready {
            pid: Some(child.as_raw()),
            error: None,
        },
        Err(e) => Ready {
            pid: None,
            error: Some(format!("forking the shim: {e}")),
        },
    }
}

/// What `exit.json` holds once the container has exited.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExitState {
    /// The exit code, or 128 + the signal that killed it.
    pub exit_code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Whether the kernel's OOM killer killed a process of the container.
    pub oom_killed: bool,
    /// When it started.
    pub started_at: jiff::Timestamp,
    /// When it exited.
    pub finished_at: jiff::Timestamp,
}

/// The readiness line on the shim's stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ready {
    /// The init's PID when the container started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// Why it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Writes `value` to `path` atomically (a temporary file renamed over it), so a reader
/// never sees half a file, even across a crash.
pub fn write_json(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(value)?)?;
    std::fs::rename(&tmp, path)
}

/// `skiff shim run`: never returns to a caller that uses threads; exits the process.
pub fn run(args: RunArgs) -> ! {
    // Out of the agent's session and process group: a Ctrl-C or a kill of the agent's
    // group must not reach the containers.
    let _ = nix::unistd::setsid();
    let mut ready_out = std::io::stdout();
    match start(&args) {
        Ok(started) => {
            let ready = Ready {
                pid: Some(started.pid.as_raw()),
                error: None,
            };
            let _ = writeln!(
                ready_out,
                "{}",
                serde_json::to_string(&ready).unwrap_or_default()
            );
            let _ = ready_out.flush();
            // Stdout stays open until the exit is recorded: its EOF tells the agent that
            // started us, sooner than our own exit would.
            let code = supervise(&args, started);
            std::process::exit(code)
        }
        Err(error) => {
            let ready = Ready {
                pid: None,
                error: Some(error),
            };
            let _ = writeln!(
                ready_out,
                "{}",
                serde_json::to_string(&ready).unwrap_or_default()
            );
            std::process::exit(1)
        }
    }
}

struct Started {
    pid: Pid,
    started_at: jiff::Timestamp,
    container: libcontainer::container::Container,
    /// The container's output: stdout and stderr pipes, or the terminal.
    outputs: Vec<(&'static str, OwnedFd)>,
    /// Attached clients and the container's stdin.
    hub: crate::attach::Hub,
}

/// The name of the console socket libcontainer sends a terminal's master to.
const CONSOLE_SOCKET: &str = "console.sock";

fn start(args: &RunArgs) -> Result<Started, String> {
    use crate::attach::{self, Input};
    std::fs::create_dir_all(&args.root).map_err(|e| format!("{}: {e}", args.root.display()))?;
    let listener = attach::bind_in(&args.dir, attach::SOCKET)
        .map_err(|e| format!("binding {}: {e}", attach::SOCKET))?;
    let builder = ContainerBuilder::new(args.id.clone(), SyscallType::Linux)
        .with_root_path(&args.root)
        .and_then(|b| b.validate_id())
        .map_err(|e| e.to_string())?;
    let pipe = || nix::unistd::pipe().map_err(|e| format!("making a pipe: {e}"));
    let (builder, outputs, stdin, console) = if args.tty {
        // libcontainer makes the terminal inside the container and sends its master to
        // this socket; the connection waits in the backlog until `build` has returned.
        let console = attach::bind_in(&args.dir, CONSOLE_SOCKET)
            .map_err(|e| format!("binding {CONSOLE_SOCKET}: {e}"))?;
        let builder = builder.with_console_socket(Some(args.dir.join(CONSOLE_SOCKET)));
        (builder, Vec::new(), None, Some(console))
    } else {
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let mut builder = builder.with_stdout(out_w).with_stderr(err_w);
        let mut stdin = None;
        if args.stdin {
            let (in_r, in_w) = pipe()?;
            builder = builder.with_stdin(in_r);
            stdin = Some(Input::pipe(in_w).map_err(|e| format!("the stdin pipe: {e}"))?);
        }
        (
            builder,
            vec![("stdout", out_r), ("stderr", err_r)],
            stdin,
            None,
        )
    };
    let mut container = builder
        .as_init(&args.bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(|e| format!("creating the container: {e}"))?;
    let (outputs, stdin, terminal) = match console {
        Some(console) => {
            let master =
                receive_fd(&console).map_err(|e| format!("receiving the terminal: {e}"))?;
            let _ = std::fs::remove_file(args.dir.join(CONSOLE_SOCKET));
            let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| format!("the terminal: {e}"));
            let stdin = if args.stdin {
                Some(Input::terminal(dup(&master)?).map_err(|e| format!("the terminal: {e}"))?)
            } else {
                None
            };
            (vec![("stdout", dup(&master)?)], stdin, Some(master))
        }
        None => (outputs, stdin, None),
    };
    let hub = attach::Hub::new(listener, stdin, args.stdin_once, terminal)
        .map_err(|e| format!("the attach socket: {e}"))?;
    container
        .start()
        .map_err(|e| format!("starting the container: {e}"))?;
    let pid = container
        .pid()
        .ok_or_else(|| "the started container has no pid".to_owned())?;
    let started_at = jiff::Timestamp::now();
    let shim_pid = std::process::id() as i32;
    let state = RunningState {
        shim_pid,
        pid: pid.as_raw(),
        started_at,
        shim_start: process_start(shim_pid),
    };
    write_json(&args.dir.join("state.json"), &state)
        .map_err(|e| format!("writing state.json: {e}"))?;
    Ok(Started {
        pid,
        started_at,
        container,
        outputs,
        hub,
    })
}

/// Accepts the one connection on `listener` and takes the file descriptor it carries.
fn receive_fd(listener: &std::os::unix::net::UnixListener) -> std::io::Result<OwnedFd> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let (conn, _) = listener.accept()?;
    let mut space = [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut name = [0u8; 256];
    rustix::net::recvmsg(
        &conn,
        &mut [std::io::IoSliceMut::new(&mut name)],
        &mut control,
        RecvFlags::empty(),
    )?;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = message
            && let Some(fd) = fds.next()
        {
            return Ok(fd);
        }
    }
    Err(std::io::Error::other("no file descriptor came"))
}

/// Copies the container's output to its log until it exits, then records the exit.
fn supervise(args: &RunArgs, mut started: Started) -> i32 {
    let mut log = match File::options().create(true).append(true).open(&args.log) {
        Ok(f) => Some(f),
        Err(e) => {
            eprintln!("opening {}: {e}", args.log.display());
            None
        }
    };
    let mut streams: Vec<LogStream> = std::mem::take(&mut started.outputs)
        .into_iter()
        .map(|(name, fd)| LogStream::new(name, fd))
        .collect();
    let hub = &mut started.hub;
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(started.pid.as_raw()).expect("a positive pid"),
        rustix::process::PidfdFlags::empty(),
    )
    .ok();
    /// What a polled descriptor is.
    #[derive(Clone, Copy)]
    enum Which {
        Stream(usize),
        Exit,
        Hub(crate::attach::Token),
    }
    let mut exited: Option<WaitStatus> = None;
    loop {
        if exited.is_some() && streams.iter().all(|s| s.fd.is_none()) {
            break;
        }
        let mut fds = Vec::new();
        let mut which = Vec::new();
        for (i, s) in streams.iter().enumerate() {
            if let Some(fd) = &s.fd {
                fds.push(rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN));
                which.push(Which::Stream(i));
            }
        }
        if exited.is_none()
            && let Some(fd) = &pidfd
        {
            fds.push(rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN));
            which.push(Which::Exit);
        }
        let interest = hub.interest();
        for (fd, flags, token) in &interest {
            fds.push(rustix::event::PollFd::from_borrowed_fd(*fd, *flags));
            which.push(Which::Hub(*token));
        }
        // Once the init has exited, its pid namespace is gone, so the pipes close at once;
        // a short timeout still bounds the drain if a process outside it holds one.
        let timeout = exited.map(|_| rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 200_000_000,
        });
        let n = match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => break,
        };
        if n == 0 {
            break;
        }
        let ready: Vec<(Which, rustix::event::PollFlags)> = fds
            .iter()
            .zip(&which)
            .filter(|(fd, _)| !fd.revents().is_empty())
            .map(|(fd, w)| (*w, fd.revents()))
            .collect();
        drop(fds);
        drop(interest);
        // The hub first: output sent below may drop clients, which renumbers them.
        for (w, events) in &ready {
            if let Which::Hub(token) = w
                && hub.ready(*token, *events)
            {
                break;
            }
        }
        for (w, _) in ready {
            match w {
                Which::Stream(i) => {
                    let kind = match streams[i].name {
                        "stderr" => crate::attach::STDERR,
                        _ => crate::attach::STDOUT,
                    };
                    if let Some(data) = streams[i].read(log.as_mut()) {
                        hub.broadcast(kind, &data);
                    }
                }
                Which::Exit => exited = waitpid(started.pid, None).ok(),
                Which::Hub(_) => {}
            }
        }
        if pidfd.is_none() && exited.is_none() {
            exited = waitpid(started.pid, None).ok();
        }
    }
    for s in &mut streams {
        s.flush(log.as_mut());
    }
    hub.finish(std::time::Duration::from_secs(2));
    let status = match exited {
        Some(s) => s,
        None => waitpid(started.pid, None).unwrap_or(WaitStatus::StillAlive),
    };
    let (exit_code, signal) = match status {
        WaitStatus::Exited(_, code) => (code, None),
        WaitStatus::Signaled(_, sig, _) => (128 + sig as i32, Some(sig as i32)),
        _ => (255, None),
    };
    let exit = ExitState {
        exit_code,
        signal,
        oom_killed: oom_kills(&args.cgroup) > 0,
        started_at: started.started_at,
        finished_at: jiff::Timestamp::now(),
    };
    if let Err(e) = delete(&mut started.container) {
        eprintln!("deleting container {}: {e}", args.id);
    }
    let written = write_json(&args.dir.join("exit.json"), &exit);
    // The agent that started us waits for stdout's end (see `run`).
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 1);
    }
    if let Err(e) = written {
        eprintln!("writing exit.json: {e}");
        return 1;
    }
    0
}

/// Deletes the stopped container: its cgroup and libcontainer's state. This is what
/// libcontainer's own delete does, but for the cgroup, the most of the time it takes (see
/// [`crate::youki::remove_container_cgroup`]). libcontainer's delete still runs for a
/// container with poststop hooks or without a cgroup path; the agent's specs have neither
/// hooks nor Intel RDT settings, the rest of what it cleans up.
fn delete(container: &mut libcontainer::container::Container) -> Result<(), String> {
    let config = container.spec().map_err(|e| e.to_string())?;
    let hooks = config
        .hooks
        .as_ref()
        .is_some_and(|h| h.poststop().as_ref().is_some_and(|p| !p.is_empty()));
    let cgroup = config.cgroup_path.to_string_lossy();
    if hooks || cgroup.is_empty() {
        return container.delete(true).map_err(|e| e.to_string());
    }
    crate::youki::remove_container_cgroup(&cgroup).map_err(|e| e.to_string())?;
    std::fs::remove_dir_all(&container.root)
        .map_err(|e| format!("removing {}: {e}", container.root.display()))
}

/// One of the container's output streams, cut into CRI log lines
/// (`<RFC 3339 nano> <stream> <F|P> <text>`, as the kubelet's logs are).
struct LogStream {
    name: &'static str,
    fd: Option<File>,
    pending: Vec<u8>,
}

/// Longer lines are written as partial ("P") records, as the kubelet's are.
const MAX_LINE: usize = 16 * 1024;

impl LogStream {
    fn new(name: &'static str, fd: OwnedFd) -> Self {
        LogStream {
            name,
            fd: Some(File::from(fd)),
            pending: Vec::new(),
        }
    }

    /// Reads what the container wrote, logs it, and returns it (None at the end). A
    /// terminal's master reads EIO once the container's side is closed: also the end.
    fn read(&mut self, log: Option<&mut File>) -> Option<Vec<u8>> {
        let fd = self.fd.as_mut()?;
        let mut buf = [0u8; 16 * 1024];
        let n = match fd.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return None,
            Err(_) => 0,
        };
        if n == 0 {
            self.fd = None;
            self.flush(log);
            return None;
        }
        self.pending.extend_from_slice(&buf[..n]);
        let mut out = Vec::new();
        while let Some(pos) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=pos).collect();
            self.record(&mut out, &line[..line.len() - 1], 'F');
        }
        while self.pending.len() >= MAX_LINE {
            let part: Vec<u8> = self.pending.drain(..MAX_LINE).collect();
            self.record(&mut out, &part, 'P');
        }
        if let Some(log) = log {
            let _ = log.write_all(&out);
        }
        Some(buf[..n].to_vec())
    }

    /// Writes what is left without a newline as a final record.
    fn flush(&mut self, log: Option<&mut File>) {
        if self.pending.is_empty() {
            return;
        }
        let rest = std::mem::take(&mut self.pending);
        let mut out = Vec::new();
        self.record(&mut out, &rest, 'F');
        if let Some(log) = log {
            let _ = log.write_all(&out);
        }
    }

    fn record(&self, out: &mut Vec<u8>, text: &[u8], tag: char) {
        let _ = write!(out, "{:.9} {} {tag} ", jiff::Timestamp::now(), self.name);
        out.extend_from_slice(text);
        out.push(b'\n');
    }
}

/// How many times the OOM killer fired in the container's memory cgroup (v1
/// `memory.oom_control`, v2 `memory.events`); 0 when it can't be read.
pub fn oom_kills(cgroup: &str) -> u64 {
    let rel = cgroup.trim_start_matches('/');
    let candidates = [
        Path::new("/sys/fs/cgroup/memory")
            .join(rel)
            .join("memory.oom_control"),
        Path::new("/sys/fs/cgroup").join(rel).join("memory.events"),
    ];
    candidates
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .find_map(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The arguments of `skiff shim exec`: runs a process in a running container (its
/// namespaces, cgroup, user and environment), with this process's stdin, stdout and
/// stderr, and records its exit.
#[derive(Debug, Clone, clap::Args)]
pub struct ExecArgs {
    /// The container's ID.
    #[arg(long)]
    pub id: String,
    /// libcontainer's state root.
    #[arg(long)]
    pub root: PathBuf,
    /// Where the outcome is written: `{"exitCode":N}` or `{"error":"..."}`.
    #[arg(long)]
    pub result: PathBuf,
    /// Stdin is a terminal: make it the session's controlling terminal.
    #[arg(long)]
    pub tty: bool,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, required = true)]
    pub command: Vec<String>,
}

/// What `skiff shim exec` writes to its result file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExecResult {
    /// The exit code (128 + signal if one killed it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why the process could not be started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `skiff shim exec`: exits the process.
pub fn exec(args: ExecArgs) -> ! {
    let result = run_exec(&args);
    let code = i32::from(result.error.is_some());
    if let Err(e) = write_json(&args.result, &result) {
        eprintln!("writing {}: {e}", args.result.display());
    }
    std::process::exit(code)
}

fn run_exec(args: &ExecArgs) -> ExecResult {
    let failed = |error: String| ExecResult {
        exit_code: None,
        error: Some(error),
    };
    if args.tty {
        // A session of our own whose controlling terminal is the pty: the process (our
        // descendant) gets job control and ^C.
        let _ = nix::unistd::setsid();
        let _ = rustix::process::ioctl_tiocsctty(std::io::stdin());
    }
    let dup = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned();
    use std::os::fd::AsFd as _;
    let (stdin, stdout, stderr) = match (
        dup(std::io::stdin().as_fd()),
        dup(std::io::stdout().as_fd()),
        dup(std::io::stderr().as_fd()),
    ) {
        (Ok(i), Ok(o), Ok(e)) => (i, o, e),
        _ => return failed("duplicating stdio".into()),
    };
    let builder = match ContainerBuilder::new(args.id.clone(), SyscallType::Linux)
        .with_root_path(&args.root)
    {
        Ok(b) => b,
        Err(e) => return failed(e.to_string()),
    };
    let pid = builder
        .with_stdin(stdin)
        .with_stdout(stdout)
        .with_stderr(stderr)
        .as_tenant()
        .with_container_args(args.command.clone())
        .with_detach(false)
        .build();
    let pid = match pid {
        Ok(pid) => pid,
        Err(e) => return failed(e.to_string()),
    };
    // The process has a session of its own (libcontainer's setsid): the agent kills it by
    // this PID when it must (an exec probe that timed out).
    let _ = std::fs::write(args.result.with_extension("pid"), pid.as_raw().to_string());
    let code = loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => break code,
            Ok(WaitStatus::Signaled(_, sig, _)) => break 128 + sig as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return failed(format!("waiting for the process: {e}")),
        }
    };
    ExecResult {
        exit_code: Some(code),
        error: None,
    }
}
