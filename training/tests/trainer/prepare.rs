//! `fer-train prepare` on CSVs made from real faces: FER2013's `fer2013.csv` and FER+'s
//! `fer2013new.csv` written from faces of the shared FER2013 archive, prepared, then loaded by the
//! trainer: the splits, labels and pixels must come back as they went in.

use std::io::Read;
use std::path::Path;

use fer_train::config::Config;
use fer_train::prepare;

const FOLDERS: [&str; 7] = [
    "angry", "disgust", "fear", "happy", "sad", "surprise", "neutral",
];

/// `per_class` faces of each class from each split of the shared FER2013 archive, decoded:
/// (emotion, usage, pixels).
fn real_faces(per_class: usize) -> Vec<(usize, &'static str, Vec<u8>)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/fer2013.tar.gz");
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut taken = std::collections::HashMap::new();
    let mut faces = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let parts: Vec<&str> = name.split('/').collect();
        let [_, split, class, _] = parts[..] else {
            continue;
        };
        let usage = if split == "train" {
            "Training"
        } else {
            "PublicTest"
        };
        let emotion = FOLDERS.iter().position(|f| *f == class).unwrap();
        let count = taken.entry((usage, emotion)).or_insert(0);
        if *count >= per_class {
            continue;
        }
        *count += 1;
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        let gray = image::load_from_memory(&bytes).unwrap().to_luma8();
        faces.push((emotion, usage, gray.into_raw()));
    }
    faces
}

#[test]
fn published_csvs_become_archives_the_trainer_reads() {
    let faces = real_faces(2);
    assert_eq!(faces.len(), 28, "2 faces × 7 classes × 2 splits");
    let dir = tempfile::tempdir().unwrap();
    let mut fer2013 = String::from("emotion,pixels,Usage\n");
    let mut ferplus = String::from(
        "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n",
    );
    // One more row FER+ dropped (no image name), as in the published file.
    let dropped = (3usize, "PrivateTest", faces[0].2.clone());
    for (i, (emotion, usage, pixels)) in faces.iter().chain([&dropped]).enumerate() {
        let text: Vec<String> = pixels.iter().map(u8::to_string).collect();
        fer2013.push_str(&format!("{emotion},{},{usage}\n", text.join(" ")));
        if i == faces.len() {
            ferplus.push_str(&format!("{usage},,0,0,0,0,0,0,0,0,0,0\n"));
        } else {
            // 8 votes for one FER+ class (by row), 2 for neutral
            let mut votes = [0u32; 10];
            votes[i % 8] += 8;
            votes[0] += 2;
            let votes: Vec<String> = votes.iter().map(u32::to_string).collect();
            ferplus.push_str(&format!("{usage},fer{i:07}.png,{}\n", votes.join(",")));
        }
    }
    let (csv, labels) = (
        dir.path().join("fer2013.csv"),
        dir.path().join("fer2013new.csv"),
    );
    std::fs::write(&csv, fer2013).unwrap();
    std::fs::write(&labels, ferplus).unwrap();
    let out = dir.path().join("data");
    std::fs::create_dir_all(&out).unwrap();

    let read = prepare::read_fer2013(&csv).unwrap();
    assert_eq!(read.len(), 29);
    assert_eq!(prepare::write_fer2013(&read, &out).unwrap().1, 29);
    // 28 faces and one label.csv per split (train, valid); the dropped row is not written
    assert_eq!(
        prepare::write_ferplus(&read, &labels, &out).unwrap().1,
        28 + 2
    );

    for (toml, classes) in [
        ("fer2013-supervised.toml", 7),
        ("ferplus-supervised.toml", 8),
    ] {
        let config_path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("configs")
            .join(toml);
        let mut config = Config::load(&config_path).unwrap();
        config.data_dir = out.clone();
        let class_names = config.data.classes();
        let manifest = fer_train::train::manifest_template(&config, &class_names);
        let preprocessor = fer_contract::Preprocessor::new(&manifest, Default::default());
        let (labelled, _) = fer_train::train::load_data(&config, &preprocessor, &manifest).unwrap();
        assert_eq!(labelled.classes.len(), classes);
        assert_eq!(
            (labelled.train.len(), labelled.val.len()),
            (14, 14),
            "{toml}"
        );
        // the pixels are exactly the CSV's (PNG is lossless): each train face is one of ours
        for i in 0..labelled.train.len() {
            let image = labelled.train.image(i);
            assert!(
                faces.iter().any(|(_, _, p)| p.as_slice() == image),
                "{toml}: train image {i} differs from every input face"
            );
        }
        if classes == 7 {
            // FER2013 labels are the emotion column, in the trainer's class order
            let mut counts = labelled.train.class_counts(7);
            counts.sort();
            assert_eq!(counts, vec![2; 7]);
        } else {
            // FER+ majority labels follow the votes: row i voted for class i % 8
            assert!(labelled.train.class_counts(8).iter().all(|c| *c >= 1));
        }
    }
}
