//! End-to-end tests against a real containerd. The tests are the `[[test]]`
//! targets beside this file; the harness they share is `crates/harness`.

use std::path::Path;

use anyhow::Result;
use oci_artifact::{Blob, Layout, MEDIA_IMAGE_CONFIG, MEDIA_MANIFEST, MEDIA_TAR_LAYER};

/// Writes an OCI image layout tar at `tar_path`, named `reference`, whose
/// one layer is `layer` (a tar) and whose entrypoint is the `files` example
/// at `/files.wasm` (the layer must hold it: see [`files_layer`]).
pub fn files_image(layer: Vec<u8>, reference: &str, tar_path: &Path) -> Result<()> {
    let layer = Blob::new(MEDIA_TAR_LAYER, layer);
    let config = serde_json::json!({
        "architecture": "wasm", "os": "wasip1",
        "config": {"Entrypoint": ["/files.wasm"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.digest()]},
    });
    let config = Blob::new(MEDIA_IMAGE_CONFIG, serde_json::to_vec(&config)?);
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
        "config": config.descriptor(), "layers": [layer.descriptor()],
    });
    let manifest = Blob::new(MEDIA_MANIFEST, serde_json::to_vec(&manifest)?);
    Layout::single(manifest, vec![config, layer], reference).write_tar(tar_path)
}

/// `ctr run --rm` of `image`'s `/files.wasm` (the `files` example) with
/// `mounts` (`ctr run --mount` values) and `args`.
pub fn files(
    cd: &harness::Containerd,
    image: &str,
    id: &str,
    mounts: &[&str],
    args: &[&str],
) -> Result<harness::Output> {
    let options: Vec<&str> = mounts.iter().flat_map(|m| ["--mount", m]).collect();
    let mut a = vec!["/files.wasm"];
    a.extend_from_slice(args);
    cd.run_rm_with(&options, image, id, &a)
}

/// A layer builder that already holds `/files.wasm` (the `files` example).
pub fn files_layer() -> Result<tar::Builder<Vec<u8>>> {
    let wasm = std::fs::read(harness::examples_dir().join("files.wasm"))?;
    let mut b = tar::Builder::new(Vec::new());
    append_file(&mut b, "files.wasm", &wasm)?;
    Ok(b)
}

/// Appends a regular file to a layer.
pub fn append_file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(data.len() as u64);
    h.set_mode(0o755);
    h.set_mtime(0);
    Ok(b.append_data(&mut h, path, data)?)
}

/// Appends a folder to a layer.
pub fn append_dir(b: &mut tar::Builder<Vec<u8>>, path: &str) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    h.set_mtime(0);
    Ok(b.append_data(&mut h, path, std::io::empty())?)
}

/// Appends a symbolic link to `target` to a layer.
pub fn append_symlink(b: &mut tar::Builder<Vec<u8>>, path: &str, target: &str) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_mode(0o777);
    h.set_size(0);
    h.set_mtime(0);
    Ok(b.append_link(&mut h, path, target)?)
}
