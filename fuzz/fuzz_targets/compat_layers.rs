//! A compat image's tar layers, plain or gzip, indexed and searched for the entrypoint as the
//! puller does it, within its limits on layers, entries and inflated bytes.
#![no_main]

use std::sync::LazyLock;

/// Where the layers of each input are written; one per process, reused by every input.
static DIR: LazyLock<Option<tempfile::TempDir>> = LazyLock::new(|| tempfile::tempdir().ok());

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(dir) = DIR.as_ref() {
        oci::fuzzing::compat_layers(data, dir.path());
    }
});
