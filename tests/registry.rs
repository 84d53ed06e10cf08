//! Both image forms through a real registry: the `oci-artifact` CLI builds,
//! pushes, pulls and inspects; `skopeo` copies what the CLI pushed and pushes
//! layouts the CLI did not write (some broken on purpose); containerd fetches,
//! and the shim runs what it got.
//!
//! Each test has its own loopback registry (Debian's `docker-registry`, see
//! `harness::Registry`) and, when it runs or fetches anything, its own
//! containerd, which must be left clean.
//!
//! How an artifact gets into containerd (checked by hand on 1.6.20, 1.7.24
//! and 2.1.9): `ctr content fetch --plain-http REF` stores the manifest,
//! config and layer and creates the image record REF on every version; so
//! does `ctr images import --no-unpack` of a layout tar whose index names REF.
//! (`ctr images pull` also leaves the record: 1.7 and 2.1 exit 0, 1.6 exits 1
//! with "mismatched image rootfs and manifest layers".) The shim then reads the
//! module from the content store, for a container whose rootfs does not hold
//! args[0] and whose spec has the annotation `io.containerd.wasmtime.v1.image=REF`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use harness::{oci_artifact, skopeo, Containerd, Output, Registry, RUNTIME};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const HELLO: &str = "Hello from WebAssembly!\n";
/// The spec annotation that names the image an artifact's module comes from.
const IMAGE_ANNOTATION: &str = "io.containerd.wasmtime.v1.image";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
const WASM_LAYER: &str = "application/wasm";
/// `oci-artifact`'s exit code for an invalid image.
const INVALID: Option<i32> = Some(3);
/// The smallest valid core module: a second, different module for the
/// two-layer artifact.
const EMPTY_MODULE: &[u8] = b"\0asm\x01\0\0\0";

// ---- helpers --------------------------------------------------------------

fn hello_wasm() -> Result<PathBuf> {
    let p = harness::examples_dir().join("hello.wasm");
    ensure!(
        p.exists(),
        "{} is missing: run examples/build.sh",
        p.display()
    );
    Ok(p)
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn read_json(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not JSON", path.display()))
}

/// Runs the CLI and fails, showing its output, unless it exits 0.
fn cli(args: &[&str]) -> Result<Output> {
    oci_artifact(args)?
        .ok()
        .with_context(|| format!("oci-artifact {}", args.join(" ")))
}

/// The first `sha256:<64 hex digits>` in `text`.
fn digest_in(text: &str) -> Result<String> {
    text.match_indices("sha256:")
        .find_map(|(i, _)| {
            let d = text.get(i..i + 71)?;
            d[7..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                .then(|| d.to_string())
        })
        .with_context(|| format!("no sha256 digest in {text:?}"))
}

/// `oci-artifact build hello.wasm --name REF --form FORM OUTPUTS…`; returns
/// the manifest digest it printed.
fn build(form: &str, reference: &str, outputs: &[&str]) -> Result<String> {
    let wasm = s(&hello_wasm()?);
    let mut args = vec!["build", wasm.as_str(), "--name", reference, "--form", form];
    args.extend_from_slice(outputs);
    digest_in(&cli(&args)?.stdout)
}

/// `oci-artifact push SOURCE REF`; returns the manifest digest it printed.
fn push(source: &Path, reference: &str) -> Result<String> {
    digest_in(&cli(&["push", &s(source), reference])?.stdout)
}

/// Pushes a layout folder tagged `1` with skopeo.
fn skopeo_push(dir: &Path, reference: &str) -> Result<()> {
    skopeo(&[
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        &format!("oci:{}:1", dir.display()),
        &format!("docker://{reference}"),
    ])?
    .ok()
    .with_context(|| format!("skopeo copy {} to {reference}", dir.display()))?;
    Ok(())
}

/// The path of a blob in a layout folder.
fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// The digest of the first manifest a layout folder's index lists.
fn index_digest(layout: &Path) -> Result<String> {
    read_json(&layout.join("index.json"))?
        .pointer("/manifests/0/digest")
        .and_then(Value::as_str)
        .map(str::to_string)
        .with_context(|| format!("{}/index.json lists no manifest", layout.display()))
}

/// The layer descriptor's digest and size from a layout's manifest.
fn only_layer(layout: &Path, manifest_digest: &str) -> Result<(String, u64)> {
    let manifest = read_json(&blob_path(layout, manifest_digest))?;
    let layers = manifest["layers"].as_array().context("no layers")?;
    ensure!(layers.len() == 1, "{} layers: {manifest}", layers.len());
    Ok((
        layers[0]["digest"]
            .as_str()
            .context("layer digest")?
            .to_string(),
        layers[0]["size"].as_u64().context("layer size")?,
    ))
}

/// Which manifest containerd's image record `reference` points at, if any
/// (from `ctr images ls`: REF TYPE DIGEST …).
fn record_digest(cd: &Containerd, reference: &str) -> Result<Option<String>> {
    let out = cd.ctr(&["images", "ls"])?.ok()?;
    Ok(out.stdout.lines().find_map(|l| {
        let mut fields = l.split_whitespace();
        if fields.next() != Some(reference) {
            return None;
        }
        fields.nth(1).map(str::to_string)
    }))
}

/// Gets an image into containerd the way that works for artifacts on every
/// version: `ctr content fetch`, which stores the blobs and creates the image
/// record. Returns the manifest digest the record points at.
fn content_fetch(cd: &Containerd, reference: &str) -> Result<String> {
    cd.ctr(&["content", "fetch", "--plain-http", reference])?
        .ok()
        .with_context(|| format!("ctr content fetch {reference}"))?;
    record_digest(cd, reference)?
        .with_context(|| format!("ctr content fetch left no image record {reference}"))
}

/// Runs an artifact through the shim: an empty rootfs, `/app.wasm` (which it
/// does not hold) as args[0], and the annotation naming the image.
fn run_artifact(cd: &Containerd, reference: &str, id: &str) -> Result<Output> {
    let rootfs = tempfile::tempdir()?;
    let annotation = format!("{IMAGE_ANNOTATION}={reference}");
    let rootfs_path = s(rootfs.path());
    cd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--rootfs",
        "--annotation",
        &annotation,
        &rootfs_path,
        id,
        "/app.wasm",
    ])
}

