//! The server side of SPDY/3.1 as kubectl's streams use it (moby/spdystream): streams the
//! client opens with SYN_STREAM (headers such as `streamtype`, `port`, `requestid`), DATA
//! both ways, FIN to half-close, PING echoed; no flow control, no server push.
//!
//! Header blocks are zlib streams, one per direction for the whole connection, preset with
//! the SPDY/3 dictionary and sync-flushed after each block.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tracing::debug;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const FLAG_FIN: u8 = 1;

/// The SPDY/3 header dictionary (draft 3, §2.6.10.1): these names, each as a 32-bit
/// big-endian length and the bytes, then the common values as one string.
fn dictionary() -> Vec<u8> {
    const WORDS: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
        "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
        "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
        "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
        "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
        "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
    );
    let mut d = Vec::with_capacity(1423);
    for w in WORDS {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(TAIL.as_bytes());
    d
}

/// A stream the client opened.
#[derive(Debug)]
pub struct Stream {
    /// Its ID.
    pub id: u32,
    /// Its headers (names lower-case).
    pub headers: Vec<(String, String)>,
    /// Its data; closes when the client half-closes it (FIN) or resets it.
    pub data: mpsc::Receiver<Bytes>,
}

impl Stream {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Writes frames: replies, data and FINs. Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    inner: Arc<tokio::sync::Mutex<(Box<dyn AsyncWrite + Send + Unpin>, Compress)>>,
}

impl Writer {
    async fn frame(&self, bytes: Vec<u8>) -> std::io::Result<()> {
        let mut inner = self.inner.lock().await;
        inner.0.write_all(&bytes).await?;
        inner.0.flush().await
    }

    /// SYN_REPLY to stream `id` (no headers), with FIN if `fin`.
    pub async fn reply(&self, id: u32, fin: bool) -> std::io::Result<()> {
        let mut inner = self.inner.lock().await;
        let block = compress(&mut inner.1, &[])?;
        let mut payload = id.to_be_bytes().to_vec();
        payload.extend_from_slice(&block);
        let frame = control(SYN_REPLY, if fin { FLAG_FIN } else { 0 }, &payload);
        inner.0.write_all(&frame).await?;
        inner.0.flush().await
    }

    /// DATA on stream `id` (split in 64 KiB frames), with FIN on the last if `fin`.
    pub async fn data(&self, id: u32, data: &[u8], fin: bool) -> std::io::Result<()> {
        let chunks: Vec<&[u8]> = if data.is_empty() {
            vec![&[][..]]
        } else {
            data.chunks(64 * 1024).collect()
        };
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let mut frame = (id & 0x7fff_ffff).to_be_bytes().to_vec();
            let flags = if fin && i == last { FLAG_FIN } else { 0 };
            frame.push(flags);
            frame.extend_from_slice(&(chunk.len() as u32).to_be_bytes()[1..]);
            frame.extend_from_slice(chunk);
            self.frame(frame).await?;
        }
        Ok(())
    }

    /// GOAWAY: no more streams.
    pub async fn go_away(&self) -> std::io::Result<()> {
        self.frame(control(GOAWAY, 0, &[0, 0, 0, 0, 0, 0, 0, 0]))
            .await
    }
}

fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80, 0x03];
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

fn compress(c: &mut Compress, headers: &[(&str, &str)]) -> std::io::Result<Vec<u8>> {
    let mut raw = (headers.len() as u32).to_be_bytes().to_vec();
    for (k, v) in headers {
        raw.extend_from_slice(&(k.len() as u32).to_be_bytes());
        raw.extend_from_slice(k.as_bytes());
        raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
        raw.extend_from_slice(v.as_bytes());
    }
    let mut out = Vec::with_capacity(raw.len() + 64);
    let start = c.total_in();
    loop {
        let consumed = (c.total_in() - start) as usize;
        out.reserve(256);
        c.compress_vec(&raw[consumed..], &mut out, FlushCompress::Sync)
            .map_err(std::io::Error::other)?;
        if (c.total_in() - start) as usize == raw.len() && out.len() < out.capacity() {
            return Ok(out);
        }
    }
}

fn decompress(
    d: &mut Decompress,
    dict: &[u8],
    input: &[u8],
) -> std::io::Result<Vec<(String, String)>> {
    let mut out = Vec::with_capacity(input.len() * 4 + 64);
    let start = d.total_in();
    loop {
        let consumed = (d.total_in() - start) as usize;
        out.reserve(1024);
        match d.decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync) {
            Ok(Status::Ok | Status::BufError | Status::StreamEnd) => {}
            Err(e) if e.needs_dictionary().is_some() => {
                d.set_dictionary(dict).map_err(std::io::Error::other)?;
                continue;
            }
            Err(e) => return Err(std::io::Error::other(e)),
        }
        if (d.total_in() - start) as usize == input.len() && out.len() < out.capacity() {
            break;
        }
    }
    let mut headers = Vec::new();
    let mut at = 0;
    let read_u32 = |at: &mut usize| -> std::io::Result<usize> {
        let b = out
            .get(*at..*at + 4)
            .ok_or_else(|| std::io::Error::other("a short header block"))?;
        *at += 4;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let n = read_u32(&mut at)?;
    for _ in 0..n {
        let kl = read_u32(&mut at)?;
        let k = out
            .get(at..at + kl)
            .ok_or_else(|| std::io::Error::other("a short header"))?;
        let k = String::from_utf8_lossy(k).to_ascii_lowercase();
        at += kl;
        let vl = read_u32(&mut at)?;
        let v = out
            .get(at..at + vl)
            .ok_or_else(|| std::io::Error::other("a short header"))?;
        let v = String::from_utf8_lossy(v).into_owned();
        at += vl;
        // Several values of one name are NUL-separated.
        for value in v.split('\0') {
            headers.push((k.clone(), value.to_owned()));
        }
    }
    Ok(headers)
}

