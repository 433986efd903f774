//! End-to-end: `fer-server score-video` on short videos that ffmpeg builds from real images whose
//! labels are known, over the gRPC stream and locally; the timeline, CSV, JSON and plot.

use std::path::Path;
use std::process::Command;

use crate::common::{Server, ferplus_faces, repo};
use serde_json::Value;

fn ffmpeg(args: &[&str]) {
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y"])
        .args(args)
        .status()
        .expect("ffmpeg (Debian: apt-get install ffmpeg; .ci/run installs it)");
    assert!(status.success(), "ffmpeg {args:?}");
}

/// `fer-server score-video ARGS --quiet` with the repository's models.
fn run_score_video(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fer-server"))
        .arg("score-video")
        .args(args)
        .args(["--quiet", "--models-dir"])
        .arg(crate::common::test_models())
        .output()
        .unwrap()
}

fn score_video(args: &[&str]) -> String {
    let out = run_score_video(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs `score-video` expecting it to fail; returns its stderr.
fn score_video_fails(args: &[&str]) -> String {
    let out = run_score_video(args);
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn timeline(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("timeline.json")).unwrap()).unwrap()
}

async fn label_of(server: &Server, png: &[u8]) -> String {
    let body: Value = reqwest::Client::new()
        .post(server.url("/v1/classify"))
        .header("content-type", "image/png")
        .body(png.to_vec())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["results"][0]["label"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_video_of_known_faces_gives_their_labels_over_time() {
    let server = Server::start(&["--detector", "none"]);
    let dir = tempfile::tempdir().unwrap();
    // One clear face per label, each shown for one second.
    let mut faces = Vec::new();
    for want in ["happiness", "surprise", "neutral"] {
        let face = ferplus_faces(10, 400)
            .into_iter()
            .find(|f| f.label == want)
            .unwrap();
        faces.push(face);
    }
    let mut inputs = Vec::new();
    for (i, face) in faces.iter().enumerate() {
        let path = dir.path().join(format!("{i}.png"));
        std::fs::write(&path, &face.png).unwrap();
        inputs.push(path.display().to_string());
    }
    let video = dir.path().join("faces.mkv");
    let mut args: Vec<&str> = Vec::new();
    for input in &inputs {
        args.extend(["-loop", "1", "-t", "1", "-framerate", "10", "-i", input]);
    }
    args.extend([
        "-filter_complex",
        "[0][1][2]concat=n=3:v=1:a=0,scale=96:96,format=gray",
        "-c:v",
        "ffv1",
        video.to_str().unwrap(),
    ]);
    ffmpeg(&args);
    let mut expected = Vec::new();
    for face in &faces {
        expected.push(label_of(&server, &face.png).await);
    }

    let out = dir.path().join("remote");
    let summary = score_video(&[
        video.to_str().unwrap(),
        "--no-detect",
        "--fps",
        "5",
        "--server",
        &server.grpc,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(summary.contains("15 frames of 96×96"), "{summary}");
    let t = timeline(&out);
    let frames = t["frames"].as_array().unwrap();
    assert_eq!(frames.len(), 15);
    assert_eq!(t["model"], "ferplus");
    for (i, frame) in frames.iter().enumerate() {
        assert_eq!(frame["index"], i);
        let time = frame["time"].as_f64().unwrap();
        assert!((time - i as f64 / 5.0).abs() < 1e-9);
        let face = &frame["faces"][0];
        let segment = (time.floor() as usize).min(2);
        assert_eq!(
            face["label"],
            expected[segment].as_str(),
            "frame {i} at {time} s"
        );
        let sum: f64 = face["probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_f64().unwrap())
            .sum();
        assert!((sum - 1.0).abs() < 1e-3);
    }
    // The face changes at 1 s and at 2 s: cuts between shots, where tracks end, though the
    // "box" (the whole frame) stays where it was.
    assert_eq!(t["cuts"], serde_json::json!([1.0, 2.0]));
    let track_of = |i: usize| frames[i]["faces"][0]["track"].as_u64().unwrap();
    assert!((0..5).all(|i| track_of(i) == track_of(0)));
    assert!((5..10).all(|i| track_of(i) == track_of(5)));
    assert!((10..15).all(|i| track_of(i) == track_of(10)));
    assert!(track_of(0) != track_of(5) && track_of(5) != track_of(10));
    let csv = std::fs::read_to_string(out.join("timeline.csv")).unwrap();
    assert!(csv.starts_with("frame,time,track,x,y,width,height,score,label,p_anger,"));
    assert_eq!(csv.lines().count(), 16);
    let svg = std::fs::read_to_string(out.join("timeline.svg")).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 8, "one curve per label");
    assert_eq!(svg.matches(">cut</text>").count(), 2);
    for track in 0..3 {
        assert!(
            svg.contains(&format!(">track {track} (5)</text>")),
            "every track drawn"
        );
    }

    // The same, scored in this process without a server.
    let local = dir.path().join("local");
    score_video(&[
        video.to_str().unwrap(),
        "--no-detect",
        "--local",
        "--fps",
        "5",
        "--out",
        local.to_str().unwrap(),
    ]);
    let l = timeline(&local);
    for (a, b) in frames.iter().zip(l["frames"].as_array().unwrap()) {
        assert_eq!(a["faces"][0]["label"], b["faces"][0]["label"]);
    }

    // Without --out the timeline goes beside the video, named after it.
    score_video(&[
        video.to_str().unwrap(),
        "--no-detect",
        "--local",
        "--fps",
        "5",
    ]);
    let beside = video.with_file_name(format!(
        "{}.timeline",
        video.file_name().unwrap().to_str().unwrap()
    ));
    assert_eq!(timeline(&beside)["frames"].as_array().unwrap().len(), 15);

    // Detection against a server without a detector stops at the first frame and says what to do.
    let none = dir.path().join("none");
    let error = score_video_fails(&[
        video.to_str().unwrap(),
        "--fps",
        "5",
        "--server",
        &server.grpc,
        "--out",
        none.to_str().unwrap(),
    ]);
    assert!(
        error.contains("no face detector") && error.contains("--no-detect"),
        "{error}"
    );
    assert!(!none.exists(), "nothing written");
}

#[tokio::test(flavor = "multi_thread")]
async fn detection_tracks_every_face_of_a_group_video_and_smooths_it() {
    let detector = repo().join("../shared/models/ultraface/version-RFB-320.onnx");
    let server = Server::start(&["--detector", detector.to_str().unwrap()]);
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("group.mp4");
    let photo = repo().join("../shared/images/group-photos/2.jpg");
    ffmpeg(&[
        "-loop",
        "1",
        "-t",
        "2",
        "-i",
        photo.to_str().unwrap(),
        "-vf",
        "scale=640:-2,format=yuv420p",
        "-r",
        "10",
        video.to_str().unwrap(),
    ]);
    let out = dir.path().join("out");
    score_video(&[
        video.to_str().unwrap(),
        "--fps",
        "10",
        "--smooth",
        "ema:0.3",
        "--server",
        &server.grpc,
        "--out",
        out.to_str().unwrap(),
    ]);
    let t = timeline(&out);
    let frames = t["frames"].as_array().unwrap();
    assert!(frames.len() >= 19, "{} frames", frames.len());
    let mut tracks = std::collections::BTreeSet::new();
    for frame in frames {
        let faces = frame["faces"].as_array().unwrap();
        assert_eq!(faces.len(), 4, "four people in every frame");
        for face in faces {
            tracks.insert(face["track"].as_u64().unwrap());
            assert_eq!(face["label"], "happiness");
            assert!(face["width"].as_f64().unwrap() > 20.0);
        }
    }
    assert_eq!(tracks.len(), 4, "each face keeps its track: {tracks:?}");
    assert_eq!(t["cuts"], serde_json::json!([]), "one shot");

    let local = dir.path().join("local");
    score_video(&[
        video.to_str().unwrap(),
        "--local",
        "--detector",
        detector.to_str().unwrap(),
        "--fps",
        "10",
        "--out",
        local.to_str().unwrap(),
    ]);
    let l = timeline(&local);
    assert_eq!(l["frames"][0]["faces"].as_array().unwrap().len(), 4);
}
