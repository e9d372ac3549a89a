//! Byte layouts of the redb tables.
//!
//! An object value is its revision (8 bytes, little-endian) followed by its JSON, so that a
//! precondition check never parses JSON. A history record is the event type, the key, the
//! new object, and the previous value (revision and JSON) if there was one, each
//! length-prefixed.

use bytes::Bytes;

use crate::{EventType, Revision, Stored};

/// Encodes an object value.
pub(crate) fn encode_value(revision: Revision, json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + json.len());
    out.extend_from_slice(&revision.to_le_bytes());
    out.extend_from_slice(json);
    out
}

/// Splits an object value into its revision and JSON; `None` if it is too short.
pub(crate) fn decode_value(raw: &[u8]) -> Option<(Revision, &[u8])> {
    let (rev, json) = raw.split_first_chunk::<8>()?;
    Some((u64::from_le_bytes(*rev), json))
}

/// Decodes an object value into a [`Stored`] for `key`.
pub(crate) fn stored(key: &str, raw: &[u8]) -> Option<Stored> {
    let (revision, json) = decode_value(raw)?;
    Some(Stored {
        key: key.to_owned(),
        revision,
        data: Bytes::copy_from_slice(json),
    })
}

/// One history record, borrowed from the bytes it was decoded from.
pub(crate) struct Record<'a> {
    pub kind: EventType,
    pub key: &'a str,
    pub object: &'a [u8],
    pub prev: Option<(Revision, &'a [u8])>,
}

pub(crate) fn encode_record(record: &Record<'_>) -> Vec<u8> {
    let prev_len = record.prev.map_or(0, |(_, p)| 12 + p.len());
    let mut out = Vec::with_capacity(10 + record.key.len() + record.object.len() + prev_len);
    out.push(match record.kind {
        EventType::Added => 0,
        EventType::Modified => 1,
        EventType::Deleted => 2,
    });
    put_chunk(&mut out, record.key.as_bytes());
    put_chunk(&mut out, record.object);
    if let Some((rev, prev)) = record.prev {
        out.extend_from_slice(&rev.to_le_bytes());
        put_chunk(&mut out, prev);
    }
    out
}

pub(crate) fn decode_record(raw: &[u8]) -> Option<Record<'_>> {
    let (&kind, rest) = raw.split_first()?;
    let kind = match kind {
        0 => EventType::Added,
        1 => EventType::Modified,
        2 => EventType::Deleted,
        _ => return None,
    };
    let (key, rest) = take_chunk(rest)?;
    let (object, rest) = take_chunk(rest)?;
    let prev = if rest.is_empty() {
        None
    } else {
        let (rev, rest) = rest.split_first_chunk::<8>()?;
        let (prev, rest) = take_chunk(rest)?;
        if !rest.is_empty() {
            return None;
        }
        Some((u64::from_le_bytes(*rev), prev))
    };
    Some(Record {
        kind,
        key: std::str::from_utf8(key).ok()?,
        object,
        prev,
    })
}

fn put_chunk(out: &mut Vec<u8>, chunk: &[u8]) {
    let len = u32::try_from(chunk.len()).expect("objects are far below 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(chunk);
}

fn take_chunk(raw: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = raw.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len) as usize;
    (rest.len() >= len).then(|| rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_with_and_without_prev() {
        for prev in [None, Some((7, &b"{\"a\":1}"[..]))] {
            let raw = encode_record(&Record {
                kind: EventType::Modified,
                key: "core/pods/default/web",
                object: b"{\"b\":2}",
                prev,
            });
            let back = decode_record(&raw).expect("decodes");
            assert_eq!(back.kind, EventType::Modified);
            assert_eq!(back.key, "core/pods/default/web");
            assert_eq!(back.object, b"{\"b\":2}");
            assert_eq!(back.prev, prev);
        }
    }

    #[test]
    fn truncated_record_is_rejected_not_panicking() {
        let raw = encode_record(&Record {
            kind: EventType::Deleted,
            key: "k",
            object: b"{}",
            prev: Some((3, b"{}")),
        });
        for cut in 0..raw.len() {
            // Every strict prefix is invalid, except the one that ends exactly before prev.
            let decoded = decode_record(&raw[..cut]);
            if let Some(r) = decoded {
                assert!(r.prev.is_none());
            }
        }
        assert!(decode_record(&[9]).is_none());
    }

    #[test]
    fn value_carries_revision() {
        let raw = encode_value(42, b"{}");
        assert_eq!(decode_value(&raw), Some((42, &b"{}"[..])));
        assert!(decode_value(b"short").is_none());
    }
}
