//! The report: a markdown table of every figure and the ratios the targets are stated in.

use crate::drive::RunResult;
use crate::options::Options;
use crate::photos::RawAnalyze;
use crate::raw::RawResult;

/// `/v1/analyze` on photos: its own raw limit and the server's rows.
pub struct AnalyzeRows {
    pub raw: RawAnalyze,
    pub server: Vec<RunResult>,
}

/// Another model measured in the same run: its own limit and its `/v1/classify` rows.
pub struct ModelRow {
    pub label: String,
    pub raw: RawResult,
    pub server: Vec<RunResult>,
}

pub struct Report {
    pub model: String,
    pub compared: Vec<ModelRow>,
    pub requests: usize,
    pub peer_workers: usize,
    pub raw: RawResult,
    pub server: Vec<RunResult>,
    pub kserve: Vec<RunResult>,
    /// The Open Inference Protocol's gRPC `ModelInfer`, one image a request.
    pub grpc_infer: Vec<RunResult>,
    /// `fer.v1.Fer/StreamFrames`, one stream per client, one frame in flight on each.
    pub grpc_stream: Vec<RunResult>,
    pub peer: Vec<RunResult>,
    pub analyze: Option<AnalyzeRows>,
    pub server_rss_mib: f64,
    pub peer_rss_mib: f64,
    pub server_flags: Vec<String>,
}

