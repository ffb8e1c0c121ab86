//! A resource quantity from a pod spec (`250m`, `1.5Gi`, `1e3`), read as a decimal, as bytes
//! and as millicores.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        kubelet::fuzzing::quantity(text);
    }
});