// ---- hand-written layouts ---------------------------------------------------

/// Writes `bytes` as a blob of the layout in `dir`; returns its digest.
fn write_blob(dir: &Path, bytes: &[u8]) -> Result<String> {
    let digest = sha256(bytes);
    let path = blob_path(dir, &digest);
    std::fs::create_dir_all(path.parent().context("blob folder")?)?;
    std::fs::write(&path, bytes).with_context(|| format!("write {}", path.display()))?;
    Ok(digest)
}

/// A descriptor as this file writes JSON: keys not in the CLI's (sorted)
/// order, spaces inside the braces.
fn descriptor(media_type: &str, digest: &str, size: usize) -> String {
    format!("{{ \"mediaType\": \"{media_type}\", \"size\": {size}, \"digest\": \"{digest}\" }}")
}

/// Writes an OCI image layout by hand, as some tool other than the CLI would:
/// 4-space indented JSON with its own key order. `config` gets the layers'
/// digests and returns the config's JSON text. The index tags the manifest
/// `1`, for skopeo's `oci:DIR:1`. Returns the manifest's digest.
fn hand_layout(
    dir: &Path,
    config_media_type: &str,
    config: impl FnOnce(&[String]) -> String,
    layers: &[(&str, &[u8])],
) -> Result<String> {
    let mut descriptors = Vec::new();
    let mut digests = Vec::new();
    for (media_type, bytes) in layers {
        let digest = write_blob(dir, bytes)?;
        descriptors.push(descriptor(media_type, &digest, bytes.len()));
        digests.push(digest);
    }
    let config = config(&digests);
    let config_digest = write_blob(dir, config.as_bytes())?;
    let manifest = format!(
        "{{\n    \"schemaVersion\": 2,\n    \"mediaType\": \"{MANIFEST}\",\n    \"config\": {},\n    \
         \"layers\": [\n        {}\n    ]\n}}\n",
        descriptor(config_media_type, &config_digest, config.len()),
        descriptors.join(",\n        ")
    );
    let manifest_digest = write_blob(dir, manifest.as_bytes())?;
    let index = format!(
        "{{\n    \"schemaVersion\": 2,\n    \"manifests\": [\n        {{\n            \
         \"mediaType\": \"{MANIFEST}\",\n            \"size\": {},\n            \
         \"digest\": \"{manifest_digest}\",\n            \
         \"annotations\": {{ \"org.opencontainers.image.ref.name\": \"1\" }}\n        }}\n    ]\n}}\n",
        manifest.len()
    );
    std::fs::write(dir.join("index.json"), index)?;
    std::fs::write(
        dir.join("oci-layout"),
        "{ \"imageLayoutVersion\": \"1.0.0\" }\n",
    )?;
    Ok(manifest_digest)
}

