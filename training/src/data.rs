//! Datasets read in place from the shared `.tar.gz` archives, decoded once into memory at the
//! model's input size through the contract's preprocessing (so training sees what the server sees).

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use fer_contract::{Channels, Pixels, Preprocessor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Which labelled dataset a run trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// FER2013: `fer2013/{train,val}/<class>/*.jpg`, 7 classes.
    Fer2013,
    /// FER+: `ferplus/{train,valid}/*.png` + `label.csv` vote counts, 8 classes (majority vote).
    Ferplus,
}

pub const FER2013_CLASSES: [&str; 7] = [
    "angry", "disgust", "fear", "happy", "neutral", "sad", "surprise",
];
pub const FERPLUS_CLASSES: [&str; 8] = [
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
];

impl Source {
    pub fn classes(self) -> Vec<String> {
        match self {
            Source::Fer2013 => FER2013_CLASSES.map(String::from).to_vec(),
            Source::Ferplus => FERPLUS_CLASSES.map(String::from).to_vec(),
        }
    }

    pub fn archive_name(self) -> &'static str {
        match self {
            Source::Fer2013 => "fer2013.tar.gz",
            Source::Ferplus => "ferplus.tar.gz",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Source::Fer2013 => {
                "FER2013 (ICML 2013 challenge), train split; validation on PublicTest"
            }
            Source::Ferplus => {
                "FER+ (FER2013 images relabelled by 10 annotators, majority vote), train split; validation on valid"
            }
        }
    }
}

/// Images at the model's input size, `u8`, one after another, with their labels.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub width: u32,
    pub height: u32,
    pub channels: Channels,
    pub images: Vec<u8>,
    /// Class index per image; `None` for unlabelled data.
    pub labels: Option<Vec<usize>>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.images.len() / self.image_len().max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn image_len(&self) -> usize {
        self.width as usize * self.height as usize * self.channels.count()
    }

    pub fn image(&self, index: usize) -> &[u8] {
        let n = self.image_len();
        &self.images[index * n..(index + 1) * n]
    }

    pub fn pixels(&self, index: usize) -> Pixels {
        Pixels::new(
            self.width,
            self.height,
            self.channels,
            self.image(index).to_vec(),
        )
    }

    pub fn label(&self, index: usize) -> Option<usize> {
        self.labels.as_ref().map(|l| l[index])
    }

    /// Images per class (labelled data only).
    pub fn class_counts(&self, classes: usize) -> Vec<usize> {
        let mut counts = vec![0; classes];
        for &l in self.labels.iter().flatten() {
            counts[l] += 1;
        }
        counts
    }

    fn from_pixels(
        preprocessor_side: (u32, u32, Channels),
        items: Vec<(Pixels, Option<usize>)>,
    ) -> Self {
        let (width, height, channels) = preprocessor_side;
        let labelled = items.iter().all(|(_, l)| l.is_some());
        let mut images = Vec::with_capacity(items.len() * width as usize * height as usize);
        let mut labels = Vec::with_capacity(items.len());
        for (pixels, label) in items {
            images.extend_from_slice(&pixels.data);
            labels.push(label.unwrap_or(0));
        }
        Self {
            width,
            height,
            channels,
            images,
            labels: labelled.then_some(labels),
        }
    }

    /// The images at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let mut images = Vec::with_capacity(indices.len() * self.image_len());
        for &i in indices {
            images.extend_from_slice(self.image(i));
        }
        Dataset {
            width: self.width,
            height: self.height,
            channels: self.channels,
            images,
            labels: self
                .labels
                .as_ref()
                .map(|l| indices.iter().map(|&i| l[i]).collect()),
        }
    }

    /// This dataset followed by `other` (same size and channels), dropping labels unless both have them.
    pub fn concat(mut self, other: &Dataset) -> Dataset {
        self.images.extend_from_slice(&other.images);
        self.labels = match (self.labels.take(), &other.labels) {
            (Some(mut a), Some(b)) => {
                a.extend_from_slice(b);
                Some(a)
            }
            _ => None,
        };
        self
    }
}

