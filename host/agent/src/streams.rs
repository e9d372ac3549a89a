//! `kubectl exec` and `kubectl attach` on the agent's endpoint, in both of kubectl's protocols
//! (shared/reference/kubectl-wire.md §9.1): a WebSocket with subprotocol
//! `v5.channel.k8s.io`, whose binary messages carry a channel byte (0 stdin, 1 stdout, 2
//! stderr, 3 the final Status, 4 terminal resizes; `[255, 0]` closes stdin), and the SPDY
//! fallback, one SPDY stream per channel.

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tracing::debug;

use crate::runtime::{ExecSession, RuntimeError};

/// The subprotocol kubectl 1.32 offers for exec and attach.
pub const V5: &str = "v5.channel.k8s.io";

/// What the client asked for (the query of `/exec/...`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecOptions {
    /// The command and its arguments.
    pub command: Vec<String>,
    /// The client sends stdin.
    pub stdin: bool,
    /// The client wants stdout.
    pub stdout: bool,
    /// The client wants stderr.
    pub stderr: bool,
    /// Run with a terminal.
    pub tty: bool,
}

impl ExecOptions {
    /// From the query pairs (`command` repeated, flags `true`/`1`).
    pub fn from_query(pairs: &[(String, String)]) -> Self {
        let flag = |name: &str| {
            pairs
                .iter()
                .any(|(k, v)| k == name && (v == "true" || v == "1"))
        };
        ExecOptions {
            command: pairs
                .iter()
                .filter(|(k, _)| k == "command")
                .map(|(_, v)| v.clone())
                .collect(),
            stdin: flag("stdin"),
            stdout: flag("stdout"),
            stderr: flag("stderr"),
            tty: flag("tty"),
        }
    }
}

/// The Status sent on channel 3 when the process has ended (or never started).
pub fn exit_status(command: &[String], outcome: &Result<i32, RuntimeError>) -> Value {
    match outcome {
        Ok(0) => json!({"metadata": {}, "status": "Success"}),
        Ok(code) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Err(e) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("failed to exec in container: {e}"),
            "reason": "InternalError",
            "code": 500,
        }),
    }
}

