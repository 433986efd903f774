//! Helpers for end-to-end tests: start the real `fer-server` binary on an ephemeral port, and read
//! real face images from the shared FER+ archive in place.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The repository: where it was built, or FER_REPO (a prebuilt load harness run elsewhere,
/// scripts/gpu-check.sh).
pub fn repo() -> PathBuf {
    std::env::var_os("FER_REPO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

pub fn shared_data() -> PathBuf {
    repo().join("../shared/data")
}

/// The shipped model every end-to-end test serves.
pub const MODEL: &str = "ferplus";

/// The repository most tests serve: the shipped `ferplus` and `fer2013`, copied once per test run
/// (the server loads and warms up every model it finds; the INT8 variants would double each start).
pub fn test_models() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = repo().join("target/e2e-models");
        let _ = std::fs::remove_dir_all(&dir);
        for name in [MODEL, "fer2013"] {
            copy_dir(&repo().join("models").join(name), &dir.join(name));
        }
        dir
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The Open Inference Protocol's gRPC `ModelInfer` on encoded images, as tritonclient sends them:
/// one BYTES `image` input, each image after its 4-byte little-endian length in
/// `raw_input_contents`.
pub fn model_infer_of_images(
    model: &str,
    images: &[&[u8]],
) -> fer_server::grpc::proto::inference::ModelInferRequest {
    use fer_server::grpc::proto::inference as kserve;
    let mut raw = Vec::new();
    for image in images {
        raw.extend_from_slice(&(image.len() as u32).to_le_bytes());
        raw.extend_from_slice(image);
    }
    kserve::ModelInferRequest {
        model_name: model.into(),
        inputs: vec![kserve::model_infer_request::InferInputTensor {
            name: "image".into(),
            datatype: "BYTES".into(),
            shape: vec![images.len() as i64],
            ..Default::default()
        }],
        raw_input_contents: vec![raw],
        ..Default::default()
    }
}

/// The version of a shipped model the server serves by default: its newest.
pub fn serving_version(name: &str) -> u64 {
    std::fs::read_dir(repo().join("models").join(name))
        .unwrap_or_else(|e| panic!("models/{name}: {e}"))
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .max()
        .unwrap_or_else(|| panic!("models/{name} has no version"))
}

/// A running server; killed on drop.
pub struct Server {
    child: Child,
    pub base: String,
    /// `http://host:port` of the gRPC listener.
    pub grpc: String,
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// `fer-server serve` on ephemeral loopback ports with JSON logs, the repository `models` and
/// extra flags; not started. FER_SERVER_BIN runs another build (benchmarks compare two binaries).
pub fn serve_command(models: &Path, extra: &[&str]) -> Command {
    let binary = std::env::var("FER_SERVER_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_fer-server").to_string());
    let mut command = Command::new(binary);
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--default-model",
            MODEL,
        ])
        .arg("--models-dir")
        .arg(models)
        .args(extra)
        .env("RUST_LOG", "info");
    command
}

/// How long a test server may take to listen, and then to be ready.
const STARTUP: Duration = Duration::from_secs(180);

impl Server {
    /// Starts `fer-server serve` on 127.0.0.1:0 with extra flags and waits until /readyz says 200.
    pub fn start(extra: &[&str]) -> Server {
        Self::start_in(test_models(), extra)
    }

    /// As [`Server::start`], with every shipped model (the INT8 variants too).
    pub fn start_shipped(extra: &[&str]) -> Server {
        Self::start_in(&repo().join("models"), extra)
    }

