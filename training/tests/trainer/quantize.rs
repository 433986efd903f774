//! `fer-train quantize` on the shipped `ferplus/1` and the real FER+ validation set, with ONNX
//! Runtime's quantizer from `.venv-quant` (scripts/setup-quantize.sh; `make test` installs it).

use std::path::{Path, PathBuf};

use fer_contract::{MANIFEST_FILE, MODEL_FILE, Manifest, Precision};
use fer_train::quantize::{QuantizeRequest, quantize};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn request<'a>(
    source: &'a Path,
    models: &'a Path,
    python: &'a Path,
    data: &'a Path,
) -> QuantizeRequest<'a> {
    QuantizeRequest {
        source,
        models_dir: models,
        name: None,
        version: None,
        data_dir: data,
        calibration_images: 120,
        method: "percentile",
        seed: 3,
        python,
        ort_dylib: None,
        max_accuracy_drop: 0.01,
        replace: false,
        force: false,
        command: "fer-train quantize --from models/ferplus/1 --calibration-images 120",
    }
}

/// Nothing is left half-written beside the repository.
fn staging_is_empty(models: &Path) -> bool {
    !models.join(".staging").read_dir().unwrap().any(|_| true)
}

#[test]
fn an_int8_variant_keeps_the_accuracy_of_its_source_and_is_published_beside_it() {
    let repo = repo();
    let python = repo.join(".venv-quant/bin/python");
    assert!(
        python.exists(),
        "{} missing: run scripts/setup-quantize.sh",
        python.display()
    );
    let source = repo.join("models/ferplus/1");
    let data = repo.join("../shared/data");
    let models = tempfile::tempdir().unwrap();
    let source_manifest = Manifest::load(&source.join(MANIFEST_FILE)).unwrap();

    let done = quantize(&request(&source, models.path(), &python, &data)).unwrap();
    assert_eq!(done.dir, models.path().join("ferplus-int8/1"));
    let c = &done.comparison;
    assert_eq!(c.images, 3555);
    // ONNX Runtime's FP32 scores are the ones the export measured with burn (parity 3555/3555).
    assert!(
        (c.fp32.accuracy - source_manifest.provenance.metrics["val_accuracy"]).abs() < 1e-9,
        "FP32 {} vs the manifest's {}",
        c.fp32.accuracy,
        source_manifest.provenance.metrics["val_accuracy"]
    );
    assert!(
        c.fp32.accuracy - c.int8.accuracy <= 0.01,
        "INT8 {} vs FP32 {}",
        c.int8.accuracy,
        c.fp32.accuracy
    );
    assert!(c.argmax_agree as f64 >= 0.95 * c.images as f64, "{c:?}");

    let manifest = Manifest::load(&done.dir.join(MANIFEST_FILE)).unwrap();
    assert_eq!(manifest.precision, Precision::Int8);
    assert_eq!(
        (manifest.name.as_str(), manifest.version),
        ("ferplus-int8", 1)
    );
    assert_eq!(manifest.labels, source_manifest.labels);
    assert_eq!(manifest.preprocessing, source_manifest.preprocessing);
    assert_eq!(manifest.provenance.metrics["val_accuracy"], c.int8.accuracy);
    assert_eq!(manifest.provenance.metrics["calibration_images"], 120.0);
    let graph = std::fs::read(done.dir.join(MODEL_FILE)).unwrap();
    let has = |op: &[u8]| graph.windows(op.len()).any(|w| w == op);
    assert!(has(b"QuantizeLinear") && has(b"DequantizeLinear"));
    let card = std::fs::read_to_string(done.dir.join("MODEL_CARD.md")).unwrap();
    assert!(card.contains("INT8 variant of ferplus/1"), "{card}");
    assert!(staging_is_empty(models.path()));

    // An existing variant is not overwritten; a variant that loses more than allowed is not
    // published, and leaves nothing behind.
    let again = quantize(&request(&source, models.path(), &python, &data))
        .err()
        .unwrap()
        .to_string();
    assert!(again.contains("--replace"), "{again}");
    let strict = QuantizeRequest {
        version: Some(9),
        max_accuracy_drop: -1.0,
        ..request(&source, models.path(), &python, &data)
    };
    let refused = quantize(&strict).err().unwrap().to_string();
    assert!(refused.starts_with("not published"), "{refused}");
    assert!(!models.path().join("ferplus-int8/9").exists());
    assert!(staging_is_empty(models.path()));

    // An INT8 version is not quantized again.
    let twice = quantize(&request(&done.dir, models.path(), &python, &data))
        .err()
        .unwrap()
        .to_string();
    assert!(twice.contains("already int8"), "{twice}");
}
