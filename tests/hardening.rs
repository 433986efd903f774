//! End-to-end: inputs and load that must not hurt the server. A corpus of malformed requests gets
//! its documented 4xx (never a 5xx); overload is shed with 429 within the time limit and memory
//! stays bounded; slow requests get 504; API keys guard what they should; SIGTERM drains.

mod common;

use std::io::Cursor;
use std::time::{Duration, Instant};

use common::{Server, ferplus_faces};
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
