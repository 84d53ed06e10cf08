//! OCI images that carry one WebAssembly module.
//!
//! [`tar_layer_image`] builds the form every containerd runs: an ordinary OCI
//! image whose single tar layer holds the `.wasm`, with the entrypoint set to
//! its path. Builds are reproducible: the same module and name give the same
//! digests, byte for byte.
//!
//! [`Layout`] writes the result as an OCI image layout, as a folder or as the
//! tar that `ctr images import` takes.

pub mod component;
pub mod inspect;
pub mod layout;
pub mod parse;

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use serde_json::json;
use sha2::{Digest, Sha256};

pub use layout::Layout;

pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_TAR_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// The CNCF wasm artifact's config and layer.
pub const MEDIA_WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
pub const MEDIA_WASM_LAYER: &str = "application/wasm";

/// The annotation containerd's importer reads the full image name from.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The OCI annotation for the tag.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A content-addressed blob.
#[derive(Debug, Clone)]
pub struct Blob {
    pub media_type: String,
    pub bytes: Vec<u8>,
}

impl Blob {
    pub fn new(media_type: &str, bytes: Vec<u8>) -> Self {
        Self {
            media_type: media_type.to_string(),
            bytes,
        }
    }

    pub fn digest(&self) -> String {
        digest(&self.bytes)
    }

    /// The OCI descriptor of this blob.
    pub fn descriptor(&self) -> serde_json::Value {
        json!({
            "mediaType": self.media_type,
            "digest": self.digest(),
            "size": self.bytes.len(),
        })
    }
}

/// `sha256:<hex>` of some bytes.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Which WASI a module targets, from its header: core modules are preview 1,
/// components preview 2.
pub fn wasi_os(wasm: &[u8]) -> Result<&'static str> {
    if !wasm.starts_with(b"\0asm") || wasm.len() < 8 {
        bail!("the input is not a WebAssembly binary (no \\0asm header)");
    }
    Ok(match wasm[4..8] {
        [1, 0, 0, 0] => "wasip1",
        [_, _, 1, 0] => "wasip2",
        _ => bail!("unknown WebAssembly version {:02x?}", &wasm[4..8]),
    })
}

/// A tar holding one file at `path` (relative to the root), with fixed
/// owner, mode and time so the bytes depend on the content alone.
fn single_file_tar(path: &str, content: &[u8]) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_size(content.len() as u64);
    header.set_mode(0o755);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut header, path, content)?;
    Ok(builder.into_inner()?)
}

/// Splits `name[:tag]` into the name and its tag (`latest` when absent).
fn split_tag(reference: &str) -> (&str, &str) {
    match reference.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => (reference, "latest"),
    }
}

/// Builds the tar-layer image form: one layer holding the module at
/// `/<module_name>`, the entrypoint set to it, os `wasip1`/`wasip2` and
/// architecture `wasm`. `reference` is the full image name, e.g.
/// `docker.io/library/hello:latest`.
pub fn tar_layer_image(wasm: &[u8], module_name: &str, reference: &str) -> Result<Layout> {
    single_file_image(wasm, module_name, reference, (wasi_os(wasm)?, "wasm"))
}

/// As [`tar_layer_image`], but packs any bytes, wasm or not: for building
/// the broken images that error-path tests need.
pub fn tar_layer_image_unchecked(
    bytes: &[u8],
    module_name: &str,
    reference: &str,
) -> Result<Layout> {
    let os = wasi_os(bytes).unwrap_or("wasip1");
    single_file_image(bytes, module_name, reference, (os, "wasm"))
}

/// An image of one executable file at `/<file_name>`, its entrypoint, for any
/// platform `(os, architecture)`: e.g. a static Linux binary, to compare runc
/// with the shim on the same program.
pub fn single_file_image(
    bytes: &[u8],
    file_name: &str,
    reference: &str,
    platform: (&str, &str),
) -> Result<Layout> {
    if file_name.is_empty() || file_name.contains('/') || file_name == ".." {
        bail!("file name {file_name:?} must be a plain file name");
    }
    let (os, arch) = platform;
    let layer = Blob::new(MEDIA_TAR_LAYER, single_file_tar(file_name, bytes)?);
    // Uncompressed: the diff id is the layer's own digest.
    let config = json!({
        "created": "1970-01-01T00:00:00Z",
        "architecture": arch,
        "os": os,
        "config": {
            "Entrypoint": [format!("/{file_name}")],
            "Env": ["PATH=/"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.digest()]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": format!("oci-artifact build {file_name}")}],
    });
    let config = Blob::new(MEDIA_IMAGE_CONFIG, serde_json::to_vec(&config)?);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": config.descriptor(),
        "layers": [layer.descriptor()],
    });
    let manifest = Blob::new(MEDIA_MANIFEST, serde_json::to_vec(&manifest)?);
    Ok(Layout::single(manifest, vec![config, layer], reference))
}

/// Builds the CNCF wasm OCI artifact: config `application/vnd.wasm.config.v0+json`
/// and one `application/wasm` layer holding the module's bytes. For a
/// component the config also describes its imports and exports.
pub fn wasm_artifact(wasm: &[u8], reference: &str, author: &str) -> Result<Layout> {
    build_wasm_artifact(wasm, reference, author, false)
}

