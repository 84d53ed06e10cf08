//! Reading and checking an image that carries a module, in either form.
//!
//! Every blob is checked against its descriptor (digest and size) before it
//! is used, every layer's media type must be one a wasm image can hold (an
//! unknown one is an error, never skipped), and exactly one module must come
//! out. The errors say which blob and what is wrong, because they end up in
//! `ctr`'s and the CLI's output.

use std::io::Read;

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde::Deserialize;

use crate::{digest, MEDIA_IMAGE_CONFIG, MEDIA_WASM_CONFIG};

/// Layer media types that hold a raw module.
pub const WASM_LAYER_TYPES: [&str; 2] = [
    crate::MEDIA_WASM_LAYER,
    "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm",
];
/// Layer media types that hold a tar (uncompressed or gzip).
pub const TAR_LAYER_TYPES: [&str; 4] = [
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
];
/// The largest blob this reads.
pub const MAX_BLOB_BYTES: u64 = 512 * 1024 * 1024;

/// A config is a small JSON document; containerd caps them at 4 MiB too.
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// An OCI descriptor.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// Which of the two forms an image is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// An ordinary image: one tar layer holding the module.
    TarLayer,
    /// The CNCF wasm artifact: one `application/wasm` layer.
    Artifact,
}

/// What came out of a checked image.
#[derive(Debug, Clone)]
pub struct WasmImage {
    pub form: Form,
    pub config_media_type: String,
    pub os: String,
    pub architecture: String,
    pub manifest_digest: String,
    pub layer: Descriptor,
    /// The module's path in the image (tar form), or the layer digest.
    pub module_path: String,
    pub module: Vec<u8>,
}

/// For an image index, the manifest to run: the one whose platform is
/// `wasm`, or the index's only one. `None` when `doc` is not an index.
pub fn manifest_of_index(doc: &serde_json::Value) -> Result<Option<Descriptor>> {
    let Some(entries) = doc.get("manifests").and_then(|m| m.as_array()) else {
        return Ok(None);
    };
    let pick = entries
        .iter()
        .find(|m| m.pointer("/platform/architecture").and_then(|a| a.as_str()) == Some("wasm"))
        .or(if entries.len() == 1 {
            entries.first()
        } else {
            None
        })
        .context("the image is an index without a wasm manifest")?;
    Ok(Some(
        serde_json::from_value(pick.clone()).context("the index's manifest descriptor")?,
    ))
}

/// Checks a blob's bytes against its descriptor.
pub fn verify(desc: &Descriptor, bytes: &[u8]) -> Result<()> {
    ensure!(
        bytes.len() as u64 == desc.size,
        "blob {} is {} bytes, but its descriptor says {}",
        desc.digest,
        bytes.len(),
        desc.size
    );
    let actual = digest(bytes);
    ensure!(
        actual == desc.digest,
        "blob {} has digest {actual}: the content does not match",
        desc.digest
    );
    Ok(())
}

fn is_wasm(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\0asm")
}

