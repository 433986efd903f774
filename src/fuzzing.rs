//! Entry points of the fuzz targets (`fuzz/`, run by `scripts/fuzz.sh`) and of their regression
//! test (`tests/e2e/fuzz_regressions.rs`). Each takes arbitrary bytes and must return without
//! panicking; a request the parsers refuse must be refused with a 4xx, never a 5xx.

use std::sync::OnceLock;

use axum::body::Body;
use axum::extract::Request;
use fer_contract::{DecodeLimits, Manifest, Preprocessor};

use crate::core::registry::policy::VersionPolicy;
use crate::http::classify::read_images;

const MANIFEST: &str = include_str!("../models/ferplus/1/manifest.json");

fn preprocessor() -> &'static Preprocessor {
    static PREPROCESSOR: OnceLock<Preprocessor> = OnceLock::new();
    PREPROCESSOR.get_or_init(|| {
        let manifest = Manifest::from_json(MANIFEST, "shipped manifest")
            .unwrap_or_else(|e| panic!("the shipped manifest parses: {e}"));
        // Smaller than the server's defaults so that the fuzzer spends its time on many inputs.
        let limits = DecodeLimits {
            max_width: 2048,
            max_height: 2048,
            max_pixels: 2_000_000,
        };
        Preprocessor::new(&manifest, limits)
    })
}

/// Decode (format sniffing, header checks, EXIF, gray conversion, resize) and normalise.
pub fn decode_preprocess(data: &[u8]) {
    let preprocessor = preprocessor();
    if let Ok(pixels) = preprocessor.decode(data) {
        let mut row = vec![0.0f32; preprocessor.input_len()];
        preprocessor.normalise_into(&pixels, &mut row);
        assert!(
            row.iter().all(|v| v.is_finite()),
            "normalised values are finite"
        );
    }
}

const BODY_LIMIT: usize = 1 << 20;
const MAX_IMAGES: usize = 16;
const BOUNDARY: &str = "fuzz-boundary";

/// The request parsers: the first byte picks which one reads the rest.
pub fn request_parsers(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 5 {
        0 => parse_request("image/png", rest),
        1 => parse_request("application/json", rest),
        2 => parse_request(&format!("multipart/form-data; boundary={BOUNDARY}"), rest),
        3 => {
            // The content type itself comes from the input: its first line.
            let split = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
            let content_type = String::from_utf8_lossy(&rest[..split]).into_owned();
            parse_request(&content_type, rest.get(split + 1..).unwrap_or_default());
        }
        _ => {
            let text = String::from_utf8_lossy(rest);
            let _ = Manifest::from_json(&text, "fuzz");
            let _ = text.parse::<VersionPolicy>();
        }
    }
}

fn parse_request(content_type: &str, body: &[u8]) {
    let Ok(request) = Request::builder()
        .method("POST")
        .uri("/v1/classify")
        .header("content-type", content_type)
        .body(Body::from(body.to_vec()))
    else {
        return;
    };
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|e| panic!("a Tokio runtime: {e}"));
    }
    let result = RUNTIME.with(|rt| rt.block_on(read_images(BODY_LIMIT, MAX_IMAGES, request)));
    match result {
        Ok(images) => assert!(images.len() <= MAX_IMAGES),
        Err(e) => assert!(
            (400..500).contains(&e.status()),
            "a malformed request must get a 4xx, not {}: {e}",
            e.status()
        ),
    }
}
