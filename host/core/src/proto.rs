//! Kubernetes protobuf request bodies, decoded into the objects' JSON form.
//!
//! client-go's typed clients send `application/vnd.kubernetes.protobuf` bodies: kubectl does
//! for `create namespace|deployment|configmap|secret|job|...`, `auth can-i` and `auth whoami`.
//! A body is the magic `k8s\0` followed by a `runtime.Unknown` message whose `typeMeta` names
//! the kind and whose `raw` field holds the object's own message.
//!
//! One generic decoder walks the wire format guided by a generated table
//! (`generated/proto_table.rs`, made by `tools/gen_proto_table.py` from k8s-pb and
//! k8s-openapi) that gives, for every message of the kinds skiff serves, each field's tag,
//! JSON name, type and label. The result is the JSON a Go API server would see after decoding
//! the same bytes into its structs:
//!
//! - Go's marshaller writes every non-pointer scalar even when it is zero; Go's JSON omits
//!   those zeros (`omitempty`), so the decoder drops them too, except for pointer fields
//!   (`replicas: 0` is meaningful) and required ones ([`Label::Keep`]);
//! - embedded structs that JSON inlines (`Volume.volumeSource`) are merged into their parent;
//! - `Quantity`, `Time`, `MicroTime`, `IntOrString`, `RawExtension` and the
//!   apiextensions schema unions take their JSON forms ([`Form`]).
//!
//! Fields the table does not know (newer than this version of skiff) are skipped, as protobuf
//! decoders do.
//!
//! ```
//! // `kubectl create namespace demo`, as kubectl 1.32 sends it.
//! let ns = [0x0a, 0x06, 0x0a, 0x04, b'd', b'e', b'm', b'o', 0x12, 0x00];
//! let unknown: Vec<u8> = [&[0x0a, 0x0f, 0x0a, 0x02, b'v', b'1', 0x12, 0x09][..], b"Namespace",
//!     &[0x12, ns.len() as u8], &ns].concat();
//! let body = [&b"k8s\0"[..], &unknown].concat();
//! let obj = skiff_core::proto::decode_envelope(&body).unwrap();
//! assert_eq!(obj, serde_json::json!({
//!     "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}, "spec": {}
//! }));
//! ```

use base64::Engine as _;
use serde_json::{Map, Value};

#[path = "generated/proto_table.rs"]
mod table;

/// The prefix of every Kubernetes protobuf body.
pub const MAGIC: &[u8; 4] = b"k8s\0";

/// Messages nest at most this deep (a hostile body must not exhaust the stack).
const MAX_DEPTH: usize = 100;

/// A protobuf body could not be decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// The body does not start with `k8s\0`.
    #[error("the body does not start with the Kubernetes protobuf prefix k8s\\0")]
    MissingMagic,
    /// The envelope names a kind this server has no protobuf layout for.
    #[error("{kind} ({api_version}) cannot be sent as protobuf; send it as JSON")]
    UnknownKind {
        /// The envelope's `apiVersion`.
        api_version: String,
        /// The envelope's `kind`.
        kind: String,
    },
    /// The envelope's `contentEncoding` is set (no Kubernetes client sets it).
    #[error("content encoding {encoding:?} is not supported")]
    ContentEncoding {
        /// The encoding named.
        encoding: String,
    },
    /// A message ends inside a field.
    #[error("{message} is truncated")]
    Truncated {
        /// The message being read.
        message: &'static str,
    },
    /// A varint is longer than ten bytes.
    #[error("{message} has a malformed varint")]
    Varint {
        /// The message being read.
        message: &'static str,
    },
    /// A field arrived with a wire type its declared type can't have.
    #[error("field {field} of {message} has wire type {wire_type}, which does not fit its type")]
    WireType {
        /// The message being read.
        message: &'static str,
        /// The field's JSON name (or tag).
        field: String,
        /// The wire type on the wire.
        wire_type: u8,
    },
    /// A field uses a wire type protobuf does not define.
    #[error("{message} uses the unknown wire type {wire_type}")]
    UnknownWireType {
        /// The message being read.
        message: &'static str,
        /// The wire type.
        wire_type: u8,
    },
    /// A string field is not UTF-8.
    #[error("field {field} of {message} is not valid UTF-8")]
    Utf8 {
        /// The message being read.
        message: &'static str,
        /// The field's JSON name.
        field: String,
    },
    /// Raw JSON (a `RawExtension`, `FieldsV1` or schema `JSON`) does not parse.
    #[error("the raw JSON in {message} does not parse")]
    RawJson {
        /// The message being read.
        message: &'static str,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A timestamp is outside the range of dates.
    #[error("{message} holds a time out of range")]
    TimeRange {
        /// The message being read.
        message: &'static str,
    },
    /// Messages nest deeper than any real object does.
    #[error("messages nest more than {MAX_DEPTH} deep")]
    TooDeep,
}

