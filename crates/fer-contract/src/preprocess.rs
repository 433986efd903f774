//! Image bytes → pixels at the model's size → normalised NCHW `f32`.
//!
//! The two halves of preprocessing are separate on purpose: [`Preprocessor::decode`] yields `u8`
//! pixels at the model's input size (the trainer caches these and augments them), and
//! [`Preprocessor::normalise_into`] writes them, normalised, straight into a batch buffer. The
//! server runs both back to back; the trainer runs the same two functions, so the two cannot drift.

use std::io::Cursor;

use fast_image_resize as fr;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, metadata::Orientation};
use zune_core::{bytestream::ZCursor, colorspace::ColorSpace, options::DecoderOptions};
use zune_jpeg::JpegDecoder;

use crate::manifest::{Channels, Manifest, ResizeMethod};

/// Limits checked against an image's header before any pixel is decoded (decompression bombs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    pub max_width: u32,
    pub max_height: u32,
    /// Largest width × height accepted.
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_width: 8192,
            max_height: 8192,
            max_pixels: 40_000_000,
        }
    }
}

impl DecodeLimits {
    fn check(&self, width: u32, height: u32) -> Result<(), ImageError> {
        if width == 0 || height == 0 {
            return Err(ImageError::Corrupt(format!(
                "image has a zero dimension ({width}x{height})"
            )));
        }
        if width > self.max_width
            || height > self.max_height
            || u64::from(width) * u64::from(height) > self.max_pixels
        {
            return Err(ImageError::TooLarge {
                width,
                height,
                limits: *self,
            });
        }
        Ok(())
    }

    /// Bytes the `image` crate may allocate: the largest RGBA image within the limits, twice.
    fn max_alloc(&self) -> u64 {
        self.max_pixels.saturating_mul(8)
    }
}

/// Why an image could not become a tensor. Every variant is the client's fault (a 4xx).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ImageError {
    #[error("image is empty (0 bytes)")]
    Empty,
    #[error("unsupported image format: {0} (supported: JPEG, PNG, WebP, BMP)")]
    Unsupported(String),
    #[error(
        "image is {width}x{height} pixels, over the limit of {}x{} and {} pixels",
        limits.max_width, limits.max_height, limits.max_pixels
    )]
    TooLarge {
        width: u32,
        height: u32,
        limits: DecodeLimits,
    },
    #[error("corrupt or truncated image: {0}")]
    Corrupt(String),
}

/// Interleaved 8-bit pixels (gray, or RGB) of one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pixels {
    pub width: u32,
    pub height: u32,
    pub channels: Channels,
    pub data: Vec<u8>,
}

impl Pixels {
    pub fn new(width: u32, height: u32, channels: Channels, data: Vec<u8>) -> Self {
        debug_assert_eq!(
            data.len(),
            width as usize * height as usize * channels.count()
        );
        Self {
            width,
            height,
            channels,
            data,
        }
    }

    /// The rectangle `x, y, width, height`, clamped to the image (at least 1×1).
    pub fn crop(&self, x: u32, y: u32, width: u32, height: u32) -> Pixels {
        let x = x.min(self.width.saturating_sub(1));
        let y = y.min(self.height.saturating_sub(1));
        let width = width.clamp(1, self.width - x);
        let height = height.clamp(1, self.height - y);
        let c = self.channels.count();
        let stride = self.width as usize * c;
        let mut data = Vec::with_capacity(width as usize * height as usize * c);
        for row in y..y + height {
            let start = row as usize * stride + x as usize * c;
            data.extend_from_slice(&self.data[start..start + width as usize * c]);
        }
        Pixels::new(width, height, self.channels, data)
    }

    /// The same image with other channels: RGB to gray by BT.601 luma (as decoding does), gray
    /// to RGB by repetition.
    pub fn to_channels(&self, channels: Channels) -> Pixels {
        let data = match (self.channels, channels) {
            (from, to) if from == to => self.data.clone(),
            (Channels::Rgb, Channels::Gray) => self
                .data
                .chunks_exact(3)
                .map(|p| luma(p[0], p[1], p[2]))
                .collect(),
            (Channels::Gray, _) => self.data.iter().flat_map(|v| [*v, *v, *v]).collect(),
            (Channels::Rgb, Channels::Rgb) => self.data.clone(),
        };
        Pixels::new(self.width, self.height, channels, data)
    }
}

