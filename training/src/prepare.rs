//! `fer-train prepare`: the datasets as their authors publish them → the archives the trainer
//! reads (`fer2013.tar.gz`, `ferplus.tar.gz`, `unlabeled-faces.tar.gz`; layout in
//! training/README.md "Data").
//!
//! - FER2013 (`fer2013.csv`): `emotion,pixels,Usage`, one face per row, 48×48 grey pixels as
//!   space-separated numbers; `Training` → `fer2013/train/<class>/`, `PublicTest` → `fer2013/val/`,
//!   `PrivateTest` → `fer2013/test/` (the trainer never reads it).
//! - FER+ (`fer2013new.csv`, Microsoft): `Usage,Image name,` then 10 vote counts, one row per row of
//!   `fer2013.csv` in the same order (an empty name: the face was dropped). Its images are FER2013's
//!   pixels, so it needs `fer2013.csv` too. `Training` → `ferplus/train/`, `PublicTest` →
//!   `ferplus/valid/`, `PrivateTest` → `ferplus/test/`, each with a `label.csv`.
//! - Unlabelled faces: folders of JPEG/PNG images, each → `unlabeled-faces/<folder name>/`.
//!
//! Faces are written as PNG, so the pixels the trainer decodes are exactly the CSV's.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// FER2013's `emotion` column, 0–6, as the class folder names the trainer reads.
const FER2013_FOLDERS: [&str; 7] = [
    "angry", "disgust", "fear", "happy", "sad", "surprise", "neutral",
];
const SIDE: u32 = 48;

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}, line {line}: {message}")]
    Row {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{0}")]
    Input(String),
}

/// One FER2013 face.
#[derive(Debug, Clone, PartialEq)]
pub struct Fer2013Face {
    pub emotion: usize,
    pub pixels: Vec<u8>,
    pub usage: String,
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> PrepareError + '_ {
    move |source| PrepareError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The data rows of a CSV file (after its header), each with its 1-based line number.
fn csv_rows(path: &Path) -> Result<Vec<(usize, String)>, PrepareError> {
    let file = std::fs::File::open(path).map_err(io_error(path))?;
    let mut rows = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io_error(path))?;
        if i == 0 || line.trim().is_empty() {
            continue;
        }
        rows.push((i + 1, line.trim_end_matches('\r').to_string()));
    }
    Ok(rows)
}

/// Reads `fer2013.csv`.
pub fn read_fer2013(path: &Path) -> Result<Vec<Fer2013Face>, PrepareError> {
    csv_rows(path)?
        .into_iter()
        .map(|(line, row)| {
            let bad = |message: String| PrepareError::Row {
                path: path.display().to_string(),
                line,
                message,
            };
            let mut fields = row.split(',');
            let (Some(emotion), Some(pixels), Some(usage)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Err(bad("expected emotion,pixels,Usage".into()));
            };
            let emotion: usize = emotion
                .trim()
                .parse()
                .ok()
                .filter(|e| *e < FER2013_FOLDERS.len())
                .ok_or_else(|| bad(format!("emotion {emotion:?} is not 0–6")))?;
            let pixels = pixels
                .trim()
                .trim_matches('"')
                .split_ascii_whitespace()
                .map(|p| p.parse::<u8>())
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|e| bad(format!("pixels: {e}")))?;
            if pixels.len() != (SIDE * SIDE) as usize {
                return Err(bad(format!(
                    "{} pixels; a FER2013 face has 48×48 = 2304",
                    pixels.len()
                )));
            }
            Ok(Fer2013Face {
                emotion,
                pixels,
                usage: usage.trim().to_string(),
            })
        })
        .collect()
}

fn png(pixels: &[u8]) -> Result<Vec<u8>, PrepareError> {
    let image = image::GrayImage::from_raw(SIDE, SIDE, pixels.to_vec())
        .ok_or_else(|| PrepareError::Input("a face is not 48×48".into()))?;
    let mut out = Vec::new();
    image::DynamicImage::ImageLuma8(image)
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .map_err(|e| PrepareError::Input(format!("encoding a face: {e}")))?;
    Ok(out)
}

/// A `.tar.gz` being written.
struct Archive {
    path: PathBuf,
    builder: tar::Builder<flate2::write::GzEncoder<std::fs::File>>,
    files: usize,
}

impl Archive {
    fn create(path: PathBuf) -> Result<Self, PrepareError> {
        let file = std::fs::File::create(&path).map_err(io_error(&path))?;
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
        Ok(Archive {
            path,
            builder: tar::Builder::new(gz),
            files: 0,
        })
    }

    fn add(&mut self, name: &str, bytes: &[u8]) -> Result<(), PrepareError> {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        self.builder
            .append_data(&mut header, name, bytes)
            .map_err(io_error(&self.path))?;
        self.files += 1;
        Ok(())
    }

    fn finish(self) -> Result<(PathBuf, usize), PrepareError> {
        let path = self.path;
        let mut gz = self.builder.into_inner().map_err(io_error(&path))?;
        gz.flush().map_err(io_error(&path))?;
        gz.finish().map_err(io_error(&path))?;
        Ok((path, self.files))
    }
}