/// One message of the table.
#[derive(Debug)]
pub(crate) struct Message {
    /// The OpenAPI definition name (`io.k8s.api.core.v1.Pod`), for errors.
    pub(crate) name: &'static str,
    /// How the message appears in JSON.
    pub(crate) form: Form,
    /// The fields, sorted by tag.
    pub(crate) fields: &'static [Field],
}

/// A field: tag, JSON name (empty for [`Label::Inline`]), type and label.
#[derive(Debug)]
pub(crate) struct Field(
    pub(crate) u32,
    pub(crate) &'static str,
    pub(crate) Ty,
    pub(crate) Label,
);

/// The type of a field (of a map's values, for [`Label::Map`]).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ty {
    /// `string`.
    Str,
    /// `bytes`, base64 in JSON.
    Bytes,
    /// `int32` / `int64`.
    Int,
    /// `bool`.
    Bool,
    /// `double`.
    Double,
    /// A message.
    Msg(&'static Message),
}

/// How a field occurs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Label {
    /// Optional; a zero scalar is dropped (a non-pointer Go field with `omitempty`).
    One,
    /// A scalar whose zero is kept: a Go pointer (`*int32`) or a required field.
    Keep,
    /// Repeated.
    Many,
    /// `map<string, Ty>`.
    Map,
    /// An embedded message whose fields JSON inlines into the parent.
    Inline,
}

/// How a message appears in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// An object of its fields.
    Object,
    /// `resource.Quantity`: its string.
    Quantity,
    /// `metav1.Time`: RFC 3339 in whole seconds; omitted when zero.
    Time,
    /// `metav1.MicroTime`: RFC 3339 in microseconds; omitted when zero.
    MicroTime,
    /// `intstr.IntOrString`: a number or a string.
    IntOrString,
    /// Raw JSON bytes (`RawExtension`, `FieldsV1`, apiextensions `JSON`).
    RawJson,
    /// `JSONSchemaPropsOrArray`: a schema or an array of schemas.
    SchemaOrArray,
    /// `JSONSchemaPropsOrBool`: a schema or a bool.
    SchemaOrBool,
    /// `JSONSchemaPropsOrStringArray`: a schema or an array of strings.
    SchemaOrStringArray,
    /// A Go `[]string` type (`ExtraValue`): its `items`.
    StringList,
}

/// Decodes a `k8s\0`-prefixed protobuf body into the object's JSON form, with `apiVersion`
/// and `kind` from the envelope.
pub fn decode_envelope(body: &[u8]) -> Result<Value, ProtoError> {
    let unknown = body.strip_prefix(MAGIC).ok_or(ProtoError::MissingMagic)?;
    let (mut api_version, mut kind, mut raw, mut encoding) =
        (String::new(), String::new(), None, String::new());
    let mut r = Reader::new(unknown, "runtime.Unknown");
    while let Some((tag, wire)) = r.key()? {
        match (tag, wire) {
            (1, 2) => {
                let mut t = Reader::new(r.bytes()?, "runtime.TypeMeta");
                while let Some((tag, wire)) = t.key()? {
                    match (tag, wire) {
                        (1, 2) => api_version = t.string("apiVersion")?,
                        (2, 2) => kind = t.string("kind")?,
                        _ => t.skip(wire)?,
                    }
                }
            }
            (2, 2) => raw = Some(r.bytes()?),
            (3, 2) => encoding = r.string("contentEncoding")?,
            _ => r.skip(wire)?,
        }
    }
    if !encoding.is_empty() {
        return Err(ProtoError::ContentEncoding { encoding });
    }
    let message = lookup(&api_version, &kind).ok_or_else(|| ProtoError::UnknownKind {
        api_version: api_version.clone(),
        kind: kind.clone(),
    })?;
    let mut object = Map::new();
    object.insert("apiVersion".to_owned(), Value::String(api_version));
    object.insert("kind".to_owned(), Value::String(kind));
    decode_fields(message, raw.unwrap_or_default(), &mut object, 0)?;
    Ok(Value::Object(object))
}

