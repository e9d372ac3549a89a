//! Kubernetes protobuf request bodies (placeholder until the generated decoder lands).

/// A protobuf body could not be decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// Not decoded yet.
    #[error("protobuf bodies are not decoded yet")]
    Unsupported,
}

/// Decodes a `k8s\0`-prefixed protobuf body into the object's JSON form.
pub fn decode_envelope(_body: &[u8]) -> Result<serde_json::Value, ProtoError> {
    Err(ProtoError::Unsupported)
}
