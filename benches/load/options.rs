//! Command line of the load harness (after `--` in `cargo bench`).

use std::path::PathBuf;

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
    pub out: Option<PathBuf>,
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
            out: None,
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
                "--out" => o.out = Some(PathBuf::from(&value)),
                // `cargo bench` passes `--bench`.
                "--bench" => {
                    i += 1;
                    continue;
                }
                other => panic!("unknown option {other}"),
            }
            i += 2;
        }
        o
    }

    pub fn server_args(&self) -> Vec<String> {
        let mut args = vec![
            "--max-batch-size".to_string(),
            self.max_batch.to_string(),
            format!("--intra-op-spinning={}", self.spinning),
        ];
        args.extend(self.server_flags.iter().cloned());
        args
    }
}
