//! Container logs as `kubectl logs` asks for them: the CRI-format files the shims write,
//! read with the kubelet's options (tailLines, sinceSeconds/sinceTime, timestamps,
//! limitBytes, previous) and followed while the container runs.

use std::io::{BufRead as _, Seek as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

/// The options of `GET pods/<name>/log`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogOptions {
    /// Keep streaming as the container writes.
    pub follow: bool,
    /// Only the last N lines.
    pub tail_lines: Option<usize>,
    /// Only lines written at or after this time.
    pub since: Option<jiff::Timestamp>,
    /// Prefix each line with its RFC 3339 timestamp.
    pub timestamps: bool,
    /// Stop after this many bytes.
    pub limit_bytes: Option<usize>,
    /// The previous run's log.
    pub previous: bool,
}

impl LogOptions {
    /// Parses the query parameters kubectl sends; `sinceSeconds` counts back from `now`.
    pub fn from_query(pairs: &[(String, String)], now: jiff::Timestamp) -> Result<Self, String> {
        let mut o = LogOptions::default();
        let flag = |v: &str| v == "true" || v == "1";
        for (k, v) in pairs {
            match k.as_str() {
                "follow" => o.follow = flag(v),
                "timestamps" => o.timestamps = flag(v),
                "previous" => o.previous = flag(v),
                "tailLines" => {
                    let n: i64 = v.parse().map_err(|_| format!("invalid tailLines {v:?}"))?;
                    // kubectl sends -1 for "all".
                    o.tail_lines = (n >= 0).then_some(n as usize);
                }
                "limitBytes" => {
                    let n: usize = v.parse().map_err(|_| format!("invalid limitBytes {v:?}"))?;
                    if n == 0 {
                        return Err("limitBytes must be greater than zero".into());
                    }
                    o.limit_bytes = Some(n);
                }
                "sinceSeconds" => {
                    let n: i64 = v
                        .parse()
                        .map_err(|_| format!("invalid sinceSeconds {v:?}"))?;
                    if n < 1 {
                        return Err("sinceSeconds must be greater than zero".into());
                    }
                    o.since = now.checked_sub(jiff::SignedDuration::from_secs(n)).ok();
                }
                "sinceTime" => {
                    o.since = Some(v.parse().map_err(|_| format!("invalid sinceTime {v:?}"))?);
                }
                _ => {}
            }
        }
        Ok(o)
    }
}

/// One parsed line of a CRI log: `<timestamp> <stream> <P|F> <text>`.
#[derive(Debug, PartialEq)]
struct Record<'a> {
    time: &'a str,
    partial: bool,
    text: &'a [u8],
}

fn parse(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |&b| b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let _stream = parts.next()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or(b"");
    Some(Record {
        time,
        partial: tag == b"P",
        text,
    })
}

/// Turns CRI records into what the user sees, applying `since` and `timestamps`; partial
/// records are joined with the rest of their line.
struct Formatter {
    since: Option<jiff::Timestamp>,
    timestamps: bool,
    /// A partial line waiting for its end, with its first timestamp.
    pending: Option<(String, Vec<u8>)>,
}

impl Formatter {
    fn line(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
        let Some(r) = parse(raw) else { return };
        let (time, mut text) = match self.pending.take() {
            Some((t, mut text)) => {
                text.extend_from_slice(r.text);
                (t, text)
            }
            None => (r.time.to_owned(), r.text.to_vec()),
        };
        if r.partial {
            self.pending = Some((time, text));
            return;
        }
        if let Some(since) = self.since
            && time.parse::<jiff::Timestamp>().is_ok_and(|t| t < since)
        {
            return;
        }
        if self.timestamps {
            out.extend_from_slice(time.as_bytes());
            out.push(b' ');
        }
        out.append(&mut text);
        out.push(b'\n');
    }
}

/// Where the log a request wants is, and whether its container may still write to it.
#[derive(Debug, Clone)]
pub struct LogSource {
    /// The log file.
    pub path: PathBuf,
    /// Whether the container is running (follow waits for more).
    pub running: bool,
}

