//! Container images: pulled from OCI/Docker registries, kept in a content-addressed store,
//! each layer unpacked once, and a root filesystem per container (overlayfs where the
//! kernel has it, else a copy).
//!
//! Layout under the store's directory:
//! `blobs/sha256/<hex>` (manifests, configs, compressed layers), `layers/<hex>/` (a layer
//! unpacked with its whiteouts turned into overlayfs ones), `images.json` (reference →
//! image).

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use tracing::{debug, info, instrument};

use crate::spec::ImageConfig;

/// Why an image can't be had or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The registry refused or could not be reached.
    #[error(transparent)]
    Registry(#[from] skiff_oci::OciError),
    /// The image is not in the store and the pull policy forbids pulling it.
    #[error("image {0:?} is not present with pull policy of Never")]
    NotPresent(String),
    /// A layer or config is not something we can unpack.
    #[error("{0}")]
    Invalid(String),
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl ImageError {
    /// Whether pulling again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            ImageError::Registry(e) => e.is_transient(),
            ImageError::Io { .. } => true,
            _ => false,
        }
    }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let context = context.into();
    move |source| ImageError::Io { context, source }
}

/// An image in the store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    /// The normalized reference (`docker.io/library/busybox:latest`).
    pub reference: String,
    /// The manifest digest: `imageID` is `<repository>@<digest>`.
    pub digest: String,
    /// The config's digest (the image ID).
    pub id: String,
    /// The layers' digests, bottom first.
    pub layers: Vec<String>,
    /// The size of the compressed layers.
    pub size: u64,
}

impl Image {
    /// The `imageID` of a container status: `repository@sha256:...`.
    pub fn image_id(&self) -> String {
        let repo = self
            .reference
            .rsplit_once('@')
            .map(|(r, _)| r)
            .unwrap_or(&self.reference);
        let repo = match repo.rsplit_once(':') {
            Some((r, tag)) if !tag.contains('/') => r,
            _ => repo,
        };
        format!("{repo}@{}", self.digest)
    }
}

/// Normalizes a reference as the kubelet does (`busybox` → `docker.io/library/busybox:latest`).
pub fn normalize(reference: &str) -> Result<String, ImageError> {
    skiff_oci::normalize_reference(reference).map_err(|e| ImageError::Invalid(e.to_string()))
}

/// The content-addressed image store.
pub struct ImageStore {
    dir: PathBuf,
    registry: skiff_oci::Registry,
    images: Mutex<BTreeMap<String, Image>>,
    /// Pulls run one at a time, so two pods of one image fetch it once (a slow pull makes
    /// the others wait).
    pulling: tokio::sync::Mutex<()>,
    overlay: bool,
}

