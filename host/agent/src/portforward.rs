//! `kubectl port-forward` on the agent's endpoint (shared/reference/kubectl-wire.md §9.2):
//! a SPDY session, raw after a SPDY upgrade or carried in the binary messages of a
//! WebSocket (`SPDY/3.1+portforward.k8s.io`). Each forwarded connection is a pair of
//! streams sharing a `requestid`: `error` (a message if forwarding failed) and `data`,
//! copied to and from the port inside the pod's network namespace.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tracing::debug;

use crate::spdy::{Stream, Writer};

/// The WebSocket subprotocol of port-forward.
pub const WEBSOCKET: &str = "SPDY/3.1+portforward.k8s.io";
/// The SPDY stream protocol of port-forward.
pub const SPDY: &str = "portforward.k8s.io";

/// Serves port-forward streams on a SPDY connection until it closes.
pub async fn serve<S>(io: S, netns: Option<PathBuf>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (writer, mut streams) = crate::spdy::serve(io);
    let mut errors: HashMap<String, u32> = HashMap::new();
    while let Some(stream) = streams.recv().await {
        let request = stream.header("requestid").unwrap_or("").to_owned();
        match stream.header("streamtype") {
            Some("error") => {
                if writer.reply(stream.id, false).await.is_err() {
                    return;
                }
                errors.insert(request, stream.id);
            }
            Some("data") => {
                if writer.reply(stream.id, false).await.is_err() {
                    return;
                }
                let error = errors.remove(&request);
                tokio::spawn(forward(stream, error, writer.clone(), netns.clone()));
            }
            _ => {}
        }
    }
}

/// Copies one connection's data stream to and from the pod's port, then half-closes the
/// data and error streams (kubectl waits for the error stream's FIN).
async fn forward(mut stream: Stream, error: Option<u32>, writer: Writer, netns: Option<PathBuf>) {
    let id = stream.id;
    let port: Option<u16> = stream.header("port").and_then(|p| p.parse().ok());
    let connected = match port {
        Some(port) => connect(port, netns).await,
        None => Err("invalid port".into()),
    };
    match connected {
        Ok(tcp) => {
            let (mut read, mut write) = tcp.into_split();
            let upstream = async move {
                while let Some(chunk) = stream.data.recv().await {
                    if write.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
                let _ = write.shutdown().await;
            };
            let w = writer.clone();
            let downstream = async move {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match read.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if w.data(id, &buf[..n], false).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            };
            // The pod closing its side ends the connection; the client closing its side
            // only half-closes the pod's.
            tokio::select! {
                _ = downstream => {}
                _ = async { upstream.await; std::future::pending::<()>().await } => {}
            }
        }
        Err(message) => {
            let port = port.map(|p| p.to_string()).unwrap_or_default();
            let text = format!("error forwarding port {port} to pod: {message}");
            debug!(%text, "port-forward failed");
            if let Some(e) = error {
                let _ = writer.data(e, text.as_bytes(), false).await;
            }
        }
    }
    let _ = writer.data(id, &[], true).await;
    if let Some(e) = error {
        let _ = writer.data(e, &[], true).await;
    }
}

/// A connection to `127.0.0.1:port` inside the network namespace (the host's if none),
/// made on a thread that joined it.
async fn connect(port: u16, netns: Option<PathBuf>) -> Result<tokio::net::TcpStream, String> {
    let tcp = crate::sandbox::in_netns(netns, move || {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let tcp = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .map_err(|e| format!("dial tcp {addr}: {e}"))?;
        tcp.set_nonblocking(true).map_err(|e| e.to_string())?;
        Ok(tcp)
    })
    .await?;
    tokio::net::TcpStream::from_std(tcp).map_err(|e| e.to_string())
}

/// Carries a byte stream over a WebSocket's binary messages: what the client sends is
/// readable from the returned pipe, what is written to it is sent as messages.
pub fn websocket_pipe<S>(ws: WebSocketStream<S>) -> tokio::io::DuplexStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let (mut read, mut write) = tokio::io::split(theirs);
    let (mut sink, mut incoming) = ws.split();
    tokio::spawn(async move {
        let to_client = async {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if sink
                            .send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
            let _ = sink.close().await;
        };
        let from_client = async {
            while let Some(Ok(m)) = incoming.next().await {
                match m {
                    Message::Binary(b) if write.write_all(&b).await.is_err() => break,
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            let _ = write.shutdown().await;
        };
        tokio::select! {
            _ = to_client => {}
            _ = from_client => {}
        }
    });
    ours
}
