//! `oci-artifact`: packs a WebAssembly module into an OCI image.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "oci-artifact",
    version,
    about = "Build OCI images that carry a WebAssembly module"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build an image whose single tar layer holds the module.
    ///
    /// Examples:
    ///   oci-artifact build hello.wasm --name docker.io/library/hello:latest -o hello.tar
    ///   ctr images import hello.tar
    ///   oci-artifact build app.wasm --name example.com/app:1 --layout ./app-layout
    #[command(verbatim_doc_comment)]
    Build {
        /// The .wasm file.
        wasm: PathBuf,
        /// Full image name, e.g. docker.io/library/hello:latest.
        #[arg(long)]
        name: String,
        /// File name of the module inside the image (default: the input's name).
        #[arg(long)]
        module_name: Option<String>,
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
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Build {
            wasm,
            name,
            module_name,
            output,
            layout,
            force_any,
            native,
        } => {
            let bytes = std::fs::read(&wasm).with_context(|| format!("read {}", wasm.display()))?;
            let module_name = match module_name {
                Some(n) => n,
                None => wasm
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .context("the input path has no file name")?,
            };
            let image = match (&native, force_any) {
                (Some(platform), _) => {
                    let (os, arch) = platform
                        .split_once('/')
                        .context("--native takes OS/ARCH, e.g. linux/amd64")?;
                    oci_artifact::single_file_image(&bytes, &module_name, &name, (os, arch))
                }
                (None, true) => {
                    oci_artifact::tar_layer_image_unchecked(&bytes, &module_name, &name)
                }
                (None, false) => oci_artifact::tar_layer_image(&bytes, &module_name, &name),
            }
            .with_context(|| format!("build an image from {}", wasm.display()))?;
            if output.is_none() && layout.is_none() {
                anyhow::bail!("nothing to write: give --output FILE.tar and/or --layout DIR");
            }
            if let Some(out) = output {
                image.write_tar(&out)?;
                println!("{} {} -> {}", name, image.manifest.digest(), out.display());
            }
            if let Some(dir) = layout {
                image.write_dir(&dir)?;
                println!("{} {} -> {}/", name, image.manifest.digest(), dir.display());
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("oci-artifact: {err:#}");
            ExitCode::FAILURE
        }
    }
}
