//! HTTP helpers: bodies, responses, media types and query strings.

use std::convert::Infallible;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use skiff_core::status::{ApiError, Reason};

/// Every response body: whole or streamed.
pub type Body = BoxBody<Bytes, Infallible>;

/// A whole body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// The media type of JSON.
pub const JSON: &str = "application/json";
/// The media type of a server-side Table.
pub const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";
/// The media type of aggregated discovery.
pub const DISCOVERY_V2: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// A response with a body and content type.
pub fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// A JSON response.
pub fn json(status: StatusCode, value: &Value) -> Response<Body> {
    respond(status, JSON, serde_json::to_vec(value).unwrap_or_default())
}

/// A `Status` response for an error.
pub fn error(err: &ApiError) -> Response<Body> {
    let status =
        StatusCode::from_u16(err.reason.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = json(status, &err.to_status());
    if let Some(secs) = err.details.retry_after_seconds {
        resp.headers_mut()
            .insert("retry-after", HeaderValue::from(secs));
    }
    resp
}

/// What the client accepts, as far as the API cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Plain JSON objects.
    Json,
    /// A `meta.k8s.io/v1` Table.
    Table,
    /// Only the objects' metadata: `PartialObjectMetadata` (and `…List`), what client-go's
    /// and kube's metadata informers ask for.
    Metadata,
}

/// An object reduced to its metadata, as `PartialObjectMetadata` in `meta.k8s.io/v1`.
pub fn partial_metadata(object: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": object.get("metadata").cloned().unwrap_or_default(),
    })
}

/// One media range of an Accept header: type and parameters.
fn media_ranges(headers: &HeaderMap) -> Vec<(String, Vec<(String, String)>)> {
    headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let params = parts
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect();
            (media, params)
        })
        .collect()
}

fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Picks Table or JSON output from the Accept header; 406 if only unsupported types are
/// acceptable (answering JSON to protobuf-preferring clients is fine: they list JSON too).
pub fn negotiate(headers: &HeaderMap) -> Result<Output, ApiError> {
    let ranges = media_ranges(headers);
    if ranges.is_empty() {
        return Ok(Output::Json);
    }
    for (media, params) in &ranges {
        if media == "application/json"
            && param(params, "as") == Some("Table")
            && param(params, "g") == Some("meta.k8s.io")
        {
            return Ok(Output::Table);
        }
        if media == "application/json"
            && matches!(
                param(params, "as"),
                Some("PartialObjectMetadata" | "PartialObjectMetadataList")
            )
            && param(params, "g") == Some("meta.k8s.io")
            && matches!(param(params, "v"), Some("v1" | "v1beta1") | None)
        {
            return Ok(Output::Metadata);
        }
        let plain = param(params, "as").is_none();
        if plain
            && matches!(
                media.as_str(),
                "application/json" | "*/*" | "application/*" | "application/yaml"
            )
        {
            return Ok(Output::Json);
        }
    }
    Err(ApiError::new(
        Reason::NotAcceptable,
        "only the following media types are accepted: application/json, application/yaml, \
         application/vnd.kubernetes.protobuf",
    ))
}

/// Whether the client asks for aggregated discovery (`apidiscovery.k8s.io`, v2 or v2beta1).
pub fn wants_aggregated_discovery(headers: &HeaderMap) -> bool {
    media_ranges(headers).iter().any(|(media, params)| {
        media == "application/json"
            && param(params, "g") == Some("apidiscovery.k8s.io")
            && param(params, "as") == Some("APIGroupDiscoveryList")
    })
}

/// The body's media type, parameters stripped; JSON when absent (kubectl's `scale
/// --current-replicas` sends none).
pub fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| JSON.to_owned())
}

/// Reads a request body, refusing bodies over `limit` bytes with 413.
pub async fn read_body<B>(body: B, limit: usize) -> Result<Bytes, ApiError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let limited = http_body_util::Limited::new(body, limit);
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err)
            if err
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::new(
                Reason::RequestEntityTooLarge,
                format!("Request entity too large: limit is {limit}"),
            ))
        }
        Err(_) => Err(ApiError::bad_request("the request body could not be read")),
    }
}

/// Decoded query parameters, in order, repeats kept.
#[derive(Clone, Debug, Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    /// Parses `a=b&c=d`, decoding `%XX` and `+`.
    pub fn parse(query: Option<&str>) -> Self {
        Query(skiff_core::query::parse(query.unwrap_or_default()))
    }

    /// The first value of a parameter.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a parameter.
    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean parameter (`true`/`1`).
    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(accept: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::ACCEPT, HeaderValue::from_str(accept).unwrap());
        h
    }

    #[test]
    fn metadata_only_is_what_metadata_informers_ask_for() {
        // kube's metadata_watcher (lists and watches alike) and client-go's metadata client.
        for accept in [
            "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
            "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
            "application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json",
        ] {
            assert_eq!(
                negotiate(&headers(accept)).unwrap(),
                Output::Metadata,
                "{accept}"
            );
        }
        let object =
            serde_json::json!({"kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": "v"}});
        assert_eq!(
            partial_metadata(&object),
            serde_json::json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": {"name": "a"}})
        );
    }

    #[test]
    fn negotiates_tables_json_and_discovery() {
        let kubectl_get = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(negotiate(&headers(kubectl_get)).unwrap(), Output::Table);
        assert_eq!(
            negotiate(&headers(
                "application/vnd.kubernetes.protobuf,application/json"
            ))
            .unwrap(),
            Output::Json
        );
        assert_eq!(
            negotiate(&headers("application/json, */*")).unwrap(),
            Output::Json
        );
        assert!(negotiate(&headers("application/vnd.kubernetes.protobuf")).is_err());
        let disco = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert!(wants_aggregated_discovery(&headers(disco)));
        assert!(!wants_aggregated_discovery(&headers("application/json")));
    }

    #[test]
    fn queries_decode() {
        let q = Query::parse(Some(
            "labelSelector=app+in+%28web%2Cdb%29%2Ctier%21%3Dbackend&limit=500&dryRun=All&bad=%zz&end=%4",
        ));
        assert_eq!(
            q.get("labelSelector"),
            Some("app in (web,db),tier!=backend")
        );
        assert_eq!(q.get("limit"), Some("500"));
        assert_eq!(q.get("bad"), Some("%zz"));
        assert_eq!(q.get("end"), Some("%4"));
        assert!(q.get("nope").is_none());
    }
}
