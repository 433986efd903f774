//! Closed-loop HTTP clients: `concurrency` tasks share a fixed number of requests; each latency
//! goes into an HDR histogram.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fer_server::grpc::proto::fer::v1 as fer;
use fer_server::grpc::proto::fer::v1::fer_client::FerClient;
use fer_server::grpc::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use hdrhistogram::Histogram;
use tonic::transport::Channel;

/// How one request is made.
#[derive(Clone)]
pub struct Target {
    url: String,
    /// The model named in gRPC requests.
    model: String,
    kind: Kind,
}

#[derive(Clone, Copy)]
enum Kind {
    /// The image as the body (`Content-Type: image/jpeg`): fer-server's and the peer's route.
    RawImage,
    /// KServe v2 infer, binary tensor extension: a BYTES `image` input of one element.
    KserveBinary,
    /// The Open Inference Protocol's gRPC `ModelInfer`: a BYTES `image` input in
    /// `raw_input_contents`, as tritonclient sends it.
    GrpcInfer,
    /// `fer.v1.Fer/StreamFrames`: each client holds one stream open and sends its next frame when
    /// the last one's result is back.
    GrpcStream,
}

impl Target {
    pub fn classify(base: &str) -> Self {
        Target {
            url: format!("{base}/v1/classify"),
            model: String::new(),
            kind: Kind::RawImage,
        }
    }

    pub fn grpc_infer(grpc: &str, model: &str) -> Self {
        Target {
            url: grpc.to_string(),
            model: model.to_string(),
            kind: Kind::GrpcInfer,
        }
    }

    pub fn grpc_stream(grpc: &str, model: &str) -> Self {
        Target {
            url: grpc.to_string(),
            model: model.to_string(),
            kind: Kind::GrpcStream,
        }
    }

    /// `/v1/classify` of one model version.
    pub fn classify_model(base: &str, name: &str, version: u64) -> Self {
        Target {
            url: format!("{base}/v1/classify?model={name}&version={version}"),
            model: name.to_string(),
            kind: Kind::RawImage,
        }
    }

    /// `/v1/analyze` of one model version: every face of the photo in the body.
    pub fn analyze(base: &str, name: &str, version: u64) -> Self {
        Target {
            url: format!("{base}/v1/analyze?model={name}&version={version}"),
            model: name.to_string(),
            kind: Kind::RawImage,
        }
    }

    pub fn kserve(base: &str, model: &str) -> Self {
        Target {
            url: format!("{base}/v2/models/{model}/infer"),
            model: model.to_string(),
            kind: Kind::KserveBinary,
        }
    }

    fn request(&self, client: &reqwest::Client, image: &[u8]) -> reqwest::RequestBuilder {
        match self.kind {
            Kind::GrpcInfer | Kind::GrpcStream => unreachable!("gRPC targets use a Connection"),
            Kind::RawImage => client
                .post(&self.url)
                .header("content-type", "image/jpeg")
                .body(image.to_vec()),
            Kind::KserveBinary => {
                let header = format!(
                    r#"{{"inputs":[{{"name":"image","datatype":"BYTES","shape":[1],"parameters":{{"binary_data_size":{}}}}}]}}"#,
                    image.len() + 4
                );
                let mut body = header.clone().into_bytes();
                body.extend_from_slice(&(image.len() as u32).to_le_bytes());
                body.extend_from_slice(image);
                client
                    .post(&self.url)
                    .header("content-type", "application/octet-stream")
                    .header("inference-header-content-length", header.len())
                    .body(body)
            }
        }
    }
}

/// One client's way to the server: HTTP through the shared connection pool, or a gRPC channel
/// (and for `StreamFrames`, a stream) of its own.
enum Connection {
    Http(reqwest::Client),
    Infer(GrpcInferenceServiceClient<Channel>),
    Stream {
        frames: tokio::sync::mpsc::Sender<fer::Frame>,
        results: tonic::Streaming<fer::FrameResult>,
        next: u64,
    },
}

impl Connection {
    async fn open(target: &Target, http: &reqwest::Client) -> Connection {
        match target.kind {
            Kind::RawImage | Kind::KserveBinary => Connection::Http(http.clone()),
            Kind::GrpcInfer => Connection::Infer(
                GrpcInferenceServiceClient::connect(target.url.clone())
                    .await
                    .expect("gRPC connection")
                    .max_decoding_message_size(64 << 20),
            ),
            Kind::GrpcStream => {
                let (frames, receiver) = tokio::sync::mpsc::channel(1);
                let results = FerClient::connect(target.url.clone())
                    .await
                    .expect("gRPC connection")
                    .stream_frames(tokio_stream::wrappers::ReceiverStream::new(receiver))
                    .await
                    .expect("StreamFrames")
                    .into_inner();
                Connection::Stream {
                    frames,
                    results,
                    next: 0,
                }
            }
        }
    }

