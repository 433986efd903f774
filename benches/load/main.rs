//! Load harness: fer-server against the limit (raw ONNX Runtime in a tight loop) and against its
//! Python peer (FastAPI + onnxruntime + Pillow), same machine, same model, same real 48×48 face
//! JPEGs, in one run.
//!
//! `cargo bench -p fer-server --bench load -- [--requests 2000] [--concurrency 1,4,16,64]
//!  [--peer-python .venv-bench/bin/python] [--out target/bench/load.md]`
//! (`scripts/bench.sh` installs the peer and runs this.)
//!
//! Each target gets the same fixed number of requests at each concurrency, after a warm-up, from
//! closed-loop clients (each sends its next request when the last one is answered). Latencies go
//! into an HDR histogram (`hdrhistogram`); the report gives throughput, p50/p90/p99, and the
//! ratios the performance targets are stated in.

#[path = "../../tests/e2e/common.rs"]
mod common;
mod drive;
mod options;
mod peer;
mod raw;
mod report;

use std::time::Duration;

use common::{Server, rss_mib};

fn main() {
    let options = options::Options::parse();
    let faces = faces(options.images);
    eprintln!(
        "{} real FER+ faces as JPEG, mean {} bytes; {} requests per target and concurrency",
        faces.len(),
        faces.iter().map(Vec::len).sum::<usize>() / faces.len().max(1),
        options.requests
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    eprintln!("raw ONNX Runtime (decode + preprocess + session.run, one thread)");
    let raw = raw::measure(
        &faces,
        options.requests,
        options.max_batch,
        options.spinning,
    );
    let mut report = report::Report::new(&options, raw);

    let server_args = options.server_args();
    let server_args: Vec<&str> = server_args.iter().map(String::as_str).collect();
    let server = Server::start(&server_args);
    for &c in &options.concurrency {
        let target = drive::Target::classify(&server.base);
        let r = runtime.block_on(drive::run(
            &target,
            &faces,
            options.requests,
            c,
            &[server.pid()],
        ));
        eprintln!("fer-server /v1/classify   c={c:<3} {}", r.summary());
        report.server.push(r);
        let target = drive::Target::kserve(&server.base, common::MODEL);
        let r = runtime.block_on(drive::run(
            &target,
            &faces,
            options.requests,
            c,
            &[server.pid()],
        ));
        eprintln!("fer-server /v2 infer      c={c:<3} {}", r.summary());
        report.kserve.push(r);
    }
    report.server_rss_mib = rss_mib(server.pid());
    drop(server);

    let peer = match (&options.peer_url, &options.peer_python) {
        (Some(url), _) => Some((url.clone(), None)),
        (None, Some(python)) => {
            let model = common::repo().join("models/ferplus/1");
            let peer = peer::Peer::start(python, &model, options.peer_workers);
            Some((peer.base.clone(), Some(peer)))
        }
        (None, None) => None,
    };
    if let Some((base, process)) = peer {
        let pids = process.as_ref().map(peer::Peer::pids).unwrap_or_default();
        for &c in &options.concurrency {
            let target = drive::Target::classify(&base);
            let r = runtime.block_on(drive::run(&target, &faces, options.requests, c, &pids));
            eprintln!("FastAPI peer              c={c:<3} {}", r.summary());
            report.peer.push(r);
        }
        report.peer_rss_mib = process.as_ref().map_or(0.0, peer::Peer::rss_mib);
    }
    std::thread::sleep(Duration::from_millis(100));

    let text = report.markdown();
    println!("{text}");
    if let Some(out) = &options.out {
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir).expect("report folder");
        }
        std::fs::write(out, &text).expect("write report");
        eprintln!("written to {}", out.display());
    }
}

/// Real FER+ validation faces, re-encoded as the JPEGs a client would send.
fn faces(n: usize) -> Vec<Vec<u8>> {
    common::ferplus_faces(0, n)
        .into_iter()
        .map(|face| {
            let image = image::load_from_memory(&face.png).expect("FER+ png");
            let mut out = std::io::Cursor::new(Vec::new());
            image
                .write_to(&mut out, image::ImageFormat::Jpeg)
                .expect("encode jpeg");
            out.into_inner()
        })
        .collect()
}
