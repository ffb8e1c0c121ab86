//! The bytes a `kubectl port-forward` client sends on its upgraded connection: SPDY/3.1
//! frames, with header blocks in the connection's zlib stream.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kubelet::fuzzing::port_forward(data);
});
