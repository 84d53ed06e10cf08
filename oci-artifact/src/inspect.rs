//! What a module is: a core module or a component, and what it imports and
//! exports. Shown by `oci-artifact inspect`, and used to fill the artifact
//! config's `component` field.

use anyhow::{Context, Result};
use wasmparser::{Parser, Payload};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleInfo {
    pub component: bool,
    /// `module::name` for core modules, the extern name for components.
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

impl ModuleInfo {
    pub fn kind(&self) -> &'static str {
        if self.component {
            "component"
        } else {
            "core module"
        }
    }
}

/// Reads the top-level imports and exports (not those of nested modules).
pub fn inspect(bytes: &[u8]) -> Result<ModuleInfo> {
    let mut info = ModuleInfo {
        component: Parser::is_component(bytes),
        imports: Vec::new(),
        exports: Vec::new(),
    };
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.context("parse the module")? {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ImportSection(reader) if depth == 0 => {
                for import in reader.into_imports() {
                    let import = import?;
                    info.imports
                        .push(format!("{}::{}", import.module, import.name));
                }
            }
            Payload::ExportSection(reader) if depth == 0 => {
                for export in reader {
                    info.exports.push(export?.name.to_string());
                }
            }
            Payload::ComponentImportSection(reader) if depth == 0 => {
                for import in reader {
                    info.imports.push(import?.name.name.to_string());
                }
            }
            Payload::ComponentExportSection(reader) if depth == 0 => {
                for export in reader {
                    info.exports.push(export?.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_core_imports_and_exports() {
        let wasm = wat::parse_str(
            r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
                       (memory (export "memory") 1) (func (export "_start")))"#,
        )
        .unwrap();
        let info = inspect(&wasm).unwrap();
        assert_eq!(info.kind(), "core module");
        assert_eq!(info.imports, vec!["wasi_snapshot_preview1::fd_write"]);
        assert_eq!(info.exports, vec!["memory", "_start"]);
    }

    #[test]
    fn knows_a_component() {
        let info = inspect(b"\0asm\x0d\0\x01\0").unwrap();
        assert!(info.component);
    }
}
