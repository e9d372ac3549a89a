//! skiff's registry client, over oci-client: pulls Wasm plugin components stored as OCI
//! artifacts (and, for the node agent, container images), and pushes components for
//! `skiff plugin push`.
//!
//! Components follow the CNCF Wasm OCI artifact layout that `wkg oci push` and `oras` write:
//! one layer of media type `application/wasm` and a config of media type
//! `application/vnd.wasm.config.v0+json`. The older `wasm-to-oci` layer type is accepted on
//! pull. Registries are reached over HTTPS unless named insecure, like containerd's
//! insecure registries: plain HTTP is for loopback registries in tests and on laptops.

use std::str::FromStr as _;
use std::time::Duration;

use futures::StreamExt as _;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::config::Architecture;
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{
    ImageIndexEntry, OciDescriptor, OciImageManifest, WASM_LAYER_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use tracing::{debug, instrument};

/// The layer media type of a Wasm component (CNCF Wasm OCI artifact).
pub const WASM_LAYER: &str = "application/wasm";
pub use oci_client::manifest::OciDescriptor as Descriptor;

/// The config media type of a Wasm component (CNCF Wasm OCI artifact).
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";

/// Components larger than this are refused before their bytes are fetched: a registry is
/// not trusted to send a sane size, and the whole component is held in memory to compile.
pub const MAX_COMPONENT_BYTES: u64 = 64 << 20;

/// A whole pull (manifest and blob) gives up after this long: the per-read timeout alone
/// lets a registry that trickles bytes hold a pull forever.
pub const PULL_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a pull or push failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OciError {
    /// The reference doesn't parse (`registry/repository:tag` or `...@sha256:...`).
    #[error("{reference:?} is not an OCI reference: {message}")]
    Reference {
        /// The reference as given.
        reference: String,
        /// What is wrong with it.
        message: String,
    },
    /// The registry refused, could not be reached, or sent something malformed.
    #[error("the registry request for {reference} failed")]
    Registry {
        /// The reference.
        reference: String,
        /// oci-client's error.
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    /// The artifact is not a single Wasm component.
    #[error("{reference} is not a Wasm component artifact: {message}")]
    NotAComponent {
        /// The reference.
        reference: String,
        /// What was found instead.
        message: String,
    },
    /// The pull took longer than [`PULL_TIMEOUT`].
    #[error("pulling {reference} took longer than {}s", PULL_TIMEOUT.as_secs())]
    Timeout {
        /// The reference.
        reference: String,
    },
}

impl OciError {
    /// Whether trying again later may succeed: the registry was unreachable, overloaded or
    /// slow, or doesn't have the tag yet (it may be pushed next). A malformed reference, a
    /// refused login, or an artifact that is no component stays that way.
    pub fn is_transient(&self) -> bool {
        match self {
            OciError::Timeout { .. } => true,
            OciError::Registry { source, .. } => {
                matches!(
                    source,
                    OciDistributionError::RequestError(_)
                        | OciDistributionError::IoError(_)
                        | OciDistributionError::RegistryError { .. }
                ) || matches!(source, OciDistributionError::ServerError { code, .. } if *code >= 500 || *code == 429)
            }
            OciError::Reference { .. } | OciError::NotAComponent { .. } => false,
        }
    }
}

/// A component pulled from a registry.
#[derive(Debug, Clone)]
pub struct Component {
    /// The manifest digest the reference resolved to (`sha256:...`).
    pub manifest_digest: String,
    /// The component's bytes, checked against the layer digest.
    pub bytes: Vec<u8>,
}

/// A container image's manifest, resolved for this host's platform.
#[derive(Debug, Clone)]
pub struct ImageManifest {
    /// The manifest's digest (`sha256:...`).
    pub digest: String,
    /// The image config (JSON).
    pub config: String,
    /// The layers, bottom first.
    pub layers: Vec<OciDescriptor>,
}

/// A registry client; cheap to clone (one connection pool, one token cache).
#[derive(Clone)]
pub struct Registry {
    client: Client,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    /// A client that speaks plain HTTP to the registries in `insecure` (`host:port` as in
    /// references) and HTTPS with the system's roots to every other one.
    pub fn new(insecure: &[String]) -> Self {
        // reqwest is built without a crypto provider of its own; skiff uses ring throughout.
        // Installing fails only when one is already installed, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(insecure.to_vec()),
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(30)),
            platform_resolver: Some(Box::new(wasm_first)),
            ..Default::default()
        };
        Registry {
            client: Client::new(config),
        }
    }

    /// Pulls the Wasm component that `reference` names, anonymously.
    #[instrument(skip(self), err)]
    pub async fn pull_component(&self, reference: &str) -> Result<Component, OciError> {
        tokio::time::timeout(PULL_TIMEOUT, self.pull(reference))
            .await
            .unwrap_or_else(|_| {
                Err(OciError::Timeout {
                    reference: reference.to_owned(),
                })
            })
    }

    async fn pull(&self, reference: &str) -> Result<Component, OciError> {
        let image = parse(reference)?;
        let registry = registry_error(reference);
        let (manifest, manifest_digest) = self
            .client
            .pull_image_manifest(&image, &RegistryAuth::Anonymous)
            .await
            .map_err(registry)?;
        let layer = component_layer(&manifest).map_err(|message| OciError::NotAComponent {
            reference: reference.to_owned(),
            message,
        })?;
        // The declared size was checked against the cap; the registry is held to it while
        // the bytes stream in (oci-client checks the digest only at the end).
        let declared = usize::try_from(layer.size).unwrap_or(0);
        let mut stream = self
            .client
            .pull_blob_stream(&image, layer)
            .await
            .map_err(registry)?;
        let mut bytes = Vec::with_capacity(declared);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| registry(OciDistributionError::IoError(e)))?;
            if bytes.len() + chunk.len() > declared {
                return Err(OciError::NotAComponent {
                    reference: reference.to_owned(),
                    message: format!("the registry sent more than the {declared} bytes declared"),
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        debug!(%manifest_digest, bytes = bytes.len(), "pulled component");
        Ok(Component {
            manifest_digest,
            bytes,
        })
    }

    /// The manifest (for this host's platform, when `reference` names an index) and config
    /// of a container image, anonymously.
    #[instrument(skip(self), err)]
    pub async fn pull_image_manifest(&self, reference: &str) -> Result<ImageManifest, OciError> {
        let image = parse(reference)?;
        let pull = self
            .client
            .pull_manifest_and_config(&image, &RegistryAuth::Anonymous);
        let (manifest, digest, config) = tokio::time::timeout(PULL_TIMEOUT, pull)
            .await
            .map_err(|_| OciError::Timeout {
                reference: reference.to_owned(),
            })?
            .map_err(registry_error(reference))?;
        Ok(ImageManifest {
            digest,
            config,
            layers: manifest.layers,
        })
    }

    /// Streams one blob of `reference`'s repository into `out`; the digest is checked as
    /// the bytes arrive and a mismatch is an error.
    #[instrument(skip(self, layer, out), fields(digest = %layer.digest), err)]
    pub async fn pull_blob(
        &self,
        reference: &str,
        layer: &OciDescriptor,
        out: impl tokio::io::AsyncWrite + Unpin,
    ) -> Result<(), OciError> {
        let image = parse(reference)?;
        self.client
            .pull_blob(&image, layer, out)
            .await
            .map_err(registry_error(reference))
    }

    /// Pushes `component` to `reference` as a Wasm OCI artifact, anonymously; returns the
    /// manifest's URL.
    #[instrument(skip(self, component), fields(bytes = component.len()), err)]
    pub async fn push_component(
        &self,
        reference: &str,
        component: Vec<u8>,
    ) -> Result<String, OciError> {
        let image = parse(reference)?;
        let layers = [ImageLayer::new(component, WASM_LAYER.to_owned(), None)];
        // The CNCF artifact's config names the layer's digest and the OS/arch "wasip2".
        let config = format!(
            r#"{{"architecture":"wasm","os":"wasip2","layerDigests":["{}"]}}"#,
            layers[0].sha256_digest()
        );
        let config = Config::new(config.into_bytes(), WASM_CONFIG.to_owned(), None);
        let response = self
            .client
            .push(&image, &layers, config, &RegistryAuth::Anonymous, None)
            .await
            .map_err(registry_error(reference))?;
        Ok(response.manifest_url)
    }
}

/// A reference normalized as the kubelet and containerd do: `busybox` is
/// `docker.io/library/busybox:latest`.
pub fn normalize_reference(reference: &str) -> Result<String, OciError> {
    parse(reference).map(|r| r.whole())
}

fn parse(reference: &str) -> Result<Reference, OciError> {
    Reference::from_str(reference).map_err(|e| OciError::Reference {
        reference: reference.to_owned(),
        message: e.to_string(),
    })
}

fn registry_error(reference: &str) -> impl Fn(OciDistributionError) -> OciError + Copy + '_ {
    move |source| OciError::Registry {
        reference: reference.to_owned(),
        source,
    }
}

/// The one Wasm layer of a component artifact, if the manifest is one and not too big.
fn component_layer(manifest: &OciImageManifest) -> Result<&OciDescriptor, String> {
    let wasm: Vec<_> = manifest
        .layers
        .iter()
        .filter(|l| [WASM_LAYER, WASM_LAYER_MEDIA_TYPE].contains(&l.media_type.as_str()))
        .collect();
    let layer = match wasm.as_slice() {
        [one] => *one,
        [] => {
            let types: Vec<_> = manifest.layers.iter().map(|l| &l.media_type).collect();
            return Err(format!(
                "no layer of media type {WASM_LAYER:?} (found {types:?})"
            ));
        }
        more => return Err(format!("{} Wasm layers, expected one", more.len())),
    };
    if u64::try_from(layer.size).is_ok_and(|s| s > MAX_COMPONENT_BYTES) {
        return Err(format!(
            "the component is {} bytes, more than the {MAX_COMPONENT_BYTES} allowed",
            layer.size
        ));
    }
    Ok(layer)
}

/// Picks a Wasm entry of an image index (components are one platform: `wasm`), else the
/// host's platform (container images).
fn wasm_first(entries: &[ImageIndexEntry]) -> Option<String> {
    entries
        .iter()
        .find(|e| {
            e.platform
                .as_ref()
                .is_some_and(|p| p.architecture == Architecture::Wasm)
        })
        .map(|e| e.digest.clone())
        .or_else(|| oci_client::client::current_platform_resolver(entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(layers: &[(&str, i64)]) -> OciImageManifest {
        OciImageManifest {
            layers: layers
                .iter()
                .map(|(media_type, size)| OciDescriptor {
                    media_type: (*media_type).to_owned(),
                    digest: "sha256:00".into(),
                    size: *size,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_component_artifact_has_exactly_one_wasm_layer_of_bounded_size() {
        let m = manifest(&[(WASM_LAYER, 10)]);
        assert_eq!(component_layer(&m).unwrap().size, 10);
        let m = manifest(&[(WASM_LAYER_MEDIA_TYPE, 10)]);
        assert_eq!(component_layer(&m).unwrap().size, 10);
        let m = manifest(&[("application/vnd.oci.image.layer.v1.tar+gzip", 10)]);
        assert_eq!(
            component_layer(&m).unwrap_err(),
            "no layer of media type \"application/wasm\" (found [\"application/vnd.oci.image.layer.v1.tar+gzip\"])"
        );
        let m = manifest(&[(WASM_LAYER, 10), (WASM_LAYER, 11)]);
        assert_eq!(
            component_layer(&m).unwrap_err(),
            "2 Wasm layers, expected one"
        );
        let m = manifest(&[(WASM_LAYER, (MAX_COMPONENT_BYTES + 1) as i64)]);
        assert!(
            component_layer(&m)
                .unwrap_err()
                .starts_with("the component is 67108865 bytes")
        );
    }

    #[test]
    fn references_are_checked_before_any_request() {
        let err = parse("Not A Reference").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("\"Not A Reference\" is not an OCI reference"),
            "{err}"
        );
        assert_eq!(
            parse("127.0.0.1:5000/skiff/zone-spread:v1")
                .unwrap()
                .registry(),
            "127.0.0.1:5000"
        );
    }

    #[test]
    fn an_image_index_resolves_to_its_wasm_entry_first() {
        let entries: Vec<ImageIndexEntry> = serde_json::from_value(serde_json::json!([
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:aa",
             "size": 1, "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:bb",
             "size": 1, "platform": {"architecture": "wasm", "os": "wasip2"}},
        ]))
        .unwrap();
        assert_eq!(wasm_first(&entries).as_deref(), Some("sha256:bb"));
        // Without a Wasm entry, the host's platform (container images).
        let host = oci_client::client::current_platform_resolver(&entries[..1]);
        assert_eq!(wasm_first(&entries[..1]), host);
    }

    #[test]
    fn only_failures_that_may_pass_are_transient() {
        let registry = |source| OciError::Registry {
            reference: "r".into(),
            source,
        };
        let server = |code| OciDistributionError::ServerError {
            code,
            url: "u".into(),
            message: "m".into(),
        };
        assert!(registry(server(503)).is_transient());
        assert!(registry(server(429)).is_transient());
        assert!(!registry(server(400)).is_transient());
        assert!(
            !registry(OciDistributionError::UnauthorizedError { url: "u".into() }).is_transient()
        );
        assert!(
            OciError::Timeout {
                reference: "r".into()
            }
            .is_transient()
        );
        assert!(!parse("Not A Reference").unwrap_err().is_transient());
    }
}