/// The file name `deploy/wasm-stream-processor` gives the module.
pub const STREAM_PROCESSOR_MODULE: &str = "app.wasm";

/// As [`wasm_artifact`], plus `rootfs.diff_ids`: the digest of the tar that
/// `deploy/wasm-stream-processor` makes of the layer. containerd 1.6 needs it
/// to unpack the artifact through that stream processor (for CRI); 1.7 and
/// 2.x refuse an artifact that carries it.
pub fn wasm_artifact_for_stream_processor(
    wasm: &[u8],
    reference: &str,
    author: &str,
) -> Result<Layout> {
    build_wasm_artifact(wasm, reference, author, true)
}

fn build_wasm_artifact(
    wasm: &[u8],
    reference: &str,
    author: &str,
    diff_ids: bool,
) -> Result<Layout> {
    let os = wasi_os(wasm)?;
    let layer = Blob::new(MEDIA_WASM_LAYER, wasm.to_vec());
    let mut config = json!({
        "created": "1970-01-01T00:00:00Z",
        "author": author,
        "architecture": "wasm",
        "os": os,
        "layerDigests": [layer.digest()],
    });
    if diff_ids {
        let tar = single_file_tar(STREAM_PROCESSOR_MODULE, wasm)?;
        config["rootfs"] = json!({"type": "layers", "diff_ids": [digest(&tar)]});
    }
    if os == "wasip2" {
        let info = inspect::inspect(wasm)?;
        config["component"] = json!({"imports": info.imports, "exports": info.exports});
    }
    let config = Blob::new(MEDIA_WASM_CONFIG, serde_json::to_vec(&config)?);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "artifactType": MEDIA_WASM_CONFIG,
        "config": config.descriptor(),
        "layers": [layer.descriptor()],
    });
    let manifest = Blob::new(MEDIA_MANIFEST, serde_json::to_vec(&manifest)?);
    Ok(Layout::single(manifest, vec![config, layer], reference))
}

/// Annotations that name an image for both containerd's importer and other tools.
pub(crate) fn name_annotations(reference: &str) -> BTreeMap<String, String> {
    let (_, tag) = split_tag(reference);
    BTreeMap::from([
        (
            ANNOTATION_CONTAINERD_NAME.to_string(),
            reference.to_string(),
        ),
        (ANNOTATION_REF_NAME.to_string(), tag.to_string()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODULE: &[u8] = b"\0asm\x01\0\0\0";

    #[test]
    fn builds_are_reproducible() {
        let a = tar_layer_image(MODULE, "m.wasm", "example.com/m:1").unwrap();
        let b = tar_layer_image(MODULE, "m.wasm", "example.com/m:1").unwrap();
        assert_eq!(a.manifest.digest(), b.manifest.digest());
        assert_eq!(a.to_tar().unwrap(), b.to_tar().unwrap());
    }

    #[test]
    fn the_layer_holds_the_module_at_the_entrypoint() {
        let img = tar_layer_image(MODULE, "m.wasm", "m").unwrap();
        let layer = &img.blobs[1];
        let mut ar = tar::Archive::new(layer.bytes.as_slice());
        let entries: Vec<_> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(entries, vec!["m.wasm"]);
        let config: serde_json::Value = serde_json::from_slice(&img.blobs[0].bytes).unwrap();
        assert_eq!(config["config"]["Entrypoint"][0], "/m.wasm");
        assert_eq!(config["os"], "wasip1");
        assert_eq!(config["rootfs"]["diff_ids"][0], layer.digest());
    }

    #[test]
    fn rejects_what_is_not_wasm() {
        assert!(tar_layer_image(b"hello", "m.wasm", "m").is_err());
        assert!(tar_layer_image(MODULE, "../m.wasm", "m").is_err());
    }

    #[test]
    fn a_config_over_4_mib_is_refused_before_it_is_fetched() {
        let img = tar_layer_image(MODULE, "m.wasm", "m").unwrap();
        let mut manifest: serde_json::Value = serde_json::from_slice(&img.manifest.bytes).unwrap();
        manifest["config"]["size"] = (parse::MAX_CONFIG_BYTES + 1).into();
        let bytes = serde_json::to_vec(&manifest).unwrap();
        let mut fetched = false;
        let err = parse::parse(&bytes, |_| {
            fetched = true;
            Ok(Vec::new())
        })
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("over the 4194304-byte limit"),
            "{err:#}"
        );
        assert!(!fetched);
    }

    #[test]
    fn tags_default_to_latest() {
        assert_eq!(
            split_tag("localhost:5000/a/b"),
            ("localhost:5000/a/b", "latest")
        );
        assert_eq!(
            split_tag("localhost:5000/a/b:v2"),
            ("localhost:5000/a/b", "v2")
        );
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Any bytes either build a reproducible image or get an error; never a panic.
        #[test]
        fn building_takes_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256), name in "[a-z]{1,8}\\.wasm") {
            if let Ok(a) = tar_layer_image(&bytes, &name, "example.com/x:1") {
                let b = tar_layer_image(&bytes, &name, "example.com/x:1").unwrap();
                prop_assert_eq!(a.to_tar().unwrap(), b.to_tar().unwrap());
            }
        }
    }
}