/// A class-stratified split: the first part holds `fraction` of each class (at least one image).
pub fn stratified_split(
    data: &Dataset,
    classes: usize,
    fraction: f64,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let labels = data.labels.as_ref().expect("stratified split needs labels");
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l].push(i);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut first, mut rest) = (Vec::new(), Vec::new());
    for mut members in by_class {
        members.shuffle(&mut rng);
        let take = ((members.len() as f64 * fraction).round() as usize)
            .clamp(members.len().min(1), members.len());
        first.extend_from_slice(&members[..take]);
        rest.extend_from_slice(&members[take..]);
    }
    first.sort_unstable();
    rest.sort_unstable();
    (first, rest)
}

/// Train and validation splits of a labelled dataset.
pub struct Labelled {
    pub classes: Vec<String>,
    pub train: Dataset,
    pub val: Dataset,
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Format(String),
}

/// Every regular file of a `.tar.gz` whose path passes `keep`, as (path, bytes).
fn read_archive(
    path: &Path,
    keep: impl Fn(&str) -> bool,
) -> Result<Vec<(String, Vec<u8>)>, DataError> {
    let io = |source| DataError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut archive =
        tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
    let mut out = Vec::new();
    for entry in archive.entries().map_err(io)? {
        let mut entry = entry.map_err(io)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path().map_err(io)?.to_string_lossy().into_owned();
        if !keep(&name) {
            continue;
        }
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes).map_err(io)?;
        out.push((name, bytes));
    }
    Ok(out)
}

fn decode_all(
    preprocessor: &Preprocessor,
    side: (u32, u32, Channels),
    files: Vec<(String, Vec<u8>, Option<usize>)>,
) -> Result<Dataset, DataError> {
    let items = files
        .into_par_iter()
        .map(|(name, bytes, label)| {
            preprocessor
                .decode(&bytes)
                .map(|p| (p, label))
                .map_err(|e| DataError::Format(format!("{name}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Dataset::from_pixels(side, items))
}

/// Loads a labelled dataset's train and validation splits from its archive.
pub fn load_labelled(
    source: Source,
    data_dir: &Path,
    preprocessor: &Preprocessor,
    side: (u32, u32, Channels),
) -> Result<Labelled, DataError> {
    let path = data_dir.join(source.archive_name());
    let classes = source.classes();
    let (train, val) = match source {
        Source::Fer2013 => {
            let index: HashMap<&str, usize> = FER2013_CLASSES
                .iter()
                .enumerate()
                .map(|(i, c)| (*c, i))
                .collect();
            let files = read_archive(&path, |n| n.ends_with(".jpg"))?;
            let (mut train, mut val) = (Vec::new(), Vec::new());
            for (name, bytes) in files {
                let parts: Vec<&str> = name.split('/').collect();
                let [_, split, class, _] = parts[..] else {
                    continue;
                };
                let label = *index.get(class).ok_or_else(|| {
                    DataError::Format(format!("{name}: unknown class folder {class:?}"))
                })?;
                match split {
                    "train" => train.push((name, bytes, Some(label))),
                    "val" => val.push((name, bytes, Some(label))),
                    _ => {}
                }
            }
            (train, val)
        }
        Source::Ferplus => {
            let files = read_archive(&path, |n| n.ends_with(".png") || n.ends_with("label.csv"))?;
            let mut labels: HashMap<String, usize> = HashMap::new();
            for (name, bytes) in files.iter().filter(|(n, _)| n.ends_with("label.csv")) {
                let split = name.split('/').nth(1).unwrap_or_default();
                let text = String::from_utf8_lossy(bytes);
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    if let Some((file, label)) = ferplus_majority(line) {
                        labels.insert(format!("ferplus/{split}/{file}"), label);
                    }
                }
            }
            let (mut train, mut val) = (Vec::new(), Vec::new());
            for (name, bytes) in files.into_iter().filter(|(n, _)| n.ends_with(".png")) {
                let Some(&label) = labels.get(&name) else {
                    continue;
                };
                match name.split('/').nth(1) {
                    Some("train") => train.push((name, bytes, Some(label))),
                    Some("valid") => val.push((name, bytes, Some(label))),
                    _ => {}
                }
            }
            (train, val)
        }
    };
    if train.is_empty() || val.is_empty() {
        return Err(DataError::Format(format!(
            "{}: no train or validation images found",
            path.display()
        )));
    }
    let mut train = train;
    let mut val = val;
    // Archive order is not guaranteed; sort so that seeds mean the same thing everywhere.
    train.sort_by(|a, b| a.0.cmp(&b.0));
    val.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Labelled {
        classes,
        train: decode_all(preprocessor, side, train)?,
        val: decode_all(preprocessor, side, val)?,
    })
}

/// FER+ `label.csv` line → (file, majority class), or `None` when the majority is
/// "unknown" / "not a face", or the line has no votes.
pub fn ferplus_majority(line: &str) -> Option<(String, usize)> {
    // file,"(x, y, w, h)",v0..v9: the quoted box contains commas, so split around it.
    let (file, rest) = line.split_once(',')?;
    let after_box = rest.rsplit_once(')').map(|(_, r)| r).unwrap_or(rest);
    let votes: Vec<u32> = after_box
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty() && *s != "\"")
        .filter_map(|s| s.trim_matches('"').parse().ok())
        .collect();
    if votes.len() != 10 || votes.iter().all(|v| *v == 0) {
        return None;
    }
    let (best, _) = votes.iter().enumerate().fold(
        (0, 0),
        |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) },
    );
    (best < 8).then(|| (file.to_string(), best))
}

