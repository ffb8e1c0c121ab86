//! A registry's answer to a manifest or blob request: an OCI manifest, an image index or an
//! image config, read as the puller reads it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oci::fuzzing::manifest(data));
