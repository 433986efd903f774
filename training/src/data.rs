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

use crate::framing::Reframer;

/// Which labelled dataset a run trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// FER2013: `fer2013/{train,val}/<class>/*.{jpg,png}`, 7 classes.
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
    /// The dataset whose classes are `labels`, in order (a model's manifest labels).
    pub fn of_labels(labels: &[String]) -> Option<Source> {
        [Source::Fer2013, Source::Ferplus]
            .into_iter()
            .find(|s| s.classes() == labels)
    }

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
    /// Per image, a probability over the classes (`len × classes`, row-major): FER+'s annotator
    /// votes. `None` where the dataset has only one label per image.
    pub soft: Option<Vec<f32>>,
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

    /// The vote distribution of image `index` over `classes` classes, when the dataset has one.
    pub fn soft_label(&self, index: usize, classes: usize) -> Option<&[f32]> {
        self.soft
            .as_ref()
            .map(|s| &s[index * classes..(index + 1) * classes])
    }

    /// Classes per row of [`Dataset::soft`] (0 without soft labels).
    fn soft_width(&self) -> usize {
        match (&self.soft, self.len()) {
            (Some(s), n) if n > 0 => s.len() / n,
            _ => 0,
        }
    }

    /// Images per class (labelled data only).
    pub fn class_counts(&self, classes: usize) -> Vec<usize> {
        let mut counts = vec![0; classes];
        for &l in self.labels.iter().flatten() {
            counts[l] += 1;
        }
        counts
    }

    fn from_pixels(preprocessor_side: (u32, u32, Channels), items: Vec<(Pixels, Label)>) -> Self {
        let (width, height, channels) = preprocessor_side;
        let labelled = items.iter().all(|(_, l)| l.class.is_some());
        let with_votes = !items.is_empty() && items.iter().all(|(_, l)| l.votes.is_some());
        let mut images = Vec::with_capacity(items.len() * width as usize * height as usize);
        let mut labels = Vec::with_capacity(items.len());
        let mut soft = Vec::new();
        for (pixels, label) in items {
            images.extend_from_slice(&pixels.data);
            labels.push(label.class.unwrap_or(0));
            if with_votes {
                soft.extend(label.votes.into_iter().flatten());
            }
        }
        Self {
            width,
            height,
            channels,
            images,
            labels: labelled.then_some(labels),
            soft: (labelled && with_votes).then_some(soft),
        }
    }

    /// The images at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let mut images = Vec::with_capacity(indices.len() * self.image_len());
        for &i in indices {
            images.extend_from_slice(self.image(i));
        }
        let width = self.soft_width();
        let soft = self.soft.as_ref().map(|s| {
            indices
                .iter()
                .flat_map(|&i| s[i * width..(i + 1) * width].iter().copied())
                .collect()
        });
        Dataset {
            soft,
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

    /// The same images mirrored left to right (labels kept): a face's expression does not
    /// change in a mirror, so averaging a model over both views is a test-time augmentation.
    pub fn mirrored(&self) -> Dataset {
        let (w, c) = (self.width as usize, self.channels.count());
        let mut images = self.images.clone();
        for row in images.chunks_mut(w * c) {
            for x in 0..w / 2 {
                for k in 0..c {
                    row.swap(x * c + k, (w - 1 - x) * c + k);
                }
            }
        }
        Dataset {
            images,
            ..self.clone()
        }
    }

    /// This dataset followed by `other` (same size and channels), dropping labels unless both have them.
    pub fn concat(mut self, other: &Dataset) -> Dataset {
        self.images.extend_from_slice(&other.images);
        self.soft = match (self.soft.take(), &other.soft) {
            (Some(mut a), Some(b)) => {
                a.extend_from_slice(b);
                Some(a)
            }
            _ => None,
        };
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

/// What a labelled file says about its image: the class, and for FER+ the annotators' vote
/// distribution over the classes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Label {
    pub class: Option<usize>,
    pub votes: Option<Vec<f32>>,
}

impl Label {
    fn class(class: usize) -> Self {
        Label {
            class: Some(class),
            votes: None,
        }
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
    files: Vec<(String, Vec<u8>, Label)>,
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
            // JPEG as in the shared archive, PNG as `fer-train prepare` writes it
            let files = read_archive(&path, |n| n.ends_with(".jpg") || n.ends_with(".png"))?;
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
                    "train" => train.push((name, bytes, Label::class(label))),
                    "val" => val.push((name, bytes, Label::class(label))),
                    _ => {}
                }
            }
            (train, val)
        }
        Source::Ferplus => {
            let files = read_archive(&path, |n| n.ends_with(".png") || n.ends_with("label.csv"))?;
            let mut labels: HashMap<String, Label> = HashMap::new();
            for (name, bytes) in files.iter().filter(|(n, _)| n.ends_with("label.csv")) {
                let split = name.split('/').nth(1).unwrap_or_default();
                let text = String::from_utf8_lossy(bytes);
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    if let Some((file, label)) = ferplus_label(line) {
                        labels.insert(format!("ferplus/{split}/{file}"), label);
                    }
                }
            }
            let (mut train, mut val) = (Vec::new(), Vec::new());
            for (name, bytes) in files.into_iter().filter(|(n, _)| n.ends_with(".png")) {
                let Some(label) = labels.remove(&name) else {
                    continue;
                };
                match name.split('/').nth(1) {
                    Some("train") => train.push((name, bytes, label)),
                    Some("valid") => val.push((name, bytes, label)),
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
    ferplus_label(line).and_then(|(file, label)| Some((file, label.class?)))
}

/// FER+ `label.csv` line → (file, majority class and vote distribution), `None` as
/// [`ferplus_majority`]. The distribution is over the 8 expressions: a single stray vote for an
/// expression is dropped as an outlier (as the FER+ authors' reference code does) unless it is
/// the only one, and "unknown" / "not a face" votes are left out.
pub fn ferplus_label(line: &str) -> Option<(String, Label)> {
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
    if best >= 8 {
        return None;
    }
    let expressions = &votes[..8];
    let kept: Vec<u32> = expressions
        .iter()
        .map(|&v| if v > 1 || v == votes[best] { v } else { 0 })
        .collect();
    let total: u32 = kept.iter().sum();
    let votes = kept.iter().map(|&v| v as f32 / total as f32).collect();
    Some((
        file.to_string(),
        Label {
            class: Some(best),
            votes: Some(votes),
        },
    ))
}

/// About `count` images of an archive whose paths start with `prefix`, evenly spaced in path
/// order, decoded at their own size in RGB, with their paths.
pub fn sample_images(
    archive: &Path,
    prefix: &str,
    count: usize,
    limits: &fer_contract::DecodeLimits,
) -> Result<Vec<(String, Pixels)>, DataError> {
    let mut files = read_archive(archive, |n| {
        n.starts_with(prefix) && (n.ends_with(".jpg") || n.ends_with(".png"))
    })?;
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let every = (files.len() / count.max(1)).max(1);
    files
        .into_par_iter()
        .enumerate()
        .filter(|(i, _)| i % every == 0)
        .map(|(_, (name, bytes))| {
            fer_contract::preprocess::decode_rgb(&bytes, limits)
                .map(|p| (name.clone(), p))
                .map_err(|e| DataError::Format(format!("{name}: {e}")))
        })
        .collect()
}

/// Unlabelled face images (any archive of JPEG/PNG faces), decoded at the model's size; with a
/// `reframer`, each re-cropped to the labelled data's framing first, and images without exactly
/// one face dropped (the second value counts them).
pub fn load_unlabelled(
    archive: &Path,
    preprocessor: &Preprocessor,
    side: (u32, u32, Channels),
    limit: Option<usize>,
    reframer: Option<&Reframer>,
) -> Result<(Dataset, usize), DataError> {
    let mut files = read_archive(archive, |n| n.ends_with(".jpg") || n.ends_with(".png"))?;
    files.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(limit) = limit {
        files.truncate(limit);
    }
    if let Some(reframer) = reframer {
        let limits = preprocessor.limits();
        let faces = files
            .into_par_iter()
            .map(|(name, bytes)| {
                let fail = |e: String| DataError::Format(format!("{name}: {e}"));
                let rgb = fer_contract::preprocess::decode_rgb(&bytes, &limits)
                    .map_err(|e| fail(e.to_string()))?;
                match reframer.reframe(&rgb).map_err(|e| fail(e.to_string()))? {
                    Some(face) => preprocessor
                        .prepare(&face)
                        .map(|p| Some((p, Label::default())))
                        .map_err(|e| fail(e.to_string())),
                    None => Ok(None),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let dropped = faces.iter().filter(|f| f.is_none()).count();
        let kept = faces.into_iter().flatten().collect();
        return Ok((Dataset::from_pixels(side, kept), dropped));
    }
    let data = decode_all(
        preprocessor,
        side,
        files
            .into_iter()
            .map(|(n, b)| (n, b, Label::default()))
            .collect(),
    )?;
    Ok((data, 0))
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
    fn ferplus_votes_drop_single_outliers_and_the_unknown_columns() {
        let (_, label) = ferplus_label(r#"fer0.png,"(0, 0, 48, 48)",4,0,0,1,3,2,0,0,0,0"#).unwrap();
        assert_eq!(label.class, Some(0));
        let votes = label.votes.unwrap();
        // 4 neutral, 3 anger, 2 disgust; the single sadness vote is an outlier
        assert_eq!(votes.len(), 8);
        assert!((votes[0] - 4.0 / 9.0).abs() < 1e-6 && votes[3] == 0.0);
        assert!((votes.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        // an image whose majority has a single vote keeps it (and its ties)
        let (_, label) = ferplus_label(r#"fer1.png,"(0, 0, 48, 48)",1,1,0,0,0,0,0,0,0,0"#).unwrap();
        assert_eq!(label.votes.unwrap()[..2], [0.5, 0.5]);
        // unknown / not-a-face votes do not count
        let (_, label) = ferplus_label(r#"fer2.png,"(0, 0, 48, 48)",0,6,0,0,0,0,0,0,2,2"#).unwrap();
        assert_eq!(label.votes.unwrap()[1], 1.0);
    }

    #[test]
    fn mirroring_reverses_each_row_and_keeps_labels() {
        let data = Dataset {
            width: 3,
            height: 2,
            channels: Channels::Gray,
            images: vec![1, 2, 3, 4, 5, 6],
            labels: Some(vec![4]),
            soft: None,
        };
        let m = data.mirrored();
        assert_eq!(m.images, vec![3, 2, 1, 6, 5, 4]);
        assert_eq!(m.labels, data.labels);
        assert_eq!(m.mirrored().images, data.images);
    }

    #[test]
    fn soft_labels_follow_subsets_and_concatenation() {
        let data = Dataset {
            width: 1,
            height: 1,
            channels: Channels::Gray,
            images: vec![10, 11, 12],
            labels: Some(vec![0, 1, 1]),
            soft: Some(vec![1.0, 0.0, 0.2, 0.8, 0.4, 0.6]),
        };
        let sub = data.subset(&[2, 0]);
        assert_eq!(sub.soft_label(0, 2), Some(&[0.4, 0.6][..]));
        assert_eq!(sub.soft_label(1, 2), Some(&[1.0, 0.0][..]));
        let both = sub.clone().concat(&data);
        assert_eq!(both.soft_label(3, 2), Some(&[0.2, 0.8][..]));
        let mut unlabelled = data.clone();
        unlabelled.soft = None;
        assert_eq!(sub.concat(&unlabelled).soft, None);
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
            soft: None,
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