    pub fn start_in(models: &Path, extra: &[&str]) -> Server {
        let mut child = serve_command(models, extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start fer-server");
        let stderr = child.stderr.take().expect("stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && let Some(kind @ ("listening" | "grpc listening")) =
                        v["fields"]["message"].as_str()
                {
                    let address = v["fields"]["address"].as_str().unwrap_or_default();
                    let _ = tx.send((kind == "grpc listening", address.to_string()));
                }
                sink.lock().unwrap().push(line);
            }
        });
        let (mut http, mut grpc) = (None, None);
        while http.is_none() || grpc.is_none() {
            // Generous: every model is warmed up at each batch size before the server is ready, and
            // the shipped graphs with test-time flip run their network two or four times a face, on
            // 2 cores shared with the other tests' servers.
            match rx.recv_timeout(STARTUP) {
                Ok((true, address)) => grpc = Some(address),
                Ok((false, address)) => http = Some(address),
                Err(_) => {
                    let _ = child.kill();
                    panic!("server did not start:\n{}", log.lock().unwrap().join("\n"));
                }
            }
        }
        let server = Server {
            child,
            base: format!("http://{}", http.unwrap_or_default()),
            grpc: format!("http://{}", grpc.unwrap_or_default()),
            log,
        };
        let deadline = Instant::now() + STARTUP;
        while Instant::now() < deadline {
            if let Ok(r) = reqwest::blocking_get(&format!("{}/readyz", server.base))
                && r == 200
            {
                return server;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server never became ready");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`HUP`, `TERM`, ...) to the server.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the exit status after a signal.
    pub fn wait(mut self) -> std::process::ExitStatus {
        let status = self.child.wait().expect("wait");
        std::mem::forget(self);
        status
    }

    /// Whether a log line contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(text))
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().expect("wait");
        std::mem::forget(self);
        status
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `<root>/<name>/<version>/` from the shipped model, its manifest renamed and versioned
/// and then changed by `edit`; returns the folder.
pub fn write_version(
    root: &Path,
    name: &str,
    version: u64,
    edit: impl FnOnce(&mut serde_json::Value),
) -> PathBuf {
    let shipped = repo().join("models").join(MODEL).join("1");
    let dir = root.join(name).join(version.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(shipped.join("model.onnx"), dir.join("model.onnx")).unwrap();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(shipped.join("manifest.json")).unwrap()).unwrap();
    manifest["name"] = name.into();
    manifest["version"] = version.into();
    edit(&mut manifest);
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
    dir
}

/// The shipped model's graph bytes.
pub fn shipped_graph() -> Vec<u8> {
    std::fs::read(repo().join("models").join(MODEL).join("1/model.onnx")).unwrap()
}

/// Resident memory of a process, in MiB (0 when it cannot be read).
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// POSTs one PNG as the body of `/v1/classify`; the status code.
pub async fn classify_png(server: &Server, png: Vec<u8>) -> u16 {
    ::reqwest::Client::new()
        .post(server.url("/v1/classify"))
        .header("content-type", "image/png")
        .body(png)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The body of a GET on the server (e.g. `/metrics`).
pub async fn get_text(server: &Server, path: &str) -> String {
    ::reqwest::get(server.url(path))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Status code of a plain GET (`http://host:port/path`), if any answer came.
pub fn get_status(url: &str) -> Option<u16> {
    reqwest::blocking_get(url).ok()
}

/// Minimal blocking GET for readiness polling (status code only).
mod reqwest {
    pub fn blocking_get(url: &str) -> Result<u16, std::io::Error> {
        use std::io::{Read, Write};
        let rest = url.trim_start_matches("http://");
        let (host, path) = rest
            .split_once('/')
            .map(|(h, p)| (h, format!("/{p}")))
            .unwrap_or((rest, "/".into()));
        let mut s = std::net::TcpStream::connect(host)?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        buf.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other("no status"))
    }
}

/// A FER+ validation face with the label most annotators gave it.
#[derive(Debug, Clone)]
pub struct Face {
    pub file: String,
    pub png: Vec<u8>,
    pub label: String,
    /// Share of the 10 annotators who chose `label`.
    pub agreement: f32,
}

const FERPLUS_LABELS: [&str; 8] = [
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
];

/// FER+ validation faces on which at least `min_votes` of 10 annotators agree, read in place
/// from `../shared/data/ferplus.tar.gz`, in file order.
pub fn ferplus_faces(min_votes: u32, limit: usize) -> Vec<Face> {
    let path = shared_data().join("ferplus.tar.gz");
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut labels = std::collections::HashMap::new();
    let mut images = std::collections::BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("ferplus/valid/") {
            continue;
        }
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        if name.ends_with("label.csv") {
            for line in String::from_utf8_lossy(&bytes).lines() {
                let Some((file, rest)) = line.split_once(',') else {
                    continue;
                };
                let votes: Vec<u32> = rest
                    .rsplit_once(')')
                    .map(|(_, r)| r)
                    .unwrap_or("")
                    .split(',')
                    .filter_map(|v| v.trim().trim_matches('"').parse().ok())
                    .collect();
                if votes.len() != 10 {
                    continue;
                }
                let (best, count) = votes
                    .iter()
                    .enumerate()
                    .max_by_key(|(_, v)| **v)
                    .map(|(i, v)| (i, *v))
                    .unwrap();
                if best < 8 && count >= min_votes {
                    labels.insert(
                        file.to_string(),
                        (FERPLUS_LABELS[best].to_string(), count as f32 / 10.0),
                    );
                }
            }
        } else if name.ends_with(".png") {
            images.insert(name.rsplit('/').next().unwrap().to_string(), bytes);
        }
    }
    images
        .into_iter()
        .filter_map(|(file, png)| {
            let (label, agreement) = labels.get(&file)?.clone();
            Some(Face {
                file,
                png,
                label,
                agreement,
            })
        })
        .take(limit)
        .collect()
}