/// Reads and checks an image from its manifest, fetching blobs with `fetch`
/// (from a layout, a registry or containerd's content store).
pub fn parse(
    manifest_bytes: &[u8],
    mut fetch: impl FnMut(&Descriptor) -> Result<Vec<u8>>,
) -> Result<WasmImage> {
    let manifest: Manifest =
        serde_json::from_slice(manifest_bytes).context("the manifest is not valid JSON")?;
    ensure!(
        manifest.schema_version == 2,
        "manifest schemaVersion {} is not 2",
        manifest.schema_version
    );
    ensure!(!manifest.layers.is_empty(), "the manifest has no layers");
    for (i, l) in manifest.layers.iter().enumerate() {
        ensure!(
            WASM_LAYER_TYPES.contains(&l.media_type.as_str())
                || TAR_LAYER_TYPES.contains(&l.media_type.as_str()),
            "layer {i} ({}) has media type {:?}, which a wasm image cannot hold",
            l.digest,
            l.media_type
        );
        ensure!(
            l.size <= MAX_BLOB_BYTES,
            "layer {i} is {} bytes, over the limit",
            l.size
        );
    }
    let wasm_layers = manifest
        .layers
        .iter()
        .filter(|l| WASM_LAYER_TYPES.contains(&l.media_type.as_str()))
        .count();
    ensure!(
        manifest.config.size <= MAX_CONFIG_BYTES,
        "the config is {} bytes, over the {MAX_CONFIG_BYTES}-byte limit",
        manifest.config.size
    );
    let config_bytes = fetch(&manifest.config).context("fetch the config")?;
    verify(&manifest.config, &config_bytes)?;
    let config: serde_json::Value =
        serde_json::from_slice(&config_bytes).context("the config is not valid JSON")?;
    let field = |name: &str| -> Result<String> {
        config
            .get(name)
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .ok_or_else(|| anyhow!("the config has no {name:?} field"))
    };
    let manifest_digest = digest(manifest_bytes);

    match manifest.config.media_type.as_str() {
        MEDIA_WASM_CONFIG => {
            ensure!(
                wasm_layers == manifest.layers.len(),
                "a wasm artifact holds only application/wasm layers"
            );
            ensure!(
                wasm_layers == 1,
                "the artifact has {wasm_layers} wasm layers; exactly one is allowed"
            );
            let (os, architecture) = (field("os")?, field("architecture")?);
            ensure!(
                architecture == "wasm",
                "config architecture is {architecture:?}, not \"wasm\""
            );
            ensure!(
                os == "wasip1" || os == "wasip2",
                "config os is {os:?}, not \"wasip1\" or \"wasip2\""
            );
            let listed: Vec<&str> = config
                .get("layerDigests")
                .and_then(|v| v.as_array())
                .ok_or_else(|| anyhow!("the config has no \"layerDigests\" field"))?
                .iter()
                .filter_map(|v| v.as_str())
                .collect();
            let layer = manifest.layers[0].clone();
            ensure!(
                listed == [layer.digest.as_str()],
                "config layerDigests {listed:?} do not match the manifest's layer {}",
                layer.digest
            );
            let module = fetch(&layer).context("fetch the wasm layer")?;
            verify(&layer, &module)?;
            ensure!(
                is_wasm(&module),
                "layer {} is not WebAssembly (no \\0asm header)",
                layer.digest
            );
            // The config says what the layer is: a preview 1 module
            // (wasip1) or a component (wasip2, with a `component` field).
            let holds =
                crate::wasi_os(&module).with_context(|| format!("layer {}", layer.digest))?;
            let kind = |os: &str| {
                if os == "wasip2" {
                    "component"
                } else {
                    "core module"
                }
            };
            ensure!(
                holds == os,
                "the config says os {os:?} (a {}), but layer {} holds a {}",
                kind(&os),
                layer.digest,
                kind(holds)
            );
            ensure!(
                holds == "wasip2" || config.get("component").is_none(),
                "the config has a \"component\" field, but layer {} holds a core module",
                layer.digest
            );
            Ok(WasmImage {
                form: Form::Artifact,
                config_media_type: manifest.config.media_type.clone(),
                os,
                architecture,
                manifest_digest,
                module_path: layer.digest.clone(),
                layer,
                module,
            })
        }
        MEDIA_IMAGE_CONFIG | "application/vnd.docker.container.image.v1+json" => {
            ensure!(
                wasm_layers == 0,
                "an image config with raw application/wasm layers is not a valid image"
            );
            ensure!(
                manifest.layers.len() == 1,
                "the image has {} layers; a wasm image has exactly one",
                manifest.layers.len()
            );
            let (os, architecture) = (field("os")?, field("architecture")?);
            ensure!(
                architecture == "wasm",
                "config architecture is {architecture:?}, not \"wasm\""
            );
            let layer = manifest.layers[0].clone();
            let bytes = fetch(&layer).context("fetch the layer")?;
            verify(&layer, &bytes)?;
            let entrypoint = config
                .pointer("/config/Entrypoint/0")
                .and_then(|v| v.as_str())
                .map(|s| s.trim_start_matches('/').to_string());
            let (module_path, module) =
                module_from_tar(&layer.media_type, &bytes, entrypoint.as_deref())
                    .with_context(|| format!("layer {}", layer.digest))?;
            ensure!(
                is_wasm(&module),
                "/{module_path} in layer {} is not WebAssembly",
                layer.digest
            );
            Ok(WasmImage {
                form: Form::TarLayer,
                config_media_type: manifest.config.media_type.clone(),
                os,
                architecture,
                manifest_digest,
                layer,
                module_path: format!("/{module_path}"),
                module,
            })
        }
        other => bail!(
            "config media type {other:?} is neither an OCI image config nor {MEDIA_WASM_CONFIG}"
        ),
    }
}

/// Finds the module in a tar layer: the entrypoint's file, or the only
/// `.wasm` regular file.
fn module_from_tar(
    media_type: &str,
    bytes: &[u8],
    entrypoint: Option<&str>,
) -> Result<(String, Vec<u8>)> {
    let reader: Box<dyn Read> = if media_type.ends_with("gzip") {
        Box::new(flate2::read::GzDecoder::new(bytes))
    } else {
        Box::new(bytes)
    };
    let mut archive = tar::Archive::new(reader);
    let mut found: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in archive.entries().context("read the tar")? {
        let mut entry = entry.context("read a tar entry")?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = entry
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let wanted = match entrypoint {
            Some(e) => path == e,
            None => path.ends_with(".wasm"),
        };
        if wanted {
            ensure!(entry.size() <= MAX_BLOB_BYTES, "/{path} is too large");
            let mut buf = Vec::new();
            entry.read_to_end(&mut buf)?;
            found.push((path, buf));
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!(
            "no module in the tar ({})",
            entrypoint.map_or("no .wasm file".into(), |e| format!(
                "no file /{e}, the entrypoint"
            ))
        ),
        n => bail!("the tar holds {n} .wasm files and no entrypoint says which to run"),
    }
}
