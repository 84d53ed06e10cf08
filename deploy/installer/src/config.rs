//! Adding and removing the runtime in containerd's `config.toml`.
//!
//! The file is parsed and edited in place (comments, order and formatting
//! kept), never appended to: appending would duplicate a table containerd
//! then refuses to load. The runtime goes where each config version wants it:
//!
//! - version 2 (containerd 1.x): `plugins."io.containerd.grpc.v1.cri".containerd.runtimes.<handler>`
//! - version 3 (containerd 2.x): `plugins."io.containerd.cri.v1.runtime".containerd.runtimes.<handler>`
//!
//! `runtime_type` is the shim's absolute path, so it never depends on PATH
//! and can sit beside another shim of the same name.

use anyhow::{bail, Context, Result};
use toml_edit::{value, DocumentMut, Item, Table};

/// The CRI plugin's table for each config version.
fn cri_plugin(version: i64) -> Result<&'static str> {
    match version {
        2 => Ok("io.containerd.grpc.v1.cri"),
        3 => Ok("io.containerd.cri.v1.runtime"),
        v => bail!(
            "containerd config version {v} is not supported: migrate it with `containerd config migrate` (versions 2 and 3 are)"
        ),
    }
}

/// The config's `version`. A file without one is version 1.
pub fn version(doc: &DocumentMut) -> Result<i64> {
    match doc.get("version") {
        None => Ok(1),
        Some(v) => v
            .as_integer()
            .context("the config's `version` is not an integer"),
    }
}

/// A new, otherwise empty config of the given version.
pub fn empty(version: i64) -> Result<DocumentMut> {
    cri_plugin(version)?;
    let mut doc = DocumentMut::new();
    doc["version"] = value(version);
    Ok(doc)
}

/// The table at `path` below `table`, created (header-less until it holds
/// keys) where missing.
fn table_at<'a>(mut table: &'a mut Table, path: &[&str]) -> Result<&'a mut Table> {
    for key in path {
        let item = table.entry(key).or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        });
        table = item.as_table_mut().with_context(|| {
            format!("`{key}` in the containerd config is not a table; edit it by hand")
        })?;
    }
    Ok(table)
}

/// Makes `runtimes.<handler>` run the shim at `runtime_type`. Returns
/// whether anything changed.
pub fn add_runtime(doc: &mut DocumentMut, handler: &str, runtime_type: &str) -> Result<bool> {
    let plugin = cri_plugin(version(doc)?)?;
    warn_if_cri_disabled(doc, plugin);
    let runtimes = table_at(
        doc.as_table_mut(),
        &["plugins", plugin, "containerd", "runtimes"],
    )?;
    let runtime = table_at(runtimes, &[handler])?;
    runtime.set_implicit(false);
    if runtime.get("runtime_type").and_then(|v| v.as_str()) == Some(runtime_type) {
        return Ok(false);
    }
    runtime["runtime_type"] = value(runtime_type);
    Ok(true)
}

/// Removes `runtimes.<handler>`. Returns whether it was there.
pub fn remove_runtime(doc: &mut DocumentMut, handler: &str) -> Result<bool> {
    let plugin = cri_plugin(version(doc)?)?;
    let runtimes = doc
        .get_mut("plugins")
        .and_then(|p| p.get_mut(plugin))
        .and_then(|p| p.get_mut("containerd"))
        .and_then(|c| c.get_mut("runtimes"))
        .and_then(Item::as_table_like_mut);
    Ok(runtimes.and_then(|r| r.remove(handler)).is_some())
}

/// The `runtime_type` the config gives a handler, if any.
#[cfg(test)]
pub fn runtime_type(doc: &DocumentMut, handler: &str) -> Option<String> {
    let plugin = cri_plugin(version(doc).ok()?).ok()?;
    doc.get("plugins")?
        .get(plugin)?
        .get("containerd")?
        .get("runtimes")?
        .get(handler)?
        .get("runtime_type")?
        .as_str()
        .map(str::to_string)
}

