//! The `/v1/analyze` path: photos of several people at 640×480, and its own limit, what ONNX
//! Runtime does with the same detector, the same crops and the same model in one thread with
//! nothing around it: decode → detect → crop each face as the server does
//! (`fer_contract::detect::face_crop`) → preprocess → one `session.run` over the photo's faces.

use std::path::{Path, PathBuf};
use std::time::Instant;

use fer_contract::detect::{
    DEFAULT_MIN_FACE, DEFAULT_NMS_IOU, DetectOptions, FaceDetector, face_crop,
};
use fer_contract::{DecodeLimits, Manifest, Preprocessor};
use fer_server::backend::{OnnxSession, SessionOptions};
use hdrhistogram::Histogram;

/// The photo size the rows are measured at (a VGA video frame or a downscaled phone photo).
pub const PHOTO_SIZE: (u32, u32) = (640, 480);

/// Every JPEG in `dir`, scaled and centre-cropped to [`PHOTO_SIZE`], re-encoded as a client would
/// send it; sorted by name so every run sends the same photos in the same order.
pub fn load(dir: &Path) -> Vec<Vec<u8>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("--photos {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("jpg") || x.eq_ignore_ascii_case("jpeg"))
        })
        .collect();
    paths.sort();
    assert!(
        !paths.is_empty(),
        "--photos {}: no JPEG in it",
        dir.display()
    );
    let (width, height) = PHOTO_SIZE;
    paths
        .iter()
        .map(|p| {
            let photo = image::open(p)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
                .resize_to_fill(width, height, image::imageops::FilterType::Triangle)
                .to_rgb8();
            crate::jpeg(&photo.into())
        })
        .collect()
}

pub struct RawAnalyze {
    pub photos_per_s: f64,
    pub faces_per_photo: f64,
    /// Per photo, microseconds.
    pub latency: Histogram<u64>,
    /// CPU time per photo (this process: the loop and both sessions' threads), microseconds.
    pub cpu_us: f64,
}

/// The limit of `/v1/analyze`: `count` photos, one at a time, after a warm-up of a tenth as many.
/// Both sessions get the server's defaults (the machine's physical cores as intra-op threads,
/// the detector's own score threshold, the default NMS overlap and smallest face, margin 0,
/// faces aligned by their landmarks).
pub fn measure(
    detector: &Path,
    model: &Path,
    photos: &[Vec<u8>],
    count: usize,
    intra_op_spinning: bool,
    provider: &fer_server::backend::ProviderConfig,
) -> RawAnalyze {
    let (_, env) = fer_contract::onnx::runtime(None).expect("ONNX Runtime (make setup)");
    let threads = num_cpus::get_physical().max(1);
    let mut detector =
        FaceDetector::load(env, detector, threads).unwrap_or_else(|e| panic!("face detector: {e}"));
    let kind = detector.kind();
    let options = DetectOptions {
        score_threshold: kind.default_score_threshold(),
        nms_iou: DEFAULT_NMS_IOU,
        min_face: DEFAULT_MIN_FACE,
    };
    let manifest = Manifest::load(&model.join("manifest.json")).expect("manifest");
    let session_options = SessionOptions {
        intra_op_threads: threads,
        intra_op_spinning,
        provider: provider.clone(),
    };
    let (mut session, _) =
        OnnxSession::load(env, &model.join("model.onnx"), &manifest, &session_options)
            .expect("session");
    let limits = DecodeLimits::default();
    let pre = Preprocessor::new(&manifest, limits);
    let row = pre.input_len();
    let (mut input, mut output) = (Vec::new(), Vec::new());

    let mut analyze = |i: usize| -> usize {
        let image = fer_contract::preprocess::decode_rgb(&photos[i % photos.len()], &limits)
            .expect("decode photo");
        let faces = detector.detect(&image, options).expect("detect");
        if faces.is_empty() {
            return 0;
        }
        input.resize(faces.len() * row, 0.0);
        for (face, dst) in faces.iter().zip(input.chunks_mut(row)) {
            let crop = face_crop(kind, &image, face, 0.0, true);
            pre.normalise_into(&pre.prepare(&crop).expect("prepare"), dst);
        }
        session.run(&input, faces.len(), &mut output).expect("run");
        faces.len()
    };
    for i in 0..(count / 10).max(1) {
        analyze(i);
    }
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let me = std::process::id();
    let cpu = crate::drive::cpu_seconds(me);
    let started = Instant::now();
    let mut faces = 0;
    for i in 0..count {
        let one = Instant::now();
        faces += analyze(i);
        latency.saturating_record(one.elapsed().as_micros() as u64);
    }
    let result = RawAnalyze {
        photos_per_s: count as f64 / started.elapsed().as_secs_f64(),
        faces_per_photo: faces as f64 / count.max(1) as f64,
        latency,
        cpu_us: (crate::drive::cpu_seconds(me) - cpu) * 1e6 / count.max(1) as f64,
    };
    eprintln!(
        "raw ort analyze: {:.1} photos/s ({:.1} faces per photo, p50 {:.1} ms, {:.0} µs CPU/photo)",
        result.photos_per_s,
        result.faces_per_photo,
        result.latency.value_at_quantile(0.5) as f64 / 1000.0,
        result.cpu_us
    );
    result
}
