//! The node's flags that take a spec: `--node-labels`, `--eviction-hard` and
//! `--outbound-http-allow-networks`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        kubelet::fuzzing::node_flags(text);
        let _ = wasi_policy::EgressPolicy::parse(text);
    }
});
