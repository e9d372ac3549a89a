//! `kubectl attach`: a running container's own stdio, through its shim.
//!
//! The shim owns the container's output (a pipe per stream, or a terminal's master) and,
//! for containers with `stdin: true`, its input. It listens on `attach.sock` in the
//! container's directory; every connected client gets the output from then on, may write
//! to stdin and resize the terminal. A client speaks in frames, `[kind u8][length u32
//! big-endian][payload]`:
//!
//! | kind | direction | payload |
//! |---|---|---|
//! | 0 | agent → shim | stdin bytes |
//! | 1 | shim → agent | stdout bytes (the terminal's output with a TTY) |
//! | 2 | shim → agent | stderr bytes |
//! | 3 | agent → shim | stdin closed (EOF) |
//! | 4 | agent → shim | terminal size: columns u16, rows u16 |
//!
//! The shim closes the connections when the container has exited and its output is
//! drained. With `stdinOnce`, the container's stdin closes (EOF) when the first client
//! that used it closes its stdin or leaves, as with containerd; without it, stdin stays
//! open for the next client.
//!
//! The shim side ([`Hub`]) is poll-driven and never blocks: the shim is single-threaded
//! and also writes the container's log. A client that falls more than [`MAX_PENDING`]
//! bytes behind is dropped.

use std::io::{Read as _, Write as _};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use rustix::event::PollFlags;

/// Stdin bytes for the container.
pub const STDIN: u8 = 0;
/// Stdout bytes (or the terminal's output).
pub const STDOUT: u8 = 1;
/// Stderr bytes.
pub const STDERR: u8 = 2;
/// The client closed its stdin.
pub const CLOSE_STDIN: u8 = 3;
/// A terminal size: columns and rows, each a big-endian u16.
pub const RESIZE: u8 = 4;

/// How far a client (or the container's stdin) may fall behind before it is dropped.
pub const MAX_PENDING: usize = 4 << 20;

/// The largest frame accepted.
const MAX_FRAME: usize = 1 << 20;

/// The socket's name in the container's directory.
pub const SOCKET: &str = "attach.sock";

/// One frame.
pub fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A frame longer than allowed: not from a shim or agent of ours.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("an attach frame of {0} bytes is larger than allowed")]
pub struct FrameTooLarge(pub usize);

/// Cuts a byte stream into frames.
#[derive(Default, Debug)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// Adds bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole frame, if there is one.
    pub fn next_frame(&mut self) -> Result<Option<(u8, Vec<u8>)>, FrameTooLarge> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_FRAME {
            return Err(FrameTooLarge(len));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        let kind = self.buf[0];
        let payload = self.buf[5..5 + len].to_vec();
        self.buf.drain(..5 + len);
        Ok(Some((kind, payload)))
    }
}

/// Binds a Unix socket at `dir/name` even where the full path is longer than a socket
/// address holds (108 bytes), by naming it relative to the directory. Only for a
/// single-threaded process: it changes the working directory for a moment.
pub fn bind_in(dir: &Path, name: &str) -> std::io::Result<UnixListener> {
    let _ = std::fs::remove_file(dir.join(name));
    let previous = std::env::current_dir()?;
    std::env::set_current_dir(dir)?;
    let bound = UnixListener::bind(name);
    std::env::set_current_dir(previous)?;
    bound
}

