//! Reading a module from containerd's content store, for images that are
//! CNCF wasm artifacts: containerd cannot unpack their `application/wasm`
//! layer into a rootfs, so the shim fetches it through containerd's API
//! (Images, then Content) and checks it with the same code as
//! `oci-artifact` (digests, sizes, media types, exactly one module).
//!
//! Which image: the spec's `io.containerd.wasmtime.v1.image` annotation
//! (set with `ctr run --annotation`), or CRI's `io.kubernetes.cri.image-name`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::{GetImageRequest, ReadContentRequest};
use oci_artifact::parse::{verify, Descriptor, MAX_BLOB_BYTES};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;

/// Annotations that name a container's image, in order of precedence.
pub const IMAGE_ANNOTATIONS: [&str; 2] = [
    "io.containerd.wasmtime.v1.image",
    "io.kubernetes.cri.image-name",
];

/// Most layers an image may list before it is refused unread.
const MAX_LAYERS: usize = 16;

/// How long fetching a module may take in all.
const FETCH_LIMIT: Duration = Duration::from_secs(60);

/// containerd's API, in the namespace the shim serves.
#[derive(Debug, Clone)]
pub struct ContentStore {
    pub address: PathBuf,
    pub namespace: String,
}

fn request<T>(namespace: &AsciiMetadataValue, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut()
        .insert("containerd-namespace", namespace.clone());
    r
}

async fn read_blob(
    content: &mut ContentClient<Channel>,
    ns: &AsciiMetadataValue,
    desc: &Descriptor,
) -> Result<Vec<u8>> {
    ensure!(
        desc.size <= MAX_BLOB_BYTES,
        "blob {} is {} bytes, over the limit",
        desc.digest,
        desc.size
    );
    let mut stream = content
        .read(request(
            ns,
            ReadContentRequest {
                digest: desc.digest.clone(),
                offset: 0,
                size: 0,
            },
        ))
        .await
        .with_context(|| format!("read {} from the content store", desc.digest))?
        .into_inner();
    let mut out = Vec::with_capacity(desc.size as usize);
    while let Some(chunk) = stream.message().await? {
        out.extend_from_slice(&chunk.data);
        ensure!(
            out.len() as u64 <= desc.size,
            "blob {} is larger than its descriptor says",
            desc.digest
        );
    }
    verify(desc, &out)?;
    Ok(out)
}

impl ContentStore {
    /// Fetches and checks the module of `image`. Returns a label for it
    /// (`image@layer-digest`) and its bytes.
    pub async fn module(&self, image: &str) -> Result<(String, Vec<u8>)> {
        tokio::time::timeout(FETCH_LIMIT, self.fetch(image))
            .await
            .map_err(|_| anyhow!("fetching the module of {image} took over {FETCH_LIMIT:?}"))?
    }

    async fn fetch(&self, image: &str) -> Result<(String, Vec<u8>)> {
        let ns: AsciiMetadataValue = self
            .namespace
            .parse()
            .map_err(|_| anyhow!("namespace {:?} is not a valid header", self.namespace))?;
        let channel = containerd_client::connect(&self.address)
            .await
            .with_context(|| format!("connect to containerd at {}", self.address.display()))?;
        let target = ImagesClient::new(channel.clone())
            .get(request(
                &ns,
                GetImageRequest {
                    name: image.to_string(),
                },
            ))
            .await
            .with_context(|| format!("image {image} in namespace {}", self.namespace))?
            .into_inner()
            .image
            .and_then(|i| i.target)
            .with_context(|| format!("image {image} has no target"))?;
        let mut content = ContentClient::new(channel);
        let mut desc = Descriptor {
            media_type: target.media_type,
            digest: target.digest,
            size: target.size as u64,
        };
        let mut manifest = read_blob(&mut content, &ns, &desc).await?;
        // An index: take its wasm manifest, or its only one.
        let parsed: serde_json::Value =
            serde_json::from_slice(&manifest).context("the manifest is not JSON")?;
        if let Some(pick) = oci_artifact::parse::manifest_of_index(&parsed)
            .with_context(|| format!("image {image}"))?
        {
            desc = pick;
            manifest = read_blob(&mut content, &ns, &desc).await?;
        }
        // Fetch what the manifest lists, then check it all with oci-artifact's parser.
        let listed: serde_json::Value =
            serde_json::from_slice(&manifest).context("the manifest is not JSON")?;
        let mut wanted: Vec<Descriptor> = Vec::new();
        if let Some(c) = listed.get("config") {
            wanted.push(serde_json::from_value(c.clone()).context("the config descriptor")?);
        }
        let layers = listed
            .get("layers")
            .and_then(|l| l.as_array())
            .cloned()
            .unwrap_or_default();
        if layers.len() > MAX_LAYERS {
            bail!("image {image} lists {} layers", layers.len());
        }
        for l in layers {
            wanted.push(serde_json::from_value(l).context("a layer descriptor")?);
        }
        let mut blobs: HashMap<String, Vec<u8>> = HashMap::new();
        for d in &wanted {
            let bytes = read_blob(&mut content, &ns, d).await?;
            blobs.insert(d.digest.clone(), bytes);
        }
        let checked = oci_artifact::parse::parse(&manifest, |d| {
            blobs
                .remove(&d.digest)
                .with_context(|| format!("blob {} was not fetched", d.digest))
        })
        .with_context(|| format!("image {image}"))?;
        Ok((format!("{image}@{}", checked.layer.digest), checked.module))
    }
}
