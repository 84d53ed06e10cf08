//! `oci-artifact`: builds, checks, pushes and pulls OCI images that carry a
//! WebAssembly module, in both forms: an ordinary image with one tar layer,
//! and the CNCF wasm artifact.
//!
//! Exit codes: 0 success, 1 an error (I/O, network, registry), 2 bad usage,
//! 3 the image is invalid.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use oci_artifact::parse::{Form as ParsedForm, WasmImage};
use oci_artifact::{inspect, Blob, Layout};
use oci_client::RegistryOperation;

mod auth;
mod credentials;
mod progress;
mod registry;

use credentials::Login;
use registry::Registry;

#[derive(Parser)]
#[command(
    name = "oci-artifact",
    version,
    about = "Build, check, push and pull OCI images that carry a WebAssembly module"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Form {
    /// An ordinary OCI image whose one tar layer holds the module (runs on every containerd).
    Image,
    /// The CNCF wasm artifact: config application/vnd.wasm.config.v0+json, one application/wasm layer.
    Artifact,
    /// The artifact plus rootfs.diff_ids, for containerd 1.6 with deploy/wasm-stream-processor.
    ArtifactStreamProcessor,
}

#[derive(Clone, Copy, ValueEnum)]
enum AdapterArg {
    Command,
    Reactor,
    Proxy,
}

/// How to reach a registry, shared by the commands that do.
#[derive(clap::Args)]
struct Remote {
    /// Use plain HTTP (and allow a plain-HTTP token service) for a registry
    /// that is not on loopback.
    #[arg(long)]
    insecure: bool,
    /// Log in as this user, with the password from stdin (--password-stdin).
    /// Without it, credentials come from the docker config as docker finds
    /// them: credHelpers, then credsStore, then auths.
    #[arg(long, requires = "password_stdin")]
    username: Option<String>,
    /// Read the password for --username from stdin.
    #[arg(long, requires = "username")]
    password_stdin: bool,
}