/// A wasm artifact config, by hand. `os` and `layerDigests` are left out when `None`.
fn wasm_config(os: Option<&str>, layer_digests: Option<&[String]>) -> String {
    let mut fields = vec![
        "\"created\": \"2024-05-01T12:00:00Z\"".to_string(),
        "\"author\": \"registry tests, by hand\"".to_string(),
        "\"architecture\": \"wasm\"".to_string(),
    ];
    if let Some(os) = os {
        fields.push(format!("\"os\": \"{os}\""));
    }
    if let Some(digests) = layer_digests {
        let quoted: Vec<String> = digests.iter().map(|d| format!("\"{d}\"")).collect();
        fields.push(format!("\"layerDigests\": [ {} ]", quoted.join(", ")));
    }
    format!("{{\n    {}\n}}\n", fields.join(",\n    "))
}

// ---- tests --------------------------------------------------------------------

#[test]
fn the_tar_layer_image_goes_through_a_registry_and_runs() -> Result<()> {
    let cd = Containerd::start()?;
    let reg = Registry::start()?;
    let tmp = tempfile::tempdir()?;
    let reference = reg.reference("wasm/hello:1");
    let tar = tmp.path().join("hello.tar");

    let built = build("image", &reference, &["-o", &s(&tar)])?;
    let pushed = push(&tar, &reference)?;
    assert_eq!(pushed, built, "push must send the manifest build wrote");
    assert_eq!(reg.get_status("/v2/wasm/hello/manifests/1")?, 200);
    assert_eq!(
        reg.get_status(&format!("/v2/wasm/hello/manifests/{pushed}"))?,
        200
    );

    cd.ctr(&["images", "pull", "--plain-http", &reference])?
        .ok()
        .context("ctr images pull")?;
    assert_eq!(
        record_digest(&cd, &reference)?.as_deref(),
        Some(pushed.as_str())
    );
    let out = cd.run_rm(&reference, "reg-tar", &[])?.ok()?;
    assert_eq!(out.stdout, HELLO);
    cd.assert_clean()
}

#[test]
fn the_artifact_goes_through_a_registry_and_runs_from_the_content_store() -> Result<()> {
    let cd = Containerd::start()?;
    let reg = Registry::start()?;
    let tmp = tempfile::tempdir()?;
    let reference = reg.reference("wasm/hello-artifact:1");
    let layout = tmp.path().join("layout");
    let hello = std::fs::read(hello_wasm()?)?;

    let built = build("artifact", &reference, &["--layout", &s(&layout)])?;
    // It is the CNCF form: the wasm config, one application/wasm layer
    // holding exactly the module's bytes.
    let manifest = read_json(&blob_path(&layout, &built))?;
    assert_eq!(manifest["config"]["mediaType"], WASM_CONFIG, "{manifest}");
    assert_eq!(manifest["layers"][0]["mediaType"], WASM_LAYER, "{manifest}");
    let (layer, _) = only_layer(&layout, &built)?;
    assert_eq!(layer, sha256(&hello));
    assert!(std::fs::read(blob_path(&layout, &layer))? == hello);

    let pushed = push(&layout, &reference)?;
    assert_eq!(pushed, built, "push must send the manifest build wrote");

    // The documented way in: `ctr content fetch`, then run by annotation.
    assert_eq!(content_fetch(&cd, &reference)?, pushed);
    let out = run_artifact(&cd, &reference, "reg-art1")?.ok()?;
    assert_eq!(out.stdout, HELLO);

    // The other way in: the layout tar `oci-artifact pull -o` writes, whose
    // index names the image, imported without unpacking.
    cd.ctr(&["images", "rm", &reference])?.ok()?;
    assert_eq!(record_digest(&cd, &reference)?, None);
    let tar = tmp.path().join("pulled.tar");
    let pulled = cli(&["pull", &reference, "-o", &s(&tar)])?;
    assert_eq!(digest_in(&pulled.stdout)?, pushed);
    cd.ctr(&["images", "import", "--no-unpack", &s(&tar)])?
        .ok()
        .context("ctr images import --no-unpack")?;
    assert_eq!(
        record_digest(&cd, &reference)?.as_deref(),
        Some(pushed.as_str()),
        "the pulled tar must name the image {reference}"
    );
    let out = run_artifact(&cd, &reference, "reg-art2")?.ok()?;
    assert_eq!(out.stdout, HELLO);
    cd.assert_clean()
}

