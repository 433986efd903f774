//! End-to-end: `/v1/analyze` finds and classifies the faces in real group photos, with the default
//! detector (CenterFace, installed by `scripts/setup-detector.sh` from PyPI) and with the UltraFace
//! detector read in place from `../shared/models/ultraface/` (never committed).

use crate::common::{Server, repo};
use serde_json::Value;

fn photos() -> Vec<(String, Vec<u8>)> {
    let dir = repo().join("../shared/images/group-photos");
    let mut photos: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jpg"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    photos.sort();
    photos
}

fn detector() -> String {
    repo()
        .join("../shared/models/ultraface/version-RFB-640.onnx")
        .display()
        .to_string()
}

async fn analyze(server: &Server, jpeg: &[u8], query: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(server.url(&format!("/v1/analyze{query}")))
        .header("content-type", "image/jpeg")
        .body(jpeg.to_vec())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn finds_and_classifies_the_faces_in_group_photos() {
    let server = Server::start(&["--detector", &detector()]);
    let photos = photos();
    assert!(photos.len() >= 20);
    let (mut total, mut with_faces) = (0, 0);
    let mut smiles = (0, 0);
    for (name, jpeg) in &photos {
        let (status, body) = analyze(&server, jpeg, "").await;
        assert_eq!(status, 200, "{name}: {body}");
        assert_eq!(body["detector"], "version-RFB-640");
        let result = &body["results"][0];
        let (w, h) = (
            result["width"].as_f64().unwrap(),
            result["height"].as_f64().unwrap(),
        );
        let faces = result["faces"].as_array().unwrap();
        total += faces.len();
        with_faces += usize::from(!faces.is_empty());
        let mut last_score = f64::INFINITY;
        for face in faces {
            let b = &face["box"];
            let (x, y, bw, bh) = (
                b["x"].as_f64().unwrap(),
                b["y"].as_f64().unwrap(),
                b["width"].as_f64().unwrap(),
                b["height"].as_f64().unwrap(),
            );
            assert!(
                x >= 0.0 && y >= 0.0 && x + bw <= w + 0.5 && y + bh <= h + 0.5,
                "{name}: box {b} in {w}×{h}"
            );
            assert!(bw >= 20.0 && bh >= 20.0, "minimum face size");
            let score = face["score"].as_f64().unwrap();
            assert!(
                score >= 0.7 && score <= last_score,
                "{name}: scores ≥ threshold, best first"
            );
            last_score = score;
            assert_eq!(face["scores"].as_object().unwrap().len(), 8);
        }
        // Photos of people who all smile (checked by eye): the model must mostly say so.
        if ["2.jpg", "16.jpg", "19.jpg"].contains(&name.as_str()) {
            smiles.0 += faces.iter().filter(|f| f["label"] == "happiness").count();
            smiles.1 += faces.len();
        }
    }
    assert!(
        with_faces >= 20,
        "faces found in {with_faces} of {} photos",
        photos.len()
    );
    assert!(total >= 300, "{total} faces in all");
    assert!(
        smiles.1 >= 10 && smiles.0 * 10 >= smiles.1 * 8,
        "smiles: {smiles:?}"
    );

    // Several photos in one request come back in order, as they do one by one.
    let (_, one) = analyze(&server, &photos[1].1, "").await;
    let form = photos[..3]
        .iter()
        .fold(reqwest::multipart::Form::new(), |f, (name, jpeg)| {
            f.part(
                "image",
                reqwest::multipart::Part::bytes(jpeg.clone()).file_name(name.clone()),
            )
        });
    let batch: Value = reqwest::Client::new()
        .post(server.url("/v1/analyze"))
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(batch["results"].as_array().unwrap().len(), 3);
    assert_eq!(
        batch["results"][1]["faces"].as_array().unwrap().len(),
        one["results"][0]["faces"].as_array().unwrap().len()
    );

    // Parameters: a stricter threshold and a larger minimum size find fewer faces.
    let crowd = &photos.iter().find(|(name, _)| name == "17.jpg").unwrap().1;
    let (_, strict) = analyze(
        &server,
        crowd,
        "?score_threshold=0.99&min_face_size=80&top_k=1",
    )
    .await;
    let (_, loose) = analyze(&server, crowd, "").await;
    let count = |v: &Value| v["results"][0]["faces"].as_array().unwrap().len();
    assert!(
        count(&strict) < count(&loose),
        "{} vs {}",
        count(&strict),
        count(&loose)
    );
    assert_eq!(
        strict["results"][0]["faces"][0]["scores"]
            .as_object()
            .unwrap()
            .len(),
        1
    );

    for (query, body, status) in [
        ("?score_threshold=2", photos[0].1.clone(), 400),
        ("", b"\xff\xd8\xff junk".to_vec(), 400),
        ("?model=nope", photos[0].1.clone(), 404),
    ] {
        let (s, b) = analyze(&server, &body, query).await;
        assert_eq!(s, status, "{query}: {b}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_detector_analyze_says_how_to_configure_one() {
    let server = Server::start(&["--detector", "none"]);
    let (status, body) = analyze(&server, b"irrelevant", "").await;
    assert_eq!(status, 501);
    assert_eq!(body["error"]["code"], "detector_not_configured");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--detector")
    );
}

/// The default detector, as `make setup` installs it: every face comes with five landmarks inside
/// its box, aligned and unaligned crops both classify, and smiles are still smiles.
#[tokio::test(flavor = "multi_thread")]
async fn the_default_detector_returns_landmarks_and_aligns_faces() {
    let server = Server::start(&[]);
    let photos = photos();
    let mut smiles = [(0, 0); 2];
    for (name, jpeg) in &photos {
        if !["2.jpg", "16.jpg", "19.jpg"].contains(&name.as_str()) {
            continue;
        }
        for (i, query) in ["", "?align=false"].into_iter().enumerate() {
            let (status, body) = analyze(&server, jpeg, query).await;
            assert_eq!(status, 200, "{name}{query}: {body}");
            assert_eq!(body["detector"], "centerface");
            let faces = body["results"][0]["faces"].as_array().unwrap();
            for face in faces {
                let b = &face["box"];
                let (x, y, w, h) = (
                    b["x"].as_f64().unwrap(),
                    b["y"].as_f64().unwrap(),
                    b["width"].as_f64().unwrap(),
                    b["height"].as_f64().unwrap(),
                );
                let marks = face["landmarks"].as_array().unwrap();
                assert_eq!(marks.len(), 5, "{name}: {face}");
                let point =
                    |k: usize| (marks[k][0].as_f64().unwrap(), marks[k][1].as_f64().unwrap());
                for k in 0..5 {
                    let (px, py) = point(k);
                    assert!(
                        px > x && px < x + w && py > y && py < y + h,
                        "{name}: landmark {k} ({px}, {py}) outside {b}"
                    );
                }
                // eyes above the nose, the nose above the mouth; the first eye on the left
                assert!(point(0).0 < point(1).0, "{name}: {marks:?}");
                assert!(point(0).1.max(point(1).1) < point(2).1, "{name}: {marks:?}");
                assert!(point(2).1 < point(3).1.min(point(4).1), "{name}: {marks:?}");
            }
            smiles[i].0 += faces.iter().filter(|f| f["label"] == "happiness").count();
            smiles[i].1 += faces.len();
        }
    }
    for (mode, (happy, all)) in ["aligned", "unaligned"].iter().zip(smiles) {
        assert!(
            all >= 15 && happy * 10 >= all * 8,
            "{mode}: {happy} of {all}"
        );
    }
    let (status, body) = analyze(&server, &photos[0].1, "?align=maybe").await;
    assert_eq!(status, 400, "{body}");
}
