//! Video frames from the system's `ffmpeg`: `ffprobe` for the size, then `ffmpeg` sampling at the
//! wanted rate and writing raw RGB frames to its standard output, read here one by one.

use std::io::Read;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

use anyhow::{Context, bail};
use fer_contract::{Channels, Pixels};

/// The frames of one video, sampled at `fps`.
pub struct FrameReader {
    child: Child,
    stdout: ChildStdout,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    /// Frames expected (from the duration), for the progress bar; 0 when unknown.
    pub expected: u64,
}

fn probe(video: &Path) -> anyhow::Result<(u32, u32, f64)> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=width,height:format=duration",
            "-of",
            "default=noprint_wrappers=1",
        ])
        .arg(video)
        .output()
        .context("running ffprobe: install ffmpeg (Debian: apt-get install ffmpeg)")?;
    if !out.status.success() {
        bail!(
            "ffprobe cannot read {}: {}",
            video.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    let (Some(width), Some(height)) = (field("width"), field("height")) else {
        bail!("{} has no video stream", video.display());
    };
    Ok((
        width as u32,
        height as u32,
        field("duration").unwrap_or(0.0),
    ))
}

impl FrameReader {
    pub fn open(video: &Path, fps: f64) -> anyhow::Result<Self> {
        if !(fps > 0.0 && fps.is_finite()) {
            bail!("--fps must be a positive number");
        }
        let (width, height, duration) = probe(video)?;
        let mut child = Command::new("ffmpeg")
            .args(["-v", "error", "-nostdin", "-i"])
            .arg(video)
            .args([
                "-vf",
                &format!("fps={fps}"),
                "-f",
                "rawvideo",
                "-pix_fmt",
                "rgb24",
                "-",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("running ffmpeg: install ffmpeg (Debian: apt-get install ffmpeg)")?;
        let stdout = child.stdout.take().context("ffmpeg's standard output")?;
        Ok(Self {
            child,
            stdout,
            width,
            height,
            fps,
            expected: (duration * fps).round() as u64,
        })
    }

    /// The next frame, or `None` at the end of the video.
    pub fn next_frame(&mut self) -> anyhow::Result<Option<Pixels>> {
        let mut data = vec![0u8; self.width as usize * self.height as usize * 3];
        let mut filled = 0;
        while filled < data.len() {
            match self.stdout.read(&mut data[filled..])? {
                0 if filled == 0 => return Ok(None),
                0 => bail!("ffmpeg stopped in the middle of a frame"),
                n => filled += n,
            }
        }
        Ok(Some(Pixels::new(
            self.width,
            self.height,
            Channels::Rgb,
            data,
        )))
    }

    /// Waits for ffmpeg and reports its failure.
    pub fn finish(mut self) -> anyhow::Result<()> {
        let status = self.child.wait()?;
        if !status.success() {
            bail!("ffmpeg failed ({status})");
        }
        Ok(())
    }
}

/// A frame as an uncompressed BMP: no encoding cost, decoded by the server like any image.
pub fn to_bmp(frame: &Pixels) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(frame.data.len() + 64);
    image::codecs::bmp::BmpEncoder::new(&mut out).encode(
        &frame.data,
        frame.width,
        frame.height,
        image::ExtendedColorType::Rgb8,
    )?;
    Ok(out)
}