/// Writes as much of `pending` as `fd` takes without blocking.
fn flush(fd: &mut UnixStream, pending: &mut Vec<u8>) -> std::io::Result<()> {
    while !pending.is_empty() {
        match fd.write(pending) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                pending.drain(..n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

struct Client {
    stream: UnixStream,
    decoder: Decoder,
    out: Vec<u8>,
    /// This client wrote to stdin (so its leaving ends a `stdinOnce` stdin).
    used_stdin: bool,
}

/// The container's stdin as the shim holds it: a pipe's write end or the terminal.
pub struct Input {
    fd: std::fs::File,
    pending: Vec<u8>,
    /// Closing means dropping the fd: not for a terminal, which is also the output.
    closable: bool,
}

impl Input {
    /// The write end of the stdin pipe (made non-blocking).
    pub fn pipe(fd: OwnedFd) -> std::io::Result<Input> {
        set_nonblocking(fd.as_fd())?;
        Ok(Input {
            fd: fd.into(),
            pending: Vec::new(),
            closable: true,
        })
    }

    /// The terminal's master (a duplicate; the output side keeps its own).
    pub fn terminal(fd: OwnedFd) -> std::io::Result<Input> {
        set_nonblocking(fd.as_fd())?;
        Ok(Input {
            fd: fd.into(),
            pending: Vec::new(),
            closable: false,
        })
    }

    fn write_pending(&mut self) -> std::io::Result<()> {
        while !self.pending.is_empty() {
            match self.fd.write(&self.pending) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(fd)?;
    rustix::fs::fcntl_setfl(fd, flags | rustix::fs::OFlags::NONBLOCK)?;
    Ok(())
}

/// What a ready file descriptor of the [`Hub`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Token {
    /// The listening socket.
    Listener,
    /// The client at this index.
    Client(usize),
    /// The container's stdin can take more.
    Stdin,
}

/// The shim's side: the listening socket, the attached clients and the container's stdin.
pub struct Hub {
    listener: UnixListener,
    clients: Vec<Client>,
    stdin: Option<Input>,
    stdin_once: bool,
    /// The terminal's master, for resizes.
    terminal: Option<OwnedFd>,
}

impl Hub {
    /// A hub on a bound listener, with the container's stdin (if it has one) and terminal.
    pub fn new(
        listener: UnixListener,
        stdin: Option<Input>,
        stdin_once: bool,
        terminal: Option<OwnedFd>,
    ) -> std::io::Result<Hub> {
        listener.set_nonblocking(true)?;
        Ok(Hub {
            listener,
            clients: Vec::new(),
            stdin,
            stdin_once,
            terminal,
        })
    }

    /// The descriptors to poll, with the events wanted and what each is.
    pub fn interest(&self) -> Vec<(BorrowedFd<'_>, PollFlags, Token)> {
        let mut out = vec![(self.listener.as_fd(), PollFlags::IN, Token::Listener)];
        for (i, c) in self.clients.iter().enumerate() {
            let mut flags = PollFlags::IN;
            if !c.out.is_empty() {
                flags |= PollFlags::OUT;
            }
            out.push((c.stream.as_fd(), flags, Token::Client(i)));
        }
        if let Some(input) = &self.stdin
            && !input.pending.is_empty()
        {
            out.push((input.fd.as_fd(), PollFlags::OUT, Token::Stdin));
        }
        out
    }

    /// Handles readiness of one descriptor. Returns whether clients were dropped (the
    /// caller's indices are then stale; it polls again).
    pub fn ready(&mut self, token: Token, events: PollFlags) -> bool {
        match token {
            Token::Listener => {
                while let Ok((stream, _)) = self.listener.accept() {
                    if stream.set_nonblocking(true).is_ok() {
                        self.clients.push(Client {
                            stream,
                            decoder: Decoder::default(),
                            out: Vec::new(),
                            used_stdin: false,
                        });
                    }
                }
                false
            }
            Token::Stdin => {
                if let Some(input) = &mut self.stdin
                    && input.write_pending().is_err()
                {
                    self.stdin = None;
                }
                false
            }
            Token::Client(i) => {
                let mut keep = true;
                if events.intersects(PollFlags::OUT) {
                    let c = &mut self.clients[i];
                    keep &= flush(&mut c.stream, &mut c.out).is_ok();
                }
                if keep && events.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
                    keep &= self.read_client(i);
                }
                if !keep {
                    self.drop_client(i);
                }
                !keep
            }
        }
    }

    /// Reads what a client sent; false once it is gone.
    fn read_client(&mut self, i: usize) -> bool {
        let mut buf = [0u8; 16 * 1024];
        let n = match self.clients[i].stream.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                return true;
            }
            Err(_) => return false,
        };
        self.clients[i].decoder.push(&buf[..n]);
        loop {
            match self.clients[i].decoder.next_frame() {
                Ok(Some((STDIN, data))) => {
                    self.clients[i].used_stdin = true;
                    if let Some(input) = &mut self.stdin {
                        input.pending.extend_from_slice(&data);
                        if input.pending.len() > MAX_PENDING || input.write_pending().is_err() {
                            self.stdin = None;
                        }
                    }
                }
                Ok(Some((CLOSE_STDIN, _))) => {
                    self.clients[i].used_stdin = true;
                    if self.stdin_once {
                        self.close_stdin();
                    }
                }
                Ok(Some((RESIZE, size))) if size.len() == 4 => {
                    if let Some(terminal) = &self.terminal {
                        let size = rustix::termios::Winsize {
                            ws_col: u16::from_be_bytes([size[0], size[1]]),
                            ws_row: u16::from_be_bytes([size[2], size[3]]),
                            ws_xpixel: 0,
                            ws_ypixel: 0,
                        };
                        let _ = rustix::termios::tcsetwinsize(terminal, size);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    }

    /// Ends the container's stdin (EOF), once a client closed it and it may be closed.
    fn close_stdin(&mut self) {
        if let Some(input) = &mut self.stdin
            && input.closable
        {
            // Whatever is still pending goes first, as far as the pipe takes it now.
            let _ = input.write_pending();
            self.stdin = None;
        }
    }

    fn drop_client(&mut self, i: usize) {
        let client = self.clients.swap_remove(i);
        if client.used_stdin && self.stdin_once {
            self.close_stdin();
        }
    }

    /// Sends container output to every client; clients too far behind are dropped.
    pub fn broadcast(&mut self, kind: u8, data: &[u8]) {
        if self.clients.is_empty() || data.is_empty() {
            return;
        }
        let framed = frame(kind, data);
        let mut i = 0;
        while i < self.clients.len() {
            let c = &mut self.clients[i];
            c.out.extend_from_slice(&framed);
            if c.out.len() > MAX_PENDING || flush(&mut c.stream, &mut c.out).is_err() {
                self.drop_client(i);
            } else {
                i += 1;
            }
        }
    }

    /// At the container's end: gives each client up to `timeout` to take the rest of the
    /// output, then closes every connection.
    pub fn finish(&mut self, timeout: std::time::Duration) {
        for mut c in std::mem::take(&mut self.clients) {
            if c.stream.set_nonblocking(false).is_ok()
                && c.stream.set_write_timeout(Some(timeout)).is_ok()
            {
                let _ = c.stream.write_all(&c.out);
            }
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Connects to the shim's socket in a container's directory, however long its path (a
/// socket address holds 108 bytes; `/proc/self/fd/<dir>/attach.sock` is short).
pub fn connect_in(dir: &Path) -> std::io::Result<tokio::net::UnixStream> {
    let handle = rustix::fs::open(
        dir,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    use std::os::fd::AsRawFd as _;
    let path = format!("/proc/self/fd/{}/{SOCKET}", handle.as_raw_fd());
    let stream = UnixStream::connect(path)?;
    drop(handle);
    stream.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(stream)
}

/// The agent's side of an attach: the session's stdin (if the client sends one; its end
/// is the client closing stdin), resizes and hangup become frames to the shim, the shim's
/// frames become its stdout and stderr (none with a TTY), and it ends when the shim
/// closes the connection (the container ended) or on hangup.
pub fn session(
    stream: tokio::net::UnixStream,
    stdin: bool,
    tty: bool,
) -> crate::runtime::ExecSession {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (mut from_shim, mut to_shim) = stream.into_split();
    let (out_w, out_r) = tokio::io::duplex(64 * 1024);
    let (err_w, err_r) = tokio::io::duplex(64 * 1024);
    let (in_w, mut in_r) = tokio::io::duplex(64 * 1024);
    let (resize_tx, mut resize_rx) = tokio::sync::mpsc::unbounded_channel::<(u16, u16)>();
    // Cancelled by a hangup (the client left) or by the shim closing the connection (the
    // container ended); either ends both directions.
    let end = tokio_util::sync::CancellationToken::new();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let ended = end.clone();
    tokio::spawn(async move {
        let (mut out_w, mut err_w) = (Some(out_w), Some(err_w));
        let mut decoder = Decoder::default();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = tokio::select! {
                read = from_shim.read(&mut buf) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                },
                _ = ended.cancelled() => break,
            };
            decoder.push(&buf[..n]);
            while let Ok(Some((kind, data))) = decoder.next_frame() {
                let to = match kind {
                    STDOUT => &mut out_w,
                    STDERR => &mut err_w,
                    _ => continue,
                };
                // A reader that is gone (the client did not ask for the stream) is skipped.
                if let Some(w) = to
                    && w.write_all(&data).await.is_err()
                {
                    *to = None;
                }
            }
        }
        ended.cancel();
        let _ = done_tx.send(());
    });
    let ended = end.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        let mut stdin_open = stdin;
        let mut resizes_open = true;
        loop {
            let message = tokio::select! {
                read = in_r.read(&mut buf), if stdin_open => match read {
                    Ok(0) | Err(_) => {
                        stdin_open = false;
                        frame(CLOSE_STDIN, &[])
                    }
                    Ok(n) => frame(STDIN, &buf[..n]),
                },
                size = resize_rx.recv(), if resizes_open => match size {
                    Some((cols, rows)) => {
                        let mut payload = cols.to_be_bytes().to_vec();
                        payload.extend_from_slice(&rows.to_be_bytes());
                        frame(RESIZE, &payload)
                    }
                    None => {
                        resizes_open = false;
                        continue;
                    }
                },
                _ = ended.cancelled() => break,
            };
            if to_shim.write_all(&message).await.is_err() {
                break;
            }
        }
        // Dropping the write half closes our side: the shim sees the client leave.
    });
    crate::runtime::ExecSession {
        stdin: stdin.then(|| Box::new(in_w) as _),
        stdout: Some(Box::new(out_r)),
        stderr: (!tty).then(|| Box::new(err_r) as _),
        resize: Some(Box::new(move |cols, rows| {
            let _ = resize_tx.send((cols, rows));
        })),
        hangup: Some(Box::new(move || end.cancel())),
        kill: None,
        exit: Box::pin(async move {
            let _ = done_rx.await;
            Ok(0)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_cut_whole_from_any_split() {
        let mut bytes = frame(STDOUT, b"hello");
        bytes.extend(frame(RESIZE, &[0, 80, 0, 24]));
        let mut d = Decoder::default();
        d.push(&bytes[..3]);
        assert_eq!(d.next_frame(), Ok(None));
        d.push(&bytes[3..8]);
        assert_eq!(d.next_frame(), Ok(None));
        d.push(&bytes[8..]);
        assert_eq!(d.next_frame(), Ok(Some((STDOUT, b"hello".to_vec()))));
        assert_eq!(d.next_frame(), Ok(Some((RESIZE, vec![0, 80, 0, 24]))));
        assert_eq!(d.next_frame(), Ok(None));
        let mut huge = Decoder::default();
        huge.push(&[STDIN, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(huge.next_frame(), Err(FrameTooLarge(u32::MAX as usize)));
    }

    #[test]
    fn the_hub_fans_output_out_and_feeds_stdin_until_a_stdin_once_client_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let listener = bind_in(dir.path(), SOCKET).unwrap();
        let (stdin_r, stdin_w) = rustix::pipe::pipe().unwrap();
        let mut hub = Hub::new(listener, Some(Input::pipe(stdin_w).unwrap()), true, None).unwrap();
        let mut a = UnixStream::connect(dir.path().join(SOCKET)).unwrap();
        let mut b = UnixStream::connect(dir.path().join(SOCKET)).unwrap();
        hub.ready(Token::Listener, PollFlags::IN);
        assert_eq!(hub.clients.len(), 2);
        hub.broadcast(STDOUT, b"out");
        for c in [&mut a, &mut b] {
            let mut got = [0u8; 8];
            c.read_exact(&mut got).unwrap();
            assert_eq!(got, frame(STDOUT, b"out")[..]);
        }
        a.write_all(&frame(STDIN, b"typed\n")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        // The client that typed is at index 0 (the first accepted).
        assert!(!hub.ready(Token::Client(0), PollFlags::IN));
        let mut stdin = std::fs::File::from(stdin_r);
        let mut got = [0u8; 6];
        stdin.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"typed\n");
        // It leaves: with stdinOnce, the container sees EOF.
        drop(a);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(hub.ready(Token::Client(0), PollFlags::IN));
        let mut rest = Vec::new();
        stdin.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        assert_eq!(hub.clients.len(), 1);
        hub.finish(std::time::Duration::from_secs(1));
        let mut end = Vec::new();
        b.read_to_end(&mut end).unwrap();
        assert!(end.is_empty());
    }
}
