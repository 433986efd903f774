//! End-to-end: inputs and load that must not hurt the server. A corpus of malformed requests gets
//! its documented 4xx (never a 5xx); overload is shed with 429 within the time limit and memory
//! stays bounded; slow requests get 504; API keys guard what they should; SIGTERM drains.

use std::io::Cursor;
use std::time::{Duration, Instant};

use crate::common::{Server, ferplus_faces};
use serde_json::Value;

struct Case {
    name: &'static str,
    request: reqwest::RequestBuilder,
    status: u16,
    code: &'static str,
}

fn encode(png: &[u8], format: image::ImageFormat) -> Vec<u8> {
    let image = image::load_from_memory(png).unwrap().to_rgb8();
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(image)
        .write_to(&mut out, format)
        .unwrap();
    out.into_inner()
}

/// A valid PNG header that declares `width × height` over a tiny compressed body.
fn png_declaring(width: u32, height: u32) -> Vec<u8> {
    let mut png = Vec::new();
    {
        use image::ImageEncoder;
        image::codecs::png::PngEncoder::new(&mut png)
            .write_image(&[0u8; 64], 64, 1, image::ExtendedColorType::L8)
            .unwrap();
    }
    png[16..20].copy_from_slice(&width.to_be_bytes());
    png[20..24].copy_from_slice(&height.to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(&png[12..29]);
    png[29..33].copy_from_slice(&crc.sum().to_be_bytes());
    png
}

fn multipart_of(parts: usize, bytes: &[u8], field: &str) -> reqwest::multipart::Form {
    (0..parts).fold(reqwest::multipart::Form::new(), |form, i| {
        form.part(
            field.to_string(),
            reqwest::multipart::Part::bytes(bytes.to_vec())
                .file_name(format!("{i}.png"))
                .mime_str("image/png")
                .unwrap(),
        )
    })
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corpus_of_bad_inputs_gets_documented_4xx_and_never_a_5xx() {
    let server = Server::start(&["--body-limit", "4000000"]);
    let c = reqwest::Client::new();
    let png = ferplus_faces(9, 1).remove(0).png;
    let jpeg = encode(&png, image::ImageFormat::Jpeg);
    let webp = encode(&png, image::ImageFormat::WebP);
    let classify = |content_type: &str, body: Vec<u8>| {
        c.post(server.url("/v1/classify"))
            .header("content-type", content_type)
            .body(body)
    };
    let json = |body: &str| classify("application/json", body.as_bytes().to_vec());
    let mut zero_width = png.clone();
    zero_width[16..20].copy_from_slice(&0u32.to_be_bytes());
    let mut bad_sof = jpeg.clone();
    let sof = bad_sof
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("baseline JPEG");
    bad_sof[sof + 5..sof + 9].copy_from_slice(&[0, 0, 0, 0]);
    let mut bad_webp = webp.clone();
    bad_webp[12..16].copy_from_slice(b"XXXX");

    let cases = vec![
        Case {
            name: "zero bytes",
            request: classify("image/png", Vec::new()),
            status: 400,
            code: "invalid_image",
        },
        Case {
            name: "truncated PNG",
            request: classify("image/png", png[..png.len() / 2].to_vec()),
            status: 400,
            code: "invalid_image",
        },
        Case {
            name: "PNG of zero width",
            request: classify("image/png", zero_width),
            status: 400,
            code: "invalid_image",
        },
        Case {
            name: "PNG signature, then junk",
            request: classify("image/png", b"\x89PNG\r\n\x1a\njunkjunkjunk".to_vec()),
            status: 400,
            code: "invalid_image",
        },
        Case {
            name: "truncated JPEG",
            request: classify("image/jpeg", jpeg[..jpeg.len() / 3].to_vec()),
            status: 400,
            code: "invalid_image",
        },
        Case {
            name: "JPEG with a zero-size frame",
            request: classify("image/jpeg", bad_sof),
            status: 400,
            code: "invalid_image",
        },
        Case {
            name: "truncated WebP",
            request: classify("image/webp", webp[..webp.len() / 2].to_vec()),
            status: 400,
            code: "invalid_image",
        },
        Case {
            name: "WebP with a corrupt chunk",
            request: classify("image/webp", bad_webp),
            status: 400,
            code: "invalid_image",
        },
        Case {
            name: "random bytes",
            request: classify(
                "application/octet-stream",
                (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect(),
            ),
            status: 415,
            code: "unsupported_media_type",
        },
        Case {
            name: "GIF",
            request: classify("image/gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec()),
            status: 415,
            code: "unsupported_media_type",
        },
        Case {
            name: "text/plain",
            request: classify("text/plain", b"hello".to_vec()),
            status: 415,
            code: "unsupported_media_type",
        },
        Case {
            name: "no content type",
            request: c.post(server.url("/v1/classify")).body(png.clone()),
            status: 415,
            code: "unsupported_media_type",
        },
        Case {
            name: "30,000 × 30,000 PNG bomb",
            request: classify("image/png", png_declaring(30_000, 30_000)),
            status: 422,
            code: "image_too_large",
        },
        Case {
            name: "1 × 100,000 PNG",
            request: classify("image/png", png_declaring(1, 100_000)),
            status: 422,
            code: "image_too_large",
        },
        Case {
            name: "body over the limit",
            request: classify("image/png", vec![0; 4_000_001]),
            status: 413,
            code: "payload_too_large",
        },
        Case {
            name: "10,000 multipart parts",
            request: c.post(server.url("/v1/classify")).multipart(multipart_of(
                10_000,
                &png[..64],
                "image",
            )),
            status: 422,
            code: "too_many_images",
        },
        Case {
            name: "multipart field of another name",
            request: c
                .post(server.url("/v1/classify"))
                .multipart(multipart_of(1, &png, "file")),
            status: 400,
            code: "bad_request",
        },
        Case {
            name: "multipart without its boundary",
            request: classify("multipart/form-data", png.clone()),
            status: 400,
            code: "bad_request",
        },
        Case {
            name: "multipart cut short",
            request: classify(
                "multipart/form-data; boundary=XyZ",
                b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nabc".to_vec(),
            ),
            status: 400,
            code: "bad_request",
        },
        Case {
            name: "malformed JSON",
            request: json("{\"images\": ["),
            status: 400,
            code: "bad_request",
        },
        Case {
            name: "JSON of another shape",
            request: json("{\"image\": \"x\"}"),
            status: 400,
            code: "bad_request",
        },
        Case {
            name: "JSON numbers for images",
            request: json("{\"images\": [1, 2]}"),
            status: 400,
            code: "bad_request",
        },
        Case {
            name: "malformed base64",
            request: json("{\"images\": [\"not base64!\"]}"),
            status: 400,
            code: "bad_request",
        },
        Case {
            name: "base64 of junk",
            request: json("{\"images\": [\"AAAA\"]}"),
            status: 415,
            code: "unsupported_media_type",
        },
        Case {
            name: "no images",
            request: json("{\"images\": []}"),
            status: 400,
            code: "bad_request",
        },
        Case {
            name: "10,000 JSON images",
            request: json(&format!(
                "{{\"images\": [{}]}}",
                vec!["\"AAAA\""; 10_000].join(",")
            )),
            status: 422,
            code: "too_many_images",
        },
        Case {
            name: "unknown model",
            request: c
                .post(server.url("/v1/classify?model=nope"))
                .header("content-type", "image/png")
                .body(png.clone()),
            status: 404,
            code: "model_not_found",
        },
        Case {
            name: "unknown version",
            request: c
                .post(server.url("/v1/classify?version=99"))
                .header("content-type", "image/png")
                .body(png.clone()),
            status: 404,
            code: "model_not_found",
        },
        Case {
            name: "version not a number",
            request: c
                .post(server.url("/v1/classify?version=abc"))
                .header("content-type", "image/png")
                .body(png.clone()),
            status: 400,
            code: "bad_request",
        },
        Case {
            name: "negative top_k",
            request: c
                .post(server.url("/v1/classify?top_k=-1"))
                .header("content-type", "image/png")
                .body(png.clone()),
            status: 400,
            code: "bad_request",
        },
        Case {
            name: "top_k of zero",
            request: c
                .post(server.url("/v1/classify?top_k=0"))
                .header("content-type", "image/png")
                .body(png.clone()),
            status: 400,
            code: "bad_request",
        },
        Case {
            name: "unknown route",
            request: c.get(server.url("/v1/nothing")),
            status: 404,
            code: "not_found",
        },
        Case {
            name: "wrong method",
            request: c.get(server.url("/v1/classify")),
            status: 405,
            code: "method_not_allowed",
        },
        Case {
            name: "repository load of an unknown model",
            request: c.post(server.url("/v2/repository/models/nope/load")),
            status: 404,
            code: "model_not_found",
        },
        Case {
            name: "repository index with malformed JSON",
            request: c.post(server.url("/v2/repository/index")).body("{"),
            status: 400,
            code: "bad_request",
        },
    ];
    let total = cases.len();
    let input = {
        let models: Value = c
            .get(server.url("/v2/models/ferplus"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        models["inputs"][0]["name"].as_str().unwrap().to_string()
    };
    for case in cases {
        let response = case
            .request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let status = response.status().as_u16();
        let body: Value = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("{}: the error body is not JSON: {e}", case.name));
        assert_eq!(
            (status, body["error"]["code"].as_str().unwrap_or("")),
            (case.status, case.code),
            "{}: {body}",
            case.name
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{}: {body}",
            case.name
        );
    }

    // KServe v2 inference: wrong shapes, datatypes, sizes and framing. The protocol's error body is
    // {"error": "<message>"}; the message must say what is wrong.
    let infer = server.url("/v2/models/ferplus/infer");
    let v2 = |body: String| {
        c.post(&infer)
            .header("content-type", "application/json")
            .body(body)
    };
    let tensor = |shape: &str, datatype: &str, data: &str| {
        v2(format!(
            r#"{{"inputs": [{{"name": "{input}", "shape": {shape}, "datatype": "{datatype}", "data": {data}}}]}}"#
        ))
    };
    let zeros = |n: usize| format!("[{}]", vec!["0"; n].join(","));
    let binary = |json: &str, tail: &[u8]| {
        let mut body = json.as_bytes().to_vec();
        body.extend_from_slice(tail);
        c.post(&infer)
            .header("inference-header-content-length", json.len().to_string())
            .body(body)
    };
    let fp32_binary = |size: usize| {
        format!(
            r#"{{"inputs": [{{"name": "{input}", "shape": [1, 1, 48, 48], "datatype": "FP32", "parameters": {{"binary_data_size": {size}}}}}]}}"#
        )
    };
    let image = |rest: &str| v2(format!(r#"{{"inputs": [{{"name": "image", {rest}}}]}}"#));
    let v2_cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        ("wrong spatial shape", tensor("[1, 1, 48, 47]", "FP32", &zeros(2256)), 400, "shape"),
        ("rank 3", tensor("[1, 48, 48]", "FP32", &zeros(2304)), 400, "shape"),
        ("zero batch", tensor("[0, 1, 48, 48]", "FP32", "[]"), 400, "shape"),
        ("negative batch", tensor("[-1, 1, 48, 48]", "FP32", "[]"), 400, "shape"),
        ("FP16", tensor("[1, 1, 48, 48]", "FP16", &zeros(2304)), 400, "datatype"),
        ("INT64", tensor("[1, 1, 48, 48]", "INT64", &zeros(2304)), 400, "datatype"),
        ("too few values", tensor("[1, 1, 48, 48]", "FP32", &zeros(2303)), 400, "2303 were sent"),
        ("too many values", tensor("[1, 1, 48, 48]", "FP32", &zeros(4608)), 400, "4608 were sent"),
        ("strings for numbers", tensor("[1, 1, 48, 48]", "FP32", r#"["a"]"#), 400, "not a number"),
        (
            "no data",
            v2(format!(r#"{{"inputs": [{{"name": "{input}", "shape": [1, 1, 48, 48], "datatype": "FP32"}}]}}"#)),
            400,
            "neither data",
        ),
        ("batch over the image limit", tensor("[65, 1, 48, 48]", "FP32", "[]"), 422, "limit"),
        (
            "unknown input",
            v2(r#"{"inputs": [{"name": "pixels", "shape": [1], "datatype": "BYTES", "data": ["AAAA"]}]}"#.into()),
            400,
            "unknown input",
        ),
        (
            "two inputs",
            v2(format!(
                r#"{{"inputs": [{{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["AAAA"]}}, {{"name": "{input}", "shape": [1], "datatype": "FP32", "data": [0]}}]}}"#
            )),
            400,
            "exactly one input",
        ),
        ("no inputs", v2(r#"{"inputs": []}"#.into()), 400, "exactly one input"),
        ("image as FP32", image(r#""shape": [1], "datatype": "FP32", "data": [0]"#), 400, "BYTES"),
        ("image not base64", image(r#""shape": [1], "datatype": "BYTES", "data": ["not base64!"]"#), 400, "base64"),
        ("image count off its shape", image(r#""shape": [2], "datatype": "BYTES", "data": ["AAAA"]"#), 400, "2 images"),
        ("image of junk", image(r#""shape": [1], "datatype": "BYTES", "data": ["AAAA"]"#), 415, "format"),
        (
            "unknown output",
            v2(r#"{"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["AAAA"]}], "outputs": [{"name": "nope"}]}"#.into()),
            400,
            "unknown output",
        ),
        ("malformed JSON", v2("{\"inputs\": [".into()), 400, "JSON"),
        (
            "header length past the body",
            c.post(&infer).header("inference-header-content-length", "99").body("{}"),
            400,
            "only",
        ),
        (
            "header length not a number",
            c.post(&infer).header("inference-header-content-length", "ten").body("{}"),
            400,
            "byte count",
        ),
        ("binary size past the data", binary(&fp32_binary(9216), &[0; 100]), 400, "runs past"),
        ("binary size not whole floats", binary(&fp32_binary(7), &[0; 7]), 400, "whole number"),
        ("bytes left over", binary(&fp32_binary(9216), &[0; 9220]), 400, "belong to no input"),
        (
            "malformed BYTES element",
            binary(
                r#"{"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}}]}"#,
                &[200, 0, 0, 0, 1, 2],
            ),
            400,
            "malformed BYTES",
        ),
        ("NaN in the tensor", binary(&fp32_binary(9216), &f32::NAN.to_le_bytes().repeat(2304)), 400, "finite"),
        (
            "unknown model",
            c.post(server.url("/v2/models/nope/infer"))
                .body(r#"{"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["AAAA"]}]}"#),
            404,
            "not found",
        ),
        (
            "version not a number",
            c.post(server.url("/v2/models/ferplus/versions/x/infer")).body("{}"),
            400,
            "not a number",
        ),
    ];
    let total = total + v2_cases.len();
    for (name, request, want, words) in v2_cases {
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let status = response.status().as_u16();
        let body: Value = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("{name}: the error body is not JSON: {e}"));
        let message = body["error"].as_str().unwrap_or_default();
        assert_eq!(status, want, "{name}: {body}");
        assert!(
            message.contains(words),
            "{name}: {message:?} does not say {words:?}"
        );
    }

    // A 1 × 1 image is an image: it is classified, not refused.
    let tiny = encode(&png_declaring(64, 1), image::ImageFormat::Png);
    let one = image::DynamicImage::ImageLuma8(image::GrayImage::new(1, 1));
    let mut one_png = Cursor::new(Vec::new());
    one.write_to(&mut one_png, image::ImageFormat::Png).unwrap();
    for body in [one_png.into_inner(), tiny] {
        let r = classify("image/png", body).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    // Still serving, and nothing was ever answered with a 5xx.
    let r = classify("image/png", png.clone()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let metrics = c
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let server_errors: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("fer_http_requests_total{") && l.contains("status=\"5"))
        .collect();
    assert!(server_errors.is_empty(), "{server_errors:?}");
    eprintln!("{total} bad inputs, 0 answered with 5xx");
}

#[tokio::test(flavor = "multi_thread")]
async fn overload_is_shed_with_429_within_the_time_limit_and_memory_stays_bounded() {
    let timeout_ms = 3000;
    let server = Server::start(&[
        "--max-concurrent-requests",
        "8",
        "--queue-capacity",
        "64",
        "--request-timeout-ms",
        &timeout_ms.to_string(),
    ]);
    let png = ferplus_faces(9, 1).remove(0).png;
    let burst = |clients: usize| {
        let url = server.url("/v1/classify");
        let png = png.clone();
        async move {
            let tasks: Vec<_> = (0..clients)
                .map(|_| {
                    let url = url.clone();
                    let form = multipart_of(16, &png, "image");
                    tokio::spawn(async move {
                        let started = Instant::now();
                        let r = reqwest::Client::new()
                            .post(url)
                            .multipart(form)
                            .send()
                            .await
                            .unwrap();
                        let status = r.status().as_u16();
                        let retry = r.headers().contains_key("retry-after");
                        let body: Value = r.json().await.unwrap();
                        (status, retry, body, started.elapsed())
                    })
                })
                .collect();
            let mut counts = (0, 0);
            for t in tasks {
                let (status, retry, body, took) = t.await.unwrap();
                assert!(
                    took < Duration::from_millis(timeout_ms + 2000),
                    "a request took {took:?}, beyond the {timeout_ms} ms limit"
                );
                match status {
                    200 => counts.0 += 1,
                    429 => {
                        counts.1 += 1;
                        assert!(retry, "429 carries Retry-After");
                        let code = body["error"]["code"].as_str().unwrap();
                        assert!(["overloaded", "queue_full"].contains(&code), "{body}");
                    }
                    other => panic!("unexpected {other}: {body}"),
                }
            }
            counts
        }
    };
    burst(4).await;
    let before = rss_kib(server.pid());
    let mut shed = 0;
    let mut served = 0;
    for _ in 0..4 {
        let (ok, refused) = burst(96).await;
        served += ok;
        shed += refused;
    }
    let after = rss_kib(server.pid());
    assert!(shed > 0, "96 clients against 8 slots: some must be refused");
    assert!(served > 0, "and some served");
    assert!(
        after < before + 150 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    eprintln!("overload: {served} served, {shed} shed with 429; RSS {before} KiB → {after} KiB");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_over_the_time_limit_gets_504_and_its_queued_work_is_dropped() {
    // A lone image waits up to 2 s for its batch to fill: longer than the 300 ms limit.
    let server = Server::start(&[
        "--request-timeout-ms",
        "300",
        "--max-queue-delay-ms",
        "2000",
        "--max-batch-size",
        "32",
    ]);
    let c = reqwest::Client::new();
    let png = ferplus_faces(9, 1).remove(0).png;
    let started = Instant::now();
    let r = c
        .post(server.url("/v1/classify"))
        .header("content-type", "image/png")
        .body(png.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert!(started.elapsed() < Duration::from_millis(1500));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "timeout");
    // The worker wakes up with the batch and skips the abandoned image.
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let text = c
            .get(server.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("fer_failures_total{reason=\"cancelled\"} 1") || Instant::now() > deadline
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        metrics.contains("fer_failures_total{reason=\"cancelled\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("fer_failures_total{reason=\"timeout\"} 1"));
    assert!(
        metrics
            .contains("fer_stage_duration_seconds_count{model=\"ferplus\",stage=\"inference\"} 0"),
        "no inference ran for it"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn api_keys_guard_inference_and_admin_routes() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "# operators\nkey-from-file\n").unwrap();
    let server = Server::start(&[
        "--api-key",
        "key-from-flag",
        "--api-keys-file",
        keys.to_str().unwrap(),
        "--auth-metrics",
        "--cors-allow-origin",
        "https://app.example",
    ]);
    let c = reqwest::Client::new();
    let png = ferplus_faces(9, 1).remove(0).png;
    let classify = |key: Option<&str>| {
        let mut r = c
            .post(server.url("/v1/classify"))
            .header("content-type", "image/png")
            .body(png.clone());
        if let Some(key) = key {
            r = r.bearer_auth(key);
        }
        r.send()
    };
    for key in [None, Some("wrong"), Some("key-from-fla")] {
        let r = classify(key).await.unwrap();
        assert_eq!(r.status(), 401, "{key:?}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
        assert_eq!(body["error"]["message"], "missing or invalid API key");
    }
    for key in ["key-from-flag", "key-from-file"] {
        let r = classify(Some(key)).await.unwrap();
        assert_eq!(r.status(), 200, "{key}");
        assert!(r.headers().contains_key("x-request-id"));
    }
    let status = |path: &'static str, key: Option<&'static str>, post: bool| {
        let mut r = if post {
            c.post(server.url(path))
        } else {
            c.get(server.url(path))
        };
        if let Some(key) = key {
            r = r.bearer_auth(key);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status("/v2/repository/index", None, true).await, 401);
    assert_eq!(
        status("/v2/repository/index", Some("key-from-file"), true).await,
        200
    );
    assert_eq!(
        status("/v2/repository/models/ferplus/load", None, true).await,
        401
    );
    assert_eq!(status("/v1/models", None, false).await, 401);
    assert_eq!(status("/metrics", None, false).await, 401, "--auth-metrics");
    assert_eq!(status("/metrics", Some("key-from-flag"), false).await, 200);
    assert_eq!(
        status("/healthz", None, false).await,
        200,
        "health stays open"
    );
    assert_eq!(status("/readyz", None, false).await, 200);

    // A request id given by the client comes back; CORS answers the configured origin only.
    let r = c
        .get(server.url("/healthz"))
        .header("x-request-id", "trace-me-42")
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-me-42");
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let r = c
        .get(server.url("/healthz"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_requests_and_refuses_new_ones() {
    // A lone image waits 1.5 s for its batch: in flight when SIGTERM arrives.
    let server = Server::start(&["--max-queue-delay-ms", "1500", "--max-batch-size", "32"]);
    let png = ferplus_faces(9, 1).remove(0).png;
    let url = server.url("/v1/classify");
    let slow = {
        let png = png.clone();
        let url = url.clone();
        tokio::spawn(async move {
            let r = reqwest::Client::new()
                .post(url)
                .header("content-type", "image/png")
                .body(png)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = reqwest::Client::new();
    let r = c
        .post(&url)
        .header("content-type", "image/png")
        .body(png)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "shutting_down");
    assert_eq!(
        c.get(server.url("/readyz")).send().await.unwrap().status(),
        503
    );
    let (status, body) = slow.await.unwrap();
    assert_eq!(status, 200, "the in-flight request finished: {body}");
    let exit = server.wait();
    assert!(exit.success(), "{exit:?}");
}

/// Requests the HTTP library refuses before any route sees them (malformed, URI too long, headers
/// too large) get the same JSON error body as every other error, and the connection closes.
#[test]
fn requests_the_http_library_cannot_read_get_our_json_errors() {
    use std::io::{Read, Write};
    let server = Server::start(&[]);
    let address = server.base.trim_start_matches("http://").to_string();
    let raw = |request: Vec<u8>| {
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // The server may answer (and close) before it has read everything a big request sends.
        let _ = stream.write_all(&request);
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    };
    let long_uri = format!("GET /{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(70_000));
    let many_headers = format!(
        "GET /healthz HTTP/1.1\r\nhost: x\r\n{}\r\n",
        (0..200)
            .map(|i| format!("x-h{i}: 1\r\n"))
            .collect::<String>()
    );
    let huge_header = format!(
        "GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "b".repeat(600_000)
    );
    let cases = [
        (
            "malformed request line",
            b"GARBAGE\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
        (
            "bad header",
            b"GET / HTTP/1.1\r\nno colon here\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
        ("URI too long", long_uri.into_bytes(), 414, "uri_too_long"),
        (
            "too many headers",
            many_headers.into_bytes(),
            431,
            "headers_too_large",
        ),
        (
            "header too large",
            huge_header.into_bytes(),
            431,
            "headers_too_large",
        ),
    ];
    for (name, request, status, code) in cases {
        let answer = raw(request);
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("{name}: no answer: {answer:?}"));
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status} ")),
            "{name}: {head}"
        );
        assert!(
            head.contains("content-type: application/json"),
            "{name}: {head}"
        );
        let body: Value =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{name}: {e}: {body:?}"));
        assert_eq!(body["error"]["code"], code, "{name}: {body}");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }
    // The server still answers normal requests.
    let answer = raw(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec());
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
}
