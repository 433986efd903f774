//! End-to-end: what the server does with a broken repository, a missing runtime, and the offline
//! `classify` command.

use std::path::Path;
use std::process::Command;

use crate::common::{MODEL, Server, ferplus_faces, write_version};
use serde_json::Value;

/// A repository with the shipped model plus a copy whose manifest lies about the label count.
fn repository_with_a_mismatch(root: &Path) {
    write_version(root, MODEL, 1, |_| {});
    write_version(root, "broken", 3, |m| {
        m["labels"].as_array_mut().unwrap().pop();
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_that_does_not_match_its_graph_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    repository_with_a_mismatch(dir.path());
    let server = Server::start_in(dir.path(), &[]);
    let models: Value = reqwest::get(server.url("/v1/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let broken = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "broken")
        .unwrap();
    assert_eq!(broken["state"], "failed");
    let error = broken["error"].as_str().unwrap();
    assert!(
        error.contains("broken/3/model.onnx"),
        "names the file: {error}"
    );
    assert!(error.contains("7 labels"), "says what differs: {error}");
    // Clients are told the model and version, not where the repository lives on the server.
    let root = dir.path().display().to_string();
    assert!(!error.contains(&root), "no server path: {error}");
    for path in ["/v2/repository/index", "/v2/repository/models/broken/load"] {
        let answer = reqwest::Client::new()
            .post(server.url(path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(answer.contains("broken/3/model.onnx"), "{path}: {answer}");
        assert!(!answer.contains(&root), "{path}: no server path: {answer}");
    }
    assert!(
        server.logged(&root),
        "the log keeps the folder for the operator"
    );

    let face = &ferplus_faces(9, 1)[0];
    let r = reqwest::Client::new()
        .post(server.url("/v1/classify?model=broken"))
        .header("content-type", "image/png")
        .body(face.png.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_ready");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(!message.contains(&root), "no server path: {message}");
    let metrics = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("fer_model_ready{model=\"broken\",version=\"3\"} 0"));
    assert!(metrics.contains("fer_model_ready{model=\"ferplus\",version=\"1\"} 1"));
}

#[test]
fn the_server_refuses_to_start_when_the_default_model_is_broken() {
    let dir = tempfile::tempdir().unwrap();
    repository_with_a_mismatch(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_fer-server"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--default-model",
            "broken",
            "--models-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("\"broken\" cannot be served"), "{stderr}");
    assert!(stderr.contains("model.onnx"), "{stderr}");
}

#[test]
fn a_missing_runtime_says_how_to_get_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_fer-server"))
        .args([
            "classify",
            "--ort-dylib",
            "/nonexistent/libonnxruntime.so",
            "x.png",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("make setup") && stderr.contains("onnxruntime==1.31.1"),
        "{stderr}"
    );
}

#[test]
fn offline_classify_prints_labels_per_file() {
    let dir = tempfile::tempdir().unwrap();
    let faces = ferplus_faces(9, 3);
    let mut files = Vec::new();
    for face in &faces {
        let path = dir.path().join(&face.file);
        std::fs::write(&path, &face.png).unwrap();
        files.push(path);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_fer-server"))
        .args([
            "classify",
            "--json",
            "--default-model",
            MODEL,
            "--models-dir",
        ])
        .arg(crate::common::test_models())
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for line in &lines {
        assert_eq!(line["scores"].as_object().unwrap().len(), 8);
        assert!(line["label"].is_string());
    }
    // A file that is not an image fails that file, not the others, and the exit status says so.
    let junk = dir.path().join("junk.png");
    std::fs::write(&junk, b"junk").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fer-server"))
        .args(["classify", "--default-model", MODEL, "--models-dir"])
        .arg(crate::common::test_models())
        .arg(&files[0])
        .arg(&junk)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("junk.png: error"), "{stdout}");
    assert_eq!(stdout.lines().count(), 2);
}
