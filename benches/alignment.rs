//! Does aligning faces by their landmarks help? FER+ validation faces (read in place from
//! `../shared/data/ferplus.tar.gz`) are scaled to 90–150 px, turned by up to ±25°, and pasted four
//! to a 640×480 frame; the real server (`--detector auto`: CenterFace) analyses each frame with
//! `align=true` and `align=false`, and each original 48×48 crop is classified as it is. Accuracy is
//! against the faces' majority label, by how far each face was turned.
//!
//! ```text
//! cargo bench -p fer-server --bench alignment -- [--faces N] [--model NAME]
//! ```

#[path = "../tests/e2e/common.rs"]
mod common;

use common::{Face, Server, ferplus_faces};
use serde_json::Value;

/// A small deterministic generator (xorshift), so every run pastes the same frames.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }

    fn between(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.uniform()
    }
}

/// Where a face was pasted: centre, side, angle in degrees.
#[derive(Debug, Clone, Copy)]
struct Placement {
    cx: f32,
    cy: f32,
    side: f32,
    degrees: f32,
}

const FRAME: (u32, u32) = (640, 480);

/// Pastes a gray face into `frame` (RGB) at `p`: each frame pixel inside the turned square takes
/// the face's bilinear sample.
fn paste(frame: &mut image::RgbImage, face: &image::GrayImage, p: Placement) {
    let (sin, cos) = p.degrees.to_radians().sin_cos();
    let n = face.width() as f32;
    let reach = p.side * 0.75;
    let (x0, x1) = ((p.cx - reach).max(0.0) as u32, (p.cx + reach) as u32);
    let (y0, y1) = ((p.cy - reach).max(0.0) as u32, (p.cy + reach) as u32);
    for y in y0..y1.min(frame.height()) {
        for x in x0..x1.min(frame.width()) {
            let (dx, dy) = (x as f32 + 0.5 - p.cx, y as f32 + 0.5 - p.cy);
            // frame → face: undo the turn, then the scale
            let u = (cos * dx + sin * dy) / p.side * n + n / 2.0 - 0.5;
            let v = (-sin * dx + cos * dy) / p.side * n + n / 2.0 - 0.5;
            if u < -0.5 || v < -0.5 || u > n - 0.5 || v > n - 0.5 {
                continue;
            }
            let at = |xx: f32, yy: f32| {
                let xi = xx.clamp(0.0, n - 1.0) as u32;
                let yi = yy.clamp(0.0, n - 1.0) as u32;
                f32::from(face.get_pixel(xi, yi)[0])
            };
            let (fu, fv) = (u.floor(), v.floor());
            let (tu, tv) = (u - fu, v - fv);
            let value = (at(fu, fv) * (1.0 - tu) + at(fu + 1.0, fv) * tu) * (1.0 - tv)
                + (at(fu, fv + 1.0) * (1.0 - tu) + at(fu + 1.0, fv + 1.0) * tu) * tv;
            let g = value.round().clamp(0.0, 255.0) as u8;
            frame.put_pixel(x, y, image::Rgb([g, g, g]));
        }
    }
}

/// A frame of four faces, one per quadrant, on a noisy mid-grey background.
fn frame_of(faces: &[&Face], rng: &mut Rng) -> (Vec<u8>, Vec<Placement>) {
    let mut frame = image::RgbImage::from_fn(FRAME.0, FRAME.1, |_, _| {
        let g = (110.0 + 30.0 * rng.uniform()) as u8;
        image::Rgb([g, g, g])
    });
    let mut placements = Vec::new();
    for (k, face) in faces.iter().enumerate() {
        let gray = image::load_from_memory(&face.png)
            .expect("FER+ png")
            .to_luma8();
        let side = rng.between(90.0, 150.0);
        let degrees = rng.between(-25.0, 25.0);
        let reach = side * 0.71 * 1.1;
        let (qx, qy) = ((k % 2) as f32 * 320.0, (k / 2) as f32 * 240.0);
        let placement = Placement {
            cx: qx + rng.between(reach, (320.0 - reach).max(reach)),
            cy: qy + rng.between(reach.min(120.0), (240.0 - reach).max(reach.min(120.0))),
            side,
            degrees,
        };
        paste(&mut frame, &gray, placement);
        placements.push(placement);
    }
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(frame)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .expect("encode frame");
    (png, placements)
}