impl Report {
    pub fn new(options: &Options, model: String, raw: RawResult) -> Self {
        Report {
            model,
            compared: Vec::new(),
            requests: options.requests,
            peer_workers: options.peer_workers,
            raw,
            server: Vec::new(),
            kserve: Vec::new(),
            grpc_infer: Vec::new(),
            grpc_stream: Vec::new(),
            peer: Vec::new(),
            analyze: None,
            server_rss_mib: 0.0,
            peer_rss_mib: 0.0,
            server_flags: options.server_args(),
        }
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let line = |out: &mut String, s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line(&mut out, format!("Machine: {}.", machine()));
        line(
            &mut out,
            format!(
                "Model: `{}`. Images: real FER+ validation faces as JPEG. {} requests per row after a warm-up; fer-server flags: `{}`{}.",
                self.model,
                self.requests,
                self.server_flags.join(" "),
                if self.peer.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; peer: FastAPI + onnxruntime + Pillow, {} uvicorn worker(s)",
                        self.peer_workers
                    )
                }
            ),
        );
        line(&mut out, String::new());
        let raw = &self.raw;
        line(
            &mut out,
            format!(
                "Raw ONNX Runtime, one thread decoding + preprocessing + `session.run`: batch 1 **{:.0} img/s** (p50 {:.3} ms per image), batch {} **{:.0} img/s**. Limit used for the ratios: {:.0} img/s.",
                raw.batch1_per_s,
                raw.batch1_latency.value_at_quantile(0.5) as f64 / 1000.0,
                raw.max_batch,
                raw.max_batch_per_s,
                raw.limit()
            ),
        );
        line(&mut out, String::new());
        line(
            &mut out,
            "| concurrency | fer-server req/s | p50 ms | p90 ms | p99 ms | × raw ORT | v2 infer req/s | v2 p99 ms | peer req/s | peer p50 ms | peer p99 ms | throughput × peer | peer p99 ÷ ours |".into(),
        );
        line(
            &mut out,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|".into(),
        );
        for (i, s) in self.server.iter().enumerate() {
            let v2 = self.kserve.get(i);
            let peer = self.peer.get(i);
            let opt = |v: Option<f64>, digits: usize| {
                v.map_or("–".to_string(), |v| format!("{v:.digits$}"))
            };
            line(
                &mut out,
                format!(
                    "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2}× | {} | {} | {} | {} | {} | {} | {} |",
                    s.concurrency,
                    s.throughput(),
                    s.ms(0.5),
                    s.ms(0.9),
                    s.ms(0.99),
                    s.throughput() / raw.limit(),
                    opt(v2.map(RunResult::throughput), 0),
                    opt(v2.map(|r| r.ms(0.99)), 2),
                    opt(peer.map(RunResult::throughput), 0),
                    opt(peer.map(|r| r.ms(0.5)), 2),
                    opt(peer.map(|r| r.ms(0.99)), 2),
                    opt(peer.map(|p| s.throughput() / p.throughput()), 1).to_string()
                        + if peer.is_some() { "×" } else { "" },
                    opt(peer.map(|p| p.ms(0.99) / s.ms(0.99)), 1).to_string()
                        + if peer.is_some() { "×" } else { "" },
                ),
            );
        }
        line(&mut out, String::new());
        line(
            &mut out,
            format!(
                "CPU time per request (from /proc; the machine has {} cores for servers and load generator together). Raw ORT: {:.0} µs per image at batch 1, {:.0} µs at batch {}.",
                num_cpus::get(),
                raw.batch1_cpu_us,
                raw.max_batch_cpu_us,
                raw.max_batch
            ),
        );
        line(&mut out, String::new());
        line(
            &mut out,
            "| concurrency | fer-server µs | its load generator µs | peer µs | its load generator µs |".into(),
        );
        line(&mut out, "|---|---|---|---|---|".into());
        for (i, s) in self.server.iter().enumerate() {
            let peer = self.peer.get(i);
            let opt = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.0}"));
            line(
                &mut out,
                format!(
                    "| {} | {:.0} | {:.0} | {} | {} |",
                    s.concurrency,
                    s.cpu_us_per_request(),
                    s.client_cpu_us_per_request(),
                    opt(peer.map(RunResult::cpu_us_per_request)),
                    opt(peer.map(RunResult::client_cpu_us_per_request)),
                ),
            );
        }
        let failed: usize = self
            .server
            .iter()
            .chain(&self.kserve)
            .chain(&self.grpc_infer)
            .chain(&self.grpc_stream)
            .chain(&self.peer)
            .chain(self.analyze.iter().flat_map(|a| &a.server))
            .chain(self.compared.iter().flat_map(|m| &m.server))
            .map(|r| r.failed)
            .sum();
        line(&mut out, String::new());
        if !self.grpc_infer.is_empty() {
            self.grpc(&mut out);
        }
        if let Some(analyze) = &self.analyze {
            self.photos(analyze, &mut out);
        }
        if !self.compared.is_empty() {
            self.comparison(&mut out);
        }
        line(&mut out, self.targets());
        line(
            &mut out,
            format!(
                "Failed requests: {failed}. RSS after the run: fer-server {:.0} MiB{}.",
                self.server_rss_mib,
                if self.peer.is_empty() {
                    String::new()
                } else {
                    format!(", peer {:.0} MiB (all workers)", self.peer_rss_mib)
                }
            ),
        );
        out
    }

    /// The gRPC rows: the same faces, one per request (`ModelInfer`) or per frame
    /// (`StreamFrames`), against the same raw limit.
    fn grpc(&self, out: &mut String) {
        out.push_str("gRPC, same model and faces (one image per `ModelInfer` request, raw BYTES input as tritonclient sends it; one frame in flight per `StreamFrames` stream, one stream per client):\n\n");
        out.push_str("| concurrency | ModelInfer req/s | p50 ms | p99 ms | × raw ORT | StreamFrames frames/s | p50 ms | p99 ms | × raw ORT |\n");
        out.push_str("|---|---|---|---|---|---|---|---|---|\n");
        let limit = self.raw.limit();
        for (infer, stream) in self.grpc_infer.iter().zip(&self.grpc_stream) {
            out.push_str(&format!(
                "| {} | {:.0} | {:.2} | {:.2} | {:.2}× | {:.0} | {:.2} | {:.2} | {:.2}× |\n",
                infer.concurrency,
                infer.throughput(),
                infer.ms(0.5),
                infer.ms(0.99),
                infer.throughput() / limit,
                stream.throughput(),
                stream.ms(0.5),
                stream.ms(0.99),
                stream.throughput() / limit,
            ));
        }
        out.push('\n');
    }

    /// The `/v1/analyze` rows: photos per second against the raw loop's, faces per second beside.
    fn photos(&self, analyze: &AnalyzeRows, out: &mut String) {
        let raw = &analyze.raw;
        let per_photo = raw.faces_per_photo;
        out.push_str(&format!(
            "`/v1/analyze`, {}×{} photos of several people, every face detected, cropped and classified with `{}` (one photo a request). Raw ONNX Runtime, one thread decoding + detecting + cropping + one `session.run` over the photo's faces: **{:.1} photos/s** ({:.1} faces/s, {per_photo:.1} faces a photo; p50 {:.1} ms, {:.0} µs CPU a photo). The server's faces/s: its photos/s × the faces a photo the raw loop found.\n\n",
            crate::photos::PHOTO_SIZE.0,
            crate::photos::PHOTO_SIZE.1,
            self.model,
            raw.photos_per_s,
            raw.photos_per_s * per_photo,
            raw.latency.value_at_quantile(0.5) as f64 / 1000.0,
            raw.cpu_us,
        ));
        out.push_str("| concurrency | photos/s | faces/s | p50 ms | p99 ms | × raw ORT | server CPU µs a photo |\n");
        out.push_str("|---|---|---|---|---|---|---|\n");
        for r in &analyze.server {
            out.push_str(&format!(
                "| {} | {:.1} | {:.0} | {:.1} | {:.1} | {:.2}× | {:.0} |\n",
                r.concurrency,
                r.throughput(),
                r.throughput() * per_photo,
                r.ms(0.5),
                r.ms(0.99),
                r.throughput() / raw.photos_per_s,
                r.cpu_us_per_request(),
            ));
        }
        out.push('\n');
    }

    /// The models side by side: each one's raw limit and its best `/v1/classify` throughput,
    /// against its own limit and against the first model.
    fn comparison(&self, out: &mut String) {
        let best = |rows: &[RunResult]| {
            rows.iter()
                .max_by(|a, b| a.throughput().total_cmp(&b.throughput()))
                .map(|r| (r.throughput(), r.concurrency))
                .unwrap_or((0.0, 0))
        };
        let (base_server, _) = best(&self.server);
        out.push_str(&format!(
            "Models compared in this run (`/v1/classify`, best concurrency; × {} is against the first model):\n\n",
            self.model
        ));
        out.push_str(&format!(
            "| model | raw ORT batch 1 img/s | raw ORT batch {} img/s | × first (raw limit) | fer-server req/s (c) | × its raw limit | × first (server) |\n",
            self.raw.max_batch
        ));
        out.push_str("|---|---|---|---|---|---|---|\n");
        let rows = std::iter::once((&self.model, &self.raw, &self.server[..])).chain(
            self.compared
                .iter()
                .map(|m| (&m.label, &m.raw, &m.server[..])),
        );
        for (label, raw, server) in rows {
            let (req_s, c) = best(server);
            out.push_str(&format!(
                "| {label} | {:.0} | {:.0} | {:.2}× | {req_s:.0} (c={c}) | {:.2}× | {:.2}× |\n",
                raw.batch1_per_s,
                raw.max_batch_per_s,
                raw.limit() / self.raw.limit(),
                req_s / raw.limit(),
                req_s / base_server,
            ));
        }
        out.push('\n');
    }

    /// The targets, each with its measured figure.
    fn targets(&self) -> String {
        let best = self
            .server
            .iter()
            .max_by(|a, b| a.throughput().total_cmp(&b.throughput()));
        let Some(best) = best else {
            return String::new();
        };
        let mut parts = vec![format!(
            "saturation (c={}): {:.2}× raw ORT (target ≥ 0.9×)",
            best.concurrency,
            best.throughput() / self.raw.limit()
        )];
        if let Some(c1) = self.server.iter().find(|r| r.concurrency == 1) {
            let added = c1.ms(0.5) - self.raw.batch1_latency.value_at_quantile(0.5) as f64 / 1000.0;
            parts.push(format!(
                "latency added at c=1 (p50 over raw batch-1 p50, HTTP client included): {added:.3} ms (target ≤ 0.3 ms)"
            ));
        }
        let peer_best = self
            .peer
            .iter()
            .max_by(|a, b| a.throughput().total_cmp(&b.throughput()));
        if let Some(p) = peer_best {
            parts.push(format!(
                "best throughput {:.1}× the peer's best (target ≥ 5×)",
                best.throughput() / p.throughput()
            ));
            if let Some(s) = self.server.iter().find(|s| s.concurrency == p.concurrency) {
                parts.push(format!(
                    "p99 at c={} {:.2} ms vs the peer's {:.2} ms: {:.2} of it (target ≤ 0.33)",
                    p.concurrency,
                    s.ms(0.99),
                    p.ms(0.99),
                    s.ms(0.99) / p.ms(0.99)
                ));
            }
        }
        format!("Targets: {}.", parts.join("; "))
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!(
        "{cpu}, {} logical / {} physical cores, Linux",
        num_cpus::get(),
        num_cpus::get_physical()
    )
}
