//! Preprocessing per image: a 48×48 FER+ face (PNG), the same face as JPEG, and a 640×480 photo
//! (JPEG), each decoded, converted to gray, resized to 48×48 and normalised into a tensor row.
//! Run: `cargo bench -p fer-server --bench preprocess`.

use std::io::{Cursor, Read};
use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fer_contract::{DecodeLimits, Manifest, Preprocessor};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn face_png() -> Vec<u8> {
    let file =
        std::fs::File::open(repo().join("../shared/data/ferplus.tar.gz")).expect("shared data");
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    for entry in archive.entries().expect("archive") {
        let mut entry = entry.expect("entry");
        if entry
            .path()
            .expect("path")
            .to_string_lossy()
            .ends_with(".png")
        {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).expect("read");
            return bytes;
        }
    }
    panic!("no PNG in ferplus.tar.gz");
}

fn encode_jpeg(image: &image::DynamicImage) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .expect("encode");
    out.into_inner()
}

fn bench(c: &mut Criterion) {
    let manifest =
        Manifest::load(&repo().join("models/ferplus/1/manifest.json")).expect("shipped model");
    let preprocessor = Preprocessor::new(&manifest, DecodeLimits::default());
    let png = face_png();
    let face = image::load_from_memory(&png).expect("face");
    let face_jpeg = encode_jpeg(&face);
    let photo =
        image::open(repo().join("../shared/images/group-photos/1.jpg")).expect("group photo");
    let photo_jpeg = encode_jpeg(
        &photo
            .resize_exact(640, 480, image::imageops::FilterType::Triangle)
            .to_rgb8()
            .into(),
    );
    let mut row = vec![0.0f32; preprocessor.input_len()];
    let mut group = c.benchmark_group("preprocess");
    group.throughput(Throughput::Elements(1));
    for (name, bytes) in [
        ("face_48x48_png", &png),
        ("face_48x48_jpeg", &face_jpeg),
        ("photo_640x480_jpeg", &photo_jpeg),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                preprocessor
                    .preprocess_into(bytes, &mut row)
                    .expect("preprocess")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
