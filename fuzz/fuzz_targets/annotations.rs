//! A pod's outbound HTTP annotations, written by the pod's author: line one is the
//! allowed-domains list, line two the concurrency bound (absent if the line is), and line
//! three a URI the guest asks for, checked against the policy.
#![no_main]

use std::collections::BTreeMap;

use wasi_policy::{ALLOWED_DOMAINS, HttpPolicy, MAX_CONCURRENT_REQUESTS};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.splitn(3, '\n');
    let mut annotations = BTreeMap::new();
    if let Some(domains) = lines.next() {
        annotations.insert(ALLOWED_DOMAINS.to_string(), domains.to_string());
    }
    if let Some(bound) = lines.next().filter(|b| !b.is_empty()) {
        annotations.insert(MAX_CONCURRENT_REQUESTS.to_string(), bound.to_string());
    }
    if let Ok(policy) = HttpPolicy::from_annotations(&annotations)
        && let Some(Ok(uri)) = lines.next().map(str::parse::<http::Uri>)
    {
        let _ = policy.allows(&uri);
        let _ = policy.max_concurrent();
    }
});
