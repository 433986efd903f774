//! Command line and environment: the server's one configuration struct. Nothing else reads env.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::backend::{ExecutionProvider, ProviderConfig, SessionOptions};
use crate::core::registry::policy::VersionPolicy;

#[derive(Debug, Parser)]
#[command(
    name = "fer-server",
    version,
    about = "Facial-expression recognition inference server"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the model repository over HTTP and gRPC.
    Serve(Box<ServeArgs>),
    /// Classify image files offline (no server), printing label and scores per file.
    Classify(ClassifyArgs),
    /// Score a video: per-frame faces and expressions over the gRPC stream (or --local), written
    /// as a timeline (JSON, CSV) and a plot (SVG).
    ScoreVideo(Box<ScoreVideoArgs>),
    /// Exit 0 when a running server answers its health URL with 2xx (container health checks).
    Healthcheck {
        /// Health URL to GET.
        #[arg(
            long,
            env = "FER_HEALTHCHECK_URL",
            default_value = "http://127.0.0.1:8080/readyz"
        )]
        url: String,
        /// API key, when health routes require one (--auth-health).
        #[arg(long, env = "FER_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// Give up after this many milliseconds.
        #[arg(long, env = "FER_HEALTHCHECK_TIMEOUT_MS", default_value_t = 3000)]
        timeout_ms: u64,
    },
    /// Print (or write) the OpenAPI description of the HTTP API.
    Openapi {
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where models come from and how they run; shared by `serve` and `classify`.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Model repository: `<dir>/<name>/<version>/{model.onnx,manifest.json}`.
    #[arg(long, env = "FER_MODELS_DIR", default_value = "models")]
    pub models_dir: PathBuf,
    /// Model used when a request names none.
    #[arg(long, env = "FER_DEFAULT_MODEL", default_value = "ferplus")]
    pub default_model: String,
    /// libonnxruntime.so to load (default: the repository's .ort/lib/, then beside the binary).
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_dylib: Option<PathBuf>,
    /// ONNX Runtime intra-op threads per session (0: the machine's cores divided by the workers).
    #[arg(long, env = "FER_INTRA_OP_THREADS", default_value_t = 0)]
    pub intra_op_threads: usize,
    /// Let ONNX Runtime's intra-op threads spin while they wait for work: lower latency at low
    /// load (p50 0.25 ms instead of 0.42 ms at concurrency 1 in `benches/load`), the same
    /// throughput at saturation; `false` gives the CPU back to other processes.
    #[arg(long, env = "FER_INTRA_OP_SPINNING", default_value_t = true, action = clap::ArgAction::Set)]
    pub intra_op_spinning: bool,
    #[command(flatten)]
    pub provider: ProviderArgs,
    /// Largest image width or height accepted, checked before decoding.
    #[arg(long, env = "FER_MAX_IMAGE_SIDE", default_value_t = 8192)]
    pub max_image_side: u32,
    /// Largest image area (width × height) accepted, checked before decoding.
    #[arg(long, env = "FER_MAX_IMAGE_PIXELS", default_value_t = 40_000_000)]
    pub max_image_pixels: u64,
}

/// Where inference runs (GPU providers need a build with `--features cuda` or `tensorrt`).
#[derive(Debug, Clone, Args)]
pub struct ProviderArgs {
    /// ONNX Runtime execution provider for the models.
    #[arg(
        long,
        env = "FER_EXECUTION_PROVIDER",
        value_enum,
        default_value = "cpu"
    )]
    pub execution_provider: ExecutionProvider,
    /// GPU ordinal for cuda/tensorrt.
    #[arg(long, env = "FER_DEVICE_ID", default_value_t = 0)]
    pub device_id: i32,
    /// Run on the CPU (with a warning) when the requested GPU provider is unavailable, instead
    /// of refusing to start.
    #[arg(long, env = "FER_ALLOW_CPU_FALLBACK")]
    pub allow_cpu_fallback: bool,
    /// TensorRT: build FP16 engines.
    #[arg(long, env = "FER_TRT_FP16")]
    pub trt_fp16: bool,
    /// TensorRT: cache built engines in this folder (building one takes minutes).
    #[arg(long, env = "FER_TRT_ENGINE_CACHE")]
    pub trt_engine_cache: Option<PathBuf>,
}