fn split_of(usage: &str, names: [&'static str; 3]) -> Option<&'static str> {
    match usage {
        "Training" => Some(names[0]),
        "PublicTest" => Some(names[1]),
        "PrivateTest" => Some(names[2]),
        _ => None,
    }
}

/// Writes `fer2013.tar.gz` into `out`; returns its path and file count.
pub fn write_fer2013(faces: &[Fer2013Face], out: &Path) -> Result<(PathBuf, usize), PrepareError> {
    let mut archive = Archive::create(out.join("fer2013.tar.gz"))?;
    for (i, face) in faces.iter().enumerate() {
        let Some(split) = split_of(&face.usage, ["train", "val", "test"]) else {
            return Err(PrepareError::Input(format!(
                "fer2013.csv row {}: Usage {:?} is not Training, PublicTest or PrivateTest",
                i + 1,
                face.usage
            )));
        };
        let name = format!(
            "fer2013/{split}/{}/{i:05}.png",
            FER2013_FOLDERS[face.emotion]
        );
        archive.add(&name, &png(&face.pixels)?)?;
    }
    archive.finish()
}

/// Writes `ferplus.tar.gz` into `out` from `fer2013new.csv` over FER2013's faces.
pub fn write_ferplus(
    faces: &[Fer2013Face],
    labels: &Path,
    out: &Path,
) -> Result<(PathBuf, usize), PrepareError> {
    let rows = csv_rows(labels)?;
    if rows.len() != faces.len() {
        return Err(PrepareError::Input(format!(
            "{} has {} rows and fer2013.csv {}: FER+ labels go row by row over FER2013",
            labels.display(),
            rows.len(),
            faces.len()
        )));
    }
    let mut archive = Archive::create(out.join("ferplus.tar.gz"))?;
    let mut label_files: [(&str, String); 3] = [
        ("train", String::new()),
        ("valid", String::new()),
        ("test", String::new()),
    ];
    for ((line, row), face) in rows.iter().zip(faces) {
        let bad = |message: String| PrepareError::Row {
            path: labels.display().to_string(),
            line: *line,
            message,
        };
        let fields: Vec<&str> = row.split(',').map(str::trim).collect();
        let [usage, name, votes @ ..] = &fields[..] else {
            return Err(bad("expected Usage,Image name,votes".into()));
        };
        if name.is_empty() {
            continue; // a face FER+ dropped
        }
        if votes.len() != 10 || votes.iter().any(|v| v.parse::<u32>().is_err()) {
            return Err(bad(format!("{} vote counts; FER+ has 10", votes.len())));
        }
        let split = split_of(usage, ["train", "valid", "test"])
            .ok_or_else(|| bad(format!("Usage {usage:?}")))?;
        archive.add(&format!("ferplus/{split}/{name}"), &png(&face.pixels)?)?;
        let labels = label_files
            .iter_mut()
            .find(|(s, _)| *s == split)
            .map(|(_, text)| text)
            .ok_or_else(|| bad(format!("split {split}")))?;
        labels.push_str(&format!("{name},\"(0, 0, 48, 48)\",{}\n", votes.join(",")));
    }
    for (split, text) in &label_files {
        if !text.is_empty() {
            archive.add(&format!("ferplus/{split}/label.csv"), text.as_bytes())?;
        }
    }
    archive.finish()
}

/// Writes `unlabeled-faces.tar.gz` into `out` from folders of JPEG/PNG images.
pub fn write_unlabelled(folders: &[PathBuf], out: &Path) -> Result<(PathBuf, usize), PrepareError> {
    let mut archive = Archive::create(out.join("unlabeled-faces.tar.gz"))?;
    for folder in folders {
        let set = folder
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| PrepareError::Input(format!("{}: not a folder", folder.display())))?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(folder)
            .map_err(io_error(folder))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().and_then(|x| x.to_str()).is_some_and(|x| {
                    matches!(x.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png")
                })
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(PrepareError::Input(format!(
                "{}: no .jpg or .png images",
                folder.display()
            )));
        }
        for file in files {
            let bytes = std::fs::read(&file).map_err(io_error(&file))?;
            let stem = file.file_stem().unwrap_or_default().to_string_lossy();
            let ext = match file.extension().and_then(|x| x.to_str()) {
                Some(x) if x.eq_ignore_ascii_case("png") => "png",
                _ => "jpg",
            };
            archive.add(&format!("unlabeled-faces/{set}/{stem}.{ext}"), &bytes)?;
        }
    }
    archive.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_rows_name_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("fer2013.csv");
        let pixels = vec!["7"; 2304].join(" ");
        std::fs::write(
            &csv,
            format!("emotion,pixels,Usage\n3,{pixels},Training\n9,{pixels},Training\n"),
        )
        .unwrap();
        let error = read_fer2013(&csv).unwrap_err().to_string();
        assert!(error.contains("line 3") && error.contains("0–6"), "{error}");
        std::fs::write(&csv, "emotion,pixels,Usage\n3,1 2 3,Training\n").unwrap();
        let error = read_fer2013(&csv).unwrap_err().to_string();
        assert!(error.contains("2304"), "{error}");
    }
}
