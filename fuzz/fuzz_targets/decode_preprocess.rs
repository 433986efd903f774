//! Arbitrary bytes through decode → resize → normalise.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fer_server::fuzzing::decode_preprocess(data);
});
