//! The query string of a container log request to the kubelet API (`tailLines`,
//! `limitBytes`, `sinceSeconds`, `sinceTime`, `timestamps`, `previous`, `follow`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        kubelet::fuzzing::log_query(text);
    }
});
