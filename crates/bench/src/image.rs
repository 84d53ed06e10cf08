//! Reads what the API path needs from an image tar (OCI image layout, as
//! `examples/images.sh` writes it): the snapshot to start from (the chain id
//! of the layers' diff ids) and the process the image's config describes.
//! Reading the tar that was imported avoids a trip through the content store.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use sha2::{Digest, Sha256};

const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const ANNOTATION_NAME: &str = "io.containerd.image.name";

/// What the benchmark needs of one image.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageInfo {
    /// The name containerd's importer gives it, when the index says.
    pub name: Option<String>,
    /// The snapshot the container's rootfs is prepared from.
    pub chain_id: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
}

impl ImageInfo {
    /// The process the image runs when given no arguments.
    pub fn default_args(&self) -> Vec<String> {
        self.entrypoint.iter().chain(&self.cmd).cloned().collect()
    }
}

/// Reads an image layout tar from disk.
pub fn read_tar(path: &Path) -> Result<ImageInfo> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    parse_tar(&bytes).with_context(|| format!("read the image layout in {}", path.display()))
}

/// Reads an image layout from the bytes of its tar.
pub fn parse_tar(bytes: &[u8]) -> Result<ImageInfo> {
    let mut files = HashMap::new();
    let mut archive = tar::Archive::new(bytes);
    for entry in archive.entries().context("read the tar")? {
        let mut entry = entry.context("read a tar entry")?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry
            .path()
            .context("a tar entry's path")?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let mut content = Vec::new();
        entry
            .read_to_end(&mut content)
            .with_context(|| format!("read {path} from the tar"))?;
        files.insert(path, content);
    }
    from_layout(&files)
}

/// Reads an image from the files of an OCI layout, by path.
pub fn from_layout(files: &HashMap<String, Vec<u8>>) -> Result<ImageInfo> {
    let json = |path: &str| -> Result<Value> {
        let bytes = files
            .get(path)
            .with_context(|| format!("the layout has no {path}"))?;
        serde_json::from_slice(bytes).with_context(|| format!("parse {path}"))
    };
    let blob = |digest: &str| -> Result<Value> {
        let hex = digest
            .strip_prefix("sha256:")
            .with_context(|| format!("unsupported digest {digest}"))?;
        json(&format!("blobs/sha256/{hex}"))
    };

    let index = json("index.json")?;
    let top = index["manifests"]
        .as_array()
        .and_then(|m| m.first())
        .context("index.json lists no manifest")?;
    let name = top["annotations"][ANNOTATION_NAME]
        .as_str()
        .map(str::to_string);
    let mut manifest = blob(str_field(top, "digest")?)?;
    // A nested index (multi-platform): take its first manifest.
    let media = manifest["mediaType"].as_str().unwrap_or_default();
    if media == MEDIA_INDEX || media == MEDIA_DOCKER_LIST || manifest["manifests"].is_array() {
        let first = manifest["manifests"]
            .as_array()
            .and_then(|m| m.first())
            .context("the image index lists no manifest")?;
        manifest = blob(str_field(first, "digest")?)?;
    }
    let config = blob(str_field(&manifest["config"], "digest")?)?;
    let diff_ids: Vec<String> = strings(&config["rootfs"]["diff_ids"]);
    let process = &config["config"];
    Ok(ImageInfo {
        name,
        chain_id: chain_id(&diff_ids)?,
        entrypoint: strings(&process["Entrypoint"]),
        cmd: strings(&process["Cmd"]),
        env: strings(&process["Env"]),
        working_dir: process["WorkingDir"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    })
}

/// The chain id of a stack of layers, as containerd names the committed
/// snapshot of the topmost one: the first diff id, then
/// `sha256(parent + " " + diff_id)` for each layer above it.
pub fn chain_id(diff_ids: &[String]) -> Result<String> {
    let Some((first, rest)) = diff_ids.split_first() else {
        bail!("the image config lists no layer (rootfs.diff_ids is empty)");
    };
    Ok(rest.iter().fold(first.clone(), |parent, diff| {
        format!(
            "sha256:{}",
            hex::encode(Sha256::digest(format!("{parent} {diff}").as_bytes()))
        )
    }))
}

fn str_field<'a>(v: &'a Value, field: &str) -> Result<&'a str> {
    v[field]
        .as_str()
        .with_context(|| format!("a descriptor without a {field}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_id_of_one_layer_is_its_diff_id() {
        assert_eq!(chain_id(&["sha256:aaaa".into()]).unwrap(), "sha256:aaaa");
        assert!(chain_id(&[]).is_err());
    }

    #[test]
    fn chain_id_of_two_layers_hashes_parent_and_diff() {
        assert_eq!(
            chain_id(&["sha256:aaaa".into(), "sha256:bbbb".into()]).unwrap(),
            "sha256:2c4d8760379f05d0ad1ed610712309f0114e7345e6e6a351494cff030ffdf197"
        );
    }

    #[test]
    fn reads_an_image_built_by_oci_artifact() {
        let layout =
            oci_artifact::tar_layer_image(b"\0asm\x01\0\0\0", "m.wasm", "example.com/m:1").unwrap();
        let info = parse_tar(&layout.to_tar().unwrap()).unwrap();
        let layer = &layout.blobs[1];
        assert_eq!(info.chain_id, layer.digest());
        assert_eq!(info.name.as_deref(), Some("example.com/m:1"));
        assert_eq!(info.default_args(), vec!["/m.wasm".to_string()]);
        assert_eq!(info.env, vec!["PATH=/".to_string()]);
        assert_eq!(info.working_dir, "/");
    }

    #[test]
    fn a_missing_blob_is_an_error() {
        let mut files = HashMap::new();
        files.insert(
            "index.json".to_string(),
            br#"{"manifests":[{"digest":"sha256:00"}]}"#.to_vec(),
        );
        let err = from_layout(&files).unwrap_err();
        assert!(format!("{err:#}").contains("blobs/sha256/00"), "{err:#}");
    }
}