impl ProviderArgs {
    pub fn config(&self) -> ProviderConfig {
        ProviderConfig {
            requested: self.execution_provider,
            device_id: self.device_id,
            trt_fp16: self.trt_fp16,
            trt_engine_cache: self.trt_engine_cache.clone(),
            allow_cpu_fallback: self.allow_cpu_fallback,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on (HTTP: REST API, KServe v2 REST, metrics, docs).
    #[arg(long, env = "FER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Address for gRPC (KServe v2 `inference.GRPCInferenceService`, `fer.v1.Fer`,
    /// `grpc.health.v1`).
    #[arg(long, env = "FER_GRPC_LISTEN", default_value = "127.0.0.1:8081")]
    pub grpc_listen: SocketAddr,
    /// Most images in one inference batch.
    #[arg(long, env = "FER_MAX_BATCH_SIZE", default_value_t = 32, value_parser = at_least_one)]
    pub max_batch_size: usize,
    /// Longest wait, in milliseconds, for a batch to fill (0: take what is queued).
    #[arg(long, env = "FER_MAX_QUEUE_DELAY_MS", default_value_t = 0)]
    pub max_queue_delay_ms: u64,
    /// Images that may wait per model before requests get 429.
    #[arg(long, env = "FER_QUEUE_CAPACITY", default_value_t = 1024, value_parser = at_least_one)]
    pub queue_capacity: usize,
    /// Inference workers (ONNX Runtime sessions on their own threads) per model version.
    #[arg(long, env = "FER_WORKERS", default_value_t = 1, value_parser = at_least_one)]
    pub workers: usize,
    /// Threads decoding images (0: one per core).
    #[arg(long, env = "FER_DECODE_THREADS", default_value_t = 0)]
    pub decode_threads: usize,
    /// Largest request body, in bytes.
    #[arg(long, env = "FER_BODY_LIMIT", default_value_t = 16 * 1024 * 1024)]
    pub body_limit: usize,
    /// Most images in one request.
    #[arg(long, env = "FER_MAX_IMAGES", default_value_t = 64, value_parser = at_least_one)]
    pub max_images: usize,
    /// Log format.
    #[arg(long, env = "FER_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub lifecycle: LifecycleArgs,
    #[command(flatten)]
    pub admission: AdmissionArgs,
    #[command(flatten)]
    pub connections: ConnectionArgs,
    #[command(flatten)]
    pub access: AccessArgs,
    #[command(flatten)]
    pub detector: DetectorArgs,
}

/// Face detection for `/v1/analyze` (full photos and frames) and `score-video --local`.
#[derive(Debug, Clone, Args)]
pub struct DetectorArgs {
    /// Face detector: `auto` (CenterFace as `scripts/setup-detector.sh` installs it, when it is
    /// there), `none` (/v1/analyze answers 501 `detector_not_configured`), or the path of a
    /// CenterFace or UltraFace `.onnx`.
    #[arg(long, env = "FER_DETECTOR", default_value = "auto", value_parser = parse_detector)]
    pub detector: DetectorChoice,
    /// Lowest face score kept (a request's `score_threshold` overrides it; default: the
    /// detector's own, 0.5 for CenterFace, 0.7 for UltraFace).
    #[arg(long, env = "FER_DETECTOR_SCORE_THRESHOLD")]
    pub detector_score_threshold: Option<f32>,
    /// Overlap (IoU) above which the weaker of two face boxes is dropped.
    #[arg(long, env = "FER_DETECTOR_NMS_IOU", default_value_t = fer_contract::detect::DEFAULT_NMS_IOU)]
    pub detector_nms_iou: f32,
    /// Smallest face side kept, in pixels (a request's `min_face_size` overrides it).
    #[arg(long, env = "FER_MIN_FACE_SIZE", default_value_t = fer_contract::detect::DEFAULT_MIN_FACE)]
    pub min_face_size: f32,
    /// Context added around each face beyond the training data's framing, as a share of the
    /// crop's side on each side (negative: tighter, down to -0.25). 0 frames faces as the training
    /// data does (measured per detector, see training/README.md "Framing").
    #[arg(long, env = "FER_FACE_MARGIN", default_value_t = 0.0,
          allow_negative_numbers = true, value_parser = parse_face_margin)]
    pub face_margin: f32,
    /// Turn each face upright and frame it by its landmarks before classifying it (detectors with
    /// landmarks: CenterFace); `false`: an axis-aligned square around the box.
    #[arg(long, env = "FER_ALIGN_FACES", default_value_t = true, action = clap::ArgAction::Set)]
    pub align_faces: bool,
    /// Detector sessions (requests detecting at once).
    #[arg(long, env = "FER_DETECTOR_SESSIONS", default_value_t = 1, value_parser = at_least_one)]
    pub detector_sessions: usize,
    /// Pixels of photos decoded at once for face detection, across all requests (3 bytes each);
    /// a photo waits for its share before it is decoded. At least --max-image-pixels.
    #[arg(long, env = "FER_MAX_DECODED_PIXELS", default_value_t = 80_000_000)]
    pub max_decoded_pixels: u64,
}