/// The preprocessing a manifest declares, ready to run.
#[derive(Debug, Clone)]
pub struct Preprocessor {
    channels: Channels,
    width: u32,
    height: u32,
    resize: ResizeMethod,
    /// Per channel: the normalised value of each of the 256 pixel values.
    lut: Vec<[f32; 256]>,
    limits: DecodeLimits,
}

impl Preprocessor {
    pub fn new(manifest: &Manifest, limits: DecodeLimits) -> Self {
        let p = &manifest.preprocessing;
        let lut = p
            .mean
            .iter()
            .zip(&p.std)
            .map(|(mean, std)| std::array::from_fn(|v| (v as f32 * p.scale - mean) / std))
            .collect();
        Self {
            channels: manifest.input.channels,
            width: manifest.input.width,
            height: manifest.input.height,
            resize: p.resize,
            lut,
            limits,
        }
    }

    /// `f32` values of one preprocessed image.
    pub fn input_len(&self) -> usize {
        self.channels.count() * self.width as usize * self.height as usize
    }

    pub fn limits(&self) -> DecodeLimits {
        self.limits
    }

    /// Decodes, orients (EXIF), converts to the model's channels and resizes to its input size.
    pub fn decode(&self, bytes: &[u8]) -> Result<Pixels, ImageError> {
        self.decode_within(bytes, self.limits)
    }

    /// [`Preprocessor::decode`] under other (tighter) limits: `TooLarge` is known from the header,
    /// before any pixel is decoded, so a caller can try cheap images first.
    pub fn decode_within(&self, bytes: &[u8], limits: DecodeLimits) -> Result<Pixels, ImageError> {
        let pixels = decode_pixels(bytes, self.channels, &limits)?;
        self.resize(&pixels)
    }

    /// Converts decoded pixels of any channels (a face cropped from a photo) to the model's
    /// channels and input size.
    pub fn prepare(&self, pixels: &Pixels) -> Result<Pixels, ImageError> {
        self.resize(&pixels.to_channels(self.channels))
    }

    /// Resizes pixels of the model's channels to the model's input size.
    pub fn resize(&self, pixels: &Pixels) -> Result<Pixels, ImageError> {
        resize(pixels, self.width, self.height, self.resize)
    }

    /// Writes pixels at the model's size, normalised, as planar CHW into `out`
    /// (exactly [`Self::input_len`] values: one row of an NCHW batch).
    pub fn normalise_into(&self, pixels: &Pixels, out: &mut [f32]) {
        let plane = self.width as usize * self.height as usize;
        let channels = self.channels.count();
        assert_eq!(
            pixels.channels, self.channels,
            "pixels of the wrong channels"
        );
        assert_eq!(
            pixels.data.len(),
            plane * channels,
            "pixels of the wrong size"
        );
        assert_eq!(out.len(), plane * channels, "output row of the wrong size");
        for (c, lut) in self.lut.iter().enumerate() {
            let dst = &mut out[c * plane..(c + 1) * plane];
            for (d, px) in dst
                .iter_mut()
                .zip(pixels.data.iter().skip(c).step_by(channels))
            {
                *d = lut[*px as usize];
            }
        }
    }

    /// Decode + resize + normalise one encoded image into one row of the batch buffer.
    pub fn preprocess_into(&self, bytes: &[u8], out: &mut [f32]) -> Result<(), ImageError> {
        let pixels = self.decode(bytes)?;
        self.normalise_into(&pixels, out);
        Ok(())
    }
}

/// Decodes any supported image to an oriented RGB image (for detectors and crops of full frames).
pub fn decode_rgb(bytes: &[u8], limits: &DecodeLimits) -> Result<Pixels, ImageError> {
    decode_pixels(bytes, Channels::Rgb, limits)
}

/// An image's width and height from its header, checked against `limits`, without decoding it
/// (what a decode of it will cost is known before the memory is spent).
pub fn dimensions(bytes: &[u8], limits: &DecodeLimits) -> Result<(u32, u32), ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    let format = image::guess_format(bytes).map_err(|_| {
        ImageError::Unsupported("the bytes are not a known image format".to_string())
    })?;
    let (width, height) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(map_image_error)?;
    limits.check(width, height)?;
    Ok((width, height))
}

