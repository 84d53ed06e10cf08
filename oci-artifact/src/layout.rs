//! The OCI image layout: `oci-layout`, `index.json` and `blobs/sha256/*`,
//! written as a folder or as a tar with fixed metadata.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;

use crate::{name_annotations, Blob, MEDIA_INDEX};

/// One image: its manifest and the blobs it refers to.
#[derive(Debug, Clone)]
pub struct Layout {
    pub manifest: Blob,
    /// Config first, then layers.
    pub blobs: Vec<Blob>,
    pub reference: String,
}

impl Layout {
    pub fn single(manifest: Blob, blobs: Vec<Blob>, reference: &str) -> Self {
        Self {
            manifest,
            blobs,
            reference: reference.to_string(),
        }
    }

    fn index(&self) -> Result<Vec<u8>> {
        let mut desc = self.manifest.descriptor();
        desc["annotations"] = json!(name_annotations(&self.reference));
        let index = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_INDEX,
            "manifests": [desc],
        });
        Ok(serde_json::to_vec(&index)?)
    }

    /// Every file of the layout, by path, in a fixed order.
    fn files(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let mut files = vec![
            (
                "oci-layout".to_string(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ),
            ("index.json".to_string(), self.index()?),
        ];
        for blob in std::iter::once(&self.manifest).chain(&self.blobs) {
            let digest = blob.digest();
            let hex = digest.trim_start_matches("sha256:");
            files.push((format!("blobs/sha256/{hex}"), blob.bytes.clone()));
        }
        files.dedup_by(|a, b| a.0 == b.0);
        Ok(files)
    }

    /// Writes the layout into `dir`, creating it.
    pub fn write_dir(&self, dir: &Path) -> Result<()> {
        for (path, bytes) in self.files()? {
            let target = dir.join(&path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("create {}", parent.display()))?;
            }
            std::fs::write(&target, bytes)
                .with_context(|| format!("write {}", target.display()))?;
        }
        Ok(())
    }

    /// The layout as a tar, which `ctr images import` takes.
    pub fn to_tar(&self) -> Result<Vec<u8>> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut dirs_done = std::collections::BTreeSet::new();
        for (path, bytes) in self.files()? {
            // Parent folders first, as tools expect.
            let mut prefix = String::new();
            for part in path
                .split('/')
                .collect::<Vec<_>>()
                .iter()
                .rev()
                .skip(1)
                .rev()
            {
                prefix.push_str(part);
                prefix.push('/');
                if dirs_done.insert(prefix.clone()) {
                    let mut h = fixed_header(tar::EntryType::Directory, 0o755, 0);
                    builder.append_data(&mut h, &prefix, std::io::empty())?;
                }
            }
            let mut h = fixed_header(tar::EntryType::Regular, 0o644, bytes.len() as u64);
            builder.append_data(&mut h, &path, bytes.as_slice())?;
        }
        Ok(builder.into_inner()?)
    }

    pub fn write_tar(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_tar()?).with_context(|| format!("write {}", path.display()))
    }
}

fn fixed_header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}
