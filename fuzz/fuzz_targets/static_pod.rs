//! A static pod manifest from the node's manifest directory (YAML or JSON, one or more
//! documents), and what admission and a container's launch read from each pod in it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        kubelet::fuzzing::static_pod(text);
    }
});
