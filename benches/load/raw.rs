//! The limit: what ONNX Runtime itself does with the same model and images, with nothing around
//! it. One thread decodes, preprocesses and runs the session in a loop; the session has the
//! server's default options (all of the machine's physical cores as intra-op threads) and the
//! execution provider the server is given.

use std::time::Instant;

use fer_contract::{DecodeLimits, Manifest, Preprocessor};
use fer_server::backend::{OnnxSession, SessionOptions};
use hdrhistogram::Histogram;

pub struct RawResult {
    pub batch1_per_s: f64,
    /// Per image at batch 1, microseconds.
    pub batch1_latency: Histogram<u64>,
    pub max_batch: usize,
    pub max_batch_per_s: f64,
    /// CPU time per image (this process: the loop and ONNX Runtime's threads), microseconds.
    pub batch1_cpu_us: f64,
    pub max_batch_cpu_us: f64,
}

impl RawResult {
    /// The best the server could do: the faster of the two loops, images per second.
    pub fn limit(&self) -> f64 {
        self.batch1_per_s.max(self.max_batch_per_s)
    }
}

pub fn measure(
    dir: &std::path::Path,
    images: &[Vec<u8>],
    count: usize,
    max_batch: usize,
    intra_op_spinning: bool,
    provider: &fer_server::backend::ProviderConfig,
) -> RawResult {
    let (_, env) = fer_contract::onnx::runtime(None).expect("ONNX Runtime (make setup)");
    let manifest = Manifest::load(&dir.join("manifest.json")).expect("manifest");
    let options = SessionOptions {
        intra_op_threads: num_cpus::get_physical().max(1),
        intra_op_spinning,
        provider: provider.clone(),
    };
    let (mut session, _) =
        OnnxSession::load(env, &dir.join("model.onnx"), &manifest, &options).expect("session");
    let pre = Preprocessor::new(&manifest, DecodeLimits::default());
    let row = pre.input_len();
    let mut input = vec![0.0f32; max_batch * row];
    let mut output = Vec::new();

    // Batch 1: one image at a time, as a client at concurrency 1 sees it.
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut run1 = |i: usize, latency: Option<&mut Histogram<u64>>| {
        let started = Instant::now();
        let pixels = pre.decode(&images[i % images.len()]).expect("decode");
        pre.normalise_into(&pixels, &mut input[..row]);
        session.run(&input[..row], 1, &mut output).expect("run");
        if let Some(h) = latency {
            h.saturating_record(started.elapsed().as_micros() as u64);
        }
    };
    for i in 0..count / 10 {
        run1(i, None);
    }
    let me = std::process::id();
    let cpu = crate::drive::cpu_seconds(me);
    let started = Instant::now();
    for i in 0..count {
        run1(i, Some(&mut latency));
    }
    let batch1_per_s = count as f64 / started.elapsed().as_secs_f64();
    let batch1_cpu_us = (crate::drive::cpu_seconds(me) - cpu) * 1e6 / count as f64;

    // The server's largest batch.
    let batches = count.div_ceil(max_batch).max(1);
    let mut run_batch = |b: usize| {
        for (j, dst) in input.chunks_mut(row).enumerate() {
            let pixels = pre
                .decode(&images[(b * max_batch + j) % images.len()])
                .expect("decode");
            pre.normalise_into(&pixels, dst);
        }
        session.run(&input, max_batch, &mut output).expect("run");
    };
    for b in 0..(batches / 10).max(1) {
        run_batch(b);
    }
    let cpu = crate::drive::cpu_seconds(me);
    let started = Instant::now();
    for b in 0..batches {
        run_batch(b);
    }
    let max_batch_per_s = (batches * max_batch) as f64 / started.elapsed().as_secs_f64();
    let max_batch_cpu_us =
        (crate::drive::cpu_seconds(me) - cpu) * 1e6 / (batches * max_batch) as f64;
    let result = RawResult {
        batch1_per_s,
        batch1_latency: latency,
        max_batch,
        max_batch_per_s,
        batch1_cpu_us,
        max_batch_cpu_us,
    };
    eprintln!(
        "raw ort: batch 1 {:.0} img/s (p50 {:.3} ms, {:.0} µs CPU/img), batch {max_batch} {:.0} img/s ({:.0} µs CPU/img)",
        result.batch1_per_s,
        result.batch1_latency.value_at_quantile(0.5) as f64 / 1000.0,
        result.batch1_cpu_us,
        result.max_batch_per_s,
        result.max_batch_cpu_us
    );
    result
}