impl ImageStore {
    /// Opens (or makes) the store in `dir`, pulling over plain HTTP from `insecure` registries.
    pub fn open(dir: &Path, insecure: &[String]) -> Result<Self, ImageError> {
        for sub in ["blobs/sha256", "layers", "tmp"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(io(format!("creating {}", dir.join(sub).display())))?;
        }
        let images = std::fs::read(dir.join("images.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let overlay = std::fs::read_to_string("/proc/filesystems")
            .is_ok_and(|f| f.lines().any(|l| l.trim_end().ends_with("overlay")));
        Ok(ImageStore {
            dir: dir.to_owned(),
            registry: skiff_oci::Registry::new(insecure),
            images: Mutex::new(images),
            pulling: tokio::sync::Mutex::new(()),
            overlay,
        })
    }

    /// The image `reference` names, if the store has it. One this process doesn't know yet
    /// may have been imported by another (`skiff image import` beside a running agent).
    pub fn get(&self, reference: &str) -> Option<Image> {
        let reference = normalize(reference).ok()?;
        if let Some(image) = self.lock().get(&reference) {
            return Some(image.clone());
        }
        self.reload();
        self.lock().get(&reference).cloned()
    }

    /// Every image in the store.
    pub fn list(&self) -> Vec<Image> {
        self.reload();
        self.lock().values().cloned().collect()
    }

    /// The images as `images.json` has them now.
    fn read_index(&self) -> BTreeMap<String, Image> {
        std::fs::read(self.dir.join("images.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn reload(&self) {
        let on_disk = self.read_index();
        self.lock().extend(on_disk);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Image>> {
        self.images.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A blob's path; `digest` must have been checked with [`check_digest`].
    fn blob(&self, digest: &str) -> PathBuf {
        self.dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    fn layer_dir(&self, digest: &str) -> PathBuf {
        self.dir
            .join("layers")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// The image config of a stored image.
    pub fn config(&self, image: &Image) -> Result<ImageConfig, ImageError> {
        #[derive(Deserialize)]
        struct Outer {
            #[serde(default)]
            config: Option<ImageConfig>,
        }
        let bytes = std::fs::read(self.blob(&image.id)).map_err(io("reading the image config"))?;
        let outer: Outer = serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::Invalid(format!("the image config is not JSON: {e}")))?;
        Ok(outer.config.unwrap_or_default())
    }

    /// Pulls `reference` from its registry (layers already in the store are not fetched
    /// again) and unpacks its layers.
    #[instrument(skip(self), err)]
    pub async fn pull(&self, reference: &str) -> Result<Image, ImageError> {
        let reference = normalize(reference)?;
        let _one = self.pulling.lock().await;
        let manifest = self.registry.pull_image_manifest(&reference).await?;
        let config_digest = format!(
            "sha256:{:x}",
            sha2::Sha256::digest(manifest.config.as_bytes())
        );
        std::fs::write(self.blob(&config_digest), manifest.config.as_bytes())
            .map_err(io("writing the image config"))?;
        let mut size = 0;
        for layer in &manifest.layers {
            size += layer.size.max(0) as u64;
            let path = self.blob(&layer.digest);
            if !path.exists() {
                let tmp = self
                    .dir
                    .join("tmp")
                    .join(layer.digest.trim_start_matches("sha256:"));
                let file = tokio::fs::File::create(&tmp)
                    .await
                    .map_err(io("creating a layer file"))?;
                self.registry.pull_blob(&reference, layer, file).await?;
                std::fs::rename(&tmp, &path).map_err(io("storing a layer"))?;
                debug!(digest = %layer.digest, "layer fetched");
            }
            self.unpack(&layer.digest, &layer.media_type).await?;
        }
        let image = Image {
            reference: reference.clone(),
            digest: manifest.digest,
            id: config_digest,
            layers: manifest.layers.iter().map(|l| l.digest.clone()).collect(),
            size,
        };
        self.remember(image.clone())?;
        info!(%reference, digest = %image.digest, "image pulled");
        Ok(image)
    }

    /// Records an image in `images.json`. Other processes (an import beside the agent)
    /// write it too: under an exclusive lock the file is read again, so nobody's image is
    /// lost.
    fn remember(&self, image: Image) -> Result<(), ImageError> {
        let lock = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("images.lock"))
            .map_err(io("opening images.lock"))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io("locking images.lock")(e.into()))?;
        let mut images = self.read_index();
        images.insert(image.reference.clone(), image);
        let bytes = serde_json::to_vec_pretty(&images).expect("images serialize");
        let tmp = self
            .dir
            .join(format!("images.json.{}.tmp", std::process::id()));
        std::fs::write(&tmp, bytes).map_err(io("writing images.json"))?;
        std::fs::rename(&tmp, self.dir.join("images.json")).map_err(io("writing images.json"))?;
        *self.lock() = images;
        Ok(())
    }

    /// Unpacks a stored layer blob into its directory, once.
    async fn unpack(&self, digest: &str, media_type: &str) -> Result<(), ImageError> {
        let target = self.layer_dir(digest);
        if target.exists() {
            return Ok(());
        }
        let blob = self.blob(digest);
        let tmp = self
            .dir
            .join("tmp")
            .join(format!("unpack-{}", digest.trim_start_matches("sha256:")));
        let media_type = media_type.to_owned();
        let tmp2 = tmp.clone();
        tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(&tmp2);
            std::fs::create_dir_all(&tmp2).map_err(io("creating a layer directory"))?;
            apply_layer(&blob, &media_type, &tmp2, Whiteouts::Overlay)
        })
        .await
        .map_err(|e| ImageError::Invalid(format!("unpacking panicked: {e}")))??;
        std::fs::rename(&tmp, &target).map_err(io("storing an unpacked layer"))
    }

    /// Makes the root filesystem of one container in `dir` (`dir/rootfs`): an overlay of
    /// the image's layers with a fresh upper layer, or a copy where overlayfs is missing.
    pub fn prepare_rootfs(&self, image: &Image, dir: &Path) -> Result<PathBuf, ImageError> {
        let rootfs = dir.join("rootfs");
        std::fs::create_dir_all(&rootfs).map_err(io("creating the rootfs"))?;
        if self.overlay {
            let upper = dir.join("upper");
            let work = dir.join("work");
            for d in [&upper, &work] {
                std::fs::create_dir_all(d).map_err(io("creating the overlay dirs"))?;
            }
            let mut lower: Vec<String> = image
                .layers
                .iter()
                .rev()
                .map(|l| self.layer_dir(l).display().to_string())
                .collect();
            if lower.is_empty() {
                let empty = self.dir.join("layers/empty");
                std::fs::create_dir_all(&empty).map_err(io("creating the empty layer"))?;
                lower.push(empty.display().to_string());
            }
            let options = format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.join(":"),
                upper.display(),
                work.display()
            );
            match nix::mount::mount(
                Some("overlay"),
                &rootfs,
                Some("overlay"),
                nix::mount::MsFlags::empty(),
                Some(options.as_str()),
            ) {
                Ok(()) => return Ok(rootfs),
                Err(e) => {
                    tracing::warn!(error = %e, "overlay mount failed; copying the image instead");
                }
            }
        }
        for layer in &image.layers {
            let media_type = if is_gzip(&self.blob(layer))? {
                "application/vnd.oci.image.layer.v1.tar+gzip"
            } else {
                "application/vnd.oci.image.layer.v1.tar"
            };
            apply_layer(&self.blob(layer), media_type, &rootfs, Whiteouts::Apply)?;
        }
        Ok(rootfs)
    }

    /// Unmounts and removes a container's root filesystem.
    pub fn release_rootfs(dir: &Path) -> Result<(), ImageError> {
        let rootfs = dir.join("rootfs");
        if rootfs.exists() {
            match nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => {
                    return Err(ImageError::Invalid(format!(
                        "unmounting {}: {e}",
                        rootfs.display()
                    )));
                }
            }
        }
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io(format!("removing {}", dir.display()))(e))
            }
            _ => Ok(()),
        }
    }

    /// Imports every image of an OCI image layout directory or tarball, or of a `docker
    /// save` tarball; returns what was imported.
    pub fn import(&self, path: &Path) -> Result<Vec<Image>, ImageError> {
        let dir;
        let root = if path.is_dir() {
            path.to_owned()
        } else {
            dir = tempfile_dir(&self.dir.join("tmp"))?;
            let file =
                std::fs::File::open(path).map_err(io(format!("opening {}", path.display())))?;
            let mut archive = tar::Archive::new(maybe_gunzip(file)?);
            archive
                .unpack(&dir)
                .map_err(io(format!("unpacking {}", path.display())))?;
            dir.clone()
        };
        let result = if root.join("index.json").exists() {
            self.import_oci_layout(&root)
        } else if root.join("manifest.json").exists() {
            self.import_docker_save(&root)
        } else {
            Err(ImageError::Invalid(format!(
                "{} is neither an OCI image layout (index.json) nor a docker save archive (manifest.json)",
                path.display()
            )))
        };
        if root != path {
            let _ = std::fs::remove_dir_all(&root);
        }
        result
    }

    fn store_blob(&self, bytes: &[u8]) -> Result<String, ImageError> {
        let digest = format!("sha256:{:x}", sha2::Sha256::digest(bytes));
        let path = self.blob(&digest);
        if !path.exists() {
            std::fs::write(&path, bytes).map_err(io("storing a blob"))?;
        }
        Ok(digest)
    }

    fn import_oci_layout(&self, root: &Path) -> Result<Vec<Image>, ImageError> {
        let read = |digest: &str| -> Result<Vec<u8>, ImageError> {
            let hex = check_digest(digest)?.trim_start_matches("sha256:");
            std::fs::read(root.join("blobs/sha256").join(hex))
                .map_err(io(format!("reading blob {digest}")))
        };
        let index: serde_json::Value = serde_json::from_slice(
            &std::fs::read(root.join("index.json")).map_err(io("reading index.json"))?,
        )
        .map_err(|e| ImageError::Invalid(format!("index.json: {e}")))?;
        let mut out = Vec::new();
        let mut entries: Vec<serde_json::Value> =
            index["manifests"].as_array().cloned().unwrap_or_default();
        while let Some(entry) = entries.pop() {
            let digest = entry["digest"].as_str().unwrap_or_default().to_owned();
            let manifest_bytes = read(&digest)?;
            let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes)
                .map_err(|e| ImageError::Invalid(format!("manifest {digest}: {e}")))?;
            if let Some(nested) = manifest["manifests"].as_array() {
                // A nested index: take this platform's entry.
                entries.extend(
                    nested
                        .iter()
                        .filter(|m| {
                            m.pointer("/platform/architecture")
                                .and_then(|a| a.as_str())
                                .is_none_or(|a| a == crate::node::arch())
                        })
                        .take(1)
                        .cloned(),
                );
                continue;
            }
            let name = entry
                .pointer("/annotations/io.containerd.image.name")
                .or_else(|| entry.pointer("/annotations/org.opencontainers.image.ref.name"))
                .and_then(|n| n.as_str())
                .ok_or_else(|| {
                    ImageError::Invalid(format!("manifest {digest} has no image name annotation"))
                })?;
            // containerd names the whole reference; umoci and `skopeo copy ... oci:DIR:NAME`
            // only a name or tag, which is taken as a local image.
            let reference = if name.contains('/') {
                name.to_owned()
            } else {
                format!("localhost/{name}")
            };
            let layers = self.import_layers(&manifest, &read)?;
            let config = read(manifest["config"]["digest"].as_str().unwrap_or_default())?;
            let id = self.store_blob(&config)?;
            let image = Image {
                reference: normalize(&reference)?,
                digest,
                id,
                size: manifest["layers"]
                    .as_array()
                    .map(|l| l.iter().filter_map(|l| l["size"].as_u64()).sum())
                    .unwrap_or(0),
                layers,
            };
            self.remember(image.clone())?;
            out.push(image);
        }
        Ok(out)
    }

    fn import_layers(
        &self,
        manifest: &serde_json::Value,
        read: &dyn Fn(&str) -> Result<Vec<u8>, ImageError>,
    ) -> Result<Vec<String>, ImageError> {
        let mut layers = Vec::new();
        for layer in manifest["layers"].as_array().into_iter().flatten() {
            let digest = layer["digest"].as_str().unwrap_or_default();
            let bytes = read(digest)?;
            let stored = self.store_blob(&bytes)?;
            if stored != digest {
                return Err(ImageError::Invalid(format!(
                    "layer {digest} has digest {stored}"
                )));
            }
            let media_type = layer["mediaType"]
                .as_str()
                .unwrap_or("application/vnd.oci.image.layer.v1.tar+gzip");
            self.unpack_blocking(&stored, media_type)?;
            layers.push(stored);
        }
        Ok(layers)
    }

    fn unpack_blocking(&self, digest: &str, media_type: &str) -> Result<(), ImageError> {
        let target = self.layer_dir(digest);
        if target.exists() {
            return Ok(());
        }
        let tmp = tempfile_dir(&self.dir.join("tmp"))?;
        apply_layer(&self.blob(digest), media_type, &tmp, Whiteouts::Overlay)?;
        std::fs::rename(&tmp, &target).map_err(io("storing an unpacked layer"))
    }

    fn import_docker_save(&self, root: &Path) -> Result<Vec<Image>, ImageError> {
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(root.join("manifest.json")).map_err(io("reading manifest.json"))?,
        )
        .map_err(|e| ImageError::Invalid(format!("manifest.json: {e}")))?;
        let mut out = Vec::new();
        for entry in manifest.as_array().into_iter().flatten() {
            let config = archive_file(root, entry["Config"].as_str().unwrap_or_default())?;
            let id = self.store_blob(&config)?;
            let mut layers = Vec::new();
            let mut size = 0;
            for layer in entry["Layers"].as_array().into_iter().flatten() {
                let bytes = archive_file(root, layer.as_str().unwrap_or_default())?;
                size += bytes.len() as u64;
                let digest = self.store_blob(&bytes)?;
                let media_type = if bytes.starts_with(&[0x1f, 0x8b]) {
                    "application/vnd.docker.image.rootfs.diff.tar.gzip"
                } else {
                    "application/vnd.docker.image.rootfs.diff.tar"
                };
                self.unpack_blocking(&digest, media_type)?;
                layers.push(digest);
            }
            // docker save has no manifest digest; the config digest stands in, as in
            // `docker images --digests` for loaded images.
            for tag in entry["RepoTags"].as_array().into_iter().flatten() {
                let image = Image {
                    reference: normalize(tag.as_str().unwrap_or_default())?,
                    digest: id.clone(),
                    id: id.clone(),
                    layers: layers.clone(),
                    size,
                };
                self.remember(image.clone())?;
                out.push(image);
            }
        }
        Ok(out)
    }
}