fn lookup(api_version: &str, kind: &str) -> Option<&'static Message> {
    if let Ok(i) = table::KINDS.binary_search_by(|(v, k, _)| (*v, *k).cmp(&(api_version, kind))) {
        return Some(table::KINDS[i].2);
    }
    table::META_KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, m)| *m)
}

/// Decodes one message into its JSON form; `None` when the form omits it (a zero time).
fn decode_message(
    m: &'static Message,
    bytes: &[u8],
    depth: usize,
) -> Result<Option<Value>, ProtoError> {
    if depth > MAX_DEPTH {
        return Err(ProtoError::TooDeep);
    }
    if m.form == Form::Object {
        let mut object = Map::new();
        decode_fields(m, bytes, &mut object, depth)?;
        return Ok(Some(Value::Object(object)));
    }
    if m.form == Form::RawJson {
        let mut r = Reader::new(bytes, m.name);
        let mut raw: &[u8] = &[];
        while let Some((tag, wire)) = r.key()? {
            match (tag, wire) {
                (1, 2) => raw = r.bytes()?,
                _ => r.skip(wire)?,
            }
        }
        return if raw.is_empty() {
            Ok(None)
        } else {
            raw_json(m, raw).map(Some)
        };
    }
    // The other special forms are small: read their fields by tag, every value kept, then
    // shape them.
    let mut parts: Vec<(u32, Value)> = Vec::new();
    let mut r = Reader::new(bytes, m.name);
    while let Some((tag, wire)) = r.key()? {
        let Some(field) = find(m, tag) else {
            r.skip(wire)?;
            continue;
        };
        if field.3 == Label::Many {
            let mut items = Vec::new();
            read_values(&mut r, m, field, wire, depth, &mut items)?;
            match parts.iter_mut().find(|(t, _)| *t == tag) {
                Some((_, Value::Array(existing))) => existing.extend(items),
                _ => parts.push((tag, Value::Array(items))),
            }
        } else if let Some(v) = read_value(&mut r, m, field, wire, depth)? {
            parts.retain(|(t, _)| *t != tag);
            parts.push((tag, v));
        }
    }
    let part = |tag: u32| {
        parts
            .iter()
            .find(|(t, _)| *t == tag)
            .map(|(_, v)| v.clone())
    };
    let int = |tag: u32| part(tag).and_then(|v| v.as_i64()).unwrap_or(0);
    Ok(match m.form {
        Form::Object | Form::RawJson => unreachable!("handled above"),
        Form::Quantity => Some(part(1).unwrap_or_else(|| Value::String("0".to_owned()))),
        Form::Time | Form::MicroTime => {
            let (seconds, nanos) = (int(1), int(2));
            if seconds == 0 && nanos == 0 {
                return Ok(None);
            }
            let range = || ProtoError::TimeRange { message: m.name };
            let t = jiff::Timestamp::new(seconds, i32::try_from(nanos).map_err(|_| range())?)
                .map_err(|_| range())?;
            Some(Value::String(if m.form == Form::Time {
                crate::time::format_time(t)
            } else {
                crate::time::format_micro_time(t)
            }))
        }
        Form::IntOrString => {
            if int(1) == 1 {
                Some(part(3).unwrap_or_else(|| Value::String(String::new())))
            } else {
                Some(Value::from(int(2)))
            }
        }
        Form::SchemaOrArray | Form::SchemaOrStringArray => Some(
            part(1)
                .or_else(|| part(2))
                .unwrap_or(Value::Array(Vec::new())),
        ),
        Form::SchemaOrBool => Some(part(2).or_else(|| part(1)).unwrap_or(Value::Bool(false))),
        Form::StringList => Some(part(1).unwrap_or(Value::Array(Vec::new()))),
    })
}