/// A component in both forms: the ordinary image says `os: wasip2`, the
/// artifact also lists the component's imports and exports; both go through
/// the registry, `inspect` shows WIT names, and both run.
#[test]
fn components_go_through_a_registry_in_both_forms_and_run() -> Result<()> {
    let cd = Containerd::start()?;
    let reg = Registry::start()?;
    let tmp = tempfile::tempdir()?;
    let component = harness::examples_dir().join("p2/hello.wasm");
    for form in ["image", "artifact"] {
        let reference = reg.reference(&format!("wasm/hello-p2-{form}:1"));
        let layout = tmp.path().join(form);
        let built = digest_in(
            &cli(&[
                "build",
                &s(&component),
                "--name",
                &reference,
                "--form",
                form,
                "--module-name",
                "app.wasm",
                "--layout",
                &s(&layout),
            ])?
            .stdout,
        )?;
        let manifest = read_json(&blob_path(&layout, &built))?;
        let config_digest = manifest["config"]["digest"].as_str().context("config")?;
        let config = read_json(&blob_path(&layout, config_digest))?;
        assert_eq!(config["os"], "wasip2", "{config}");
        if form == "artifact" {
            let exports = config["component"]["exports"].to_string();
            assert!(exports.contains("wasi:cli/run@0.2."), "{config}");
            let imports = config["component"]["imports"].to_string();
            assert!(imports.contains("wasi:cli/stdout@0.2."), "{config}");
        }
        assert_eq!(push(&layout, &reference)?, built);
        let shown = cli(&["inspect", &reference])?.ok()?;
        assert!(
            shown.stdout.contains("kind:        component"),
            "{}",
            shown.stdout
        );
        assert!(
            shown.stdout.contains("wasi:cli/run@0.2."),
            "{}",
            shown.stdout
        );

        let id = format!("reg-p2-{form}");
        let out = if form == "artifact" {
            content_fetch(&cd, &reference)?;
            run_artifact(&cd, &reference, &id)?
        } else {
            cd.ctr(&["images", "pull", "--plain-http", &reference])?
                .ok()?;
            cd.run_rm(&reference, &id, &["/app.wasm"])?
        };
        assert_eq!(out.ok()?.stdout, HELLO);
    }
    cd.assert_clean()
}

#[test]
fn builds_are_reproducible_through_a_registry() -> Result<()> {
    let cd = Containerd::start()?;
    let reg = Registry::start()?;
    let tmp = tempfile::tempdir()?;
    for form in ["image", "artifact"] {
        // The same module and name, built twice a second apart, under two tags.
        let name = reg.reference(&format!("repro/{form}:1"));
        let (a, b) = (
            tmp.path().join(format!("{form}-a.tar")),
            tmp.path().join(format!("{form}-b.tar")),
        );
        let built_a = build(form, &name, &["-o", &s(&a)])?;
        std::thread::sleep(Duration::from_millis(1100));
        let built_b = build(form, &name, &["-o", &s(&b)])?;
        assert_eq!(built_a, built_b, "{form}: two builds, two digests");
        assert!(
            std::fs::read(&a)? == std::fs::read(&b)?,
            "{form}: two builds, different tar bytes"
        );

        let (tag_a, tag_b) = (
            reg.reference(&format!("repro/{form}:a")),
            reg.reference(&format!("repro/{form}:b")),
        );
        let pushed_a = push(&a, &tag_a)?;
        let pushed_b = push(&b, &tag_b)?;
        assert_eq!(pushed_a, built_a);
        assert_eq!(pushed_b, pushed_a, "{form}: the registry got two manifests");
        // containerd resolves both tags to the one manifest.
        assert_eq!(content_fetch(&cd, &tag_a)?, pushed_a);
        assert_eq!(content_fetch(&cd, &tag_b)?, pushed_a);
    }
    cd.assert_clean()
}