/// Decodes to the wanted channels at the image's own size, with its EXIF orientation applied.
pub fn decode_pixels(
    bytes: &[u8],
    channels: Channels,
    limits: &DecodeLimits,
) -> Result<Pixels, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    let format = image::guess_format(bytes).map_err(|_| {
        ImageError::Unsupported("the bytes are not a known image format".to_string())
    })?;
    match (format, channels) {
        // zune-jpeg decodes the Y plane alone: no colour conversion and a third of the memory.
        (ImageFormat::Jpeg, Channels::Gray) => decode_jpeg_luma(bytes, limits),
        (ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP | ImageFormat::Bmp, _) => {
            let image = decode_with_image(bytes, format, limits)?;
            Ok(convert(image, channels))
        }
        (other, _) => Err(ImageError::Unsupported(format!("{other:?}"))),
    }
}

fn decode_jpeg_luma(bytes: &[u8], limits: &DecodeLimits) -> Result<Pixels, ImageError> {
    let options = DecoderOptions::default()
        .set_max_width(usize::from(u16::MAX))
        .set_max_height(usize::from(u16::MAX))
        .jpeg_set_out_colorspace(ColorSpace::Luma);
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder
        .decode_headers()
        .map_err(|e| ImageError::Corrupt(e.to_string()))?;
    let (width, height) = decoder
        .dimensions()
        .ok_or_else(|| ImageError::Corrupt("JPEG header without dimensions".into()))?;
    let (width, height) = (width as u32, height as u32);
    limits.check(width, height)?;
    // zune-jpeg has no CMYK → luma path: such JPEGs (print workflows) go through RGB, as they
    // do for the detector.
    if matches!(
        decoder.input_colorspace(),
        Some(ColorSpace::CMYK | ColorSpace::YCCK)
    ) {
        let image = decode_with_image(bytes, ImageFormat::Jpeg, limits)?;
        return Ok(convert(image, Channels::Gray));
    }
    let orientation = decoder
        .exif()
        .and_then(|exif| Orientation::from_exif_chunk(exif));
    let data = decoder
        .decode()
        .map_err(|e| ImageError::Corrupt(e.to_string()))?;
    if data.len() != width as usize * height as usize {
        return Err(ImageError::Corrupt(
            "JPEG decoded to an unexpected size".into(),
        ));
    }
    let pixels = Pixels::new(width, height, Channels::Gray, data);
    Ok(match orientation {
        None | Some(Orientation::NoTransforms) => pixels,
        Some(o) => {
            let gray = image::GrayImage::from_raw(width, height, pixels.data)
                .ok_or_else(|| ImageError::Corrupt("JPEG buffer size".into()))?;
            let mut image = DynamicImage::ImageLuma8(gray);
            image.apply_orientation(o);
            convert(image, Channels::Gray)
        }
    })
}

fn decode_with_image(
    bytes: &[u8],
    format: ImageFormat,
    limits: &DecodeLimits,
) -> Result<DynamicImage, ImageError> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut image_limits = image::Limits::default();
    // Width and height are checked by `limits.check` below, which reports them; the allocation
    // cap is the decoder's own backstop.
    image_limits.max_alloc = Some(limits.max_alloc());
    reader.limits(image_limits);
    let mut decoder = reader.into_decoder().map_err(map_image_error)?;
    let (width, height) = decoder.dimensions();
    limits.check(width, height)?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(map_image_error)?;
    image.apply_orientation(orientation);
    Ok(image)
}

fn map_image_error(error: image::ImageError) -> ImageError {
    use image::ImageError as E;
    match error {
        E::Unsupported(e) => ImageError::Unsupported(e.to_string()),
        E::Limits(e) => ImageError::Corrupt(format!("image exceeds the decoder's limits: {e}")),
        E::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            ImageError::Corrupt("unexpected end of data".into())
        }
        other => ImageError::Corrupt(other.to_string()),
    }
}

/// BT.601 luma, the weights of a JPEG's Y channel, so every format becomes the same gray.
fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((299 * u32::from(r) + 587 * u32::from(g) + 114 * u32::from(b) + 500) / 1000) as u8
}