/// Unlabelled face images (any archive of JPEG/PNG faces), decoded at the model's size.
pub fn load_unlabelled(
    archive: &Path,
    preprocessor: &Preprocessor,
    side: (u32, u32, Channels),
    limit: Option<usize>,
) -> Result<Dataset, DataError> {
    let mut files = read_archive(archive, |n| n.ends_with(".jpg") || n.ends_with(".png"))?;
    files.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(limit) = limit {
        files.truncate(limit);
    }
    decode_all(
        preprocessor,
        side,
        files.into_iter().map(|(n, b)| (n, b, None)).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ferplus_majority_reads_votes_after_the_quoted_box() {
        assert_eq!(
            ferplus_majority(r#"fer0000000.png,"(0, 0, 48, 48)",4,0,0,1,3,2,0,0,0,0"#),
            Some(("fer0000000.png".into(), 0))
        );
        assert_eq!(
            ferplus_majority(r#"fer1.png,"(0, 0, 48, 48)",0,0,0,1,3,2,0,0,0,0"#),
            Some(("fer1.png".into(), 4))
        );
        // majority "unknown" or "not a face" is dropped
        assert_eq!(
            ferplus_majority(r#"fer2.png,"(0, 0, 48, 48)",1,0,0,0,0,0,0,0,6,3"#),
            None
        );
        assert_eq!(
            ferplus_majority(r#"fer3.png,"(0, 0, 48, 48)",0,0,0,0,0,0,0,0,0,10"#),
            None
        );
        assert_eq!(ferplus_majority("garbage"), None);
    }

    #[test]
    fn stratified_split_keeps_class_proportions() {
        let labels: Vec<usize> = (0..1000).map(|i| if i < 900 { 0 } else { 1 }).collect();
        let data = Dataset {
            width: 1,
            height: 1,
            channels: Channels::Gray,
            images: vec![0; 1000],
            labels: Some(labels),
        };
        let (a, b) = stratified_split(&data, 2, 0.1, 7);
        assert_eq!(a.len() + b.len(), 1000);
        let ones = a.iter().filter(|&&i| i >= 900).count();
        assert_eq!((a.len(), ones), (100, 10));
        assert_eq!(
            stratified_split(&data, 2, 0.1, 7).0,
            a,
            "same seed, same split"
        );
        assert_ne!(
            stratified_split(&data, 2, 0.1, 8).0,
            a,
            "another seed, another split"
        );
    }
}