/// Serves a SPDY session over `io`: returns the writer and the streams the client opens.
/// The session ends (the stream channel closes) when the connection does or on GOAWAY.
pub fn serve<S>(io: S) -> (Writer, mpsc::Receiver<Stream>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut read, write) = tokio::io::split(io);
    let writer = Writer {
        inner: Arc::new(tokio::sync::Mutex::new((Box::new(write), {
            let mut c = Compress::new(Compression::default(), true);
            let _ = c.set_dictionary(&dictionary());
            c
        }))),
    };
    let (tx, rx) = mpsc::channel(16);
    let w = writer.clone();
    tokio::spawn(async move {
        let dict = dictionary();
        let mut inflate = Decompress::new(true);
        let streams: Mutex<HashMap<u32, mpsc::Sender<Bytes>>> = Mutex::default();
        let mut head = [0u8; 8];
        loop {
            if read.read_exact(&mut head).await.is_err() {
                break;
            }
            let flags = head[4];
            let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
            let mut payload = vec![0u8; len];
            if read.read_exact(&mut payload).await.is_err() {
                break;
            }
            if head[0] & 0x80 != 0 {
                let kind = u16::from_be_bytes([head[2], head[3]]);
                match kind {
                    SYN_STREAM if payload.len() >= 10 => {
                        let id =
                            u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                                & 0x7fff_ffff;
                        let headers = match decompress(&mut inflate, &dict, &payload[10..]) {
                            Ok(h) => h,
                            Err(e) => {
                                debug!(error = %e, "a SPDY header block does not inflate");
                                break;
                            }
                        };
                        let (data_tx, data_rx) = mpsc::channel(64);
                        if flags & FLAG_FIN == 0 {
                            streams
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(id, data_tx);
                        }
                        if tx
                            .send(Stream {
                                id,
                                headers,
                                data: data_rx,
                            })
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    RST_STREAM if payload.len() >= 4 => {
                        let id =
                            u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                                & 0x7fff_ffff;
                        streams
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&id);
                    }
                    PING => {
                        let _ = w.frame(control(PING, 0, &payload)).await;
                    }
                    GOAWAY => break,
                    // SETTINGS, WINDOW_UPDATE, HEADERS: nothing to do without flow control.
                    _ => {}
                }
            } else {
                let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff;
                let sender = streams
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&id)
                    .cloned();
                if let Some(sender) = sender
                    && !payload.is_empty()
                {
                    let _ = sender.send(Bytes::from(payload)).await;
                }
                if flags & FLAG_FIN != 0 {
                    streams
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id);
                }
            }
        }
    });
    (writer, rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_spdy3s() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert_eq!(&d[..11], b"\0\0\0\x07options");
        assert!(d.ends_with(b",*,enq=0."));
    }

    #[test]
    fn header_blocks_round_trip_through_one_zlib_context_per_direction() {
        let dict = dictionary();
        let mut c = Compress::new(Compression::default(), true);
        c.set_dictionary(&dict).unwrap();
        let mut d = Decompress::new(true);
        for port in ["80", "8080"] {
            let block = compress(
                &mut c,
                &[("streamtype", "data"), ("port", port), ("requestid", "0")],
            )
            .unwrap();
            let headers = decompress(&mut d, &dict, &block).unwrap();
            assert_eq!(
                headers,
                [
                    ("streamtype".into(), "data".into()),
                    ("port".into(), port.into()),
                    ("requestid".into(), "0".into())
                ]
            );
        }
    }

    #[tokio::test]
    async fn a_session_delivers_streams_and_their_data_and_echoes_pings() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (writer, mut streams) = serve(server);
        let (mut cr, mut cw) = tokio::io::split(client);
        let dict = dictionary();
        let mut c = Compress::new(Compression::default(), true);
        c.set_dictionary(&dict).unwrap();
        let block = compress(&mut c, &[("streamtype", "stdin")]).unwrap();
        let mut syn = 1u32.to_be_bytes().to_vec();
        syn.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        syn.extend_from_slice(&block);
        cw.write_all(&control(SYN_STREAM, 0, &syn)).await.unwrap();
        let mut data = 1u32.to_be_bytes().to_vec();
        data.push(FLAG_FIN);
        data.extend_from_slice(&[0, 0, 2]);
        data.extend_from_slice(b"hi");
        cw.write_all(&data).await.unwrap();
        cw.write_all(&control(PING, 0, &7u32.to_be_bytes()))
            .await
            .unwrap();
        let mut stream = streams.recv().await.unwrap();
        assert_eq!(stream.header("streamtype"), Some("stdin"));
        assert_eq!(stream.data.recv().await.unwrap(), "hi");
        assert!(stream.data.recv().await.is_none());
        let mut pong = [0u8; 12];
        cr.read_exact(&mut pong).await.unwrap();
        assert_eq!(pong, control(PING, 0, &7u32.to_be_bytes())[..]);
        writer.data(1, b"out", true).await.unwrap();
        let mut frame = [0u8; 11];
        cr.read_exact(&mut frame).await.unwrap();
        assert_eq!(&frame[..8], &[0, 0, 0, 1, FLAG_FIN, 0, 0, 3]);
        assert_eq!(&frame[8..], b"out");
    }
}
