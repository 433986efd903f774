//! Huge photos cost memory only within the decode budget (`--max-decoded-pixels`): sixteen
//! concurrent 8000 × 5000 photos over HTTP, and a gRPC stream of sixteen such frames with face
//! detection, stay under a stated bound of the server's peak resident memory.

use crate::common::Server;
use fer_server::grpc::proto::fer::v1 as fer;
use fer_server::grpc::proto::fer::v1::fer_client::FerClient;

/// The stated bound on the server's peak resident memory (VmHWM) for both loads, with the default
/// budget of 80 megapixels: two such photos decoded at once (120 MB each) beside the models.
/// Measured: ~480 MiB. Without the budget every photo was decoded at once: 2.8 GB.
const PEAK_BOUND_MIB: u64 = 1024;

/// An all-black 8000 × 5000 PNG: ~120 KB on the wire, 120 MB decoded.
fn huge_png() -> Vec<u8> {
    let image = image::RgbImage::new(8000, 5000);
    let mut png = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    png
}

fn peak_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024
}

#[tokio::test(flavor = "multi_thread")]
async fn sixteen_concurrent_huge_photos_stay_within_the_decode_budget() {
    let server = Server::start(&[]);
    let png = huge_png();
    let client = reqwest::Client::new();
    let requests = (0..16).map(|_| {
        client
            .post(server.url("/v1/analyze"))
            .header("content-type", "image/png")
            .body(png.clone())
            .send()
    });
    for response in futures::future::join_all(requests).await {
        let response = response.unwrap();
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["results"][0]["width"], 8000);
    }
    let peak = peak_mib(server.pid());
    assert!(peak < PEAK_BOUND_MIB, "peak RSS {peak} MiB");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_of_huge_frames_stays_within_the_decode_budget() {
    let server = Server::start(&[]);
    let png = huge_png();
    let frames: Vec<fer::Frame> = (0..16u64)
        .map(|i| fer::Frame {
            index: i,
            timestamp: i as f64,
            image: png.clone(),
            model: String::new(),
            top_k: Some(1),
            detect: true,
        })
        .collect();
    let mut client = FerClient::connect(server.grpc.clone()).await.unwrap();
    let mut stream = client
        .stream_frames(tokio_stream::iter(frames))
        .await
        .unwrap()
        .into_inner();
    let mut answered = 0;
    while let Some(result) = stream.message().await.unwrap() {
        assert!(result.error.is_empty(), "{}", result.error);
        answered += 1;
    }
    assert_eq!(answered, 16);
    let peak = peak_mib(server.pid());
    assert!(peak < PEAK_BOUND_MIB, "peak RSS {peak} MiB");
}