/// Checks that every blob of layout `ours` is in layout `theirs`, byte for
/// byte, and that `theirs` has no other.
fn assert_same_blobs(ours: &Path, theirs: &Path) -> Result<()> {
    let names = |dir: &Path| -> Result<Vec<std::ffi::OsString>> {
        let mut v: Vec<_> = std::fs::read_dir(dir.join("blobs/sha256"))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()?;
        v.sort();
        Ok(v)
    };
    let (a, b) = (names(ours)?, names(theirs)?);
    ensure!(
        a == b,
        "blobs {a:?} in {}, but {b:?} in {}",
        ours.display(),
        theirs.display()
    );
    for name in a {
        let (x, y) = (
            ours.join("blobs/sha256").join(&name),
            theirs.join("blobs/sha256").join(&name),
        );
        ensure!(
            std::fs::read(&x)? == std::fs::read(&y)?,
            "blob {name:?} differs"
        );
    }
    Ok(())
}

/// `skopeo copy docker://REF oci:DIR:1`, with extra options.
fn skopeo_pull(reference: &str, dir: &Path, options: &[&str]) -> Result<()> {
    let (src, dest) = (
        format!("docker://{reference}"),
        format!("oci:{}:1", dir.display()),
    );
    let mut args = vec!["copy", "--quiet", "--src-tls-verify=false"];
    args.extend_from_slice(options);
    args.extend([src.as_str(), dest.as_str()]);
    skopeo(&args)?
        .ok()
        .with_context(|| format!("skopeo copy from {reference}"))?;
    Ok(())
}

#[test]
fn skopeo_copies_what_the_cli_pushed_digest_for_digest() -> Result<()> {
    let cd = Containerd::start()?;
    let reg = Registry::start()?;
    let tmp = tempfile::tempdir()?;
    for form in ["image", "artifact"] {
        let reference = reg.reference(&format!("interop/{form}:1"));
        let ours = tmp.path().join(format!("{form}-cli"));
        let built = build(form, &reference, &["--layout", &s(&ours)])?;
        let pushed = push(&ours, &reference)?;
        assert_eq!(pushed, built);

        // A plain copy. The CLI takes skopeo's layout (no containerd name
        // annotation, skopeo's index) as a valid image.
        let plain = tmp.path().join(format!("{form}-skopeo"));
        skopeo_pull(&reference, &plain, &[])?;
        let inspected = cli(&["inspect", &s(&plain)])?;
        assert!(
            inspected.stdout.contains("core module"),
            "{}",
            inspected.stdout
        );
        if form == "artifact" {
            // Nothing in an artifact for skopeo to recompress: its copy is
            // the CLI's image, digest for digest.
            assert_eq!(index_digest(&plain)?, pushed, "skopeo saw another manifest");
            assert_same_blobs(&ours, &plain)?;
            assert!(inspected.stdout.contains(&pushed), "{}", inspected.stdout);
        }
        // skopeo 1.9 gzips an uncompressed tar layer on its way into an OCI
        // layout (a new layer and manifest digest); with --preserve-digests
        // both forms arrive unchanged.
        let exact = tmp.path().join(format!("{form}-exact"));
        skopeo_pull(&reference, &exact, &["--preserve-digests"])?;
        assert_eq!(
            index_digest(&exact)?,
            pushed,
            "{form}: skopeo saw another manifest"
        );
        assert_same_blobs(&ours, &exact)?;

        // And containerd's resolver sees the same manifest.
        assert_eq!(content_fetch(&cd, &reference)?, pushed);
    }
    cd.assert_clean()
}