    /// Sends one image and waits for its answer; whether it was a success.
    async fn send(&mut self, target: &Target, image: &[u8]) -> bool {
        match self {
            Connection::Http(client) => match target.request(client, image).send().await {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            },
            Connection::Infer(client) => {
                let request = crate::common::model_infer_of_images(&target.model, &[image]);
                client.model_infer(request).await.is_ok()
            }
            Connection::Stream {
                frames,
                results,
                next,
            } => {
                let frame = fer::Frame {
                    index: *next,
                    timestamp: *next as f64 / 25.0,
                    image: image.to_vec(),
                    model: target.model.clone(),
                    top_k: None,
                    detect: false,
                };
                *next += 1;
                if frames.send(frame).await.is_err() {
                    return false;
                }
                matches!(results.message().await, Ok(Some(r)) if r.error.is_empty())
            }
        }
    }
}

/// What one target did at one concurrency.
pub struct RunResult {
    pub concurrency: usize,
    pub requests: usize,
    pub failed: usize,
    pub elapsed: Duration,
    /// Microseconds.
    pub latency: Histogram<u64>,
    /// CPU seconds the server process (all its processes, for the peer) spent in the measured
    /// phase; the machine's cores are shared with the load generator.
    pub server_cpu_s: f64,
    /// CPU seconds of this process (the load generator) in the measured phase.
    pub client_cpu_s: f64,
}

impl RunResult {
    pub fn throughput(&self) -> f64 {
        (self.requests - self.failed) as f64 / self.elapsed.as_secs_f64()
    }

    /// A percentile in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    /// Server CPU time per answered request, microseconds.
    pub fn cpu_us_per_request(&self) -> f64 {
        self.server_cpu_s * 1e6 / (self.requests - self.failed).max(1) as f64
    }

    /// Load-generator CPU time per answered request, microseconds.
    pub fn client_cpu_us_per_request(&self) -> f64 {
        self.client_cpu_s * 1e6 / (self.requests - self.failed).max(1) as f64
    }

    pub fn summary(&self) -> String {
        format!(
            "{:>8.0} req/s  p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  CPU/req: server {:.0} µs, client {:.0} µs  failed {}",
            self.throughput(),
            self.ms(0.5),
            self.ms(0.9),
            self.ms(0.99),
            self.cpu_us_per_request(),
            self.client_cpu_us_per_request(),
            self.failed
        )
    }
}

/// Sends `requests` requests (after a warm-up of a tenth as many) from `concurrency` clients;
/// `server` are the processes whose CPU time is counted.
pub async fn run(
    target: &Target,
    images: &[Vec<u8>],
    requests: usize,
    concurrency: usize,
    server: &[u32],
) -> RunResult {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client");
    let target = Arc::new(target.clone());
    let images = Arc::new(images.to_vec());
    let warm_up = (requests / 10).max(concurrency);
    phase(&client, &target, &images, warm_up, concurrency).await;
    let me = std::process::id();
    let client_before = cpu_seconds(me);
    let cpu_before: f64 = server.iter().map(|&p| cpu_seconds(p)).sum();
    let started = Instant::now();
    let (latency, failed) = phase(&client, &target, &images, requests, concurrency).await;
    let elapsed = started.elapsed();
    let cpu_after: f64 = server.iter().map(|&p| cpu_seconds(p)).sum();
    let client_cpu_s = cpu_seconds(me) - client_before;
    RunResult {
        concurrency,
        requests,
        failed,
        elapsed,
        latency,
        server_cpu_s: cpu_after - cpu_before,
        client_cpu_s,
    }
}

async fn phase(
    client: &reqwest::Client,
    target: &Arc<Target>,
    images: &Arc<Vec<Vec<u8>>>,
    requests: usize,
    concurrency: usize,
) -> (Histogram<u64>, usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, target, images, next) = (
            client.clone(),
            Arc::clone(target),
            Arc::clone(images),
            Arc::clone(&next),
        );
        tasks.push(tokio::spawn(async move {
            let mut connection = Connection::open(&target, &client).await;
            let mut latency =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let mut failed = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    break;
                }
                let image = &images[i % images.len()];
                let sent = Instant::now();
                let ok = connection.send(&target, image).await;
                if ok {
                    latency.saturating_record(sent.elapsed().as_micros() as u64);
                } else {
                    failed += 1;
                }
            }
            (latency, failed)
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let mut failed = 0;
    for task in tasks {
        let (h, f) = task.await.expect("client task");
        all.add(h).expect("same bounds");
        failed += f;
    }
    (all, failed)
}

/// User + system CPU seconds of a process so far (`/proc/<pid>/stat`).
pub fn cpu_seconds(pid: u32) -> f64 {
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_string();
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // After the command: state is field 3, utime 14 and stime 15 (1-based).
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / ticks)
        })
        .unwrap_or(0.0)
}