/// A digest as a registry or layout gives it must be `sha256:` and 64 hex digits: it
/// becomes a file name.
fn check_digest(digest: &str) -> Result<&str, ImageError> {
    let hex = digest.strip_prefix("sha256:").unwrap_or("");
    if hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        Ok(digest)
    } else {
        Err(ImageError::Invalid(format!(
            "unsupported or malformed digest {digest:?}"
        )))
    }
}

fn tempfile_dir(parent: &Path) -> Result<PathBuf, ImageError> {
    let dir = parent.join(format!("t{:x}", rand_suffix()));
    std::fs::create_dir_all(&dir).map_err(io("creating a temporary directory"))?;
    Ok(dir)
}

fn rand_suffix() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ u64::from(std::process::id()) << 32
}

fn is_gzip(path: &Path) -> Result<bool, ImageError> {
    let mut magic = [0u8; 2];
    let mut f = std::fs::File::open(path).map_err(io("opening a layer"))?;
    Ok(f.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b])
}

fn maybe_gunzip(file: std::fs::File) -> Result<Box<dyn std::io::Read>, ImageError> {
    let mut reader = std::io::BufReader::new(file);
    let buf = std::io::BufRead::fill_buf(&mut reader).map_err(io("reading an archive"))?;
    if buf.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::GzDecoder::new(reader)))
    } else {
        Ok(Box::new(reader))
    }
}