#[test]
fn an_artifact_skopeo_pushed_from_a_hand_written_layout_is_pulled_inspected_and_run() -> Result<()>
{
    let cd = Containerd::start()?;
    let reg = Registry::start()?;
    let tmp = tempfile::tempdir()?;
    let hello = std::fs::read(hello_wasm()?)?;
    let dir = tmp.path().join("by-hand");
    let manifest_digest = hand_layout(
        &dir,
        WASM_CONFIG,
        |digests| wasm_config(Some("wasip1"), Some(digests)),
        &[(WASM_LAYER, hello.as_slice())],
    )?;
    let reference = reg.reference("skopeo-art:1");
    skopeo_push(&dir, &reference)?;

    let module = tmp.path().join("module.wasm");
    let pulled = tmp.path().join("pulled");
    let out = cli(&[
        "pull",
        &reference,
        "--module",
        &s(&module),
        "--layout",
        &s(&pulled),
    ])?;
    assert_eq!(digest_in(&out.stdout)?, manifest_digest);
    assert!(
        std::fs::read(&module)? == hello,
        "pull --module must write exactly the module's bytes"
    );
    // The pulled layout keeps the registry's bytes (this file's JSON, not
    // re-serialized) and names the image for containerd's importer.
    let index = read_json(&pulled.join("index.json"))?;
    assert_eq!(
        index["manifests"][0]["digest"],
        manifest_digest.as_str(),
        "{index}"
    );
    assert_eq!(
        index["manifests"][0]["annotations"]["io.containerd.image.name"],
        reference.as_str(),
        "{index}"
    );
    assert_same_blobs(&dir, &pulled)?;

    let info = cli(&["inspect", &reference])?;
    let text = info.stdout.to_lowercase();
    for want in [
        "artifact",
        "core module",
        WASM_CONFIG,
        WASM_LAYER,
        manifest_digest.as_str(),
        "wasip1",
        "fd_write",
        "_start",
    ] {
        assert!(
            text.contains(want),
            "inspect does not say {want:?}:\n{}",
            info.stdout
        );
    }

    assert_eq!(content_fetch(&cd, &reference)?, manifest_digest);
    let out = run_artifact(&cd, &reference, "reg-skopeo")?.ok()?;
    assert_eq!(out.stdout, HELLO);
    cd.assert_clean()
}

