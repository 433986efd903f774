//! The trainer's preprocessing (decode once at model size, cache `u8`, normalise per batch) must
//! equal the server's (`Preprocessor::preprocess_into` on the request bytes), on real images.

use std::io::Read;
use std::path::PathBuf;

use fer_contract::{DecodeLimits, Preprocessor};
use fer_train::config::Config;
use fer_train::data;

fn archive(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data")
        .join(name)
}

/// The first `n` image files of an archive, sorted by path (the order the trainer uses).
fn first_images(name: &str, n: usize) -> Vec<Vec<u8>> {
    let file = std::fs::File::open(archive(name)).unwrap();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        if path.ends_with(".jpg") || path.ends_with(".png") {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            files.push((path, bytes));
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    files.into_iter().take(n).map(|(_, b)| b).collect()
}

#[test]
fn trainer_and_server_preprocess_real_images_identically() {
    let config: Config = toml::from_str(
        "data = \"ferplus\"\nseed = 1\nepochs = 1\nbatch_size = 8\n[optimizer]\nlearning_rate = 0.001\n",
    )
    .unwrap();
    let manifest = fer_train::train::manifest_template(&config, &config.data.classes());
    let preprocessor = Preprocessor::new(&manifest, DecodeLimits::default());
    let side = (
        manifest.input.width,
        manifest.input.height,
        manifest.input.channels,
    );
    // FER+ PNGs (the image crate path), FER2013 JPEGs (zune-jpeg's gray path), UTKFace/LFW RGB
    // JPEGs at other sizes (colour conversion and resizing).
    for name in ["ferplus.tar.gz", "fer2013.tar.gz", "unlabeled-faces.tar.gz"] {
        let n = 40;
        let (cached, _) =
            data::load_unlabelled(&archive(name), &preprocessor, side, Some(n), None).unwrap();
        let raw = first_images(name, n);
        assert_eq!(cached.len(), n);
        let mut trainer_row = vec![0.0f32; preprocessor.input_len()];
        let mut server_row = vec![0.0f32; preprocessor.input_len()];
        for (i, bytes) in raw.iter().enumerate() {
            preprocessor.normalise_into(&cached.pixels(i), &mut trainer_row);
            preprocessor
                .preprocess_into(bytes, &mut server_row)
                .unwrap();
            assert_eq!(trainer_row, server_row, "{name} image {i}");
        }
    }
}