fn convert(image: DynamicImage, channels: Channels) -> Pixels {
    let (width, height) = (image.width(), image.height());
    match channels {
        Channels::Rgb => Pixels::new(width, height, channels, image.into_rgb8().into_raw()),
        Channels::Gray => {
            let data = match image {
                DynamicImage::ImageLuma8(gray) => gray.into_raw(),
                DynamicImage::ImageLumaA8(_)
                | DynamicImage::ImageLuma16(_)
                | DynamicImage::ImageLumaA16(_) => image.into_luma8().into_raw(),
                other => other
                    .into_rgb8()
                    .pixels()
                    .map(|p| luma(p[0], p[1], p[2]))
                    .collect(),
            };
            Pixels::new(width, height, channels, data)
        }
    }
}

/// Resizes to `width × height` with the manifest's filter; a no-op when the size already matches.
pub fn resize(
    pixels: &Pixels,
    width: u32,
    height: u32,
    method: ResizeMethod,
) -> Result<Pixels, ImageError> {
    if pixels.width == width && pixels.height == height {
        return Ok(pixels.clone());
    }
    let pixel_type = match pixels.channels {
        Channels::Gray => fr::PixelType::U8,
        Channels::Rgb => fr::PixelType::U8x3,
    };
    let src = fr::images::ImageRef::new(pixels.width, pixels.height, &pixels.data, pixel_type)
        .map_err(|e| ImageError::Corrupt(format!("pixel buffer: {e}")))?;
    let mut dst = fr::images::Image::new(width, height, pixel_type);
    let algorithm = match method {
        ResizeMethod::Nearest => fr::ResizeAlg::Nearest,
        ResizeMethod::Bilinear => fr::ResizeAlg::Convolution(fr::FilterType::Bilinear),
        ResizeMethod::Bicubic => fr::ResizeAlg::Convolution(fr::FilterType::CatmullRom),
        ResizeMethod::Lanczos3 => fr::ResizeAlg::Convolution(fr::FilterType::Lanczos3),
    };
    fr::Resizer::new()
        .resize(
            &src,
            &mut dst,
            &fr::ResizeOptions::new().resize_alg(algorithm),
        )
        .map_err(|e| ImageError::Corrupt(format!("resize: {e}")))?;
    Ok(Pixels::new(width, height, pixels.channels, dst.into_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crops_clamp_to_the_image_and_gray_is_bt601_luma() {
        let rgb = Pixels::new(3, 2, Channels::Rgb, (0..18).map(|v| v as u8 * 10).collect());
        let c = rgb.crop(1, 1, 5, 5);
        assert_eq!((c.width, c.height), (2, 1));
        assert_eq!(c.data, [120, 130, 140, 150, 160, 170]);
        let gray = c.to_channels(Channels::Gray);
        assert_eq!(gray.data, [luma(120, 130, 140), luma(150, 160, 170)]);
        assert_eq!(gray.to_channels(Channels::Rgb).data.len(), 6);
        assert_eq!(rgb.crop(9, 9, 0, 0).data.len(), 3, "at least one pixel");
    }
    use crate::manifest::tests::sample;
    use image::{GrayImage, ImageEncoder, RgbImage, codecs::png::PngEncoder};

    fn png_gray(width: u32, height: u32, f: impl Fn(u32, u32) -> u8) -> Vec<u8> {
        let img = GrayImage::from_fn(width, height, |x, y| image::Luma([f(x, y)]));
        let mut out = Vec::new();
        PngEncoder::new(&mut out)
            .write_image(img.as_raw(), width, height, image::ExtendedColorType::L8)
            .unwrap();
        out
    }

    fn encode(img: DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn normalises_known_pixel_values() {
        let mut m = sample();
        m.input.width = 2;
        m.input.height = 2;
        let p = Preprocessor::new(&m, DecodeLimits::default());
        let pixels = Pixels::new(2, 2, Channels::Gray, vec![0, 255, 51, 102]);
        let mut out = [0.0; 4];
        p.normalise_into(&pixels, &mut out);
        // (v/255 - 0.5) / 0.5
        let want = [-1.0, 1.0, -0.6, -0.2];
        for (o, w) in out.iter().zip(want) {
            assert!((o - w).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn rgb_is_written_planar_with_per_channel_stats() {
        let mut m = sample();
        m.input.channels = Channels::Rgb;
        m.input.width = 2;
        m.input.height = 1;
        m.preprocessing.mean = vec![0.0, 0.5, 1.0];
        m.preprocessing.std = vec![1.0, 0.5, 0.25];
        let p = Preprocessor::new(&m, DecodeLimits::default());
        // two pixels: (255, 0, 255), (0, 255, 0)
        let pixels = Pixels::new(2, 1, Channels::Rgb, vec![255, 0, 255, 0, 255, 0]);
        let mut out = [0.0; 6];
        p.normalise_into(&pixels, &mut out);
        let want = [1.0, 0.0, -1.0, 1.0, 0.0, -4.0];
        for (o, w) in out.iter().zip(want) {
            assert!((o - w).abs() < 1e-5, "{out:?}");
        }
    }

    #[test]
    fn decodes_png_and_resizes_to_the_model() {
        let p = Preprocessor::new(&sample(), DecodeLimits::default());
        let bytes = png_gray(96, 96, |_, _| 200);
        let px = p.decode(&bytes).unwrap();
        assert_eq!((px.width, px.height, px.data.len()), (48, 48, 48 * 48));
        assert!(px.data.iter().all(|v| *v == 200), "a flat image stays flat");
        let mut row = vec![0.0; p.input_len()];
        p.preprocess_into(&bytes, &mut row).unwrap();
        assert!(
            row.iter()
                .all(|v| (v - (200.0 / 255.0 - 0.5) / 0.5).abs() < 1e-6)
        );
    }

    #[test]
    fn tighter_limits_refuse_from_the_header_and_decode_the_same_otherwise() {
        let p = Preprocessor::new(&sample(), DecodeLimits::default());
        let bytes = png_gray(96, 96, |x, y| (x * 2 + y) as u8);
        let tight = DecodeLimits {
            max_width: 64,
            max_height: 64,
            max_pixels: 64 * 64,
        };
        assert!(matches!(
            p.decode_within(&bytes, tight),
            Err(ImageError::TooLarge {
                width: 96,
                height: 96,
                ..
            })
        ));
        let roomy = DecodeLimits {
            max_width: 96,
            max_height: 96,
            max_pixels: 96 * 96,
        };
        assert_eq!(
            p.decode_within(&bytes, roomy).unwrap(),
            p.decode(&bytes).unwrap()
        );
    }

    #[test]
    fn rgb_sources_become_bt601_gray_in_every_format() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(48, 48, image::Rgb([200, 100, 50])));
        let want = luma(200, 100, 50);
        assert_eq!(want, 124);
        let p = Preprocessor::new(&sample(), DecodeLimits::default());
        for format in [ImageFormat::Png, ImageFormat::Bmp, ImageFormat::WebP] {
            let px = p.decode(&encode(img.clone(), format)).unwrap();
            assert!(px.data.iter().all(|v| *v == want), "{format:?}");
        }
        // JPEG is lossy: its Y plane is within a step or two of the same value.
        let px = p.decode(&encode(img, ImageFormat::Jpeg)).unwrap();
        assert!(
            px.data.iter().all(|v| v.abs_diff(want) <= 2),
            "{:?}",
            &px.data[..4]
        );
    }

    #[test]
    fn honours_exif_orientation_on_jpeg() {
        // A 4x2 image, left half black, right half white, stored rotated; EXIF says "rotate 90 CW".
        let img = GrayImage::from_fn(4, 2, |x, _| image::Luma([if x < 2 { 0 } else { 255 }]));
        let mut jpeg = Vec::new();
        let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 100);
        // EXIF APP1 with orientation 6 (rotate 90° clockwise), little-endian TIFF.
        let exif: Vec<u8> = [
            b"II*\0".as_slice(),
            &[8, 0, 0, 0],
            &[1, 0],
            &[0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0],
            &[0, 0, 0, 0],
        ]
        .concat();
        encoder.set_exif_metadata(exif).unwrap();
        encoder
            .write_image(img.as_raw(), 4, 2, image::ExtendedColorType::L8)
            .unwrap();
        let px = decode_pixels(&jpeg, Channels::Gray, &DecodeLimits::default()).unwrap();
        assert_eq!((px.width, px.height), (2, 4), "rotated to portrait");
        // After a clockwise quarter turn the right (white) half is at the bottom.
        assert!(px.data[0] < 60 && px.data[7] > 200, "{:?}", px.data);
        // The RGB path (the image crate) agrees.
        let rgb = decode_pixels(&jpeg, Channels::Rgb, &DecodeLimits::default()).unwrap();
        assert_eq!((rgb.width, rgb.height), (2, 4));
    }

    #[test]
    fn refuses_bad_input_with_the_right_error() {
        let p = Preprocessor::new(&sample(), DecodeLimits::default());
        assert_eq!(p.decode(b""), Err(ImageError::Empty));
        assert!(matches!(
            p.decode(b"hello world"),
            Err(ImageError::Unsupported(_))
        ));
        let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;";
        assert!(matches!(p.decode(gif), Err(ImageError::Unsupported(_))));
        let png = png_gray(48, 48, |x, y| (x * y) as u8);
        assert!(matches!(
            p.decode(&png[..png.len() / 2]),
            Err(ImageError::Corrupt(_))
        ));
        let jpeg = encode(
            DynamicImage::ImageLuma8(GrayImage::new(48, 48)),
            ImageFormat::Jpeg,
        );
        assert!(matches!(p.decode(&jpeg[..20]), Err(ImageError::Corrupt(_))));
    }

    #[test]
    fn refuses_decompression_bombs_before_decoding() {
        // 30,000 x 30,000 gray PNG compresses to a few hundred kilobytes.
        let limits = DecodeLimits::default();
        let p = Preprocessor::new(&sample(), limits);
        let mut bomb = Vec::new();
        {
            let encoder = image::codecs::png::PngEncoder::new_with_quality(
                &mut bomb,
                image::codecs::png::CompressionType::Best,
                image::codecs::png::FilterType::NoFilter,
            );
            // Only the header matters: write a 1-row image, then patch its height field.
            encoder
                .write_image(&vec![0u8; 30_000], 30_000, 1, image::ExtendedColorType::L8)
                .unwrap();
        }
        bomb[20..24].copy_from_slice(&30_000u32.to_be_bytes()); // IHDR height
        let mut crc = flate2::Crc::new();
        crc.update(&bomb[12..29]); // chunk type + IHDR data
        bomb[29..33].copy_from_slice(&crc.sum().to_be_bytes());
        assert!(bomb.len() < 100_000, "a small file: {} bytes", bomb.len());
        let err = p.decode(&bomb).unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::TooLarge {
                    width: 30_000,
                    height: 30_000,
                    ..
                }
            ),
            "{err:?}"
        );
        let small = DecodeLimits {
            max_width: 64,
            max_height: 64,
            max_pixels: 4096,
        };
        let err = decode_pixels(&png_gray(100, 10, |_, _| 0), Channels::Gray, &small).unwrap_err();
        assert!(matches!(
            err,
            ImageError::TooLarge {
                width: 100,
                height: 10,
                ..
            }
        ));
        let jpeg = encode(
            DynamicImage::ImageLuma8(GrayImage::new(65, 8)),
            ImageFormat::Jpeg,
        );
        let err = decode_pixels(&jpeg, Channels::Gray, &small).unwrap_err();
        assert!(
            matches!(err, ImageError::TooLarge { width: 65, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn a_cmyk_jpeg_decodes_to_the_gray_of_its_rgb() {
        // Saved by Pillow in CMYK: zune-jpeg's luma path refuses such files.
        let bytes = include_bytes!("../testdata/cmyk-16x16.jpg");
        let limits = DecodeLimits::default();
        let gray = decode_pixels(bytes, Channels::Gray, &limits).unwrap();
        let rgb = decode_pixels(bytes, Channels::Rgb, &limits).unwrap();
        assert_eq!((gray.width, gray.height), (16, 16));
        assert_eq!(gray.data, rgb.to_channels(Channels::Gray).data);
        assert!(
            gray.data.iter().any(|&v| v != gray.data[0]),
            "not a flat image"
        );
    }

    #[test]
    fn dimensions_come_from_the_header_and_are_checked() {
        let png = png_gray(30, 20, |x, _| x as u8);
        assert_eq!(dimensions(&png, &DecodeLimits::default()), Ok((30, 20)));
        let small = DecodeLimits {
            max_width: 10,
            max_height: 10,
            max_pixels: 100,
        };
        assert!(matches!(
            dimensions(&png, &small),
            Err(ImageError::TooLarge { .. })
        ));
        assert_eq!(dimensions(&[], &small), Err(ImageError::Empty));
    }
}
