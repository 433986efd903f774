//! Replays every input in `fuzz/regressions/<target>/` (crash inputs the fuzzers found, kept
//! forever) and a set of hand-made hostile inputs through the fuzz targets' entry points: none may
//! panic, and every refused request must be a 4xx.

use std::path::PathBuf;

use fer_server::fuzzing::{decode_preprocess, request_parsers};

fn regressions(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != "README.md"))
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    inputs.sort();
    inputs
}

#[test]
fn decode_preprocess_survives_its_regressions_and_hostile_images() {
    for (path, bytes) in regressions("decode_preprocess") {
        eprintln!("{}", path.display());
        decode_preprocess(&bytes);
    }
    let hostile: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"\x89PNG\r\n\x1a\n".to_vec(),
        b"\xff\xd8\xff\xe0\x00\x10JFIF\x00".to_vec(),
        b"\xff\xd8\xff\xc0\x00\x11\x08\xff\xff\xff\xff\x03\x01\x22\x00".to_vec(),
        b"RIFF\x00\x00\x00\x00WEBPVP8 ".to_vec(),
        b"RIFF\xff\xff\xff\xffWEBPVP8L\x05\x00\x00\x00\x2f\xff\xff\xff\xff".to_vec(),
        b"BM\x00\x00\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00\x28\x00\x00\x00\xff\xff\xff\x7f\xff\xff\xff\x7f\x01\x00\x18\x00".to_vec(),
        vec![0xff; 4096],
    ];
    for bytes in hostile {
        decode_preprocess(&bytes);
    }
}

#[test]
fn request_parsers_survive_their_regressions_and_hostile_requests() {
    for (path, bytes) in regressions("request_parsers") {
        eprintln!("{}", path.display());
        request_parsers(&bytes);
    }
    let deep_json = format!("\x01{}", "[".repeat(100_000));
    let hostile: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![1],
        deep_json.into_bytes(),
        b"\x01{\"images\": [\"data:;base64,\", \"====\", \"\"]}".to_vec(),
        b"\x02--fuzz-boundary\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\n".to_vec(),
        b"\x02--fuzz-boundary--\r\n".to_vec(),
        b"\x03multipart/form-data; boundary=\n--\r\n".to_vec(),
        b"\x03multipart/form-data; boundary=\"\xff\xfe\"\n".to_vec(),
        b"\x03application/json; charset=\xff\n{}".to_vec(),
        b"\x03\n".to_vec(),
        b"\x04{\"format_version\": 1}".to_vec(),
        b"\x04latest:99999999999999999999999".to_vec(),
        b"\x04specific:".to_vec(),
    ];
    for bytes in hostile {
        request_parsers(&bytes);
    }
}