/// Raw bytes are JSON, or (for an object embedded by a protobuf client) a nested envelope.
fn raw_json(m: &'static Message, bytes: &[u8]) -> Result<Value, ProtoError> {
    if bytes.starts_with(MAGIC) {
        return decode_envelope(bytes);
    }
    serde_json::from_slice(bytes).map_err(|source| ProtoError::RawJson {
        message: m.name,
        source,
    })
}

/// Decodes the fields of an object message into `object` (inlined messages merge into it).
fn decode_fields(
    m: &'static Message,
    bytes: &[u8],
    object: &mut Map<String, Value>,
    depth: usize,
) -> Result<(), ProtoError> {
    if depth > MAX_DEPTH {
        return Err(ProtoError::TooDeep);
    }
    let mut r = Reader::new(bytes, m.name);
    while let Some((tag, wire)) = r.key()? {
        let Some(field) = find(m, tag) else {
            r.skip(wire)?;
            continue;
        };
        let Field(_, json, ty, label) = *field;
        match label {
            Label::One | Label::Keep => {
                if let Some(v) = read_value(&mut r, m, field, wire, depth)?
                    && (label == Label::Keep || !is_zero(&v) || matches!(ty, Ty::Msg(_)))
                {
                    object.insert(json.to_owned(), v);
                }
            }
            Label::Many => {
                let entry = object
                    .entry(json.to_owned())
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(items) = entry {
                    read_values(&mut r, m, field, wire, depth, items)?;
                }
            }
            Label::Map => {
                expect_wire(m, field, wire, 2)?;
                let (key, value) = map_entry(r.bytes()?, m, field, depth)?;
                let entry = object
                    .entry(json.to_owned())
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(map) = entry {
                    map.insert(key, value);
                }
            }
            Label::Inline => {
                expect_wire(m, field, wire, 2)?;
                let Ty::Msg(inner) = ty else {
                    unreachable!("the generator inlines only messages")
                };
                decode_fields(inner, r.bytes()?, object, depth + 1)?;
            }
        }
    }
    Ok(())
}

