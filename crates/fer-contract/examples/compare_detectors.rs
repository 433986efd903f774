//! Compares two face detectors on a folder of photos: faces each finds, boxes matched by IoU ≥ 0.5,
//! and time per 640×480 frame, both measured in the same run.
//!
//! ```text
//! cargo run --release -p fer-contract --features onnx --example compare_detectors -- \
//!     REFERENCE.onnx CANDIDATE.onnx PHOTO_DIR [DRAW_DIR]
//! ```
//! With DRAW_DIR, each photo is written there with the reference's boxes in blue and the
//! candidate's in orange (landmarks as dots).

use std::path::{Path, PathBuf};
use std::time::Instant;

use fer_contract::detect::{DetectOptions, Detection, FaceDetector};
use fer_contract::preprocess::{decode_rgb, resize};
use fer_contract::{DecodeLimits, Pixels, ResizeMethod};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [reference, candidate, dir, rest @ ..] = &args[..] else {
        return Err(
            "usage: compare_detectors REFERENCE.onnx CANDIDATE.onnx PHOTO_DIR [DRAW_DIR]".into(),
        );
    };
    let draw = rest.first();
    let (_, environment) = fer_contract::onnx::runtime(None)?;
    let mut detectors = [
        FaceDetector::load(environment, reference, 1)?,
        FaceDetector::load(environment, candidate, 1)?,
    ];
    let options = |d: &FaceDetector| DetectOptions {
        score_threshold: d.kind().default_score_threshold(),
        nms_iou: fer_contract::detect::DEFAULT_NMS_IOU,
        min_face: fer_contract::detect::DEFAULT_MIN_FACE,
    };
    let mut photos: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jpg" || x == "png"))
        .collect();
    photos.sort();
    let limits = DecodeLimits::default();
    let (mut found, mut matched) = ([0usize; 2], 0usize);
    let mut frame_ms: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    println!("photo\tsize\treference\tcandidate\tmatched");
    for photo in &photos {
        let image = decode_rgb(&std::fs::read(photo)?, &limits)?;
        let faces: Vec<Vec<Detection>> = detectors
            .iter_mut()
            .map(|d| {
                let o = options(d);
                d.detect(&image, o)
            })
            .collect::<Result<_, _>>()?;
        let pairs = matches(&faces[0], &faces[1]);
        found[0] += faces[0].len();
        found[1] += faces[1].len();
        matched += pairs;
        println!(
            "{}\t{}x{}\t{}\t{}\t{}",
            photo.file_name().unwrap_or_default().to_string_lossy(),
            image.width,
            image.height,
            faces[0].len(),
            faces[1].len(),
            pairs
        );
        let frame = resize(&image, 640, 480, ResizeMethod::Bilinear)?;
        for (i, d) in detectors.iter_mut().enumerate() {
            let o = options(d);
            d.detect(&frame, o)?; // warm
            let started = Instant::now();
            for _ in 0..3 {
                d.detect(&frame, o)?;
            }
            frame_ms[i].push(started.elapsed().as_secs_f64() * 1000.0 / 3.0);
        }
        if let Some(out) = draw {
            std::fs::create_dir_all(out)?;
            save_drawing(
                &image,
                &faces,
                &out.join(photo.file_name().unwrap_or_default()),
            )?;
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let names = [reference, candidate].map(|p| p.display().to_string());
    println!(
        "\n{} photos. reference {}: {} faces, {:.1} ms per 640x480 frame (median)",
        photos.len(),
        names[0],
        found[0],
        median(&mut frame_ms[0])
    );
    println!(
        "candidate {}: {} faces, {:.1} ms per 640x480 frame (median)",
        names[1],
        found[1],
        median(&mut frame_ms[1])
    );
    println!(
        "matched (IoU >= 0.5): {matched}; reference only: {}; candidate only: {}",
        found[0] - matched,
        found[1] - matched
    );
    Ok(())
}

/// Greedy one-to-one matching by IoU ≥ 0.5, best overlaps first.
fn matches(a: &[Detection], b: &[Detection]) -> usize {
    let mut pairs: Vec<(f32, usize, usize)> = a
        .iter()
        .enumerate()
        .flat_map(|(i, x)| b.iter().enumerate().map(move |(j, y)| (x.iou(y), i, j)))
        .filter(|(iou, _, _)| *iou >= 0.5)
        .collect();
    pairs.sort_by(|x, y| y.0.total_cmp(&x.0));
    let (mut used_a, mut used_b) = (vec![false; a.len()], vec![false; b.len()]);
    let mut n = 0;
    for (_, i, j) in pairs {
        if !used_a[i] && !used_b[j] {
            used_a[i] = true;
            used_b[j] = true;
            n += 1;
        }
    }
    n
}

fn save_drawing(
    image: &Pixels,
    faces: &[Vec<Detection>],
    path: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut canvas = image::RgbImage::from_raw(image.width, image.height, image.data.clone())
        .ok_or("image buffer size")?;
    let colours = [image::Rgb([40, 110, 255]), image::Rgb([255, 140, 0])];
    let thick = (image.width.max(image.height) / 400).max(1) as i64;
    let mut put = |x: i64, y: i64, c: image::Rgb<u8>| {
        if x >= 0 && y >= 0 && (x as u32) < canvas.width() && (y as u32) < canvas.height() {
            canvas.put_pixel(x as u32, y as u32, c);
        }
    };
    for (set, colour) in faces.iter().zip(colours) {
        for d in set {
            let (x0, y0, x1, y1) = (d.x0 as i64, d.y0 as i64, d.x1 as i64, d.y1 as i64);
            for t in 0..thick {
                for x in x0..=x1 {
                    put(x, y0 + t, colour);
                    put(x, y1 - t, colour);
                }
                for y in y0..=y1 {
                    put(x0 + t, y, colour);
                    put(x1 - t, y, colour);
                }
            }
            for (k, [lx, ly]) in d.landmarks.iter().flatten().enumerate() {
                // eyes green, nose yellow, mouth red: the order is visible in the drawing
                let c = [
                    [0, 220, 0],
                    [0, 220, 0],
                    [255, 230, 0],
                    [230, 0, 0],
                    [230, 0, 0],
                ][k];
                for dy in -2 * thick..=2 * thick {
                    for dx in -2 * thick..=2 * thick {
                        put(*lx as i64 + dx, *ly as i64 + dy, image::Rgb(c));
                    }
                }
            }
        }
    }
    canvas.save(path)?;
    Ok(())
}