/// A broken artifact: how to write its config, its layers, and the words
/// of the error it must get.
struct Bad {
    name: &'static str,
    config: fn(&[String]) -> String,
    layers: Vec<(&'static str, Vec<u8>)>,
    error: &'static str,
}

#[test]
fn bad_images_are_refused_with_clear_errors() -> Result<()> {
    let cd = Containerd::start()?;
    let reg = Registry::start()?;
    let tmp = tempfile::tempdir()?;
    let hello = std::fs::read(hello_wasm()?)?;
    let good_config: fn(&[String]) -> String = |d| wasm_config(Some("wasip1"), Some(d));
    let cases = [
        Bad {
            name: "two-modules",
            config: good_config,
            layers: vec![
                (WASM_LAYER, hello.clone()),
                (WASM_LAYER, EMPTY_MODULE.to_vec()),
            ],
            error: "wasm layers; exactly one is allowed",
        },
        Bad {
            name: "foreign-layer",
            config: good_config,
            layers: vec![("application/x-foo", hello.clone())],
            error: "which a wasm image cannot hold",
        },
        Bad {
            name: "no-layer-digests",
            config: |_| wasm_config(Some("wasip1"), None),
            layers: vec![(WASM_LAYER, hello.clone())],
            error: "has no \"layerDigests\" field",
        },
        Bad {
            name: "no-os",
            config: |d| wasm_config(None, Some(d)),
            layers: vec![(WASM_LAYER, hello.clone())],
            error: "has no \"os\" field",
        },
        Bad {
            name: "linux",
            config: |d| wasm_config(Some("linux"), Some(d)),
            layers: vec![(WASM_LAYER, hello.clone())],
            error: "os is \"linux\"",
        },
        Bad {
            name: "not-wasm",
            config: good_config,
            layers: vec![(WASM_LAYER, b"hello".to_vec())],
            error: "is not WebAssembly",
        },
        // A core module posing as a component: the config says wasip2.
        Bad {
            name: "module-as-component",
            config: |d| wasm_config(Some("wasip2"), Some(d)),
            layers: vec![(WASM_LAYER, hello.clone())],
            error: "but layer",
        },
        // A core module whose config describes a component's interface.
        Bad {
            name: "module-with-component-field",
            config: |d| {
                wasm_config(Some("wasip1"), Some(d)).replace("\n}", ",\n    \"component\": {}\n}")
            },
            layers: vec![(WASM_LAYER, hello.clone())],
            error: "has a \"component\" field, but layer",
        },
        // Native code posing as a module (a precompiled artifact, or any ELF):
        // refused before anything could load it.
        Bad {
            name: "native-code",
            config: good_config,
            layers: vec![(
                WASM_LAYER,
                std::fs::read("/bin/busybox").unwrap_or_else(|_| b"\x7fELF\x02\x01\x01".to_vec()),
            )],
            error: "is not WebAssembly",
        },
    ];

    let mut failures = Vec::new();
    for case in &cases {
        let dir = tmp.path().join(case.name);
        let layers: Vec<(&str, &[u8])> = case
            .layers
            .iter()
            .map(|(m, b)| (*m, b.as_slice()))
            .collect();
        hand_layout(&dir, WASM_CONFIG, case.config, &layers)?;
        let reference = reg.reference(&format!("bad/{}:1", case.name));
        skopeo_push(&dir, &reference)?;

        // The CLI refuses it, says why, and writes nothing.
        let module = tmp.path().join(format!("{}.wasm", case.name));
        let out = oci_artifact(&["pull", &reference, "--module", &s(&module)])?;
        if out.code != INVALID || !out.stderr.contains(case.error) || module.exists() {
            failures.push(format!(
                "oci-artifact pull {}: code {:?} (want 3), module written: {}, stderr: {}",
                case.name,
                out.code,
                module.exists(),
                out.stderr
            ));
        }

        // The shim, reading the same image from containerd's content store,
        // refuses it with the same words and names the container.
        content_fetch(&cd, &reference)?;
        let id = format!("bad-{}", case.name);
        let out = run_artifact(&cd, &reference, &id)?;
        let all = format!("{}{}", out.stdout, out.stderr);
        if out.code == Some(0) || !all.contains(&id) || !all.contains(case.error) {
            failures.push(format!("ctr run {id}: code {:?}, output: {all}", out.code));
        }
    }
    assert!(
        failures.is_empty(),
        "{} bad images were not refused as they should be:\n{}",
        failures.len(),
        failures.join("\n")
    );
    cd.assert_clean()
}

/// A wrong digest or size cannot get through a registry (it checks both on
/// upload), so these are local layouts the CLI wrote and this test tampered
/// with. `inspect` and `push` must refuse them.
#[test]
fn tampered_layouts_are_refused_and_never_pushed() -> Result<()> {
    let reg = Registry::start()?;
    let tmp = tempfile::tempdir()?;

    // A changed byte in the module's blob.
    let layout = tmp.path().join("changed-byte");
    let built = build(
        "artifact",
        "example.com/tampered:1",
        &["--layout", &s(&layout)],
    )?;
    let (layer, _) = only_layer(&layout, &built)?;
    let path = blob_path(&layout, &layer);
    let mut bytes = std::fs::read(&path)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&path, bytes)?;
    let out = oci_artifact(&["inspect", &s(&layout)])?;
    assert_eq!(out.code, INVALID, "{out:?}");
    assert!(
        out.stderr.contains("the content does not match"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&layer),
        "the error names the blob: {}",
        out.stderr
    );
    let out = oci_artifact(&["push", &s(&layout), &reg.reference("tampered/byte:1")])?;
    assert_eq!(out.code, INVALID, "{out:?}");
    assert_eq!(reg.get_status("/v2/tampered/byte/manifests/1")?, 404);

    // The layer's size changed in the manifest, whose own digest and size
    // are then fixed up in the index, so only the size is wrong.
    let layout = tmp.path().join("changed-size");
    let built = build(
        "artifact",
        "example.com/tampered:1",
        &["--layout", &s(&layout)],
    )?;
    let (_, size) = only_layer(&layout, &built)?;
    let mut manifest = read_json(&blob_path(&layout, &built))?;
    manifest["layers"][0]["size"] = json!(size + 1);
    let manifest = serde_json::to_vec(&manifest)?;
    let digest = write_blob(&layout, &manifest)?;
    let mut index = read_json(&layout.join("index.json"))?;
    index["manifests"][0]["digest"] = json!(digest);
    index["manifests"][0]["size"] = json!(manifest.len());
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    let out = oci_artifact(&["inspect", &s(&layout)])?;
    assert_eq!(out.code, INVALID, "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "{size} bytes, but its descriptor says {}",
            size + 1
        )),
        "{}",
        out.stderr
    );
    let out = oci_artifact(&["push", &s(&layout), &reg.reference("tampered/size:1")])?;
    assert_eq!(out.code, INVALID, "{out:?}");
    assert_eq!(reg.get_status("/v2/tampered/size/manifests/1")?, 404);
    Ok(())
}