/// A node whose containerd has CRI switched off (Docker's packages ship
/// such a config) will never serve the handler: say so.
fn warn_if_cri_disabled(doc: &DocumentMut, plugin: &str) {
    let disabled = doc
        .get("disabled_plugins")
        .and_then(|d| d.as_array())
        .is_some_and(|a| {
            a.iter()
                .filter_map(|v| v.as_str())
                .any(|p| p == "cri" || p == plugin || p == "io.containerd.grpc.v1.cri")
        });
    if disabled {
        eprintln!(
            "warning: containerd's CRI plugin is listed in disabled_plugins; Kubernetes cannot use the runtime until it is enabled"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIM: &str = "/usr/local/bin/containerd-shim-wasmtime-v1";

    const V2: &str = r#"version = 2
# operator's comment, kept
[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.9"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes]
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
          runtime_type = "io.containerd.runc.v2"
"#;

    const V3: &str = r#"version = 3
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = 'io.containerd.runc.v2'
"#;

    fn add(text: &str) -> (String, bool) {
        let mut doc: DocumentMut = text.parse().unwrap();
        let changed = add_runtime(&mut doc, "wasmtime", SHIM).unwrap();
        (doc.to_string(), changed)
    }

    #[test]
    fn adds_the_runtime_where_each_version_wants_it() {
        for text in [V2, V3] {
            let (out, changed) = add(text);
            assert!(changed);
            let doc: DocumentMut = out.parse().unwrap();
            assert_eq!(
                runtime_type(&doc, "wasmtime").as_deref(),
                Some(SHIM),
                "{out}"
            );
            assert_eq!(
                runtime_type(&doc, "runc").as_deref(),
                Some("io.containerd.runc.v2"),
                "{out}"
            );
        }
        let (out, _) = add(V2);
        assert!(out.contains("# operator's comment, kept"), "{out}");
        assert!(
            out.contains("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmtime]")
        );
    }

    #[test]
    fn a_second_install_changes_nothing_and_removal_restores_the_file() {
        for text in [V2, V3] {
            let (once, _) = add(text);
            let (twice, changed) = add(&once);
            assert!(!changed);
            assert_eq!(once, twice);
            let mut doc: DocumentMut = twice.parse().unwrap();
            assert!(remove_runtime(&mut doc, "wasmtime").unwrap());
            assert_eq!(doc.to_string(), text);
            assert!(!remove_runtime(&mut doc, "wasmtime").unwrap());
        }
    }

    #[test]
    fn an_old_path_is_replaced_and_other_keys_stay() {
        let text = format!(
            "{V2}        [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmtime]\n          runtime_type = \"io.containerd.wasmtime.v1\"\n          privileged_without_host_devices = true\n"
        );
        let (out, changed) = add(&text);
        assert!(changed);
        assert!(
            out.contains("privileged_without_host_devices = true"),
            "{out}"
        );
        assert_eq!(out.matches("runtimes.wasmtime]").count(), 1, "{out}");
    }

    #[test]
    fn an_empty_config_gets_the_tables_it_needs() {
        for v in [2, 3] {
            let mut doc = empty(v).unwrap();
            assert!(add_runtime(&mut doc, "wasmtime", SHIM).unwrap());
            let doc: DocumentMut = doc.to_string().parse().unwrap();
            assert_eq!(runtime_type(&doc, "wasmtime").as_deref(), Some(SHIM));
        }
    }

    #[test]
    fn version_1_and_odd_shapes_are_refused() {
        let mut doc: DocumentMut = "[plugins.cri]\n".parse().unwrap();
        let err = add_runtime(&mut doc, "wasmtime", SHIM).unwrap_err();
        assert!(err.to_string().contains("migrate"), "{err}");
        let mut doc: DocumentMut = "version = 2\nplugins = 3\n".parse().unwrap();
        let err = add_runtime(&mut doc, "wasmtime", SHIM).unwrap_err();
        assert!(err.to_string().contains("not a table"), "{err}");
    }
}
