//! Load harness: fer-server against the limit (raw ONNX Runtime in a tight loop) and against its
//! Python peer (FastAPI + onnxruntime + Pillow), same machine, same model, same real 48×48 face
//! JPEGs, in one run.
//!
//! `cargo bench -p fer-server --bench load -- [--requests 2000] [--concurrency 1,4,16,64]
//!  [--model ferplus] [--model ferplus-int8 ...] [--peer-python .venv-bench/bin/python]
//!  [--photos DIR] [--photo-requests 300] [--detector PATH] [--out target/bench/load.md]`
//!
//! `/v1/analyze` is measured on every JPEG of `--photos` (default `../shared/images/group-photos`
//! where it exists) scaled to 640×480, with the server's default detector (or `--detector`),
//! against its own limit: the same detector, crops and model in a raw loop.
//!
//! With several `--model`s each gets its own raw-ORT limit and `/v1/classify` rows, compared in
//! one table (e.g. an FP32 model and its INT8 variant); the first is the one of the full table.
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
mod photos;
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

    let models: Vec<ModelVersion> = options
        .models
        .iter()
        .map(|m| ModelVersion::resolve(m))
        .collect();
    let mut raws = models.iter().map(|m| {
        eprintln!(
            "raw ONNX Runtime on {} (decode + preprocess + session.run, one thread)",
            m.label()
        );
        raw::measure(
            &m.dir,
            &faces,
            options.requests,
            options.max_batch,
            options.spinning,
            &options.provider,
        )
    });
    let first = &models[0];
    let photos = match (&options.photos, &options.detector) {
        (Some(dir), Some(detector)) => {
            let photos = photos::load(dir);
            eprintln!(
                "raw ONNX Runtime on /v1/analyze's path: {} photos of {} at {}×{}, detector {}",
                photos.len(),
                dir.display(),
                photos::PHOTO_SIZE.0,
                photos::PHOTO_SIZE.1,
                detector.display()
            );
            let raw = photos::measure(
                detector,
                &first.dir,
                &photos,
                options.photo_requests,
                options.spinning,
                &options.provider,
            );
            Some((photos, raw))
        }
        (None, _) => {
            eprintln!("no photos (--photos DIR): the /v1/analyze rows are skipped");
            None
        }
        (_, None) => {
            eprintln!(
                "no face detector (scripts/setup-detector.sh, or --detector PATH): the /v1/analyze rows are skipped"
            );
            None
        }
    };
    let mut report = report::Report::new(&options, first.label(), raws.next().expect("a model"));
    let mut compared: Vec<report::ModelRow> = models[1..]
        .iter()
        .zip(raws)
        .map(|(m, raw)| report::ModelRow {
            label: m.label(),
            raw,
            server: Vec::new(),
        })
        .collect();

    let server_args = options.server_args();
    let server_args: Vec<&str> = server_args.iter().map(String::as_str).collect();
    let server = Server::start_shipped(&server_args);
    for &c in &options.concurrency {
        let run = |target: drive::Target| {
            runtime.block_on(drive::run(
                &target,
                &faces,
                options.requests,
                c,
                &[server.pid()],
            ))
        };
        let r = run(drive::Target::classify_model(
            &server.base,
            &first.name,
            first.version,
        ));
        eprintln!("fer-server /v1/classify   c={c:<3} {}", r.summary());
        report.server.push(r);
        for (m, row) in models[1..].iter().zip(&mut compared) {
            let r = run(drive::Target::classify_model(
                &server.base,
                &m.name,
                m.version,
            ));
            eprintln!("{:<25} c={c:<3} {}", m.label(), r.summary());
            row.server.push(r);
        }
        let r = run(drive::Target::kserve(&server.base, &first.name));
        eprintln!("fer-server /v2 infer      c={c:<3} {}", r.summary());
        report.kserve.push(r);
        for (label, target, rows) in [
            (
                "gRPC ModelInfer",
                drive::Target::grpc_infer(&server.grpc, &first.name),
                &mut report.grpc_infer,
            ),
            (
                "gRPC StreamFrames",
                drive::Target::grpc_stream(&server.grpc, &first.name),
                &mut report.grpc_stream,
            ),
        ] {
            let r = run(target);
            eprintln!("fer-server {label:<15}c={c:<3} {}", r.summary());
            rows.push(r);
        }
    }
    if let Some((photos, raw)) = photos {
        let mut rows = Vec::new();
        for &c in &options.concurrency {
            let target = drive::Target::analyze(&server.base, &first.name, first.version);
            let r = runtime.block_on(drive::run(
                &target,
                &photos,
                options.photo_requests,
                c,
                &[server.pid()],
            ));
            eprintln!("fer-server /v1/analyze    c={c:<3} {}", r.summary());
            rows.push(r);
        }
        report.analyze = Some(report::AnalyzeRows { raw, server: rows });
    }
    report.compared = compared;
    report.server_rss_mib = rss_mib(server.pid());
    drop(server);

    let peer = match (&options.peer_url, &options.peer_python) {
        (Some(url), _) => Some((url.clone(), None)),
        (None, Some(python)) => {
            let peer = peer::Peer::start(python, &first.dir, options.peer_workers);
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

/// A measured model version.
struct ModelVersion {
    name: String,
    version: u64,
    dir: std::path::PathBuf,
    precision: &'static str,
}

impl ModelVersion {
    /// `name` (its newest version in `models/`) or `name/version`.
    fn resolve(spec: &str) -> Self {
        let root = common::repo().join("models");
        let (name, version) = match spec.split_once('/') {
            Some((name, v)) => (name, v.parse().expect("--model name/version")),
            None => (spec, common::serving_version(spec)),
        };
        let dir = root.join(name).join(version.to_string());
        let manifest = fer_contract::Manifest::load(&dir.join("manifest.json"))
            .unwrap_or_else(|e| panic!("{e}"));
        ModelVersion {
            name: name.to_string(),
            version,
            dir,
            precision: manifest.precision.as_str(),
        }
    }

    fn label(&self) -> String {
        format!("{}/{} ({})", self.name, self.version, self.precision)
    }
}

/// Real FER+ validation faces, re-encoded as the JPEGs a client would send.
fn faces(n: usize) -> Vec<Vec<u8>> {
    common::ferplus_faces(0, n)
        .into_iter()
        .map(|face| jpeg(&image::load_from_memory(&face.png).expect("FER+ png")))
        .collect()
}

/// An image as the JPEG a client would send (the `image` crate's default quality).
fn jpeg(image: &image::DynamicImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .expect("encode jpeg");
    out.into_inner()
}
