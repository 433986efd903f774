//! Command line of the load harness (after `--` in `cargo bench`).

use std::path::PathBuf;

use clap::ValueEnum;
use fer_server::backend::{ExecutionProvider, ProviderConfig};

pub struct Options {
    /// Requests per target and concurrency (after the warm-up).
    pub requests: usize,
    pub concurrency: Vec<usize>,
    /// Distinct faces sent, round robin.
    pub images: usize,
    /// The server's --max-batch-size, also the raw loop's large batch.
    pub max_batch: usize,
    /// Python with the peer's requirements; none: the peer is skipped.
    pub peer_python: Option<PathBuf>,
    /// A peer already running (`http://host:port`) instead of starting one.
    pub peer_url: Option<String>,
    /// uvicorn worker processes of the peer.
    pub peer_workers: usize,
    /// ONNX Runtime's intra-op spinning, for the server and the raw loop alike.
    pub spinning: bool,
    /// Extra flags for `fer-server serve`.
    pub server_flags: Vec<String>,
    /// Models measured, `name` (its newest version) or `name/version`; the first is the one the
    /// full table, the v2 rows and the peer use, the others are compared with it.
    pub models: Vec<String>,
    /// Where the server and the raw loop run the models (`--execution-provider`, `--trt-fp16`,
    /// `--trt-engine-cache`: the server's flags of the same names).
    pub provider: ProviderConfig,
    pub out: Option<PathBuf>,
    /// Photos for the `/v1/analyze` rows (every JPEG in it, scaled to 640×480); none found: the
    /// rows are skipped.
    pub photos: Option<PathBuf>,
    /// Photos per `/v1/analyze` row and for its raw loop (after a warm-up).
    pub photo_requests: usize,
    /// The face detector of the `/v1/analyze` rows, for the server and the raw loop alike; none:
    /// the default (CenterFace, as `scripts/setup-detector.sh` installs it).
    pub detector: Option<PathBuf>,
}

impl Options {
    pub fn parse() -> Self {
        let mut o = Options {
            requests: 2000,
            concurrency: vec![1, 4, 16, 64],
            images: 512,
            max_batch: 32,
            peer_python: None,
            peer_url: None,
            peer_workers: 1,
            spinning: true,
            server_flags: Vec::new(),
            models: Vec::new(),
            provider: ProviderConfig::default(),
            out: None,
            photos: None,
            photo_requests: 300,
            detector: None,
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut i = 0;
        while i < args.len() {
            let value = args.get(i + 1).cloned().unwrap_or_default();
            let number = || {
                value
                    .parse::<usize>()
                    .unwrap_or_else(|_| panic!("{}: not a number: {value:?}", args[i]))
            };
            match args[i].as_str() {
                "--requests" => o.requests = number(),
                "--images" => o.images = number(),
                "--max-batch" => o.max_batch = number(),
                "--peer-workers" => o.peer_workers = number(),
                "--concurrency" => {
                    o.concurrency = value
                        .split(',')
                        .map(|c| c.trim().parse().expect("--concurrency 1,4,16,64"))
                        .collect()
                }
                "--peer-python" => o.peer_python = Some(PathBuf::from(&value)),
                "--spinning" => o.spinning = value == "true",
                "--peer-url" => o.peer_url = Some(value.clone()),
                "--server-flag" => o.server_flags.push(value),
                "--model" => o.models.push(value),
                "--execution-provider" => {
                    o.provider.requested = ExecutionProvider::from_str(&value, true)
                        .unwrap_or_else(|e| panic!("--execution-provider: {e}"))
                }
                "--trt-fp16" => {
                    o.provider.trt_fp16 = true;
                    i += 1;
                    continue;
                }
                "--trt-engine-cache" => o.provider.trt_engine_cache = Some(PathBuf::from(&value)),
                "--out" => o.out = Some(PathBuf::from(&value)),
                "--photos" => o.photos = Some(PathBuf::from(&value)),
                "--photo-requests" => o.photo_requests = number(),
                "--detector" => o.detector = Some(PathBuf::from(&value)),
                // `cargo bench` passes `--bench`.
                "--bench" => {
                    i += 1;
                    continue;
                }
                other => panic!("unknown option {other}"),
            }
            i += 2;
        }
        if o.models.is_empty() {
            o.models.push(crate::common::MODEL.to_string());
        }
        if o.photos.is_none() {
            let shared = crate::common::repo().join("../shared/images/group-photos");
            o.photos = shared.is_dir().then_some(shared);
        }
        if o.detector.is_none() {
            o.detector = fer_contract::detect::locate_default_detector();
        }
        o
    }

    pub fn server_args(&self) -> Vec<String> {
        let mut args = vec![
            "--max-batch-size".to_string(),
            self.max_batch.to_string(),
            format!("--intra-op-spinning={}", self.spinning),
        ];
        let provider = &self.provider;
        if provider.requested != ExecutionProvider::Cpu {
            args.push(format!(
                "--execution-provider={}",
                provider.requested.as_str()
            ));
        }
        if provider.trt_fp16 {
            args.push("--trt-fp16".into());
        }
        if let Some(cache) = &provider.trt_engine_cache {
            args.push(format!("--trt-engine-cache={}", cache.display()));
        }
        if let Some(detector) = &self.detector {
            args.push(format!("--detector={}", detector.display()));
        }
        args.extend(self.server_flags.iter().cloned());
        args
    }
}
