use serde::{Deserialize, Serialize};

/// Whether bytes are a core module or a component.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WasmKind {
    /// A core WebAssembly module (WASI preview 1).
    Module,
    /// A component (WASI preview 2).
    Component,
}

const MAGIC: &[u8; 4] = b"\0asm";
const MODULE_VERSION: [u8; 4] = [1, 0, 0, 0];
/// Component binaries share the magic and differ in the version/layer field.
const COMPONENT_VERSION: [u8; 4] = [0x0d, 0x00, 0x01, 0x00];

impl WasmKind {
    /// Reads the 8-byte header; `None` when the bytes are not Wasm at all.
    pub fn detect(bytes: &[u8]) -> Option<Self> {
        let header = bytes.get(..8)?;
        if &header[..4] != MAGIC {
            return None;
        }
        match &header[4..8] {
            v if v == MODULE_VERSION => Some(Self::Module),
            v if v == COMPONENT_VERSION => Some(Self::Component),
            _ => None,
        }
    }
}

/// A short description of what non-Wasm bytes look like, for error messages.
pub(crate) fn describe_non_wasm(bytes: &[u8]) -> String {
    match bytes.get(..4) {
        Some(b"\x7fELF") => "an ELF executable".into(),
        Some(b"#!/b") | Some(b"#!/u") => "a shell script".into(),
        Some(m) if m == MAGIC => format!(
            "Wasm magic with unknown version {:02x?}",
            bytes.get(4..8).unwrap_or_default()
        ),
        Some(m) => format!("bytes starting {m:02x?}, not the Wasm magic \\0asm"),
        None => format!("only {} bytes", bytes.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_and_components_are_told_apart() {
        assert_eq!(
            WasmKind::detect(b"\0asm\x01\0\0\0rest"),
            Some(WasmKind::Module)
        );
        assert_eq!(
            WasmKind::detect(b"\0asm\x0d\0\x01\0"),
            Some(WasmKind::Component)
        );
        assert_eq!(WasmKind::detect(b"\x7fELF\x02\x01\x01\0"), None);
        assert_eq!(WasmKind::detect(b"\0as"), None);
    }

    #[test]
    fn non_wasm_is_described() {
        assert_eq!(describe_non_wasm(b"\x7fELF\x02"), "an ELF executable");
        assert!(describe_non_wasm(b"\0asm\x02\0\0\0").contains("unknown version"));
    }
}
