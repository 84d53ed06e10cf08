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

impl Layout {
    /// Reads an OCI image layout, a folder or a tar of one, taking its first
    /// manifest. Blobs are checked against their descriptors.
    pub fn read(path: &Path) -> Result<Self> {
        let mut files: std::collections::HashMap<String, Vec<u8>> =
            std::collections::HashMap::new();
        if path.is_dir() {
            files.insert("index.json".into(), std::fs::read(path.join("index.json"))?);
        } else {
            let mut ar = tar::Archive::new(
                std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?,
            );
            for entry in ar.entries()? {
                let mut entry = entry?;
                let name = entry
                    .path()?
                    .to_string_lossy()
                    .trim_start_matches("./")
                    .to_string();
                if entry.header().entry_type() == tar::EntryType::Regular {
                    let mut buf = Vec::new();
                    std::io::Read::read_to_end(&mut entry, &mut buf)?;
                    files.insert(name, buf);
                }
            }
        }
        let read_blob = |digest: &str| -> Result<Vec<u8>> {
            let hex = digest
                .strip_prefix("sha256:")
                .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                .with_context(|| format!("unsupported digest {digest:?}"))?;
            let rel = format!("blobs/sha256/{hex}");
            match files.get(&rel) {
                Some(b) => Ok(b.clone()),
                None if path.is_dir() => {
                    std::fs::read(path.join(&rel)).with_context(|| format!("read {rel}"))
                }
                None => anyhow::bail!("the layout has no {rel}"),
            }
        };
        let index: serde_json::Value = serde_json::from_slice(
            files
                .get("index.json")
                .context("the layout has no index.json")?,
        )
        .context("index.json is not valid JSON")?;
        let first = index
            .pointer("/manifests/0")
            .context("index.json lists no manifest")?;
        let desc: crate::parse::Descriptor =
            serde_json::from_value(first.clone()).context("the index's first descriptor")?;
        let reference = first
            .pointer("/annotations/io.containerd.image.name")
            .or_else(|| first.pointer("/annotations/org.opencontainers.image.ref.name"))
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string();
        let manifest_bytes = read_blob(&desc.digest)?;
        crate::parse::verify(&desc, &manifest_bytes)?;
        let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes)?;
        let mut blobs = Vec::new();
        let descs = std::iter::once(
            manifest
                .get("config")
                .cloned()
                .context("the manifest has no config")?,
        )
        .chain(
            manifest
                .get("layers")
                .and_then(|l| l.as_array())
                .cloned()
                .unwrap_or_default(),
        );
        for d in descs {
            let d: crate::parse::Descriptor = serde_json::from_value(d).context("a descriptor")?;
            let bytes = read_blob(&d.digest)?;
            crate::parse::verify(&d, &bytes)?;
            blobs.push(Blob::new(&d.media_type, bytes));
        }
        Ok(Self::single(
            Blob::new(&desc.media_type, manifest_bytes),
            blobs,
            &reference,
        ))
    }

    /// Checks the image and returns its module, as the shim would see it.
    pub fn check(&self) -> Result<crate::parse::WasmImage> {
        crate::parse::parse(&self.manifest.bytes, |d| {
            self.blobs
                .iter()
                .find(|b| b.digest() == d.digest)
                .map(|b| b.bytes.clone())
                .with_context(|| format!("the layout has no blob {}", d.digest))
        })
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
