//! Soak: mixed traffic against the real server for a set time, reporting its RSS over time.
//!
//! `cargo bench -p fer-server --bench soak -- --seconds 3600 [--clients 8] [--reload-every 30]`
//!
//! Traffic: single PNG and JPEG faces, multipart batches, JSON base64 batches, malformed images, a
//! decompression bomb, model listings, metrics and repository index calls; and every
//! `--reload-every` seconds a new model version published by atomic rename (hot reload). It prints
//! requests by status and RSS at the start, every tenth of the run, and the end, and exits non-zero
//! if any request got a 5xx or failed to get an answer.

#[path = "../tests/e2e/common.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{MODEL, Server, ferplus_faces, rss_mib, write_version};

struct Options {
    seconds: u64,
    clients: usize,
    reload_every: u64,
}

fn options() -> Options {
    let mut o = Options {
        seconds: 60,
        clients: 8,
        reload_every: 30,
    };
    let args: Vec<String> = std::env::args().collect();
    for pair in args.windows(2) {
        let value = pair[1].parse().ok();
        match (pair[0].as_str(), value) {
            ("--seconds", Some(v)) => o.seconds = v,
            ("--clients", Some(v)) => o.clients = v as usize,
            ("--reload-every", Some(v)) => o.reload_every = v,
            _ => {}
        }
    }
    o
}

fn jpeg(png: &[u8]) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::load_from_memory(png)
        .and_then(|i| i.write_to(&mut out, image::ImageFormat::Jpeg))
        .unwrap_or_else(|e| panic!("re-encoding a face: {e}"));
    out.into_inner()
}

fn bomb() -> Vec<u8> {
    let mut png = Vec::new();
    {
        use image::ImageEncoder;
        image::codecs::png::PngEncoder::new(&mut png)
            .write_image(&[0u8; 64], 64, 1, image::ExtendedColorType::L8)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    png[16..24].copy_from_slice(&[0, 0, 0x75, 0x30, 0, 0, 0x75, 0x30]);
    let mut crc = flate2::Crc::new();
    crc.update(&png[12..29]);
    png[29..33].copy_from_slice(&crc.sum().to_be_bytes());
    png
}

#[tokio::main]
async fn main() {
    let options = options();
    let root = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    write_version(root.path(), MODEL, 1, |_| {});
    let server = Server::start_in(root.path(), &["--reload-debounce-ms", "200"]);
    let faces: Vec<Vec<u8>> = ferplus_faces(8, 32).into_iter().map(|f| f.png).collect();
    let jpegs: Vec<Vec<u8>> = faces.iter().map(|f| jpeg(f)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let statuses: Arc<Mutex<BTreeMap<u16, u64>>> = Arc::default();
    let start_rss = rss_mib(server.pid());
    println!(
        "soak: {} s, {} clients, reload every {} s; server RSS at start {start_rss:.1} MiB",
        options.seconds, options.clients, options.reload_every
    );
    let mut tasks = Vec::new();
    for client_id in 0..options.clients {
        let (faces, jpegs, stop, statuses) = (
            faces.clone(),
            jpegs.clone(),
            Arc::clone(&stop),
            Arc::clone(&statuses),
        );
        let base = server.base.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let bomb = bomb();
            let mut i = client_id;
            while !stop.load(Ordering::SeqCst) {
                let face = &faces[i % faces.len()];
                let url = format!("{base}/v1/classify");
                let request = match i % 10 {
                    0..=2 => client
                        .post(&url)
                        .header("content-type", "image/png")
                        .body(face.clone()),
                    3 => client
                        .post(&url)
                        .header("content-type", "image/jpeg")
                        .body(jpegs[i % jpegs.len()].clone()),
                    4 => {
                        let form = (0..8).fold(reqwest::multipart::Form::new(), |f, k| {
                            f.part(
                                "image",
                                reqwest::multipart::Part::bytes(
                                    faces[(i + k) % faces.len()].clone(),
                                )
                                .file_name("f.png"),
                            )
                        });
                        client.post(&url).multipart(form)
                    }
                    5 => {
                        let images: Vec<String> = (0..4)
                            .map(|k| {
                                base64::engine::general_purpose::STANDARD
                                    .encode(&faces[(i + k) % faces.len()])
                            })
                            .collect();
                        client
                            .post(&url)
                            .json(&serde_json::json!({ "images": images }))
                    }
                    6 => client
                        .post(&url)
                        .header("content-type", "image/png")
                        .body(face[..face.len() / 2].to_vec()),
                    7 => client
                        .post(&url)
                        .header("content-type", "image/png")
                        .body(bomb.clone()),
                    8 => client.get(format!("{base}/v1/models")),
                    _ => {
                        if i % 20 == 9 {
                            client.get(format!("{base}/metrics"))
                        } else {
                            client.post(format!("{base}/v2/repository/index"))
                        }
                    }
                };
                let status = match request.send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let _ = r.bytes().await;
                        status
                    }
                    Err(_) => 0,
                };
                *statuses
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(status)
                    .or_default() += 1;
                i += 1;
            }
        }));
    }
    let started = Instant::now();
    let total = Duration::from_secs(options.seconds);
    let mut next_report = 1;
    let mut next_version = 2;
    let mut last_reload = Instant::now();
    while started.elapsed() < total {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if options.reload_every > 0
            && last_reload.elapsed() >= Duration::from_secs(options.reload_every)
        {
            let staged = write_version(&root.path().join(".staging"), MODEL, next_version, |_| {});
            std::fs::rename(
                &staged,
                root.path().join(MODEL).join(next_version.to_string()),
            )
            .unwrap_or_else(|e| panic!("{e}"));
            next_version += 1;
            last_reload = Instant::now();
        }
        if started.elapsed() >= total.mul_f64(next_report as f64 / 10.0) {
            let done: u64 = statuses
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .sum();
            println!(
                "{:>6.0} s  {done:>9} requests  RSS {:.1} MiB",
                started.elapsed().as_secs_f64(),
                rss_mib(server.pid())
            );
            next_report += 1;
        }
    }
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        let _ = t.await;
    }
    let end_rss = rss_mib(server.pid());
    let statuses = statuses.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let total_requests: u64 = statuses.values().sum();
    println!(
        "done: {total_requests} requests in {:.0} s ({:.0}/s), {} versions published; by status {statuses:?}",
        started.elapsed().as_secs_f64(),
        total_requests as f64 / started.elapsed().as_secs_f64(),
        next_version - 2
    );
    println!("server RSS: start {start_rss:.1} MiB, end {end_rss:.1} MiB");
    let bad: u64 = statuses
        .iter()
        .filter(|(s, _)| **s == 0 || **s >= 500)
        .map(|(_, n)| n)
        .sum();
    if bad > 0 {
        eprintln!("{bad} requests got a 5xx or no answer");
        std::process::exit(1);
    }
}