impl DetectorArgs {
    /// The detector pool's settings: one place for the server and `score-video --local`.
    pub fn settings(&self, intra_op_threads: usize) -> crate::core::analyze::DetectorSettings {
        crate::core::analyze::DetectorSettings {
            sessions: self.detector_sessions,
            intra_op_threads,
            score_threshold: self.detector_score_threshold,
            nms_iou: self.detector_nms_iou,
            min_face: self.min_face_size,
            margin: self.face_margin,
            align: self.align_faces,
            max_decoded_pixels: self.max_decoded_pixels,
        }
    }
}

/// Which face detector to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DetectorChoice {
    /// The default detector where setup installed it; none otherwise.
    Auto,
    /// No face detection.
    Off,
    Path(PathBuf),
}

impl DetectorChoice {
    /// The file to load: `None` for `none`; for `auto`, an error saying where it looked and how
    /// to get it when setup has not installed the default detector.
    pub fn path(&self) -> Result<Option<PathBuf>, NoDefaultDetector> {
        match self {
            DetectorChoice::Off => Ok(None),
            DetectorChoice::Path(path) => Ok(Some(path.clone())),
            DetectorChoice::Auto => fer_contract::detect::locate_default_detector()
                .map(Some)
                .ok_or_else(|| NoDefaultDetector {
                    searched: fer_contract::detect::default_detector_candidates()
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "no face detector: looked for {file} in {searched}; get it with scripts/setup-detector.sh \
     (`make setup` runs it), or pass --detector PATH (or none)",
    file = fer_contract::detect::DEFAULT_DETECTOR_FILE
)]
pub struct NoDefaultDetector {
    searched: String,
}

fn parse_detector(value: &str) -> Result<DetectorChoice, String> {
    Ok(match value {
        "" => return Err("empty; use auto, none or a path".into()),
        "auto" => DetectorChoice::Auto,
        "none" => DetectorChoice::Off,
        path => DetectorChoice::Path(PathBuf::from(path)),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RepositoryWatch {
    /// Filesystem events (inotify), falling back to polling where there are none.
    Events,
    /// Poll the repository every --repository-poll-ms.
    Poll,
    /// No watching: SIGHUP and the /v2/repository API change what serves.
    Off,
}

/// Model versions, hot reload and shutdown.
#[derive(Debug, Clone, Args)]
pub struct LifecycleArgs {
    /// Versions served per model, unless `<model>/serving.json` says otherwise: `latest:N` (the N
    /// newest that load), `all`, or `specific:V[,V...]`.
    #[arg(long, env = "FER_VERSION_POLICY", default_value = "latest:1")]
    pub version_policy: VersionPolicy,
    /// How the repository is watched for new, changed and deleted versions.
    #[arg(
        long,
        env = "FER_REPOSITORY_WATCH",
        value_enum,
        default_value = "events"
    )]
    pub repository_watch: RepositoryWatch,
    /// Polling interval, in milliseconds, when the repository is polled.
    #[arg(long, env = "FER_REPOSITORY_POLL_MS", default_value_t = 2000, value_parser = at_least_one_ms)]
    pub repository_poll_ms: u64,
    /// Quiet time, in milliseconds, after a change before it is loaded; files modified more
    /// recently than this are treated as still being written.
    #[arg(long, env = "FER_RELOAD_DEBOUNCE_MS", default_value_t = 500)]
    pub reload_debounce_ms: u64,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish, in milliseconds.
    #[arg(long, env = "FER_DRAIN_TIMEOUT_MS", default_value_t = 30_000)]
    pub drain_timeout_ms: u64,
}

/// Load shedding on inference routes.
#[derive(Debug, Clone, Args)]
pub struct AdmissionArgs {
    /// Longest an inference request may take, in milliseconds, before 504 (its queued work is
    /// dropped); 0: no limit.
    #[arg(long, env = "FER_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,
    /// Inference requests in progress at once before 429; 0: no limit.
    #[arg(long, env = "FER_MAX_CONCURRENT_REQUESTS", default_value_t = 512)]
    pub max_concurrent_requests: usize,
}

/// A count that must be at least 1, refused at parsing (not quietly raised later).
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A duration in milliseconds that must be at least 1.
fn at_least_one_ms(text: &str) -> Result<u64, String> {
    at_least_one(text).map(|n| n as u64)
}

/// How long an HTTP client may hold a connection or a request without sending it.
#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    /// Time, in milliseconds, from a request's first byte to the end of its headers before the
    /// connection is closed.
    #[arg(long, env = "FER_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000, value_parser = at_least_one_ms)]
    pub header_read_timeout_ms: u64,
    /// Time, in milliseconds, a connection may stay open with no request in progress (longer
    /// than a load balancer's own idle timeout, so that it closes them first).
    #[arg(long, env = "FER_IDLE_TIMEOUT_MS", default_value_t = 75_000, value_parser = at_least_one_ms)]
    pub idle_timeout_ms: u64,
    /// Time, in milliseconds, a request's body may take to arrive before 408; inference
    /// requests take an admission slot only once their body is in.
    #[arg(long, env = "FER_BODY_READ_TIMEOUT_MS", default_value_t = 30_000, value_parser = at_least_one_ms)]
    pub body_read_timeout_ms: u64,
}

/// Who may call what.
#[derive(Debug, Clone, Args)]
pub struct AccessArgs {
    /// API keys accepted as `Authorization: Bearer <key>` (comma-separated in the env var). With
    /// any key configured, inference, model and repository routes require one.
    #[arg(
        long = "api-key",
        env = "FER_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,
    /// File with one API key per line (`#` comments and blank lines ignored).
    #[arg(long, env = "FER_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// Require a key for /healthz, /readyz and /v2/health/* too (when keys are configured).
    #[arg(long, env = "FER_AUTH_HEALTH")]
    pub auth_health: bool,
    /// Require a key for /metrics too (when keys are configured).
    #[arg(long, env = "FER_AUTH_METRICS")]
    pub auth_metrics: bool,
    /// Origins allowed by CORS (comma-separated in the env var; `*` for any); none: CORS off.
    #[arg(
        long = "cors-allow-origin",
        env = "FER_CORS_ALLOW_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_allow_origins: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ClassifyArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Image files (JPEG, PNG, WebP, BMP).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Model name (default: --default-model).
    #[arg(long, env = "FER_MODEL")]
    pub model_name: Option<String>,
    /// Model version (default: the newest that loads).
    #[arg(long, env = "FER_MODEL_VERSION")]
    pub version: Option<u64>,
    /// Print JSON lines instead of text.
    #[arg(long)]
    pub json: bool,
    /// Scores to print per file (default: all).
    #[arg(long, value_parser = at_least_one)]
    pub top_k: Option<usize>,
}

#[derive(Debug, Clone, Args)]
pub struct ScoreVideoArgs {
    /// The video (any format the system's ffmpeg reads).
    pub video: PathBuf,
    /// Frames scored per second of video.
    #[arg(long, env = "FER_VIDEO_FPS", default_value_t = 5.0)]
    pub fps: f64,
    /// gRPC address of a running fer-server.
    #[arg(long, env = "FER_GRPC_URL", default_value = "http://127.0.0.1:8081")]
    pub server: String,
    /// API key for the server (`Authorization: Bearer`).
    #[arg(long, env = "FER_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Score in this process (no server): needs the model repository, and --detector unless
    /// --no-detect.
    #[arg(long, env = "FER_VIDEO_LOCAL")]
    pub local: bool,
    /// Each frame is one face crop: classify it whole, without face detection.
    #[arg(long, env = "FER_VIDEO_NO_DETECT")]
    pub no_detect: bool,
    /// Face detection for --local: the server's flags and defaults.
    #[command(flatten)]
    pub detector: DetectorArgs,
    /// Temporal smoothing per face track: `none`, `ema:ALPHA` or `mean:N` (frames).
    #[arg(long, env = "FER_VIDEO_SMOOTH", default_value = "none")]
    pub smooth: String,
    /// Model name (default: the server's default model; with --local, --default-model).
    #[arg(long = "model-name", env = "FER_MODEL")]
    pub model_name: Option<String>,
    /// Folder for timeline.json, timeline.csv and timeline.svg (default: `<video>.timeline`).
    #[arg(long, env = "FER_VIDEO_OUT")]
    pub out: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, env = "FER_QUIET")]
    pub quiet: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

impl ModelArgs {
    pub fn decode_limits(&self) -> fer_contract::DecodeLimits {
        fer_contract::DecodeLimits {
            max_width: self.max_image_side,
            max_height: self.max_image_side,
            max_pixels: self.max_image_pixels,
        }
    }

    /// Options of every model session, for `workers` sessions per model version.
    pub fn session_options(&self, workers: usize) -> SessionOptions {
        SessionOptions {
            intra_op_threads: self.intra_threads(workers),
            intra_op_spinning: self.intra_op_spinning,
            provider: self.provider.config(),
        }
    }

    /// Intra-op threads per session: the explicit value, or the cores shared among the workers.
    pub fn intra_threads(&self, workers: usize) -> usize {
        if self.intra_op_threads > 0 {
            self.intra_op_threads
        } else {
            (num_cpus::get_physical().max(1) / workers.max(1)).max(1)
        }
    }
}

/// `--face-margin`: a finite number in [-0.25, 2].
fn parse_face_margin(value: &str) -> Result<f32, String> {
    let margin: f32 = value.parse().map_err(|e| format!("{e}"))?;
    if margin.is_finite() && (fer_contract::detect::MIN_FACE_MARGIN..=2.0).contains(&margin) {
        Ok(margin)
    } else {
        Err("must be in [-0.25, 2]".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_serve_flag_has_an_env_var() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        for sub in ["serve", "classify"] {
            let sub = cmd.find_subcommand(sub).unwrap();
            for arg in sub.get_arguments() {
                let id = arg.get_id().as_str();
                if arg.is_positional() || ["help", "version", "json", "top_k"].contains(&id) {
                    continue;
                }
                assert!(arg.get_env().is_some(), "--{id} has no env var");
            }
        }
    }

    #[test]
    fn defaults_listen_on_loopback_8080() {
        let cli = Cli::try_parse_from(["fer-server", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(args.grpc_listen.to_string(), "127.0.0.1:8081");
        assert_eq!(args.max_queue_delay_ms, 0);
        assert_eq!(args.lifecycle.version_policy, VersionPolicy::Latest(1));
        assert!(args.access.api_keys.is_empty());
    }

    #[test]
    fn counts_and_timeouts_of_zero_are_refused_at_parsing() {
        for flag in [
            "--max-batch-size",
            "--queue-capacity",
            "--workers",
            "--max-images",
            "--detector-sessions",
            "--repository-poll-ms",
            "--header-read-timeout-ms",
            "--idle-timeout-ms",
            "--body-read-timeout-ms",
        ] {
            let error = Cli::try_parse_from(["fer-server", "serve", flag, "0"])
                .err()
                .unwrap_or_else(|| panic!("{flag} 0 accepted"));
            assert!(error.to_string().contains("must be at least 1"), "{error}");
            assert!(Cli::try_parse_from(["fer-server", "serve", flag, "1"]).is_ok());
        }
    }
}
