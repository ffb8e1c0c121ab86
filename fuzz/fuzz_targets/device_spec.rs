//! `--device LABEL=SPEC`: any text is a spec or a one-line error, and a spec prints back as
//! text that parses to the same spec (what `wasmlet` logs is what the operator can pass).
#![no_main]

use peripherals_spec::DeviceSpec;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match DeviceSpec::parse(text) {
        Ok(spec) => {
            let printed = spec.to_string();
            assert_eq!(DeviceSpec::parse(&printed).as_ref(), Ok(&spec), "{printed}");
        }
        // Whatever the operator typed is quoted, so the error stays one line.
        Err(err) => assert!(!err.to_string().contains('\n'), "{err}"),
    }
});