fn find(m: &'static Message, tag: u32) -> Option<&'static Field> {
    m.fields
        .binary_search_by_key(&tag, |f| f.0)
        .ok()
        .map(|i| &m.fields[i])
}

/// A map entry: `key` = 1, `value` = 2; a missing value is its type's zero.
fn map_entry(
    bytes: &[u8],
    m: &'static Message,
    field: &'static Field,
    depth: usize,
) -> Result<(String, Value), ProtoError> {
    let mut r = Reader::new(bytes, m.name);
    let (mut key, mut value) = (String::new(), None);
    while let Some((tag, wire)) = r.key()? {
        match tag {
            1 => {
                expect_wire(m, field, wire, 2)?;
                key = r.string(field.1)?;
            }
            2 => value = read_value(&mut r, m, field, wire, depth)?,
            _ => r.skip(wire)?,
        }
    }
    let value = match value {
        Some(v) => v,
        None => match field.2 {
            Ty::Msg(inner) => decode_message(inner, &[], depth + 1)?.unwrap_or(Value::Null),
            ty => zero(ty),
        },
    };
    Ok((key, value))
}

/// Reads one value of `field`'s type.
fn read_value(
    r: &mut Reader<'_>,
    m: &'static Message,
    field: &'static Field,
    wire: u8,
    depth: usize,
) -> Result<Option<Value>, ProtoError> {
    Ok(Some(match field.2 {
        Ty::Str => {
            expect_wire(m, field, wire, 2)?;
            Value::String(r.string(field.1)?)
        }
        Ty::Bytes => {
            expect_wire(m, field, wire, 2)?;
            Value::String(base64::engine::general_purpose::STANDARD.encode(r.bytes()?))
        }
        Ty::Int => {
            expect_wire(m, field, wire, 0)?;
            // int32 negatives are sign-extended to 64 bits on the wire.
            Value::from(r.varint()? as i64)
        }
        Ty::Bool => {
            expect_wire(m, field, wire, 0)?;
            Value::Bool(r.varint()? != 0)
        }
        Ty::Double => {
            expect_wire(m, field, wire, 1)?;
            Value::from(f64::from_bits(r.fixed64()?))
        }
        Ty::Msg(inner) => {
            expect_wire(m, field, wire, 2)?;
            return decode_message(inner, r.bytes()?, depth + 1);
        }
    }))
}

/// Reads one occurrence of a repeated field: one value, or a packed run of numbers.
fn read_values(
    r: &mut Reader<'_>,
    m: &'static Message,
    field: &'static Field,
    wire: u8,
    depth: usize,
    items: &mut Vec<Value>,
) -> Result<(), ProtoError> {
    let numeric = matches!(field.2, Ty::Int | Ty::Bool | Ty::Double);
    if numeric && wire == 2 {
        let mut packed = Reader::new(r.bytes()?, m.name);
        let element_wire = if matches!(field.2, Ty::Double) { 1 } else { 0 };
        while !packed.done() {
            if let Some(v) = read_value(&mut packed, m, field, element_wire, depth)? {
                items.push(v);
            }
        }
        return Ok(());
    }
    let v = read_value(r, m, field, wire, depth)?;
    items.push(v.unwrap_or(Value::Null));
    Ok(())
}

fn expect_wire(m: &'static Message, field: &Field, wire: u8, want: u8) -> Result<(), ProtoError> {
    if wire == want {
        return Ok(());
    }
    Err(ProtoError::WireType {
        message: m.name,
        field: if field.1.is_empty() {
            field.0.to_string()
        } else {
            field.1.to_owned()
        },
        wire_type: wire,
    })
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Bool(b) => !b,
        _ => false,
    }
}

fn zero(ty: Ty) -> Value {
    match ty {
        Ty::Str | Ty::Bytes => Value::String(String::new()),
        Ty::Int => Value::from(0),
        Ty::Double => Value::from(0.0),
        Ty::Bool => Value::Bool(false),
        Ty::Msg(_) => Value::Null,
    }
}

/// A cursor over one message's bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    message: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], message: &'static str) -> Self {
        Reader {
            buf,
            pos: 0,
            message,
        }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn truncated(&self) -> ProtoError {
        ProtoError::Truncated {
            message: self.message,
        }
    }

    /// The next field's (tag, wire type), or `None` at the end.
    fn key(&mut self) -> Result<Option<(u32, u8)>, ProtoError> {
        if self.done() {
            return Ok(None);
        }
        let key = self.varint()?;
        let wire = (key & 7) as u8;
        let tag = u32::try_from(key >> 3).map_err(|_| self.truncated())?;
        Ok(Some((tag, wire)))
    }

    fn varint(&mut self) -> Result<u64, ProtoError> {
        let mut value = 0u64;
        for i in 0..10 {
            let byte = *self.buf.get(self.pos).ok_or_else(|| self.truncated())?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ProtoError::Varint {
            message: self.message,
        })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| self.truncated())?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn bytes(&mut self) -> Result<&'a [u8], ProtoError> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| self.truncated())?;
        self.take(len)
    }

    fn string(&mut self, field: &str) -> Result<String, ProtoError> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes.to_vec()).map_err(|_| ProtoError::Utf8 {
            message: self.message,
            field: field.to_owned(),
        })
    }

    fn fixed64(&mut self) -> Result<u64, ProtoError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("took 8 bytes")))
    }

    /// Skips a field of an unknown tag.
    fn skip(&mut self, wire: u8) -> Result<(), ProtoError> {
        match wire {
            0 => self.varint().map(drop),
            1 => self.take(8).map(drop),
            2 => self.bytes().map(drop),
            5 => self.take(4).map(drop),
            wire_type => Err(ProtoError::UnknownWireType {
                message: self.message,
                wire_type,
            }),
        }
    }
}