/// How an unpacked layer's whiteouts are kept.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Whiteouts {
    /// As overlayfs whiteouts (0:0 character devices, opaque-directory xattrs), for a
    /// layer directory that is one lowerdir.
    Overlay,
    /// Applied: the files they name are removed from the directory the layer is unpacked
    /// onto (the copy fallback).
    Apply,
}

/// Unpacks a layer blob into `dest`, handling OCI whiteouts per `mode`.
fn apply_layer(
    blob: &Path,
    media_type: &str,
    dest: &Path,
    mode: Whiteouts,
) -> Result<(), ImageError> {
    let file = std::fs::File::open(blob).map_err(io(format!("opening {}", blob.display())))?;
    let reader: Box<dyn std::io::Read> = if media_type.ends_with("gzip") {
        Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)))
    } else if media_type.ends_with(".tar") || media_type.ends_with("tar") {
        Box::new(std::io::BufReader::new(file))
    } else {
        return Err(ImageError::Invalid(format!(
            "unsupported layer media type {media_type}"
        )));
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    let bad = |e: std::io::Error| {
        let cause = std::error::Error::source(&e)
            .map(|s| format!(": {s}"))
            .unwrap_or_default();
        ImageError::Invalid(format!("a broken layer: {e}{cause}"))
    };
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.into_owned();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            entry.unpack_in(dest).map_err(bad)?;
            continue;
        };
        if let Some(hidden) = name.strip_prefix(".wh.") {
            // A whiteout under a symlinked directory would act on what the link points
            // to, outside the layer: it is ignored.
            let Some(parent) = safe_join(dest, path.parent().unwrap_or(Path::new("")))? else {
                continue;
            };
            std::fs::create_dir_all(&parent).map_err(io("creating a directory"))?;
            match (mode, hidden) {
                (Whiteouts::Overlay, ".wh..opq") => {
                    rustix::fs::setxattr(
                        &parent,
                        "trusted.overlay.opaque",
                        b"y",
                        rustix::fs::XattrFlags::empty(),
                    )
                    .map_err(|e| io("marking an opaque directory")(e.into()))?;
                }
                (Whiteouts::Overlay, hidden) => {
                    nix::sys::stat::mknod(
                        &parent.join(hidden),
                        nix::sys::stat::SFlag::S_IFCHR,
                        nix::sys::stat::Mode::empty(),
                        0,
                    )
                    .map_err(|e| io("making a whiteout")(e.into()))?;
                }
                (Whiteouts::Apply, ".wh..opq") => {
                    for child in std::fs::read_dir(&parent)
                        .map_err(io("reading a directory"))?
                        .flatten()
                    {
                        remove_any(&child.path());
                    }
                }
                (Whiteouts::Apply, hidden) => remove_any(&parent.join(hidden)),
            }
            continue;
        }
        if mode == Whiteouts::Apply {
            // A file replacing a directory (or the reverse) in a later layer.
            let target = safe_join(dest, &path)?;
            if let Some(target) = target
                && let Ok(meta) = std::fs::symlink_metadata(&target)
                && meta.is_dir() != entry.header().entry_type().is_dir()
            {
                remove_any(&target);
            }
        }
        entry.unpack_in(dest).map_err(bad)?;
    }
    Ok(())
}