/// The label of the detected face nearest each placement (within half its side), if any.
fn labels_at(body: &Value, placements: &[Placement]) -> Vec<Option<String>> {
    let faces = body["results"][0]["faces"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    placements
        .iter()
        .map(|p| {
            faces
                .iter()
                .filter_map(|f| {
                    let b = &f["box"];
                    let cx = b["x"].as_f64()? + b["width"].as_f64()? / 2.0;
                    let cy = b["y"].as_f64()? + b["height"].as_f64()? / 2.0;
                    let d = (cx as f32 - p.cx).hypot(cy as f32 - p.cy);
                    (d < p.side / 2.0).then(|| (d, f["label"].as_str().unwrap_or("").to_string()))
                })
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, label)| label)
        })
        .collect()
}

#[derive(Default, Clone, Copy)]
struct Tally {
    faces: usize,
    found: usize,
    correct: usize,
}

impl Tally {
    fn add(&mut self, label: Option<&str>, truth: &str) {
        self.faces += 1;
        if let Some(label) = label {
            self.found += 1;
            self.correct += usize::from(label == truth);
        }
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let count: usize = flag("--faces").and_then(|v| v.parse().ok()).unwrap_or(800);
    let model = flag("--model").unwrap_or_else(|| common::MODEL.to_string());
    let faces = ferplus_faces(0, count);
    let server = Server::start(&[]);
    let client = reqwest::Client::new();
    let post = |path: String, content_type: &'static str, body: Vec<u8>| {
        let client = client.clone();
        let url = server.url(&path);
        async move {
            client
                .post(url)
                .header("content-type", content_type)
                .body(body)
                .send()
                .await
                .expect("request")
                .json::<Value>()
                .await
                .expect("json")
        }
    };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // Buckets by |angle|: 0–10°, 10–20°, 20–25°; then all.
    let bucket = |deg: f32| match deg.abs() {
        a if a < 10.0 => 0,
        a if a < 20.0 => 1,
        _ => 2,
    };
    let mut crops = [Tally::default(); 4];
    let mut aligned = [Tally::default(); 4];
    let mut boxed = [Tally::default(); 4];
    // Faces both modes found: (aligned right, box wrong), (aligned wrong, box right).
    let mut disagree = (0usize, 0usize);
    for group in faces.chunks(4) {
        let refs: Vec<&Face> = group.iter().collect();
        let (png, placements) = frame_of(&refs, &mut rng);
        let with = post(
            format!("/v1/analyze?model={model}&align=true"),
            "image/png",
            png.clone(),
        )
        .await;
        let without = post(
            format!("/v1/analyze?model={model}&align=false"),
            "image/png",
            png,
        )
        .await;
        let (with, without) = (
            labels_at(&with, &placements),
            labels_at(&without, &placements),
        );
        for (k, face) in group.iter().enumerate() {
            let original = post(
                format!("/v1/classify?model={model}"),
                "image/png",
                face.png.clone(),
            )
            .await;
            let label = original["results"][0]["label"].as_str();
            if let (Some(a), Some(b)) = (&with[k], &without[k]) {
                match (*a == face.label, *b == face.label) {
                    (true, false) => disagree.0 += 1,
                    (false, true) => disagree.1 += 1,
                    _ => {}
                }
            }
            for b in [bucket(placements[k].degrees), 3] {
                crops[b].add(label, &face.label);
                aligned[b].add(with[k].as_deref(), &face.label);
                boxed[b].add(without[k].as_deref(), &face.label);
            }
        }
    }
    println!(
        "{} FER+ validation faces, scaled to 90-150 px, turned by up to ±25°, four per 640x480 frame; model {model}, detector CenterFace",
        faces.len()
    );
    println!(
        "| faces turned by | faces | original 48×48 crops | detected | aligned | square box crop | aligned, of detected | box crop, of detected |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (b, name) in ["0–10°", "10–20°", "20–25°", "all"].iter().enumerate() {
        let pct = |t: Tally| 100.0 * t.correct as f64 / t.faces.max(1) as f64;
        let of_found = |t: Tally| 100.0 * t.correct as f64 / t.found.max(1) as f64;
        println!(
            "| {name} | {} | {:.1} % | {:.1} % | {:.1} % | {:.1} % | {:.1} % | {:.1} % |",
            crops[b].faces,
            pct(crops[b]),
            100.0 * aligned[b].found as f64 / aligned[b].faces.max(1) as f64,
            pct(aligned[b]),
            pct(boxed[b]),
            of_found(aligned[b]),
            of_found(boxed[b]),
        );
    }
    println!(
        "(accuracy against the majority label; a missed face counts as wrong except in the last two columns)"
    );
    println!(
        "faces found both ways: aligned right where the box crop was wrong {}, the reverse {} (McNemar)",
        disagree.0, disagree.1
    );
}