/// Streams a log into `tx` with `options`; `still_running` says, while following, whether
/// the container still runs (once it doesn't, what is left is sent and the stream ends).
pub async fn stream(
    source: LogSource,
    options: LogOptions,
    tx: mpsc::Sender<Bytes>,
    still_running: impl Fn() -> bool + Send + 'static,
) {
    let path = source.path.clone();
    let (first, mut offset) = match tokio::task::spawn_blocking({
        let options = options.clone();
        move || read_all(&path, &options)
    })
    .await
    {
        Ok(Ok(v)) => v,
        _ => return,
    };
    let mut sent = 0usize;
    if !send_limited(&tx, first, &mut sent, options.limit_bytes).await {
        return;
    }
    if !options.follow || !source.running {
        return;
    }
    let mut fmt = Formatter {
        since: options.since,
        timestamps: options.timestamps,
        pending: None,
    };
    let mut idle_after_exit = 0;
    loop {
        let running = still_running();
        let path = source.path.clone();
        let chunk = tokio::task::spawn_blocking(move || read_from(&path, offset))
            .await
            .ok()
            .and_then(Result::ok);
        if let Some((lines, next)) = chunk {
            offset = next;
            let mut out = Vec::new();
            for l in lines {
                fmt.line(&l, &mut out);
            }
            if !out.is_empty() {
                if !send_limited(&tx, out, &mut sent, options.limit_bytes).await {
                    return;
                }
                continue;
            }
        }
        if !running {
            // The shim writes its last lines just before the exit is recorded; one more
            // empty read after that means there is nothing left.
            idle_after_exit += 1;
            if idle_after_exit > 1 {
                return;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = tx.closed() => return,
        }
    }
}

async fn send_limited(
    tx: &mpsc::Sender<Bytes>,
    mut out: Vec<u8>,
    sent: &mut usize,
    limit: Option<usize>,
) -> bool {
    if let Some(limit) = limit {
        let room = limit.saturating_sub(*sent);
        out.truncate(room);
    }
    if out.is_empty() {
        return limit.is_none_or(|l| *sent < l);
    }
    *sent += out.len();
    tx.send(Bytes::from(out)).await.is_ok() && limit.is_none_or(|l| *sent < l)
}

/// The whole log as the user sees it, and the offset it was read up to.
fn read_all(path: &Path, options: &LogOptions) -> std::io::Result<(Vec<u8>, u64)> {
    let (lines, offset) = read_from(path, 0)?;
    let mut fmt = Formatter {
        since: options.since,
        timestamps: options.timestamps,
        pending: None,
    };
    let mut rendered: Vec<Vec<u8>> = Vec::new();
    for l in &lines {
        let mut out = Vec::new();
        fmt.line(l, &mut out);
        if !out.is_empty() {
            rendered.push(out);
        }
    }
    if let Some(n) = options.tail_lines {
        let skip = rendered.len().saturating_sub(n);
        rendered.drain(..skip);
    }
    Ok((rendered.concat(), offset))
}

/// The complete lines from `offset` on, and the offset after the last one.
fn read_from(path: &Path, offset: u64) -> std::io::Result<(Vec<Vec<u8>>, u64)> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), offset)),
        Err(e) => return Err(e),
    };
    file.seek(std::io::SeekFrom::Start(offset))?;
    let mut reader = std::io::BufReader::new(file);
    let mut lines = Vec::new();
    let mut at = offset;
    loop {
        let mut line = Vec::new();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 || !line.ends_with(b"\n") {
            break;
        }
        at += n as u64;
        lines.push(line);
    }
    Ok((lines, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_log(lines: &[&str]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(
            &path,
            lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
        )
        .unwrap();
        (dir, path)
    }

    const LOG: &[&str] = &[
        "2026-01-01T00:00:01.000000000Z stdout F one",
        "2026-01-01T00:00:02.000000000Z stderr P tw",
        "2026-01-01T00:00:02.500000000Z stderr F o",
        "2026-01-01T00:00:03.000000000Z stdout F three",
    ];

    #[test]
    fn logs_read_with_tail_since_and_timestamps() {
        let (_d, path) = write_log(LOG);
        let read = |o: LogOptions| String::from_utf8(read_all(&path, &o).unwrap().0).unwrap();
        assert_eq!(read(LogOptions::default()), "one\ntwo\nthree\n");
        assert_eq!(
            read(LogOptions {
                tail_lines: Some(1),
                ..Default::default()
            }),
            "three\n"
        );
        assert_eq!(
            read(LogOptions {
                tail_lines: Some(0),
                ..Default::default()
            }),
            ""
        );
        let since = "2026-01-01T00:00:02Z".parse().ok();
        assert_eq!(
            read(LogOptions {
                since,
                ..Default::default()
            }),
            "two\nthree\n"
        );
        assert_eq!(
            read(LogOptions {
                timestamps: true,
                tail_lines: Some(2),
                ..Default::default()
            }),
            "2026-01-01T00:00:02.000000000Z two\n2026-01-01T00:00:03.000000000Z three\n"
        );
    }

    #[test]
    fn query_parameters_parse_as_kubectl_sends_them() {
        let now: jiff::Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let q = |pairs: &[(&str, &str)]| {
            let pairs: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect();
            LogOptions::from_query(&pairs, now)
        };
        let o = q(&[
            ("follow", "true"),
            ("tailLines", "5"),
            ("sinceSeconds", "60"),
            ("previous", "true"),
        ])
        .unwrap();
        assert!(o.follow && o.previous);
        assert_eq!(o.tail_lines, Some(5));
        assert_eq!(o.since, "2026-01-01T00:00:00Z".parse().ok());
        assert_eq!(q(&[("tailLines", "-1")]).unwrap().tail_lines, None);
        assert!(q(&[("limitBytes", "0")]).is_err());
        assert!(q(&[("sinceSeconds", "x")]).is_err());
    }

    #[tokio::test]
    async fn a_followed_log_ends_once_the_container_has_exited() {
        let (_d, path) = write_log(&LOG[..1]);
        let (tx, mut rx) = mpsc::channel(16);
        let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let r = running.clone();
        let task = tokio::spawn(stream(
            LogSource {
                path: path.clone(),
                running: true,
            },
            LogOptions {
                follow: true,
                limit_bytes: Some(9),
                ..Default::default()
            },
            tx,
            move || r.load(std::sync::atomic::Ordering::SeqCst),
        ));
        assert_eq!(rx.recv().await.unwrap(), "one\n");
        std::fs::write(&path, format!("{}\n{}\n", LOG[0], LOG[3])).unwrap();
        running.store(false, std::sync::atomic::Ordering::SeqCst);
        // limitBytes 9 cuts "three\n" to "three" (4 + 5 bytes).
        assert_eq!(rx.recv().await.unwrap(), "three");
        assert!(rx.recv().await.is_none());
        task.await.unwrap();
    }
}