async fn pump(mut from: Box<dyn AsyncRead + Send + Unpin>, channel: u8, to: mpsc::Sender<Message>) {
    let mut buf = vec![0u8; 32 * 1024];
    buf[0] = channel;
    loop {
        match from.read(&mut buf[1..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let frame = Bytes::copy_from_slice(&buf[..=n]);
                if to.send(Message::Binary(frame)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Runs one exec session over an upgraded WebSocket until the process ends.
pub async fn serve_websocket<S>(
    ws: WebSocketStream<S>,
    mut session: ExecSession,
    options: ExecOptions,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut incoming) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(64);
    let client_ready = tokio::time::Instant::now() + CLIENT_SETUP;
    // The one writer: output, the final status, and the close.
    let writer = tokio::spawn(async move {
        // kubectl 1.32 reads the connection before it has made its streams (client-go's
        // wsStreamCreator) and drops frames for streams it doesn't have yet ("Unknown
        // stream id"): a command that answers at once could lose its output and status to
        // a client that was slow to get there. Nothing goes out in the first moments.
        tokio::time::sleep_until(client_ready).await;
        while let Some(m) = rx.recv().await {
            let closing = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || closing {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let mut pumps = Vec::new();
    if let Some(out) = session.stdout.take()
        && (options.stdout || options.tty)
    {
        pumps.push(tokio::spawn(pump(out, 1, tx.clone())));
    }
    if let Some(err) = session.stderr.take()
        && options.stderr
        && !options.tty
    {
        pumps.push(tokio::spawn(pump(err, 2, tx.clone())));
    }
    let mut stdin = session.stdin.take().filter(|_| options.stdin);
    let resize = session.resize.take();
    let hangup = session.hangup.take();
    let mut exit = session.exit;
    let outcome = loop {
        tokio::select! {
            outcome = &mut exit => break outcome,
            message = incoming.next() => match message {
                Some(Ok(Message::Binary(data))) if !data.is_empty() => match data[0] {
                    0 => {
                        if let Some(w) = stdin.as_mut()
                            && w.write_all(&data[1..]).await.is_err()
                        {
                            stdin = None;
                        }
                    }
                    4 => {
                        if let (Some(resize), Ok(size)) = (&resize, serde_json::from_slice::<Value>(&data[1..])) {
                            let cols = size["Width"].as_u64().unwrap_or(80) as u16;
                            let rows = size["Height"].as_u64().unwrap_or(24) as u16;
                            resize(cols, rows);
                        }
                    }
                    // v5's CLOSE: [255, channel]; closing stdin sends EOF to the process.
                    255 if data.get(1) == Some(&0) => {
                        if let Some(mut w) = stdin.take() {
                            let _ = w.shutdown().await;
                        }
                    }
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    // The client went away: stdin closes (EOF), a terminal hangs up, and
                    // the process goes on to its end unobserved.
                    drop(stdin.take());
                    if let Some(hangup) = &hangup {
                        hangup();
                    }
                    let outcome = exit.await;
                    debug!(?outcome, "exec client left early");
                    for p in pumps {
                        p.abort();
                    }
                    writer.abort();
                    return;
                }
                _ => {}
            },
        }
    };
    drop(stdin);
    // Everything the process wrote goes out before the status.
    for p in pumps {
        let _ = p.await;
    }
    let status = exit_status(&options.command, &outcome);
    let mut frame = vec![3u8];
    frame.extend_from_slice(status.to_string().as_bytes());
    let _ = tx.send(Message::Binary(Bytes::from(frame))).await;
    let _ = tx
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        })))
        .await;
    drop(tx);
    let _ = writer.await;
    // The close handshake: the client answers our Close with its own. Dropping the socket
    // before then, with its input (keystrokes, resizes) unread, makes the kernel reset the
    // connection, and a reset can overtake the status and Close still in flight to the
    // client, which then sees an abnormal closure (1006).
    let _ = tokio::time::timeout(CLOSE_HANDSHAKE, async {
        while let Some(Ok(m)) = incoming.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// How long after the upgrade a WebSocket session's first frame waits (see
/// `serve_websocket`).
const CLIENT_SETUP: std::time::Duration = std::time::Duration::from_millis(100);

/// How long a finished session waits for the client's half of the close handshake.
const CLOSE_HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(5);

/// The SPDY stream protocol version chosen for exec: v4 (v5 only adds a WebSocket close
/// signal), as the kubelet does for SPDY clients.
pub const SPDY_EXEC: &str = "v4.channel.k8s.io";

/// Runs one exec session over an upgraded SPDY connection: the client opens one stream
/// per channel (`streamtype` error, stdin, stdout, stderr, resize), each answered at once;
/// once all it asked for are there output flows, and at the end a failure's Status goes
/// on `error` and every stream is half-closed.
pub async fn serve_spdy<S>(io: S, mut session: ExecSession, options: ExecOptions)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (writer, mut incoming) = crate::spdy::serve(io);
    let mut wanted = vec!["error"];
    if options.stdin {
        wanted.push("stdin");
    }
    if options.stdout {
        wanted.push("stdout");
    }
    if options.stderr && !options.tty {
        wanted.push("stderr");
    }
    if options.tty {
        wanted.push("resize");
    }
    let mut streams: std::collections::HashMap<String, crate::spdy::Stream> = Default::default();
    let deadline = tokio::time::sleep(std::time::Duration::from_secs(30));
    tokio::pin!(deadline);
    while !wanted.iter().all(|w| streams.contains_key(*w)) {
        tokio::select! {
            s = incoming.recv() => match s {
                Some(s) => {
                    // The client waits for each reply before it opens the next stream.
                    if writer.reply(s.id, false).await.is_err() {
                        return;
                    }
                    let kind = s.header("streamtype").unwrap_or("").to_owned();
                    streams.insert(kind, s);
                }
                None => return,
            },
            _ = &mut deadline => {
                debug!("an exec client did not open its streams in time");
                return;
            }
        }
    }
    let id_of = |kind: &str| streams.get(kind).map(|s| s.id);
    let (error_id, stdout_id, stderr_id) = (id_of("error"), id_of("stdout"), id_of("stderr"));
    let mut tasks = Vec::new();
    for (kind, id) in [("stdout", stdout_id), ("stderr", stderr_id)] {
        let from = if kind == "stdout" {
            session.stdout.take()
        } else {
            session.stderr.take()
        };
        if let (Some(mut from), Some(id)) = (from, id) {
            let writer = writer.clone();
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match from.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if writer.data(id, &buf[..n], false).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }));
        }
    }
    if let (Some(mut stdin_stream), Some(mut stdin)) =
        (streams.remove("stdin"), session.stdin.take())
    {
        tokio::spawn(async move {
            while let Some(chunk) = stdin_stream.data.recv().await {
                if stdin.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            // FIN from the client: EOF for the process.
            let _ = stdin.shutdown().await;
        });
    }
    if let (Some(mut resize_stream), Some(resize)) =
        (streams.remove("resize"), session.resize.take())
    {
        tokio::spawn(async move {
            while let Some(chunk) = resize_stream.data.recv().await {
                for size in serde_json::Deserializer::from_slice(&chunk)
                    .into_iter::<Value>()
                    .flatten()
                {
                    resize(
                        size["Width"].as_u64().unwrap_or(80) as u16,
                        size["Height"].as_u64().unwrap_or(24) as u16,
                    );
                }
            }
        });
    }
    // A client that goes away hangs the session up (a terminal gets SIGHUP; an attach
    // detaches), then the end is awaited as usual.
    let hangup = session.hangup.take();
    let mut exit = session.exit;
    let outcome = tokio::select! {
        outcome = &mut exit => outcome,
        () = async { while incoming.recv().await.is_some() {} } => {
            if let Some(hangup) = &hangup {
                hangup();
            }
            exit.await
        }
    };
    for t in tasks {
        let _ = t.await;
    }
    if let Some(id) = error_id {
        if !matches!(outcome, Ok(0)) {
            let status = exit_status(&options.command, &outcome);
            let _ = writer.data(id, status.to_string().as_bytes(), false).await;
        }
        let _ = writer.data(id, &[], true).await;
    }
    for id in [stdout_id, stderr_id].into_iter().flatten() {
        let _ = writer.data(id, &[], true).await;
    }
    let _ = writer.go_away().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{ContainerConfig, ContainerRuntime as _, FakeRuntime};
    use tokio_tungstenite::tungstenite::protocol::Role;

    async fn running(id: &str) -> FakeRuntime {
        let runtime = FakeRuntime::default();
        runtime
            .start(ContainerConfig {
                id: id.into(),
                spec: Default::default(),
                log_path: "/dev/null".into(),
                stdin: true,
                stdin_once: false,
            })
            .await
            .unwrap();
        runtime
    }

    #[tokio::test]
    async fn an_attached_client_types_sees_the_echo_and_ends_with_its_stdin() {
        let runtime = running("c1").await;
        let session = runtime.attach("c1", true).unwrap();
        let (a, b) = tokio::io::duplex(64 * 1024);
        let server = WebSocketStream::from_raw_socket(a, Role::Server, None).await;
        let mut client = WebSocketStream::from_raw_socket(b, Role::Client, None).await;
        let options = ExecOptions {
            stdin: true,
            stdout: true,
            ..Default::default()
        };
        tokio::spawn(serve_websocket(server, session, options));
        client
            .send(Message::Binary(Bytes::from_static(b"\x00hello\n")))
            .await
            .unwrap();
        let echoed = client.next().await.unwrap().unwrap();
        assert_eq!(echoed, Message::Binary(Bytes::from_static(b"\x01hello\n")));
        // Closing stdin (v5's CLOSE of channel 0) ends the fake container's stream.
        client
            .send(Message::Binary(Bytes::from_static(&[255, 0])))
            .await
            .unwrap();
        let status = client.next().await.unwrap().unwrap().into_data();
        assert_eq!(status[0], 3);
        let status: Value = serde_json::from_slice(&status[1..]).unwrap();
        assert_eq!(status["status"], "Success");
        assert!(matches!(client.next().await, Some(Ok(Message::Close(_)))));
        assert_eq!(
            runtime.calls().last(),
            Some(&crate::runtime::Call::Attach("c1".into()))
        );
    }

    #[tokio::test]
    async fn a_websocket_session_sends_the_output_then_the_status_then_closes() {
        let runtime = running("c1").await;
        runtime.script("false", &[2]);
        let command = vec!["false".to_owned(), "now".to_owned()];
        let session = runtime.exec("c1", command.clone(), false).unwrap();
        let (a, b) = tokio::io::duplex(64 * 1024);
        let server = WebSocketStream::from_raw_socket(a, Role::Server, None).await;
        let mut client = WebSocketStream::from_raw_socket(b, Role::Client, None).await;
        let options = ExecOptions {
            command,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        tokio::spawn(serve_websocket(server, session, options));
        let mut frames = Vec::new();
        while let Some(Ok(m)) = client.next().await {
            match m {
                Message::Binary(b) => frames.push(b.to_vec()),
                Message::Close(frame) => {
                    assert_eq!(frame.unwrap().code, CloseCode::Normal);
                    break;
                }
                _ => {}
            }
        }
        assert_eq!(frames[0], b"\x01false now\n");
        assert_eq!(frames.last().unwrap()[0], 3);
        let status: Value = serde_json::from_slice(&frames.last().unwrap()[1..]).unwrap();
        assert_eq!(status["reason"], "NonZeroExitCode");
        assert_eq!(status["details"]["causes"][0]["message"], "2");
    }

    #[test]
    fn exec_options_and_statuses_are_kubectls() {
        let pairs: Vec<(String, String)> = [
            ("command", "sh"),
            ("command", "-c"),
            ("command", "exit 3"),
            ("stdout", "true"),
            ("stderr", "1"),
        ]
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect();
        let o = ExecOptions::from_query(&pairs);
        assert_eq!(o.command, ["sh", "-c", "exit 3"]);
        assert!(o.stdout && o.stderr && !o.stdin && !o.tty);
        assert_eq!(
            exit_status(&o.command, &Ok(0)),
            json!({"metadata": {}, "status": "Success"})
        );
        let failed = exit_status(&o.command, &Ok(3));
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(
            failed["details"]["causes"][0],
            json!({"reason": "ExitCode", "message": "3"})
        );
    }
}