fn remove_any(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(path);
        }
        Err(_) => {}
    }
}

/// `dest/rel`, refusing paths that leave `dest`; `None` when a directory on the way is a
/// symlink (which the std calls would follow out of `dest`).
/// A file a `docker save` archive's manifest names, read only if it is inside the
/// archive: no `..`, no symlinks on the way or at the end.
fn archive_file(root: &Path, rel: &str) -> Result<Vec<u8>, ImageError> {
    let outside = || ImageError::Invalid(format!("{rel:?} is not a file inside the archive"));
    let path = safe_join(root, Path::new(rel))?.ok_or_else(outside)?;
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(outside());
    }
    std::fs::read(&path).map_err(io(format!("reading {rel}")))
}

fn safe_join(dest: &Path, rel: &Path) -> Result<Option<PathBuf>, ImageError> {
    let mut out = dest.to_owned();
    for part in rel.components() {
        if out != dest && std::fs::symlink_metadata(&out).is_ok_and(|m| m.file_type().is_symlink())
        {
            return Ok(None);
        }
        match part {
            std::path::Component::Normal(p) => out.push(p),
            std::path::Component::CurDir | std::path::Component::RootDir => {}
            _ => {
                return Err(ImageError::Invalid(format!(
                    "a layer entry leaves the root: {}",
                    rel.display()
                )));
            }
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(entries: &[(&str, Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, content) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            match content {
                Some(c) => {
                    h.set_size(c.len() as u64);
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o644);
                    b.append_data(&mut h, path, c.as_bytes()).unwrap();
                }
                None => {
                    h.set_size(0);
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    b.append_data(&mut h, path, &[][..]).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn whiteouts_remove_files_of_lower_layers_when_applied() {
        let dir = tempfile::tempdir().unwrap();
        let l1 = dir.path().join("l1");
        let l2 = dir.path().join("l2");
        std::fs::write(
            &l1,
            layer(&[
                ("etc/", None),
                ("etc/a", Some("1")),
                ("etc/b", Some("2")),
                ("d/", None),
                ("d/x", Some("x")),
            ]),
        )
        .unwrap();
        std::fs::write(
            &l2,
            layer(&[
                ("etc/.wh.a", Some("")),
                ("d/.wh..wh..opq", Some("")),
                ("d/y", Some("y")),
            ]),
        )
        .unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        for l in [&l1, &l2] {
            apply_layer(
                l,
                "application/vnd.oci.image.layer.v1.tar",
                &root,
                Whiteouts::Apply,
            )
            .unwrap();
        }
        assert!(!root.join("etc/a").exists());
        assert_eq!(std::fs::read_to_string(root.join("etc/b")).unwrap(), "2");
        assert!(!root.join("d/x").exists());
        assert!(root.join("d/y").exists());
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts_in_a_layer_directory() {
        let dir = tempfile::tempdir().unwrap();
        let l = dir.path().join("l");
        std::fs::write(&l, layer(&[("etc/.wh.a", Some(""))])).unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        apply_layer(
            &l,
            "application/vnd.oci.image.layer.v1.tar",
            &out,
            Whiteouts::Overlay,
        )
        .unwrap();
        use std::os::unix::fs::FileTypeExt as _;
        let meta = std::fs::symlink_metadata(out.join("etc/a")).unwrap();
        assert!(meta.file_type().is_char_device());
        assert!(!out.join("etc/.wh.a").exists());
    }

    #[test]
    fn references_normalize_as_the_kubelet_does() {
        assert_eq!(
            normalize("busybox").unwrap(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalize("127.0.0.1:5000/test/busybox:v1").unwrap(),
            "127.0.0.1:5000/test/busybox:v1"
        );
        let image = Image {
            reference: "127.0.0.1:5000/test/busybox:v1".into(),
            digest: "sha256:ab".into(),
            id: "sha256:cd".into(),
            layers: vec![],
            size: 0,
        };
        assert_eq!(image.image_id(), "127.0.0.1:5000/test/busybox@sha256:ab");
    }
}
