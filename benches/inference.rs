//! Batch inference per image at batch 1, 8 and 32: the server's batcher (queue → worker thread →
//! batch buffer → session) next to the raw `ort` session doing the same work in a loop.
//! Run: `cargo bench -p fer-server --bench inference`.

use std::path::PathBuf;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fer_contract::{Channels, DecodeLimits, Manifest, Pixels, Preprocessor};
use fer_server::backend::{OnnxSession, SessionOptions};
use fer_server::core::batcher::{BatchMetrics, BatchPolicy, Batcher};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge};

fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/ferplus/1")
}

fn metrics() -> BatchMetrics {
    let h = || Histogram::with_opts(HistogramOpts::new("h", "h")).expect("histogram");
    BatchMetrics {
        queue_wait: h(),
        inference: h(),
        batch_size: h(),
        queue_depth: IntGauge::new("g", "g").expect("gauge"),
        cancelled: IntCounter::new("c", "c").expect("counter"),
    }
}

fn bench(c: &mut Criterion) {
    let (_, env) = fer_contract::onnx::runtime(None).expect("ONNX Runtime (make setup)");
    let manifest = Manifest::load(&model_dir().join("manifest.json")).expect("manifest");
    let threads = SessionOptions {
        intra_op_threads: num_cpus::get_physical().max(1),
        ..SessionOptions::default()
    };
    let load = || {
        OnnxSession::load(env, &model_dir().join("model.onnx"), &manifest, &threads)
            .expect("session")
            .0
    };
    let preprocessor = Preprocessor::new(&manifest, DecodeLimits::default());
    let pixels: Vec<Pixels> = (0..32u32)
        .map(|i| {
            Pixels::new(
                48,
                48,
                Channels::Gray,
                (0..48 * 48)
                    .map(|p| ((p * 7 + i * 13) % 256) as u8)
                    .collect(),
            )
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("inference");
    group.measurement_time(Duration::from_secs(4));
    for batch in [1usize, 8, 32] {
        group.throughput(Throughput::Elements(batch as u64));
        let mut raw = load();
        let mut input = vec![0.0f32; batch * preprocessor.input_len()];
        let mut output = Vec::new();
        group.bench_with_input(BenchmarkId::new("raw_ort", batch), &batch, |b, &batch| {
            b.iter(|| {
                for (p, row) in pixels[..batch]
                    .iter()
                    .zip(input.chunks_mut(preprocessor.input_len()))
                {
                    preprocessor.normalise_into(p, row);
                }
                raw.run(&input, batch, &mut output).expect("run");
            })
        });
        let policy = BatchPolicy {
            max_batch_size: batch,
            max_queue_delay: Duration::from_millis(5),
            queue_capacity: 1024,
            fixed_batch: None,
        };
        let batcher = Batcher::start(
            "bench",
            vec![load()],
            preprocessor.clone(),
            manifest.labels.len(),
            policy,
            metrics(),
        )
        .expect("batcher");
        group.bench_with_input(
            BenchmarkId::new("server_batcher", batch),
            &batch,
            |b, &batch| {
                b.iter(|| {
                    runtime.block_on(async {
                        let receivers: Vec<_> = pixels[..batch]
                            .iter()
                            .map(|p| batcher.submit(p.clone()).expect("queue"))
                            .collect();
                        for r in receivers {
                            r.await.expect("answer").expect("scores");
                        }
                    })
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