impl Remote {
    fn connect(&self, reference: &str, op: RegistryOperation) -> Result<Registry> {
        let login = Login {
            username: self.username.clone(),
            password_stdin: self.password_stdin,
        };
        Registry::connect(reference, &login, self.insecure, op)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Build an image from a .wasm file.
    ///
    /// Examples:
    ///   oci-artifact build hello.wasm --name docker.io/library/hello:latest -o hello.tar
    ///   ctr images import --all-platforms hello.tar
    ///   oci-artifact build app.wasm --name 127.0.0.1:5000/app:1 --form artifact --layout ./app
    #[command(verbatim_doc_comment)]
    Build {
        /// The .wasm file.
        wasm: PathBuf,
        /// Full image name, e.g. docker.io/library/hello:latest.
        #[arg(long)]
        name: String,
        /// Which form to build.
        #[arg(long, value_enum, default_value = "image")]
        form: Form,
        /// File name of the module inside an image (default: the input's name).
        #[arg(long)]
        module_name: Option<String>,
        /// The artifact config's author.
        #[arg(long, default_value = "oci-artifact")]
        author: String,
        /// Write the OCI layout as a tar here (what `ctr images import` takes).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Write the OCI layout as a folder here.
        #[arg(long)]
        layout: Option<PathBuf>,
        /// Pack the file even if it is not WebAssembly (for testing error paths).
        #[arg(long)]
        force_any: bool,
        /// Pack a native executable for this platform instead, e.g. linux/amd64.
        #[arg(long, value_name = "OS/ARCH")]
        native: Option<String>,
    },
    /// Push an OCI layout (folder or tar) to a registry.
    ///
    /// Plain HTTP is used for loopback registries, or with --insecure.
    /// Credentials: --username with --password-stdin, else the docker config
    /// ($DOCKER_CONFIG/config.json or ~/.docker/config.json).
    ///
    /// Examples:
    ///   oci-artifact push hello.tar 127.0.0.1:5000/hello:1
    ///   echo "$TOKEN" | oci-artifact push hello.tar ghcr.io/me/hello:1 --username me --password-stdin
    #[command(verbatim_doc_comment)]
    Push {
        /// An OCI layout folder or tar; its first manifest is pushed.
        source: PathBuf,
        /// Where to: HOST[:PORT]/REPOSITORY[:TAG].
        reference: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Pull an image, check it, and write it out.
    ///
    /// Example:
    ///   oci-artifact pull 127.0.0.1:5000/hello:1 -o hello.tar --module hello.wasm
    #[command(verbatim_doc_comment)]
    Pull {
        reference: String,
        /// Write the OCI layout as a tar here.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Write the OCI layout as a folder here.
        #[arg(long)]
        layout: Option<PathBuf>,
        /// Write the module's bytes here.
        #[arg(long)]
        module: Option<PathBuf>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Make a WASI preview 2 component from a WASI preview 1 module, with
    /// Wasmtime's preview 1 adapter (the release the shim links).
    ///
    /// Examples:
    ///   clang-14 --target=wasm32-wasi -O2 -o app.wasm app.c
    ///   oci-artifact componentize app.wasm -o app.component.wasm
    ///   oci-artifact build app.component.wasm --name docker.io/me/app:p2 -o app.tar
    #[command(verbatim_doc_comment)]
    Componentize {
        /// The preview 1 module.
        module: PathBuf,
        /// Where to write the component.
        #[arg(short, long)]
        output: PathBuf,
        /// command: a program (exports wasi:cli/run), which the shim runs;
        /// reactor: a library, and proxy: an HTTP handler (exports
        /// wasi:http/incoming-handler), which the shim serves.
        #[arg(long, value_enum, default_value = "command")]
        adapter: AdapterArg,
        /// A folder of WIT (with its deps/) holding the world that declares
        /// what the module imports from WASI 0.2 directly, beside preview 1
        /// (needs --world).
        #[arg(long, requires = "world")]
        wit: Option<PathBuf>,
        /// That world's name.
        #[arg(long, requires = "wit")]
        world: Option<String>,
    },
    /// Describe an image or a module: form, media types, digests, os/arch,
    /// kind of module, imports and exports.
    ///
    /// SOURCE is a layout folder, a layout tar, a .wasm file or a registry reference.
    ///
    /// Examples:
    ///   oci-artifact inspect hello.tar
    ///   oci-artifact inspect 127.0.0.1:5000/hello:1
    #[command(verbatim_doc_comment)]
    Inspect {
        source: String,
        #[command(flatten)]
        remote: Remote,
    },
}

/// An image that failed its checks: exit code 3.
#[derive(Debug)]
struct Invalid(anyhow::Error);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid image: {:#}", self.0)
    }
}

impl std::error::Error for Invalid {}

fn invalid(err: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(Invalid(err))
}

fn build(
    wasm: &Path,
    name: &str,
    form: Form,
    module_name: Option<String>,
    author: &str,
    force_any: bool,
    native: Option<&str>,
) -> Result<Layout> {
    let bytes = std::fs::read(wasm).with_context(|| format!("read {}", wasm.display()))?;
    let module_name = match module_name {
        Some(n) => n,
        None => wasm
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .context("the input path has no file name")?,
    };
    let image = match (form, native, force_any) {
        (_, Some(platform), _) => {
            let (os, arch) = platform
                .split_once('/')
                .context("--native takes OS/ARCH, e.g. linux/amd64")?;
            oci_artifact::single_file_image(&bytes, &module_name, name, (os, arch))
        }
        (Form::Artifact, None, _) => oci_artifact::wasm_artifact(&bytes, name, author),
        (Form::ArtifactStreamProcessor, None, _) => {
            oci_artifact::wasm_artifact_for_stream_processor(&bytes, name, author)
        }
        (Form::Image, None, true) => {
            oci_artifact::tar_layer_image_unchecked(&bytes, &module_name, name)
        }
        (Form::Image, None, false) => oci_artifact::tar_layer_image(&bytes, &module_name, name),
    };
    image.with_context(|| format!("build an image from {}", wasm.display()))
}

/// Fetches and checks an image from a registry; returns it and its layout.
fn pull(reference: &str, remote: &Remote) -> Result<(WasmImage, Layout)> {
    let client = remote.connect(reference, RegistryOperation::Pull)?;
    let manifest = client.manifest()?;
    let mut blobs: Vec<Blob> = Vec::new();
    let image = oci_artifact::parse::parse(&manifest, |d| {
        let bytes = client.blob(d)?;
        blobs.push(Blob::new(&d.media_type, bytes.clone()));
        Ok(bytes)
    })
    // A failure to fetch is not the image's fault: exit 1, not 3.
    .map_err(|err| {
        if err.downcast_ref::<registry::Transfer>().is_some() {
            err
        } else {
            invalid(err)
        }
    })?;
    let media_type = serde_json::from_slice::<serde_json::Value>(&manifest)?
        .get("mediaType")
        .and_then(|m| m.as_str())
        .unwrap_or(oci_artifact::MEDIA_MANIFEST)
        .to_string();
    let layout = Layout::single(Blob::new(&media_type, manifest), blobs, reference);
    Ok((image, layout))
}

fn print_image(image: &WasmImage, layout: &Layout) -> Result<()> {
    let info = inspect::inspect(&image.module)?;
    println!(
        "form:        {}",
        match image.form {
            ParsedForm::TarLayer => "image with one tar layer",
            ParsedForm::Artifact => "CNCF wasm artifact",
        }
    );
    println!(
        "manifest:    {} ({})",
        layout.manifest.digest(),
        layout.manifest.media_type
    );
    println!("config:      {}", image.config_media_type);
    println!(
        "layer:       {} ({}, {} bytes)",
        image.layer.digest, image.layer.media_type, image.layer.size
    );
    println!("platform:    {}/{}", image.os, image.architecture);
    println!(
        "module:      {} ({} bytes, sha256:{})",
        image.module_path,
        image.module.len(),
        oci_artifact::digest(&image.module).trim_start_matches("sha256:")
    );
    print_module(&info);
    Ok(())
}

fn print_module(info: &inspect::ModuleInfo) {
    println!("kind:        {}", info.kind());
    println!("imports:     {}", info.imports.len());
    for i in &info.imports {
        println!("  {i}");
    }
    println!("exports:     {}", info.exports.len());
    for e in &info.exports {
        println!("  {e}");
    }
}

fn write_outputs(layout: &Layout, output: Option<&Path>, dir: Option<&Path>) -> Result<()> {
    if let Some(out) = output {
        layout.write_tar(out)?;
    }
    if let Some(dir) = dir {
        layout.write_dir(dir)?;
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Build {
            wasm,
            name,
            form,
            module_name,
            author,
            output,
            layout,
            force_any,
            native,
        } => {
            if output.is_none() && layout.is_none() {
                anyhow::bail!("nothing to write: give --output FILE.tar and/or --layout DIR");
            }
            let image = build(
                &wasm,
                &name,
                form,
                module_name,
                &author,
                force_any,
                native.as_deref(),
            )?;
            write_outputs(&image, output.as_deref(), layout.as_deref())?;
            println!("{name} {}", image.manifest.digest());
            Ok(())
        }
        Command::Push {
            source,
            reference,
            remote,
        } => {
            let layout = Layout::read(&source).map_err(invalid)?;
            let client = remote.connect(&reference, RegistryOperation::Push)?;
            let digest = client.push(layout)?;
            println!("{reference} {digest}");
            Ok(())
        }
        Command::Pull {
            reference,
            output,
            layout,
            module,
            remote,
        } => {
            let (image, pulled) = pull(&reference, &remote)?;
            write_outputs(&pulled, output.as_deref(), layout.as_deref())?;
            if let Some(path) = module {
                std::fs::write(&path, &image.module)
                    .with_context(|| format!("write {}", path.display()))?;
            }
            println!("{reference} {}", pulled.manifest.digest());
            Ok(())
        }
        Command::Componentize {
            module,
            output,
            adapter,
            wit,
            world,
        } => {
            let bytes =
                std::fs::read(&module).with_context(|| format!("read {}", module.display()))?;
            let adapter = match adapter {
                AdapterArg::Command => oci_artifact::component::Adapter::Command,
                AdapterArg::Reactor => oci_artifact::component::Adapter::Reactor,
                AdapterArg::Proxy => oci_artifact::component::Adapter::Proxy,
            };
            let world = wit
                .as_deref()
                .zip(world.as_deref())
                .map(|(wit, name)| oci_artifact::component::World { wit, name });
            let component = oci_artifact::component::componentize(&bytes, adapter, world)
                .with_context(|| format!("make a component from {}", module.display()))?;
            std::fs::write(&output, &component)
                .with_context(|| format!("write {}", output.display()))?;
            println!("{}", output.display());
            Ok(())
        }
        Command::Inspect { source, remote } => {
            let path = Path::new(&source);
            if path.exists() {
                let bytes_start = if path.is_file() {
                    std::fs::read(path)?
                } else {
                    Vec::new()
                };
                if bytes_start.starts_with(b"\0asm") {
                    print_module(&inspect::inspect(&bytes_start)?);
                    return Ok(());
                }
                let layout = Layout::read(path).map_err(invalid)?;
                let image = layout.check().map_err(invalid)?;
                print_image(&image, &layout)
            } else {
                let (image, layout) = pull(&source, &remote)?;
                print_image(&image, &layout)
            }
        }
    }
}

fn main() -> ExitCode {
    // rustls' crypto for the registry client: ring (see the workspace's
    // Cargo.toml). Installing fails only if one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("oci-artifact: {err:#}");
            if err.downcast_ref::<Invalid>().is_some() {
                ExitCode::from(3)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
