//! End-to-end: the real server binary on a real port, the shipped model, real FER+ faces.

use std::io::Cursor;

use crate::common::{Face, MODEL, Server, ferplus_faces, serving_version};
use serde_json::Value;

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn classify_raw(
    server: &Server,
    content_type: &str,
    body: Vec<u8>,
    query: &str,
) -> (u16, Value) {
    let response = client()
        .post(server.url(&format!("/v1/classify{query}")))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

async fn get_json(server: &Server, path: &str) -> Value {
    client()
        .get(server.url(path))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn get_text(server: &Server, path: &str) -> String {
    client()
        .get(server.url(path))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn multipart(faces: &[&[u8]]) -> reqwest::multipart::Form {
    faces
        .iter()
        .enumerate()
        .fold(reqwest::multipart::Form::new(), |form, (i, bytes)| {
            form.part(
                "image",
                reqwest::multipart::Part::bytes(bytes.to_vec())
                    .file_name(format!("{i}.png"))
                    .mime_str("image/png")
                    .unwrap(),
            )
        })
}

fn jpeg_of(face: &Face) -> Vec<u8> {
    let image = image::load_from_memory(&face.png).unwrap();
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn classifies_real_faces_in_every_request_format() {
    let server = Server::start(&[]);
    // Faces most annotators agree on: the shipped model must get the clear majority right.
    let faces = ferplus_faces(9, 60);
    assert!(faces.len() >= 40, "only {} clear faces", faces.len());

    let form = multipart(&faces.iter().map(|f| f.png.as_slice()).collect::<Vec<_>>());
    let response = client()
        .post(server.url("/v1/classify"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["model"]["name"], MODEL);
    assert_eq!(body["model"]["version"], serving_version(MODEL));
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), faces.len(), "one result per image");
    let mut correct = 0;
    for (face, result) in faces.iter().zip(results) {
        let scores = result["scores"].as_object().unwrap();
        assert_eq!(scores.len(), 8, "every label scored");
        let sum: f64 = scores.values().map(|v| v.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-3, "probabilities sum to 1: {sum}");
        let best = scores
            .iter()
            .max_by(|a, b| a.1.as_f64().partial_cmp(&b.1.as_f64()).unwrap())
            .unwrap();
        assert_eq!(result["label"], best.0.as_str(), "label is the best score");
        if result["label"] == face.label.as_str() {
            correct += 1;
        }
    }
    let accuracy = correct as f64 / faces.len() as f64;
    assert!(
        accuracy >= 0.8,
        "accuracy on clear faces {accuracy:.2} ({correct}/{})",
        faces.len()
    );

    // The same faces one at a time, as raw PNG, as JPEG, and as JSON base64, agree with the batch.
    for (face, batch_result) in faces.iter().zip(results).take(5) {
        let (status, raw) = classify_raw(&server, "image/png", face.png.clone(), "").await;
        assert_eq!(status, 200, "{raw}");
        assert_eq!(raw["results"][0]["label"], batch_result["label"]);
        let p_batch = batch_result["confidence"].as_f64().unwrap();
        let p_raw = raw["results"][0]["confidence"].as_f64().unwrap();
        assert!(
            (p_batch - p_raw).abs() < 1e-5,
            "batching does not change scores"
        );

        let (status, jpeg) = classify_raw(&server, "image/jpeg", jpeg_of(face), "?top_k=2").await;
        assert_eq!(status, 200, "{jpeg}");
        assert_eq!(
            jpeg["results"][0]["scores"].as_object().unwrap().len(),
            2,
            "top_k"
        );

        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&face.png);
        let json = serde_json::json!({"images": [b64, format!("data:image/png;base64,{b64}")]});
        let (status, body) = classify_raw(
            &server,
            "application/json",
            json.to_string().into_bytes(),
            &format!("?model=ferplus&version={}", serving_version(MODEL)),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["results"].as_array().unwrap().len(), 2);
        assert_eq!(body["results"][1]["label"], batch_result["label"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_clear_4xx_and_the_server_keeps_serving() {
    let server = Server::start(&["--body-limit", "1000000", "--max-images", "4"]);
    let face = &ferplus_faces(9, 1)[0];

    let (s, b) = classify_raw(&server, "image/png", Vec::new(), "").await;
    assert_error(s, &b, 400, "invalid_image");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("image 0"),
        "{b}"
    );

    let (s, b) = classify_raw(
        &server,
        "image/png",
        face.png[..face.png.len() / 2].to_vec(),
        "",
    )
    .await;
    assert_error(s, &b, 400, "invalid_image");

    let (s, b) = classify_raw(
        &server,
        "image/gif",
        b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec(),
        "",
    )
    .await;
    assert_error(s, &b, 415, "unsupported_media_type");

    let (s, b) = classify_raw(&server, "text/plain", b"hello".to_vec(), "").await;
    assert_error(s, &b, 415, "unsupported_media_type");

    let (s, b) = classify_raw(&server, "image/png", vec![0u8; 1_500_000], "").await;
    assert_error(s, &b, 413, "payload_too_large");

    let (s, b) = classify_raw(&server, "image/png", face.png.clone(), "?model=nope").await;
    assert_error(s, &b, 404, "model_not_found");
    let (s, b) = classify_raw(&server, "image/png", face.png.clone(), "?version=99").await;
    assert_error(s, &b, 404, "model_not_found");
    // A misspelt parameter is refused, not ignored.
    let (s, b) = classify_raw(&server, "image/png", face.png.clone(), "?topk=1").await;
    assert_error(s, &b, 400, "bad_request");
    let (s, b) = classify_raw(&server, "image/png", face.png.clone(), "?top_k=4294967296").await;
    assert_error(s, &b, 400, "bad_request");

    let (s, b) = classify_raw(&server, "application/json", b"{\"images\": [".to_vec(), "").await;
    assert_error(s, &b, 400, "bad_request");
    let (s, b) = classify_raw(
        &server,
        "application/json",
        br#"{"images": ["not base64!"]}"#.to_vec(),
        "",
    )
    .await;
    assert_error(s, &b, 400, "bad_request");
    let (s, b) = classify_raw(
        &server,
        "application/json",
        br#"{"images": []}"#.to_vec(),
        "",
    )
    .await;
    assert_error(s, &b, 400, "bad_request");

    // The second of three images is corrupt: the error names index 1.
    let corrupt = b"\x89PNG\r\n\x1a\nnot really".to_vec();
    let form = multipart(&[face.png.as_slice(), corrupt.as_slice(), face.png.as_slice()]);
    let r = client()
        .post(server.url("/v1/classify"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let (s, b) = (r.status().as_u16(), r.json::<Value>().await.unwrap());
    assert_error(s, &b, 400, "invalid_image");
    assert_eq!(b["error"]["index"], 1);

    let form = multipart(&[face.png.as_slice(); 5]);
    let r = client()
        .post(server.url("/v1/classify"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let (s, b) = (r.status().as_u16(), r.json::<Value>().await.unwrap());
    assert_error(s, &b, 422, "too_many_images");

    // A 30,000 × 30,000 PNG header (a decompression bomb) is refused before decoding.
    let (s, b) = classify_raw(&server, "image/png", bomb_png(), "").await;
    assert_error(s, &b, 422, "image_too_large");

    // Still serving, and the failures are counted by reason.
    let (s, _) = classify_raw(&server, "image/png", face.png.clone(), "").await;
    assert_eq!(s, 200);
    let metrics = get_text(&server, "/metrics").await;
    for reason in [
        "invalid_image",
        "unsupported_media_type",
        "payload_too_large",
        "model_not_found",
        "too_many_images",
        "image_too_large",
    ] {
        let line = format!("fer_failures_total{{reason=\"{reason}\"}}");
        let value = metrics
            .lines()
            .find(|l| l.starts_with(&line))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or("0");
        assert_ne!(value, "0", "{reason} not counted");
    }
}

fn bomb_png() -> Vec<u8> {
    let mut png = Vec::new();
    {
        use image::ImageEncoder;
        image::codecs::png::PngEncoder::new(&mut png)
            .write_image(&vec![0u8; 30_000], 30_000, 1, image::ExtendedColorType::L8)
            .unwrap();
    }
    png[20..24].copy_from_slice(&30_000u32.to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(&png[12..29]);
    png[29..33].copy_from_slice(&crc.sum().to_be_bytes());
    png
}

/// Every shipped INT8 variant loads, says so, and agrees with its FP32 source on clear faces.
#[tokio::test(flavor = "multi_thread")]
async fn int8_variants_serve_beside_their_fp32_sources() {
    let server = Server::start_shipped(&[]);
    let models = get_json(&server, "/v1/models").await;
    let int8: Vec<(String, String)> = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["manifest"]["precision"] == "int8")
        .map(|m| {
            assert_eq!(m["state"], "ready", "{m}");
            let name = m["name"].as_str().unwrap().to_string();
            let source = name
                .strip_suffix("-int8")
                .expect("named <source>-int8")
                .to_string();
            (name, source)
        })
        .collect();
    assert!(
        int8.iter().any(|(name, _)| name == "ferplus-int8"),
        "{models}"
    );
    let faces: Vec<Face> = ferplus_faces(9, 30);
    let form = || multipart(&faces.iter().map(|f| f.png.as_slice()).collect::<Vec<_>>());
    let labels = |body: Value| -> Vec<String> {
        body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["label"].as_str().unwrap().to_string())
            .collect()
    };
    for (name, source) in int8.iter().filter(|(_, s)| s == MODEL) {
        let mut answers = Vec::new();
        for model in [name, source] {
            let r = client()
                .post(server.url(&format!("/v1/classify?model={model}")))
                .multipart(form())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{model}");
            answers.push(labels(r.json().await.unwrap()));
        }
        let agree = answers[0]
            .iter()
            .zip(&answers[1])
            .filter(|(a, b)| a == b)
            .count();
        assert!(
            agree + 1 >= faces.len(),
            "{name} and {source} agree on {agree} of {}",
            faces.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn models_health_docs_and_metrics_endpoints() {
    let server = Server::start(&[]);
    let c = client();
    assert_eq!(
        c.get(server.url("/healthz")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        c.get(server.url("/readyz")).send().await.unwrap().status(),
        200
    );

    // The Open Inference Protocol's health bodies, for clients that read them.
    assert_eq!(
        get_json(&server, "/v2/health/live").await,
        serde_json::json!({"live": true})
    );
    assert_eq!(
        get_json(&server, "/v2/health/ready").await,
        serde_json::json!({"ready": true})
    );
    assert_eq!(
        get_json(&server, "/v2/models/ferplus/ready").await,
        serde_json::json!({"name": "ferplus", "ready": true})
    );
    // Unknown is a 404 as on every route; a version that is not a number, a 400.
    for (path, status) in [
        ("/v2/models/nope/ready", 404),
        ("/v2/models/ferplus/versions/99/ready", 404),
        ("/v2/models/ferplus/versions/one/ready", 400),
    ] {
        let r = c.get(server.url(path)).send().await.unwrap();
        assert_eq!(r.status(), status, "{path}");
        assert!(
            r.json::<Value>().await.unwrap()["error"].is_string(),
            "{path}"
        );
    }
    // The repository index's body is optional: absent, empty or null.
    for body in ["", "null", "{}", "{\"ready\": true}"] {
        let r = c
            .post(server.url("/v2/repository/index"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{body}");
    }

    let models: Value = get_json(&server, "/v1/models").await;
    assert_eq!(models["default_model"], MODEL);
    let ferplus = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == MODEL)
        .expect("ferplus listed");
    assert_eq!(ferplus["state"], "ready");
    assert_eq!(ferplus["manifest"]["labels"].as_array().unwrap().len(), 8);
    assert_eq!(ferplus["manifest"]["input"]["channels"], "gray");

    let spec: Value = get_json(&server, "/openapi.json").await;
    assert!(spec["paths"]["/v1/classify"]["post"].is_object());
    let docs = c.get(server.url("/docs/")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    assert!(
        docs.text().await.unwrap().contains("swagger"),
        "docs page served"
    );

    let before = get_text(&server, "/metrics").await;
    assert!(
        before.contains("fer_queue_depth{model=\"ferplus\"} 0"),
        "series exist at zero"
    );
    let predictions = |text: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("fer_predictions_total{") && l.contains("model=\"ferplus\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let face = &ferplus_faces(9, 1)[0];
    for _ in 0..3 {
        let (s, _) = classify_raw(&server, "image/png", face.png.clone(), "").await;
        assert_eq!(s, 200);
    }
    let after = get_text(&server, "/metrics").await;
    assert_eq!(predictions(&after) - predictions(&before), 3.0);
    assert!(
        after.contains(
            "fer_http_requests_total{method=\"POST\",route=\"/v1/classify\",status=\"200\"} 3"
        ),
        "{after}"
    );
    assert!(
        after.contains("fer_stage_duration_seconds_count{model=\"ferplus\",stage=\"inference\"}")
    );
    assert!(after.contains("fer_batch_size_count{model=\"ferplus\"}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_answers_429_with_retry_after() {
    let server = Server::start(&[
        "--queue-capacity",
        "1",
        "--max-batch-size",
        "1",
        "--max-images",
        "64",
    ]);
    let face = ferplus_faces(9, 1).remove(0);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let url = server.url("/v1/classify");
        let form = multipart(&[face.png.as_slice(); 64]);
        tasks.push(tokio::spawn(async move {
            let r = client().post(url).multipart(form).send().await.unwrap();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            (r.status().as_u16(), retry, r.json::<Value>().await.unwrap())
        }));
    }
    let mut rejected = 0;
    for t in tasks {
        let (status, retry, body) = t.await.unwrap();
        match status {
            200 => assert_eq!(body["results"].as_array().unwrap().len(), 64),
            429 => {
                rejected += 1;
                assert_eq!(body["error"]["code"], "queue_full");
                assert_eq!(retry.as_deref(), Some("1"));
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(
        rejected > 0,
        "a queue of one image cannot hold 8 × 64 images"
    );
    // Once the burst is over the server answers normally.
    let (s, _) = classify_raw(&server, "image/png", face.png.clone(), "").await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_exits_cleanly() {
    let server = Server::start(&[]);
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
}

#[test]
fn the_healthcheck_command_succeeds_only_against_a_ready_server() {
    let check = |url: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_fer-server"))
            .args(["healthcheck", "--url", url, "--timeout-ms", "2000"])
            .output()
            .unwrap()
    };
    let server = Server::start(&[]);
    let ready = check(&server.url("/readyz"));
    assert!(ready.status.success(), "{ready:?}");
    let missing = check(&server.url("/no-such-route"));
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("answered 404"));
    let base = server.base.clone();
    drop(server);
    assert!(!check(&format!("{base}/readyz")).status.success());
}
