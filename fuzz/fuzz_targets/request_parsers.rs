//! Arbitrary bytes through the classify request parsers (raw, JSON, multipart, content types) and
//! the manifest and version-policy parsers.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fer_server::fuzzing::request_parsers(data);
});
